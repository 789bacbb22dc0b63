//! The entity slice: the stored entities one decision can possibly read.
//!
//! Cedar evaluates a request against one `Entities` value, and building or cloning
//! one costs in proportion to its size. A policy can only reach entity data through
//! `principal`, `action`, `resource`, `context`, the entities the request brings, the
//! entity literals written in the policies, and from there by following attributes
//! and tags. So a decision whose request brings entities of its own gets a small
//! `Entities` made of exactly that closure (a request without any is evaluated on the
//! store as it is), and per-request work depends on what the request touches, not
//! on the store.
//!
//! Ancestors need no data: `e in X` reads only `e`'s ancestor set, which the stored
//! entity carries already transitively closed. The exception is an entity the
//! request brings: its parents are in the slice too, since a stored parent carries
//! the rest of its ancestry.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use cedar_policy::entities_errors::EntitiesError;
use cedar_policy::{Entities, Entity, EntityUid, EvalResult, Schema};
use cedar_policy_core::ast::{self, Literal, PartialValue, ValueKind};
use cedar_policy_core::entities::Dereference;

/// Per-snapshot index for slicing: built once, read by every decision. A clone
/// shares the references (a reload whose entities are unchanged takes the serving
/// snapshot's).
#[derive(Clone)]
pub struct SliceIndex {
    /// Entity references found in each stored entity's attributes and tags.
    references: Arc<HashMap<EntityUid, Box<[EntityUid]>>>,
    /// Action entities from the schema (with their action groups as ancestors).
    actions: HashMap<EntityUid, Entity>,
}

impl SliceIndex {
    pub fn build(entities: &Entities, schema: &Schema) -> Result<Self, Box<EntitiesError>> {
        let references = Arc::new(
            entities
                .iter()
                .filter_map(|entity| {
                    let refs = references_of(entity);
                    (!refs.is_empty()).then(|| (entity.uid(), refs.into_boxed_slice()))
                })
                .collect(),
        );
        let actions = schema
            .action_entities()
            .map_err(Box::new)?
            .iter()
            .map(|action| (action.uid(), action.clone()))
            .collect();
        Ok(Self {
            references,
            actions,
        })
    }

    /// Each stored entity with an entity its attributes and tags name, for those
    /// that name the store lacks (actions aside).
    pub fn unstored_references<'a>(
        &'a self,
        stored: &'a Entities,
    ) -> impl Iterator<Item = (&'a EntityUid, &'a EntityUid)> + 'a {
        self.references
            .iter()
            .flat_map(|(holder, refs)| refs.iter().map(move |named| (holder, named)))
            .filter(|(_, named)| stored.get(named).is_none() && !self.has_action(named))
    }

    /// Whether the schema declares this action.
    pub fn has_action(&self, action: &EntityUid) -> bool {
        self.actions.contains_key(action)
    }

    /// Builds the `Entities` for one decision: the request's own entities, the action,
    /// and every stored entity reachable from `roots` (the request's principal,
    /// resource and context entities, and the literals of the policies that can
    /// apply) and from the request's entities.
    pub fn slice(
        &self,
        stored: &Entities,
        roots: impl IntoIterator<Item = EntityUid>,
        action: &EntityUid,
        request_entities: Vec<Entity>,
    ) -> Result<Entities, Box<EntitiesError>> {
        let mut pending: Vec<EntityUid> = roots.into_iter().collect();
        let mut seen: HashSet<EntityUid> = request_entities.iter().map(Entity::uid).collect();
        seen.insert(action.clone());
        for entity in &request_entities {
            pending.extend(references_of(entity));
            // A stored parent carries the rest of the entity's ancestry: without it
            // in the slice, Cedar's transitive closure would stop at the parent.
            let (_, _, parents) = entity.clone().into_inner();
            pending.extend(parents);
        }
        let mut slice = request_entities;
        slice.extend(self.actions.get(action).cloned());
        while let Some(uid) = pending.pop() {
            if !seen.insert(uid.clone()) {
                continue;
            }
            if let Some(entity) = stored.get(&uid) {
                slice.push(entity.clone());
                if let Some(refs) = self.references.get(&uid) {
                    pending.extend(refs.iter().cloned());
                }
            }
        }
        Entities::from_entities(slice, None).map_err(Box::new)
    }
}

/// Entity references anywhere in an entity's attributes and tags.
pub fn references_of(entity: &Entity) -> Vec<EntityUid> {
    let mut found = Vec::new();
    for (_, value) in entity.attrs().chain(entity.tags()) {
        if let Ok(value) = value {
            collect_uids(&value, &mut found);
        }
    }
    found
}

/// A stored entity's attribute, if the entity and the attribute exist and the value
/// is whole (not partial).
pub fn stored_attr(entities: &Entities, uid: &EntityUid, name: &str) -> Option<EvalResult> {
    entities.get(uid)?.attr(name)?.ok()
}

/// A stored entity, read in place from Cedar's core entities.
pub fn stored_in_place<'e>(
    entities: &'e Entities,
    uid: &ast::EntityUID,
) -> Option<&'e ast::Entity> {
    let core: &cedar_policy_core::entities::Entities = entities.as_ref();
    match core.entity(uid) {
        Dereference::Data(entity) => Some(entity),
        Dereference::NoSuchEntity | Dereference::Residual(_) => None,
    }
}

/// A stored entity's attribute that is itself an entity, borrowed from the store:
/// nothing is cloned or converted (the decision log reads two or three of these
/// for every record).
pub fn stored_entity_ref<'e>(
    entities: &'e Entities,
    uid: &ast::EntityUID,
    name: &str,
) -> Option<&'e ast::EntityUID> {
    entity_ref_attribute(stored_in_place(entities, uid)?, name)
}

/// An entity's attribute that is itself an entity, borrowed.
pub fn entity_ref_attribute<'e>(entity: &'e ast::Entity, name: &str) -> Option<&'e ast::EntityUID> {
    match entity.get(name)? {
        PartialValue::Value(ast::Value {
            value: ValueKind::Lit(Literal::EntityUID(target)),
            ..
        }) => Some(target),
        PartialValue::Value(_) | PartialValue::Residual(_) => None,
    }
}

/// Entity references anywhere inside a value.
pub fn collect_uids(value: &EvalResult, found: &mut Vec<EntityUid>) {
    match value {
        EvalResult::EntityUid(uid) => found.push(uid.clone()),
        EvalResult::Set(set) => set.iter().for_each(|v| collect_uids(v, found)),
        EvalResult::Record(record) => record.iter().for_each(|(_, v)| collect_uids(v, found)),
        EvalResult::Bool(_)
        | EvalResult::Long(_)
        | EvalResult::String(_)
        | EvalResult::ExtensionValue(_) => {}
    }
}

/// Entity literals (`Type::"id"`) in a policy, found in its JSON form.
pub fn policy_literals(policy_json: &serde_json::Value) -> HashSet<EntityUid> {
    let mut found = HashSet::new();
    collect_json_literals(policy_json, &mut found);
    found
}

fn collect_json_literals(json: &serde_json::Value, found: &mut HashSet<EntityUid>) {
    match json {
        serde_json::Value::Object(map) => {
            let literal = map.get("__entity").or_else(|| map.get("entity"));
            if let Some(uid) = literal.and_then(|v| EntityUid::from_json(v.clone()).ok()) {
                found.insert(uid);
            }
            map.values().for_each(|v| collect_json_literals(v, found));
        }
        serde_json::Value::Array(items) => {
            items.iter().for_each(|v| collect_json_literals(v, found))
        }
        _ => {}
    }
}
