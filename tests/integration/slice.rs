//! The engine never changes a decision: every combination of the demo data's
//! principals, actions, resources and context entities is decided by the engine
//! three times — as is (the whole store, context built by the schema's types), read
//! from its bytes as the HTTP handler reads it (context straight into Cedar's values,
//! `typed_request`), and with an unrelated request entity (the sliced store) — and by
//! Cedar alone on the whole stored entity set with its own JSON context parser; all
//! four must agree.

use cdap_authz::api::{AuthzRequest, Outcome, WireContext};
use cdap_authz::engine;
use cdap_authz::snapshot::{Snapshot, DEFAULT_TIME_ATTRIBUTE};
use cedar_policy::{Authorizer, Context, Entities, EntityUid, Request};
use serde_json::{json, Value};

use crate::util::{bundled_sources, NOW};

fn ids(entities: &Entities, type_name: &str) -> Vec<String> {
    let mut ids: Vec<String> = entities
        .iter()
        .map(|e| e.uid())
        .filter(|uid| uid.type_name().to_string() == type_name)
        .map(|uid| uid.id().unescaped().to_owned())
        .collect();
    ids.sort();
    ids
}

/// Cedar on the full stored entities, with the sidecar's fail-closed rule.
fn unsliced(snapshot: &Snapshot, all: &Entities, request: &AuthzRequest) -> (Outcome, Vec<String>) {
    let uid = |v: &Value| cdap_authz::api::parse_entity_ref("test", v).unwrap();
    let action: EntityUid = uid(&request.action);
    let Some(WireContext::Json(json)) = &request.context else {
        panic!("a request read from JSON values has a JSON context")
    };
    let context = Context::from_json_value(
        Value::Object(json.clone()),
        Some((&snapshot.schema, &action)),
    )
    .unwrap();
    let cedar = Request::new(
        uid(&request.principal),
        action,
        uid(&request.resource),
        context,
        Some(&snapshot.schema),
    )
    .unwrap();
    let response = Authorizer::new().is_authorized(&cedar, &snapshot.policies, all);
    let errors = response.diagnostics().errors().count();
    let allowed = response.decision() == cedar_policy::Decision::Allow && errors == 0;
    let mut reason: Vec<String> = response
        .diagnostics()
        .reason()
        .map(|id| id.to_string())
        .collect();
    reason.sort();
    (
        if allowed {
            Outcome::Allow
        } else {
            Outcome::Deny
        },
        if allowed || response.decision() == cedar_policy::Decision::Deny {
            reason
        } else {
            Vec::new()
        },
    )
}

fn check(snapshot: &Snapshot, all: &Entities, request: Value) {
    let bytes = serde_json::to_vec(&request).unwrap();
    let typed = engine::read_request(snapshot, &bytes, &[]).unwrap();
    let read_by_type = matches!(typed.context, Some(WireContext::Typed { .. }));
    assert!(read_by_type, "{request}");
    let request = AuthzRequest::from_slice(&serde_json::to_vec(&request).unwrap()).unwrap();
    let expected = unsliced(snapshot, all, &request);
    let mut sliced = request.clone();
    sliced.entities = Some(vec![json!({
        "uid": {"type": "Group", "id": "probe"}, "parents": [],
        "attrs": {"name": "probe", "partner": {"type": "Partner", "id": "ville-maubeuge"}}
    })]);
    for request in [request, typed, sliced] {
        let decision = engine::decide(snapshot, &request, chrono::Utc::now()).unwrap();
        // The engine lists its reasons in policy-id order (Cedar's own order varies).
        let reason = decision.diagnostics.reason.clone();
        assert_eq!((decision.outcome, reason), expected, "{request:?}");
    }
}

#[test]
fn the_engine_decides_as_cedar_alone_on_the_demo_data() {
    let snapshot = Snapshot::load(&bundled_sources(), DEFAULT_TIME_ATTRIBUTE).unwrap();
    let stored = &snapshot.entities;
    let actions = snapshot.schema.action_entities().unwrap();
    let all = Entities::from_entities(stored.iter().cloned().chain(actions.iter().cloned()), None)
        .unwrap();
    let users = ids(stored, "User");
    let mut checked = 0;
    for user in &users {
        for habilitation in ids(stored, "Habilitation") {
            for mission in ids(stored, "Mission") {
                for file in ids(stored, "File") {
                    check(
                        &snapshot,
                        &all,
                        json!({
                            "principal": {"type": "User", "id": user},
                            "action": "Action::\"consult_file\"",
                            "resource": {"type": "File", "id": file},
                            "context": {"authentication": "password", "now": NOW, "instructor_number": "NORD-59-0042",
                                "habilitation": {"type": "Habilitation", "id": habilitation},
                                "mission": {"type": "Mission", "id": mission}, "categories": ["rsa"]}
                        }),
                    );
                    checked += 1;
                }
            }
            for action in [
                "grant_habilitation",
                "revoke_habilitation",
                "suspend_habilitation",
            ] {
                check(
                    &snapshot,
                    &all,
                    session(user, action, "Habilitation", &habilitation),
                );
                checked += 1;
            }
        }
        for other in &users {
            for action in ["manage_user", "manage_administrator", "change_password"] {
                check(&snapshot, &all, session(user, action, "User", other));
                checked += 1;
            }
        }
        for trace in ids(stored, "Trace") {
            check(
                &snapshot,
                &all,
                session(user, "read_traces", "Trace", &trace),
            );
            checked += 1;
        }
        for group in ids(stored, "Group") {
            check(
                &snapshot,
                &all,
                session(user, "manage_group", "Group", &group),
            );
            checked += 1;
        }
    }
    assert!(checked > 10_000, "only {checked} combinations");
}

fn session(user: &str, action: &str, resource_type: &str, resource: &str) -> Value {
    json!({
        "principal": {"type": "User", "id": user},
        "action": {"type": "Action", "id": action},
        "resource": {"type": resource_type, "id": resource},
        "context": {"authentication": "password", "now": NOW}
    })
}
