//! The snapshot: one immutable, fully validated model version (schema, policies,
//! stored entities with their derived data) plus the indexes the decision path
//! reads. Built off the request path; shared behind an `Arc`; never mutated. A
//! reload whose entity files are unchanged shares the serving snapshot's stored
//! entities and their indexes instead of building them again.

use std::path::Path;

use cedar_policy::{Entities, EntityTypeName, EntityUid, PolicySet, Schema};
use chrono::{DateTime, Utc};

use crate::api::TypeNames;
use crate::context::{ContextTypes, EntityShapes};
use crate::fast_hash::{HashMap, HashSet};
use crate::load::{self, EntitiesKey, LoadError, Model, PolicyInfo, Problem, Sources};
use crate::policy_index::PolicyIndex;
use crate::slice::{stored_in_place, SliceIndex};
use crate::stored::StoredIndex;

/// Name of the context attribute the sidecar fills with the current time when an
/// action's context declares it (as a `datetime`) and a request omits it.
pub const DEFAULT_TIME_ATTRIBUTE: &str = "now";

pub struct Snapshot {
    /// Digest of the input files.
    pub version: String,
    pub loaded_at: DateTime<Utc>,
    pub schema: Schema,
    pub policies: PolicySet,
    pub policy_info: Vec<PolicyInfo>,
    pub entities: Entities,
    /// The same entities by uid, for the decision path.
    pub stored: StoredIndex,
    pub slice_index: SliceIndex,
    pub policy_index: PolicyIndex,
    pub time_attribute: String,
    /// Each action's context type, to build request contexts without Cedar's JSON parser.
    pub context_types: ContextTypes,
    /// Entity types' attribute types, for the references in request entities.
    pub entity_shapes: EntityShapes,
    entity_types: HashSet<EntityTypeName>,
    /// The schema's entity and action types, to read references without a parser.
    pub type_names: TypeNames,
    /// The principal and resource types each action applies to.
    scope_types: HashMap<EntityUid, ScopeTypes>,
    /// Entities that stored entities name, as ancestors or in attributes and tags,
    /// but the store lacks, each with the stored entities naming it: a request that
    /// brought one would define what stored entities are members of, or what their
    /// attributes lead to (a user's partner); `validate` warns of them.
    pub unstored_references: HashMap<EntityUid, Vec<EntityUid>>,
    /// The entity types whose tags count the entities that reference them: a
    /// request may not bring one ([`crate::derive::DerivedTypes`]).
    pub derived_types: HashSet<EntityTypeName>,
    /// The entity types whose tags count the entities below them: a request may
    /// bring one without tags.
    pub derived_ancestor_types: HashSet<EntityTypeName>,
    /// The key of the files the stored entities were read from, for a snapshot a
    /// reload built ([`Snapshot::reload`]): the next reload takes its entities
    /// while the files keep that key.
    entities_key: Option<EntitiesKey>,
}

#[derive(Debug, Default)]
pub struct ScopeTypes {
    pub principals: HashSet<EntityTypeName>,
    pub resources: HashSet<EntityTypeName>,
}

impl Snapshot {
    /// Loads and validates a model from disk and builds its indexes.
    pub fn load(sources: &Sources, time_attribute: &str) -> Result<Self, LoadError> {
        Self::from_model(load::load(sources)?, &sources.schema, time_attribute)
    }

    /// [`Self::load`] for a reload after `serving`: when the files the stored
    /// entities are read from are those `serving`'s were read from (a policy
    /// edited), its entities are taken as they are, each shared, with their
    /// indexes, instead of being parsed again ([`load::load_reusing`]).
    pub fn reload(
        sources: &Sources,
        time_attribute: &str,
        serving: Option<&Snapshot>,
    ) -> Result<Self, LoadError> {
        let known = serving.and_then(|s| Some((s.entities_key.as_ref()?, &s.entities)));
        let (model, read) = load::load_reusing(sources, known)?;
        // The serving snapshot's indexes go with its entities, and only with them.
        let indexes = serving.filter(|_| read.reused).map(StoreIndexes::of);
        let mut snapshot = Self::build(model, indexes, &sources.schema, time_attribute)?;
        snapshot.entities_key = read.key;
        Ok(snapshot)
    }

    /// Builds the indexes of a loaded model; `schema_path` names the schema in errors.
    pub fn from_model(
        model: Model,
        schema_path: &Path,
        time_attribute: &str,
    ) -> Result<Self, LoadError> {
        Self::build(model, None, schema_path, time_attribute)
    }

    /// [`Self::from_model`]; with `indexes`, the model's entities are a serving
    /// snapshot's, already with the schema's actions, and `indexes` theirs.
    fn build(
        model: Model,
        indexes: Option<StoreIndexes>,
        schema_path: &Path,
        time_attribute: &str,
    ) -> Result<Self, LoadError> {
        let index_problem = |message: String| {
            LoadError(vec![Problem {
                path: schema_path.to_owned(),
                message: format!("{}: {message}", schema_path.display()),
            }])
        };
        let context_types = ContextTypes::from_resolved_schema(&model.schema_json)
            .map_err(|e| index_problem(format!("context types: {e}")))?;
        let derived_types = model.derived.referenced.iter().cloned().collect();
        let derived_ancestor_types = model.derived.ancestors.iter().cloned().collect();
        let entity_types: HashSet<EntityTypeName> = model.schema.entity_types().cloned().collect();
        let (entities, indexes) = match indexes {
            Some(indexes) => (model.entities, indexes),
            None => StoreIndexes::build(model.entities, &model.schema).map_err(index_problem)?,
        };
        let StoreIndexes {
            stored,
            slice_index,
            unstored_references,
        } = indexes;
        let actions: Vec<EntityUid> = model.schema.actions().cloned().collect();
        let type_names = TypeNames::new(
            entity_types
                .iter()
                .chain(actions.iter().map(EntityUid::type_name))
                .cloned(),
        );
        let scope_types = scope_types(&model.schema, &actions);
        let policy_index = PolicyIndex::build(&model.policies, &actions, &entities)
            .map_err(|e| index_problem(e.to_string()))?;
        Ok(Self {
            version: model.version,
            loaded_at: Utc::now(),
            schema: model.schema,
            policies: model.policies,
            policy_info: model.policy_info,
            entities,
            stored,
            slice_index,
            policy_index,
            time_attribute: time_attribute.to_owned(),
            context_types,
            entity_shapes: model.entity_shapes,
            entity_types,
            type_names,
            scope_types,
            unstored_references,
            derived_types,
            derived_ancestor_types,
            entities_key: None,
        })
    }

    pub fn knows_entity_type(&self, type_name: &EntityTypeName) -> bool {
        self.entity_types.contains(type_name)
    }

    /// The principal and resource types `action` applies to.
    pub fn scope_types(&self, action: &EntityUid) -> Option<&ScopeTypes> {
        self.scope_types.get(action)
    }

    /// Whether the sidecar fills the time attribute for this action: its context
    /// requires it, as a datetime. An optional one left out stays out, as Cedar would
    /// see it (a policy may test `context has now`).
    pub fn fills_time(&self, action: &EntityUid) -> bool {
        self.context_types
            .get(action)
            .is_some_and(|context| context.requires(&self.time_attribute, "datetime"))
    }
}

/// What a snapshot derives from its stored entities and its schema alone, which a
/// reload whose entity files are unchanged takes from the serving snapshot.
struct StoreIndexes {
    stored: StoredIndex,
    slice_index: SliceIndex,
    unstored_references: HashMap<EntityUid, Vec<EntityUid>>,
}

impl StoreIndexes {
    /// The entities with the schema's actions added, and their indexes.
    fn build(entities: Entities, schema: &Schema) -> Result<(Entities, Self), String> {
        let entities =
            with_action_entities(entities, schema).map_err(|e| format!("action entities: {e}"))?;
        let (entities, stored) =
            StoredIndex::share(entities).map_err(|e| format!("stored entities: {e}"))?;
        let slice_index =
            SliceIndex::build(&entities, schema).map_err(|e| format!("action entities: {e}"))?;
        let mut unstored_references: HashMap<EntityUid, Vec<EntityUid>> = HashMap::default();
        let in_attributes = slice_index
            .unstored_references(&entities)
            .map(|(holder, named)| (holder.clone(), named.clone()));
        for (holder, named) in missing_ancestors(&entities).chain(in_attributes) {
            unstored_references.entry(named).or_default().push(holder);
        }
        let indexes = Self {
            stored,
            slice_index,
            unstored_references,
        };
        Ok((entities, indexes))
    }

    /// The serving snapshot's, each entity and reference shared with it.
    fn of(serving: &Snapshot) -> Self {
        Self {
            stored: serving.stored.clone(),
            slice_index: serving.slice_index.clone(),
            unstored_references: serving.unstored_references.clone(),
        }
    }
}

/// Each stored entity with a parent it names that is not stored (public for the
/// scaling bench, which times it on a million users). Direct parents suffice: a
/// stored parent's own parents are looked at when that parent's turn comes.
pub fn missing_ancestors(entities: &Entities) -> impl Iterator<Item = (EntityUid, EntityUid)> + '_ {
    let core: &cedar_policy_core::entities::Entities = entities.as_ref();
    core.iter()
        .flat_map(|entity| entity.parents().map(move |parent| (entity, parent)))
        .filter(|(_, parent)| stored_in_place(entities, parent).is_none())
        .map(|(entity, parent)| {
            (
                EntityUid::from(entity.uid().clone()),
                EntityUid::from(parent.clone()),
            )
        })
}

fn scope_types(schema: &Schema, actions: &[EntityUid]) -> HashMap<EntityUid, ScopeTypes> {
    actions
        .iter()
        .map(|action| {
            let types = ScopeTypes {
                principals: schema
                    .principals_for_action(action)
                    .into_iter()
                    .flatten()
                    .cloned()
                    .collect(),
                resources: schema
                    .resources_for_action(action)
                    .into_iter()
                    .flatten()
                    .cloned()
                    .collect(),
            };
            (action.clone(), types)
        })
        .collect()
}

/// The stored entities plus the schema's action entities (with their groups as
/// ancestors), so that a request needing no entities of its own is evaluated on the
/// store as it is.
fn with_action_entities(
    entities: Entities,
    schema: &Schema,
) -> Result<Entities, Box<cedar_policy::entities_errors::EntitiesError>> {
    let actions: Vec<_> = schema
        .action_entities()
        .map_err(Box::new)?
        .iter()
        .filter(|action| entities.get(&action.uid()).is_none())
        .cloned()
        .collect();
    entities.add_entities(actions, None).map_err(Box::new)
}
