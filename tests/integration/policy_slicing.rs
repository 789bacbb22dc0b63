//! Policy slicing never changes a decision: random policy sets with every kind of
//! scope (principal `==`/`in`/`is … in`, action `==`/`in [..]`/group/any, resource
//! likewise) and random requests on the demo data are decided by the engine (only
//! the buckets that can apply, within them only the policies whose guard the
//! request can satisfy, evaluated as compiled conditions) and by Cedar's
//! `Authorizer` on the whole set, and must agree on the decision, the determining
//! policies and the error messages, word for word. A second property test has the
//! requests bring entities (a new user with random parents, and a group that a
//! stored user names as its parent) and compares with Cedar on the stored entities
//! plus the request's.

use cdap_authz::api::AuthzRequest;
use cdap_authz::diagnostic::describe;
use cdap_authz::engine;
use cdap_authz::load;
use cdap_authz::snapshot::{Snapshot, DEFAULT_TIME_ATTRIBUTE};
use cedar_policy::{Authorizer, Entities, Policy, PolicyId, PolicySet};
use proptest::prelude::*;
use serde_json::json;

use crate::util::{bundled_sources, NOW};

const USERS: &[&str] = &[
    "mau-admin",
    "mau-t1",
    "mau-t2",
    "mau-suspended",
    "bou-t2a",
    "dep-t18",
    "caf-nord-traces",
];
const PARTNERS: &[&str] = &["ville-maubeuge", "mairie-bouscat", "departement-nord"];
const FILES: &[&str] = &["dossier-59-0001", "dossier-59-0004", "dossier-33-0001"];
const HABILITATIONS: &[&str] = &["mau-t2-01", "mau-t1-ccas", "bou-t2-01"];
const SESSION_ACTIONS: &[&str] = &[
    "read_traces",
    "grant_habilitation",
    "revoke_habilitation",
    "manage_user",
];

fn principal_scope() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("principal".to_owned()),
        prop::sample::select(USERS).prop_map(|u| format!("principal == User::\"{u}\"")),
        prop::sample::select(PARTNERS).prop_map(|p| format!("principal in Partner::\"{p}\"")),
        prop::sample::select(PARTNERS)
            .prop_map(|p| format!("principal is User in Partner::\"{p}\"")),
        Just("principal in Group::\"mau-ccas\"".to_owned()),
        Just("principal in Caf::\"caf-nord\"".to_owned()),
        Just("principal is User".to_owned()),
    ]
}

fn action_scope() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("action".to_owned()),
        Just("action == Action::\"consult_file\"".to_owned()),
        prop::sample::select(SESSION_ACTIONS).prop_map(|a| format!("action == Action::\"{a}\"")),
        Just("action in [Action::\"consult_file\", Action::\"read_traces\"]".to_owned()),
        Just("action in Action::\"manage_habilitations\"".to_owned()),
    ]
}

fn resource_scope() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("resource".to_owned()),
        prop::sample::select(FILES).prop_map(|f| format!("resource == File::\"{f}\"")),
        prop::sample::select(PARTNERS).prop_map(|p| format!("resource in Partner::\"{p}\"")),
        Just("resource is File".to_owned()),
        Just("resource is Habilitation".to_owned()),
    ]
}

fn condition() -> impl Strategy<Value = &'static str> {
    prop::sample::select(
        &[
            "",
            "when { principal.suspended }",
            "unless { principal.suspended }",
            "when { resource has caf }",
            "when { principal.role == \"administrator\" }",
            // Errors on resources without `department`: errors must be kept identical.
            "when { resource.department == \"59\" }",
            // Guards (a leading `path == "literal"`): filed by literal, skipped when
            // the path has another value; unresolvable on requests without them.
            "when { context.habilitation.profile == \"T1\" }",
            "when { context.habilitation.profile == \"T2\" && principal.suspended }",
            "when { \"T2\" == context.habilitation.profile && resource.department == \"59\" }",
            "when { context.habilitation.profile == \"T5\" }",
            "when { context.habilitation.bulletin.service == \"cdap\" }",
            "when { principal.partner.kind == \"commune\" && context.habilitation.suspended }",
            "unless { context.habilitation.profile == \"T1\" }",
        ][..],
    )
}

fn policy_text() -> impl Strategy<Value = String> {
    (
        any::<bool>(),
        principal_scope(),
        action_scope(),
        resource_scope(),
        condition(),
    )
        .prop_map(|(permit, principal, action, resource, condition)| {
            let effect = if permit { "permit" } else { "forbid" };
            format!("{effect} ({principal}, {action}, {resource}) {condition};")
        })
}

fn request(user: &str, pick: usize) -> serde_json::Value {
    let user = json!({"type": "User", "id": user});
    match pick % 3 {
        0 => json!({
            "principal": user, "action": "Action::\"consult_file\"",
            "resource": {"type": "File", "id": FILES[pick % FILES.len()]},
            "context": {"authentication": "password", "now": NOW, "categories": ["rsa"],
                "habilitation": {"type": "Habilitation", "id": HABILITATIONS[pick % HABILITATIONS.len()]},
                "mission": {"type": "Mission", "id": "departement-rsa-suivi"}}
        }),
        1 => json!({
            "principal": user, "action": "Action::\"read_traces\"",
            "resource": {"type": "Trace", "id": PARTNERS[pick % PARTNERS.len()]},
            "context": {"authentication": "password", "now": NOW}
        }),
        _ => json!({
            "principal": user, "action": {"type": "Action", "id": SESSION_ACTIONS[1 + pick % 2]},
            "resource": {"type": "Habilitation", "id": HABILITATIONS[pick % HABILITATIONS.len()]},
            "context": {"authentication": "password", "now": NOW}
        }),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn slicing_never_changes_a_decision(policies in prop::collection::vec(policy_text(), 1..40)) {
        let texts: Vec<&str> = policies.iter().map(String::as_str).collect();
        let (snapshot, set) = snapshot_with(&texts, Vec::new());
        for user in USERS {
            for pick in 0..9 {
                assert_decides_as_cedar(&snapshot, &set, request(user, pick));
            }
        }
    }
}

/// A snapshot of the demo data (plus `extra` stored entities) under `policies`.
fn snapshot_with(policies: &[&str], extra: Vec<serde_json::Value>) -> (Snapshot, PolicySet) {
    let mut model = load::load(&bundled_sources()).unwrap();
    let mut set = PolicySet::new();
    for (i, text) in policies.iter().enumerate() {
        let id = PolicyId::new(format!("p{i}"));
        set.add(Policy::parse(Some(id), *text).unwrap()).unwrap();
    }
    model.policies = set.clone();
    if !extra.is_empty() {
        let path = bundled_sources().entities.unwrap();
        let mut entities: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        entities.as_array_mut().unwrap().extend(extra);
        model.set_entities(entities).unwrap();
    }
    let snapshot =
        Snapshot::from_model(model, &bundled_sources().schema, DEFAULT_TIME_ATTRIBUTE).unwrap();
    (snapshot, set)
}

/// The engine decides as Cedar does on the whole set, over the stored entities plus
/// the request's own (what a request's entities mean); returns the engine's reason.
fn assert_decides_as_cedar(
    snapshot: &Snapshot,
    set: &PolicySet,
    request: serde_json::Value,
) -> Vec<String> {
    let request = AuthzRequest::from_slice(&serde_json::to_vec(&request).unwrap()).unwrap();
    let prepared = engine::prepare(snapshot, &request, chrono::Utc::now()).unwrap();
    let decided = engine::evaluate(&prepared);
    let merged;
    let entities = match &request.entities {
        Some(brought) if !brought.is_empty() => {
            let brought = Entities::from_json_value(
                serde_json::Value::Array(brought.clone()),
                Some(&snapshot.schema),
            )
            .unwrap();
            merged = snapshot
                .entities
                .clone()
                .add_entities(brought, None)
                .unwrap();
            &merged
        }
        _ => &snapshot.entities,
    };
    let cedar = Authorizer::new().is_authorized(&prepared.request, set, entities);
    let mut expected: Vec<String> = cedar
        .diagnostics()
        .reason()
        .map(|id| id.to_string())
        .collect();
    expected.sort();
    let mut errors: Vec<String> = cedar.diagnostics().errors().map(|e| describe(e)).collect();
    errors.sort();
    // The engine lists reasons and errors in policy-id order; Cedar's order varies.
    assert_eq!(decided.diagnostics.errors, errors, "{request:?}");
    let cedar_allows = cedar.decision() == cedar_policy::Decision::Allow;
    let allowed = cedar_allows && errors.is_empty();
    assert_eq!(
        decided.outcome == cdap_authz::api::Outcome::Allow,
        allowed,
        "{request:?}"
    );
    if cedar_allows && !allowed {
        // Fail closed: an error overrides Cedar's Allow, and its permits decided nothing.
        expected.clear();
    }
    assert_eq!(
        decided.diagnostics.reason, expected,
        "each determining policy once: {request:?}"
    );
    decided.diagnostics.reason
}

fn new_user(id: &str, parents: serde_json::Value, partner: &str) -> serde_json::Value {
    json!({"uid": {"type": "User", "id": id}, "parents": parents,
        "attrs": {"role": "user", "suspended": false, "must_change_password": false,
            "trace_reader": false, "habilitation_admin": false,
            "partner": {"type": "Partner", "id": partner}}})
}

fn manage_user(principal: &str, entities: Vec<serde_json::Value>) -> serde_json::Value {
    json!({"principal": {"type": "User", "id": principal}, "action": "Action::\"manage_user\"",
        "resource": "User::\"mau-admin\"",
        "context": {"authentication": "password", "now": NOW}, "entities": entities})
}

#[test]
fn a_shared_ancestor_selects_its_policies_once() {
    let (snapshot, set) = snapshot_with(
        &[
            r#"permit (principal in Partner::"ville-maubeuge", action == Action::"manage_user", resource);"#,
        ],
        Vec::new(),
    );
    // Both parents lead to the partner.
    let parents =
        json!([{"type": "Group", "id": "mau-ccas"}, {"type": "Partner", "id": "ville-maubeuge"}]);
    let request = manage_user(
        "newbie",
        vec![new_user("newbie", parents, "ville-maubeuge")],
    );
    assert_eq!(assert_decides_as_cedar(&snapshot, &set, request), ["p0"]);
}

#[test]
fn a_brought_entity_has_the_ancestry_of_its_stored_parents() {
    for policy in [
        r#"permit (principal in Partner::"ville-maubeuge", action == Action::"manage_user", resource);"#,
        r#"permit (principal, action == Action::"manage_user", resource) when { principal in Partner::"ville-maubeuge" };"#,
    ] {
        let (snapshot, set) = snapshot_with(&[policy], Vec::new());
        // The stored group belongs to the partner; the user only names the group.
        let parents = json!([{"type": "Group", "id": "mau-ccas"}]);
        let request = manage_user(
            "newbie",
            vec![new_user("newbie", parents, "mairie-bouscat")],
        );
        assert_eq!(
            assert_decides_as_cedar(&snapshot, &set, request),
            ["p0"],
            "{policy}"
        );
    }
}

#[test]
fn a_stored_entitys_parent_brought_by_the_request_counts_for_forbids() {
    let stored = new_user(
        "future-member",
        json!([{"type": "Group", "id": "future-team"}]),
        "departement-nord",
    );
    let (snapshot, set) = snapshot_with(
        &[
            r#"permit (principal, action == Action::"manage_user", resource);"#,
            r#"forbid (principal in Partner::"departement-nord", action == Action::"manage_user", resource);"#,
        ],
        vec![stored],
    );
    let team = json!({"uid": {"type": "Group", "id": "future-team"},
        "parents": [{"type": "Partner", "id": "departement-nord"}],
        "attrs": {"name": "future team", "partner": {"type": "Partner", "id": "departement-nord"}}});
    let request = manage_user("future-member", vec![team]);
    assert_eq!(assert_decides_as_cedar(&snapshot, &set, request), ["p1"]);
}

/// Parents a brought user may name: stored groups and partners, and a group that only
/// the request brings (whose parent the case picks), which a stored user also names.
const BROUGHT_PARENTS: &[(&str, &str)] = &[
    ("Group", "mau-ccas"),
    ("Partner", "ville-maubeuge"),
    ("Partner", "mairie-bouscat"),
    ("Group", "future-team"),
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn slicing_agrees_with_cedar_when_requests_bring_entities(
        policies in prop::collection::vec(policy_text(), 1..30),
        parents in prop::collection::vec(prop::sample::select(BROUGHT_PARENTS), 0..3),
        team_partner in prop::sample::select(PARTNERS),
        pick in 0usize..4,
    ) {
        let texts: Vec<&str> = policies.iter().map(String::as_str).collect();
        let stored = new_user("future-member", json!([{"type": "Group", "id": "future-team"}]), "departement-nord");
        let (snapshot, set) = snapshot_with(&texts, vec![stored]);
        let parents: Vec<_> = parents.iter().map(|(ty, id)| json!({"type": ty, "id": id})).collect();
        let team = json!({"uid": {"type": "Group", "id": "future-team"},
            "parents": [{"type": "Partner", "id": team_partner}],
            "attrs": {"name": "future team", "partner": {"type": "Partner", "id": team_partner}}});
        let brought = vec![new_user("newbie", json!(parents), "ville-maubeuge"), team];
        let principal = if pick % 2 == 0 { "newbie" } else { "future-member" };
        let request = if pick < 2 {
            manage_user(principal, brought)
        } else {
            json!({"principal": {"type": "User", "id": principal}, "action": "Action::\"consult_file\"",
                "resource": {"type": "File", "id": "dossier-59-0001"},
                "context": {"authentication": "password", "now": NOW, "categories": ["rsa"],
                    "habilitation": {"type": "Habilitation", "id": "mau-t2-01"},
                    "mission": {"type": "Mission", "id": "departement-rsa-suivi"}},
                "entities": brought})
        };
        assert_decides_as_cedar(&snapshot, &set, request);
    }
}
