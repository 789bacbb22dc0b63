//! One decision: a wire request and a snapshot in, allow or deny and why out.
//!
//! Pure and synchronous. Fails closed: a request that cannot be understood is an
//! error (never a decision), and any evaluation error of any policy makes the
//! decision Deny, with the error in `diagnostics.errors` (Cedar alone would skip an
//! erroring `forbid` and could allow).

use std::borrow::Cow;
use std::sync::Arc;

use cedar_policy::{Context, Entities, Entity, EntityTypeName, EntityUid, Request};
use cedar_policy_core::ast;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};

use crate::api::{
    plain_ref, AuthzRequest, AuthzResponse, Diagnostics, Outcome, RequestError, WireContext,
};
use crate::context::{extension_value, AttrType, EntityShapes};
use crate::diagnostic::describe;
use crate::fast_hash::HashSet;
use crate::policy_index::{self, Bucket};
use crate::slice::collect_uids;
use crate::snapshot::{ScopeTypes, Snapshot};
use crate::stored::StoredIndex;
use crate::typed_request;

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub principal: EntityUid,
    pub action: EntityUid,
    pub resource: EntityUid,
    pub outcome: Outcome,
    pub diagnostics: Diagnostics,
}

impl Decision {
    /// The wire reply for this decision, under a fresh decision id.
    pub fn response(&self, policy_version: &str) -> AuthzResponse {
        AuthzResponse {
            decision: self.outcome,
            diagnostics: self.diagnostics.clone(),
            policy_version: policy_version.to_owned(),
            decision_id: uuid::Uuid::now_v7().to_string(),
        }
    }
}

/// A wire request resolved against a snapshot: exactly what Cedar evaluates.
pub struct Prepared<'s> {
    pub principal: EntityUid,
    /// Whether the principal is a stored entity (not one the request brings).
    pub principal_stored: bool,
    /// The principal and the resource as stored, when the decision is made on the
    /// stored entities alone (the request brings none): the evaluator and the log
    /// then read them without looking them up again.
    pub stored_scope: Option<[&'s ast::Entity; 2]>,
    pub action: EntityUid,
    pub resource: EntityUid,
    pub request: Request,
    /// The stored entities as they are when the request brings none; otherwise the
    /// stored entities it can reach plus its own (the store is never cloned).
    pub entities: Cow<'s, Entities>,
    /// `entities` by uid, when they are the stored entities as they are.
    pub stored: Option<&'s StoredIndex>,
    /// The policies that can apply, by action and scope.
    pub buckets: Vec<&'s Bucket>,
    /// The uids of the entities the request brought (empty when it brought none).
    pub brought: Vec<EntityUid>,
}

impl<'s> Prepared<'s> {
    /// The entities already found among those the decision is made on.
    pub fn found(&self) -> &[&'s ast::Entity] {
        self.stored_scope.as_ref().map_or(&[], |found| &found[..])
    }

    /// Cedar's answer on the policies that can apply, before the fail-closed rule.
    pub fn authorize(&self) -> policy_index::Combined {
        policy_index::authorize(
            &self.buckets,
            &self.request,
            &self.entities,
            self.found(),
            self.stored,
        )
    }
}

/// Decides one request against one snapshot; `now` fills the time attribute when
/// the action declares it and the request leaves it out.
pub fn decide(
    snapshot: &Snapshot,
    request: &AuthzRequest,
    now: DateTime<Utc>,
) -> Result<Decision, RequestError> {
    let prepared = prepare(snapshot, request, now)?;
    Ok(evaluate(&prepared))
}

/// Reads a decision request for `snapshot`: its context straight into Cedar's values
/// where [`typed_request`] can, with the JSON of the `recorded` fields; the general
/// way otherwise, whose error is then the one given.
pub fn read_request(
    snapshot: &Snapshot,
    bytes: &[u8],
    recorded: &[String],
) -> Result<AuthzRequest, RequestError> {
    match typed_request::read(bytes, &typed_request::Types::of(snapshot), recorded) {
        Some(request) => Ok(request),
        None => AuthzRequest::from_slice(bytes),
    }
}

/// Checks a wire request against the snapshot's schema and gathers its entities.
pub fn prepare<'s>(
    snapshot: &'s Snapshot,
    request: &AuthzRequest,
    now: DateTime<Utc>,
) -> Result<Prepared<'s>, RequestError> {
    let principal = entity_ref(snapshot, "principal", &request.principal)?;
    let action = snapshot.type_names.parse("action", &request.action)?;
    let scope_types = snapshot
        .scope_types(&action)
        .ok_or_else(|| RequestError::UnknownAction(action.to_string()))?;
    let resource = entity_ref(snapshot, "resource", &request.resource)?;
    check_applies_to(scope_types, &action, &principal, &resource)?;
    let request_entities = request_entities(snapshot, request.entities.as_deref())?;
    let stored_principal = snapshot.stored.get(principal.as_ref());
    let stored_resource = snapshot.stored.get(resource.as_ref());
    for (field, uid, stored) in [
        ("principal", &principal, stored_principal.is_some()),
        ("resource", &resource, stored_resource.is_some()),
    ] {
        let known = stored || request_entities.iter().any(|e| e.uid() == *uid);
        if !known {
            return Err(RequestError::UnknownEntity {
                field,
                uid: uid.to_string(),
            });
        }
    }
    let empty = WireContext::Json(Map::new());
    let wire_context = request.context.as_ref().unwrap_or(&empty);
    let context = context(snapshot, &action, wire_context, now)?;
    let buckets = snapshot
        .policy_index
        .select(&action, &principal, &resource, |uid| {
            ancestors(uid, &snapshot.entities, &request_entities)
        });
    // What the slice of the store must reach, when the request brings entities.
    let roots = if request_entities.is_empty() {
        Vec::new()
    } else {
        let mut roots = vec![principal.clone(), resource.clone()];
        for key in wire_context.keys() {
            if let Some(value) = context.get(key) {
                collect_uids(&value, &mut roots);
            }
        }
        roots.extend(buckets.iter().flat_map(|b| b.literals.iter().cloned()));
        roots
    };
    // Cedar validates the request only when its context came through Cedar's parser:
    // a context built by its declared type has been validated by that build, and the
    // rest of Cedar's checks are done above (the action is declared and applies to the
    // principal's and resource's types, which the schema declares since they exist).
    let built_by_type = snapshot.context_types.get(&action).is_some();
    let cedar_request = Request::new(
        principal.clone(),
        action.clone(),
        resource.clone(),
        context,
        (!built_by_type).then_some(&snapshot.schema),
    )
    .map_err(|e| RequestError::InvalidRequest(describe(&e)))?;
    let brought = request_entities.iter().map(Entity::uid).collect();
    let entities = if request_entities.is_empty() {
        Cow::Borrowed(&snapshot.entities)
    } else {
        let slice = snapshot
            .slice_index
            .slice(&snapshot.entities, roots, &action, request_entities)
            .map_err(|e| RequestError::InvalidEntities(describe(e.as_ref())))?;
        Cow::Owned(slice)
    };
    let stored_scope = match (&entities, stored_principal, stored_resource) {
        (Cow::Borrowed(_), Some(principal), Some(resource)) => Some([principal, resource]),
        _ => None,
    };
    Ok(Prepared {
        principal,
        principal_stored: stored_principal.is_some(),
        stored_scope,
        action,
        resource,
        request: cedar_request,
        stored: matches!(entities, Cow::Borrowed(_)).then_some(&snapshot.stored),
        entities,
        buckets,
        brought,
    })
}

/// The ancestors of an entity as Cedar sees them in the stored entities plus the
/// request's own, each once: a stored entity's ancestors (already transitively
/// closed), a brought entity's parents, and the parents of every brought entity
/// among those in turn (a stored entity's parent may be one the request brings).
fn ancestors(uid: &EntityUid, stored: &Entities, added: &[Entity]) -> Vec<EntityUid> {
    let stored_ancestors = |uid: &EntityUid| -> Vec<EntityUid> {
        stored
            .ancestors(uid)
            .map(|found| found.cloned().collect())
            .unwrap_or_default()
    };
    if added.is_empty() {
        return stored_ancestors(uid);
    }
    let mut found: Vec<EntityUid> = Vec::new();
    let mut pending = vec![uid.clone()];
    while let Some(next) = pending.pop() {
        let parents = match added.iter().find(|e| e.uid() == next) {
            Some(entity) => entity.clone().into_inner().2.into_iter().collect(),
            None => stored_ancestors(&next),
        };
        for parent in parents {
            if !found.contains(&parent) {
                found.push(parent.clone());
                pending.push(parent);
            }
        }
    }
    found
}

/// The request's context, built by the schema's types (with the current time filled
/// in when the action declares it and the request leaves it out).
fn context(
    snapshot: &Snapshot,
    action: &EntityUid,
    wire: &WireContext,
    now: DateTime<Utc>,
) -> Result<Context, RequestError> {
    let Some(context_type) = snapshot.context_types.get(action) else {
        return match wire {
            WireContext::Json(json) => Context::from_json_value(
                Value::Object(json.clone()),
                Some((&snapshot.schema, action)),
            )
            .map_err(|e| RequestError::InvalidContext(describe(&e))),
            WireContext::Typed { .. } => Err(RequestError::InvalidContext(format!(
                "the context was read by a context type this snapshot does not declare for {action}"
            ))),
        };
    };
    if let WireContext::Typed { version, .. } = wire {
        if *version != snapshot.version {
            return Err(RequestError::InvalidContext(format!(
                "the context was read for policy version {version}, not {}",
                snapshot.version
            )));
        }
    }
    let time = &snapshot.time_attribute;
    let fill_time = snapshot.fills_time(action) && !wire.contains_key(time);
    if let Some(name) = context_type
        .missing_where(|name| wire.contains_key(name))
        .find(|name| !(fill_time && *name == time))
    {
        return Err(RequestError::InvalidContext(format!(
            "`{name}`: missing required attribute"
        )));
    }
    // To the second: the policies compare it with dates, and requests within the
    // same second then share one datetime value (`extension_value`), where each new
    // value costs about a µs to parse (BENCHMARKS.md, `time_varies`).
    let mut filled = Vec::new();
    if fill_time {
        let now = now.to_rfc3339_opts(SecondsFormat::Secs, true);
        let value = extension_value("datetime", &now).map_err(RequestError::InvalidContext)?;
        filled.push((time.clone(), value));
    }
    match wire {
        WireContext::Typed { fields, .. } => {
            let mut fields = Arc::clone(fields);
            if !filled.is_empty() {
                let record = Arc::make_mut(&mut fields);
                record.extend(filled.into_iter().map(|(name, value)| (name.into(), value)));
            }
            Ok(Context::from(ast::Context::Value(fields)))
        }
        WireContext::Json(json) => context_type
            .build(json, filled)
            .map_err(RequestError::InvalidContext),
    }
}

/// Runs Cedar on the policies that can apply and applies the fail-closed rule.
pub fn evaluate(prepared: &Prepared) -> Decision {
    let combined = prepared.authorize();
    let allowed = combined.allowed && combined.errors.is_empty();
    // When an error overrides Cedar's Allow, the permits that matched did not decide.
    let reason = if combined.allowed && !allowed {
        Vec::new()
    } else {
        combined.reason
    };
    Decision {
        principal: prepared.principal.clone(),
        action: prepared.action.clone(),
        resource: prepared.resource.clone(),
        outcome: if allowed {
            Outcome::Allow
        } else {
            Outcome::Deny
        },
        diagnostics: Diagnostics {
            reason,
            errors: combined.errors,
        },
    }
}

/// The action must apply to the principal's and the resource's types.
fn check_applies_to(
    types: &ScopeTypes,
    action: &EntityUid,
    principal: &EntityUid,
    resource: &EntityUid,
) -> Result<(), RequestError> {
    check_scope_type(&types.principals, "principal", action, principal)?;
    check_scope_type(&types.resources, "resource", action, resource)
}

/// Checks that `principal` is of a type `action` applies to, before any request
/// for it is built (a trace read asks about each partner's traces in turn).
pub fn check_principal_type(
    snapshot: &Snapshot,
    action: &EntityUid,
    principal: &EntityUid,
) -> Result<(), RequestError> {
    let types = snapshot
        .scope_types(action)
        .ok_or_else(|| RequestError::UnknownAction(action.to_string()))?;
    check_scope_type(&types.principals, "principal", action, principal)
}

/// Checks that `uid`, the request's `field`, is of a type `action` applies to.
fn check_scope_type(
    allowed: &HashSet<EntityTypeName>,
    field: &str,
    action: &EntityUid,
    uid: &EntityUid,
) -> Result<(), RequestError> {
    if allowed.is_empty() {
        return Err(RequestError::InvalidRequest(format!(
            "{action} applies to no {field} type (an action group?): ask about one of \
             the actions that apply to one"
        )));
    }
    if !allowed.contains(uid.type_name()) {
        let mut expected: Vec<String> = allowed.iter().map(ToString::to_string).collect();
        expected.sort();
        return Err(RequestError::InvalidRequest(format!(
            "{field} type `{}` is not valid for {action} (expected: {})",
            uid.type_name(),
            expected.join(", ")
        )));
    }
    Ok(())
}

/// Parses a principal or resource reference and checks its type is in the schema.
fn entity_ref(
    snapshot: &Snapshot,
    field: &'static str,
    value: &Value,
) -> Result<EntityUid, RequestError> {
    let uid = snapshot.type_names.parse(field, value)?;
    if !snapshot.knows_entity_type(uid.type_name()) {
        if uid.type_name().basename() == "Action" {
            return Err(RequestError::InvalidRequest(format!(
                "{field}: {uid} is an action, not an entity of a type the action applies to"
            )));
        }
        return Err(RequestError::UnknownEntityType {
            field,
            type_name: uid.type_name().to_string(),
        });
    }
    Ok(uid)
}

/// The first escape in `json` that Cedar's parser reads while ignoring keys beside
/// it: `{"__entity": {…}}` or `{"__extn": {…}}` with another key, or inside them a key
/// other than `type` and `id`, or `fn` and `arg`. A reader in front of the sidecar
/// could take those keys for the value (as the context refuses them too).
fn ambiguous_escape(json: &Value) -> Option<&'static str> {
    match json {
        Value::Array(items) => items.iter().find_map(ambiguous_escape),
        Value::Object(map) => {
            for (escape, keys) in [("__entity", ["type", "id"]), ("__extn", ["fn", "arg"])] {
                if let Some(inner) = map.get(escape) {
                    let exact = |object: &Map<String, Value>| {
                        object.len() == keys.len() && keys.iter().all(|k| object.contains_key(*k))
                    };
                    let inner_exact = inner.as_object().is_some_and(exact);
                    return (map.len() != 1 || !inner_exact).then_some(escape);
                }
            }
            map.values().find_map(ambiguous_escape)
        }
        _ => None,
    }
}

/// A key of a request's entity that Cedar's parser passes over in silence: a field
/// other than `uid`, `attrs`, `parents` and `tags` (`tag` for `tags` would drop the
/// tags), or a key beside `type` and `id` in a reference: its `uid`, a parent, or an
/// attribute or tag its type's `shapes` declare as an entity, in a set or record too
/// (the `__entity` form is [`ambiguous_escape`]'s).
fn unread_key(entity: &Map<String, Value>, shapes: &EntityShapes) -> Option<String> {
    let shape = entity
        .get("uid")
        .and_then(plain_ref)
        .and_then(|(type_name, _)| shapes.get(type_name));
    entity
        .iter()
        .find_map(|(field, value)| match field.as_str() {
            "tags" => unread_key_in_fields(value, "tag", |_| shape?.tags.as_ref()),
            "uid" => reference_key(value).map(|key| format!("`{key}` in `uid`")),
            "parents" => value
                .as_array()?
                .iter()
                .find_map(reference_key)
                .map(|key| format!("`{key}` in a parent")),
            "attrs" => unread_key_in_fields(value, "attribute", |name| {
                shape?.attributes.attributes.get(name).map(|(ty, _)| ty)
            }),
            _ => Some(format!("`{field}`")),
        })
}

/// A key beside `type` and `id` in a reference among `fields` (an entity's attributes
/// or tags), each of the type `type_of` gives for its name, said as "`key` in `kind`
/// `name`".
fn unread_key_in_fields<'t>(
    fields: &Value,
    kind: &str,
    type_of: impl Fn(&str) -> Option<&'t AttrType>,
) -> Option<String> {
    fields.as_object()?.iter().find_map(|(name, value)| {
        unread_key_in(value, type_of(name)?).map(|key| format!("`{key}` in {kind} `{name}`"))
    })
}

/// A key beside `type` and `id` in a reference within `value`, of type `ty`.
fn unread_key_in(value: &Value, ty: &AttrType) -> Option<String> {
    match ty {
        AttrType::Entity { .. } => reference_key(value),
        AttrType::Set(element) => value
            .as_array()?
            .iter()
            .find_map(|item| unread_key_in(item, element)),
        AttrType::Record(record) => value.as_object()?.iter().find_map(|(name, value)| {
            let (ty, _) = record.attributes.get(name)?;
            unread_key_in(value, ty)
        }),
        _ => None,
    }
}

/// A key other than `type` and `id` in the reference `{"type", "id", …}`.
fn reference_key(reference: &Value) -> Option<String> {
    let fields = reference.as_object()?;
    if fields.contains_key("__entity") {
        return None;
    }
    fields
        .keys()
        .find(|key| !matches!(key.as_str(), "type" | "id"))
        .cloned()
}

/// The first number in `json` that is no whole number Cedar's `Long` holds (a
/// fraction, an exponent, one past 64 bits), with its path (`.ceiling`,
/// `.codes[2]`): Cedar's parser refuses it saying only that the data "did not match
/// any variant".
fn number_outside_long(json: &Value) -> Option<(String, &serde_json::Number)> {
    match json {
        Value::Number(number) if !number.is_i64() => Some((String::new(), number)),
        Value::Array(items) => items.iter().enumerate().find_map(|(at, item)| {
            let (path, number) = number_outside_long(item)?;
            Some((format!("[{at}]{path}"), number))
        }),
        Value::Object(map) => map.iter().find_map(|(key, item)| {
            let (path, number) = number_outside_long(item)?;
            Some((format!(".{key}{path}"), number))
        }),
        _ => None,
    }
}

/// Parses the request's own entities against the schema; they may add to the
/// stored entities, never replace one.
fn request_entities(
    snapshot: &Snapshot,
    entities: Option<&[Value]>,
) -> Result<Vec<Entity>, RequestError> {
    let Some(entities) = entities.filter(|e| !e.is_empty()) else {
        return Ok(Vec::new());
    };
    // Cedar's parser also reads an entity written as an array of its fields.
    if let Some(position) = entities.iter().position(|e| !e.is_object()) {
        return Err(RequestError::InvalidEntities(format!(
            "entity {position} is not a JSON object"
        )));
    }
    let unread = entities.iter().enumerate().find_map(|(position, entity)| {
        Some((
            position,
            unread_key(entity.as_object()?, &snapshot.entity_shapes)?,
        ))
    });
    if let Some((position, key)) = unread {
        return Err(RequestError::InvalidEntities(format!(
            "entity {position}: {key} is not read: an entity has `uid`, `attrs`, `parents` \
             and `tags`, and a reference `type` and `id`"
        )));
    }
    let ambiguous = entities
        .iter()
        .enumerate()
        .find_map(|(position, entity)| Some((position, ambiguous_escape(entity)?)));
    if let Some((position, escape)) = ambiguous {
        let keys = if escape == "__entity" {
            "`type` and `id`"
        } else {
            "`fn` and one `arg` (a call of several, `args`, is not read)"
        };
        return Err(RequestError::InvalidEntities(format!(
            "entity {position}: {escape} with other keys beside it, or in it other than {keys}: \
             which would count?"
        )));
    }
    let not_long = entities.iter().enumerate().find_map(|(position, entity)| {
        ["attrs", "tags"].into_iter().find_map(|field| {
            let (path, number) = number_outside_long(entity.get(field)?)?;
            Some((position, format!("{field}{path}"), number))
        })
    });
    if let Some((position, path, number)) = not_long {
        return Err(RequestError::InvalidEntities(format!(
            "entity {position}: `{path}`: {number} is not a number Cedar reads: its numbers \
             are whole, from {} to {}",
            i64::MIN,
            i64::MAX
        )));
    }
    let parsed = Entities::from_json_value(Value::Array(entities.to_vec()), Some(&snapshot.schema))
        .map_err(|e| RequestError::InvalidEntities(describe(&e)))?;
    let mut added = Vec::new();
    for entity in parsed.iter() {
        let uid = entity.uid();
        if snapshot.slice_index.has_action(&uid) {
            continue;
        }
        if snapshot.entities.get(&uid).is_some() {
            return Err(RequestError::EntityConflict(uid.to_string()));
        }
        if snapshot.derived_types.contains(uid.type_name()) {
            return Err(RequestError::DerivedType(uid.to_string()));
        }
        if snapshot.derived_ancestor_types.contains(uid.type_name())
            && entity.tags().next().is_some()
        {
            return Err(RequestError::DerivedTags(uid.to_string()));
        }
        added.push(entity.clone());
    }
    Ok(added)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;
    use crate::context::RecordType;

    fn user() -> AttrType {
        AttrType::Entity {
            name: "User".into(),
            type_name: "User".parse().unwrap(),
            eids: None,
        }
    }

    #[test]
    fn a_key_beside_type_and_id_is_found_in_sets_and_records_of_references() {
        let members = AttrType::Set(Box::new(user()));
        let good = json!({"type": "User", "id": "a"});
        let extra = json!({"type": "User", "id": "b", "x": 1});
        assert_eq!(
            unread_key_in(&json!([good, extra]), &members),
            Some("x".into())
        );
        assert_eq!(unread_key_in(&json!([good]), &members), None);
        let record = AttrType::Record(RecordType {
            attributes: BTreeMap::from([("owner".to_owned(), (user(), true))]),
        });
        let owned = json!({"owner": {"id": "a", "y": 2, "type": "User"}});
        assert_eq!(unread_key_in(&owned, &record), Some("y".into()));
        // The escaped form is `ambiguous_escape`'s; a string is no reference.
        let escaped = json!({"__entity": {"type": "User", "id": "a"}, "z": 3});
        assert_eq!(unread_key_in(&escaped, &user()), None);
        assert_eq!(unread_key_in(&json!({"x": 1}), &AttrType::String), None);
    }

    /// A tag the schema declares as an entity: Cedar's parser reads `{"type", "id",
    /// "x"}` as the entity and drops `x` without a word.
    #[test]
    fn a_key_beside_type_and_id_in_an_entity_typed_tag_is_found() {
        let text = "entity User; entity Doc tags User;";
        let schema_json = crate::context::resolved_schema_json(text).unwrap();
        let shapes = EntityShapes::from_resolved_schema(&schema_json);
        let doc = |tag: Value| {
            json!({"uid": {"type": "Doc", "id": "d"}, "attrs": {}, "parents": [],
                   "tags": {"owner": tag}})
        };
        let extra = doc(json!({"type": "User", "id": "a", "x": 1}));
        let schema: cedar_policy::Schema = text.parse().unwrap();
        let parsed = Entities::from_json_value(
            json!([extra, {"uid": {"type": "User", "id": "a"}, "attrs": {}, "parents": []}]),
            Some(&schema),
        );
        assert!(parsed.is_ok(), "Cedar refuses it itself: {parsed:?}");
        assert_eq!(
            unread_key(extra.as_object().unwrap(), &shapes),
            Some("`x` in tag `owner`".into())
        );
        let good = doc(json!({"type": "User", "id": "a"}));
        assert_eq!(unread_key(good.as_object().unwrap(), &shapes), None);
    }
}
