//! The snapshot: one immutable, fully validated model version (schema, policies,
//! stored entities with their derived data) plus the indexes the decision path
//! reads. Built off the request path; shared behind an `Arc`; never mutated.

use std::collections::HashSet;
use std::path::Path;

use cedar_policy::{Entities, EntityTypeName, EntityUid, PolicySet, Schema};
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::load::{self, LoadError, Model, PolicyInfo, Problem, Sources};
use crate::slice::SliceIndex;

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
    pub slice_index: SliceIndex,
    pub time_attribute: String,
    /// Actions whose context declares `time_attribute` as a datetime.
    timed_actions: HashSet<EntityUid>,
    entity_types: HashSet<EntityTypeName>,
}

impl Snapshot {
    /// Loads and validates a model from disk and builds its indexes.
    pub fn load(sources: &Sources, time_attribute: &str) -> Result<Self, LoadError> {
        Self::from_model(load::load(sources)?, &sources.schema, time_attribute)
    }

    /// Builds the indexes of a loaded model; `schema_path` names the schema in errors.
    pub fn from_model(
        model: Model,
        schema_path: &Path,
        time_attribute: &str,
    ) -> Result<Self, LoadError> {
        let index_problem = |message: String| {
            LoadError(vec![Problem {
                path: schema_path.to_owned(),
                message: format!("{}: {message}", schema_path.display()),
            }])
        };
        let slice_index = SliceIndex::build(&model.entities, &model.policies, &model.schema)
            .map_err(|e| index_problem(format!("action entities: {e}")))?;
        let timed_actions = timed_actions(&model.schema_text, time_attribute)
            .map_err(|e| index_problem(e.to_string()))?;
        let entity_types = model.schema.entity_types().cloned().collect();
        Ok(Self {
            version: model.version,
            loaded_at: Utc::now(),
            schema: model.schema,
            policies: model.policies,
            policy_info: model.policy_info,
            entities: model.entities,
            slice_index,
            time_attribute: time_attribute.to_owned(),
            timed_actions,
            entity_types,
        })
    }

    pub fn knows_entity_type(&self, type_name: &EntityTypeName) -> bool {
        self.entity_types.contains(type_name)
    }

    /// Whether the sidecar fills the time attribute for this action.
    pub fn fills_time(&self, action: &EntityUid) -> bool {
        self.timed_actions.contains(action)
    }
}

/// The actions whose context has a `datetime` attribute named `attribute`, read from
/// the schema's JSON form (Cedar's API exposes no context types).
fn timed_actions(schema_text: &str, attribute: &str) -> Result<HashSet<EntityUid>, String> {
    let json = if schema_text.trim_start().starts_with('{') {
        serde_json::from_str(schema_text).map_err(|e| e.to_string())?
    } else {
        cedar_policy::schema_str_to_json_with_resolved_types(schema_text)
            .map_err(|e| e.to_string())?
            .0
    };
    let mut timed = HashSet::new();
    let Some(namespaces) = json.as_object() else {
        return Ok(timed);
    };
    for (namespace, body) in namespaces {
        let common = body.get("commonTypes");
        let Some(actions) = body.get("actions").and_then(Value::as_object) else {
            continue;
        };
        for (name, action) in actions {
            let context = action.pointer("/appliesTo/context");
            let declared = context
                .and_then(|c| resolve_record(c, common))
                .and_then(|record| record.pointer(&format!("/attributes/{attribute}")))
                .is_some_and(is_datetime);
            if declared {
                let prefix = if namespace.is_empty() {
                    String::new()
                } else {
                    format!("{namespace}::")
                };
                let uid = format!("{prefix}Action::{}", Value::String(name.clone()));
                timed.insert(uid.parse().map_err(|e| format!("action {uid}: {e}"))?);
            }
        }
    }
    Ok(timed)
}

/// A record type, following one common-type reference if needed.
fn resolve_record<'a>(ty: &'a Value, common: Option<&'a Value>) -> Option<&'a Value> {
    match ty.get("type")?.as_str()? {
        "Record" => Some(ty),
        "EntityOrCommon" | "CommonType" => common?.get(ty.get("name")?.as_str()?),
        name => common?.get(name),
    }
}

fn is_datetime(ty: &Value) -> bool {
    let name = ty.get("name").and_then(Value::as_str);
    let kind = ty.get("type").and_then(Value::as_str);
    matches!(name, Some("datetime" | "__cedar::datetime"))
        || matches!(kind, Some("datetime" | "__cedar::datetime"))
}
