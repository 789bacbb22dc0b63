//! The structural part of a diff: policies matched by `@id` (added, removed,
//! changed, reformatted, moved between files) and schema changes (signatures and
//! entity types added or removed, with the text diff); changes of the derivation
//! rules and of the stored entities (text diffs).
//!
//! "Changed" compares the policies' JSON form, which ignores layout and comments;
//! a policy whose JSON differs only in its annotations is "annotated", and text
//! that differs only in layout is "reformatted": neither changes a decision.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use cedar_policy::{PolicyId, Schema};
use serde::Serialize;
use similar::TextDiff;

use crate::load::{Model, PolicyInfo};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Added,
    Removed,
    Changed,
    /// Only annotations differ (`@source`, …): the same meaning.
    Annotated,
    Reformatted,
    Unchanged,
}

/// One policy, as matched by `@id` across the two sides.
#[derive(Debug, Serialize)]
pub struct PolicyChange {
    pub id: String,
    pub change: Change,
    pub effect: &'static str,
    pub source: Option<String>,
    pub old_file: Option<String>,
    pub new_file: Option<String>,
    /// Unified diff of the policy text (empty when the text is identical).
    pub text_diff: String,
}

impl PolicyChange {
    /// The policy lives in another file on the NEW side.
    pub fn moved(&self) -> bool {
        matches!((&self.old_file, &self.new_file), (Some(a), Some(b)) if a != b)
    }
}

#[derive(Debug, Serialize)]
pub struct SchemaChange {
    pub signatures_added: Vec<String>,
    pub signatures_removed: Vec<String>,
    pub entity_types_added: Vec<String>,
    pub entity_types_removed: Vec<String>,
    /// Only layout or comments differ: the schemas' JSON forms are equal.
    pub reformatted: bool,
    pub text_diff: String,
}

#[derive(Debug, Serialize)]
pub struct StructuralDiff {
    /// Every policy of either side, in `@id` order.
    pub policies: Vec<PolicyChange>,
    /// `None` when the schema text is identical.
    pub schema: Option<SchemaChange>,
    /// The derivation rules' (`derived.json`) unified diff; `None` when their text
    /// is identical. The solver compares policies over every entity store, so it
    /// does not see what these rules write into the stored entities.
    pub derived: Option<String>,
    /// The stored entities' (`examples/entities.json`) unified diff; `None` when
    /// their text is identical. The solver does not see them either.
    pub entities: Option<String>,
}

impl StructuralDiff {
    /// Policies other than unchanged ones in their old file.
    pub fn notable(&self) -> impl Iterator<Item = &PolicyChange> {
        self.policies
            .iter()
            .filter(|p| p.change != Change::Unchanged || p.moved())
    }

    /// Whether a policy or the schema changed beyond annotations, layout and
    /// comments, so that only the solver can tell whether a decision changes.
    pub fn meaning_may_differ(&self) -> bool {
        let policy_changed = self
            .policies
            .iter()
            .any(|p| matches!(p.change, Change::Added | Change::Removed | Change::Changed));
        policy_changed || self.schema.as_ref().is_some_and(|s| !s.reformatted)
    }
}

/// Compares two models, and the text of their stored entities (empty without).
pub fn compare(old: &Model, new: &Model, old_entities: &str, new_entities: &str) -> StructuralDiff {
    let old_policies = by_id(old);
    let new_policies = by_id(new);
    let ids: BTreeSet<&String> = old_policies.keys().chain(new_policies.keys()).collect();
    let policies = ids
        .into_iter()
        .map(|id| policy_change(id, old_policies.get(id), new_policies.get(id)))
        .collect();
    let schema = (old.schema_text != new.schema_text).then(|| schema_change(old, new));
    let derived = (old.derived_text != new.derived_text)
        .then(|| unified(&old.derived_text, &new.derived_text, "OLD", "NEW"));
    let entities =
        (old_entities != new_entities).then(|| unified(old_entities, new_entities, "OLD", "NEW"));
    StructuralDiff {
        policies,
        schema,
        derived,
        entities,
    }
}

/// A policy's info, its text and its layout-free JSON form.
struct Entry<'a> {
    info: &'a PolicyInfo,
    text: String,
    json: Option<serde_json::Value>,
}

impl Entry<'_> {
    /// The JSON form without annotations: what decides.
    fn meaning(&self) -> Option<serde_json::Value> {
        let mut json = self.json.clone()?;
        json.as_object_mut()?.remove("annotations");
        Some(json)
    }
}

fn by_id(model: &Model) -> BTreeMap<String, Entry<'_>> {
    model
        .policy_info
        .iter()
        .filter_map(|info| {
            let policy = model.policies.policy(&PolicyId::new(&info.id))?;
            let entry = Entry {
                info,
                text: policy.to_string(),
                json: policy.to_json().ok(),
            };
            Some((info.id.clone(), entry))
        })
        .collect()
}

fn policy_change(id: &str, old: Option<&Entry>, new: Option<&Entry>) -> PolicyChange {
    let change = match (old, new) {
        (None, _) => Change::Added,
        (_, None) => Change::Removed,
        (Some(o), Some(n)) if o.json.is_none() || o.meaning() != n.meaning() => Change::Changed,
        (Some(o), Some(n)) if o.json != n.json => Change::Annotated,
        (Some(o), Some(n)) if o.text != n.text => Change::Reformatted,
        _ => Change::Unchanged,
    };
    let latest = new.or(old).expect("an id comes from one side at least");
    let text = |e: Option<&Entry>| e.map(|e| e.text.clone()).unwrap_or_default();
    let file = |e: Option<&Entry>| e.map(|e| short_path(&e.info.file));
    PolicyChange {
        id: id.to_owned(),
        change,
        effect: latest.info.effect,
        source: latest.info.source.clone(),
        old_file: file(old),
        new_file: file(new),
        text_diff: unified(&text(old), &text(new), "OLD", "NEW"),
    }
}

/// `policies/x.cedar` rather than the temporary directory it was read from.
fn short_path(file: &str) -> String {
    let path = Path::new(file);
    let mut parts: Vec<_> = path.iter().rev().take_while(|p| *p != "policies").collect();
    parts.push("policies".as_ref());
    parts.reverse();
    parts
        .iter()
        .collect::<std::path::PathBuf>()
        .display()
        .to_string()
}

fn schema_change(old: &Model, new: &Model) -> SchemaChange {
    let (old_sigs, new_sigs) = (signatures(&old.schema), signatures(&new.schema));
    let (old_types, new_types) = (entity_types(&old.schema), entity_types(&new.schema));
    SchemaChange {
        signatures_added: new_sigs.difference(&old_sigs).cloned().collect(),
        signatures_removed: old_sigs.difference(&new_sigs).cloned().collect(),
        entity_types_added: new_types.difference(&old_types).cloned().collect(),
        entity_types_removed: old_types.difference(&new_types).cloned().collect(),
        reformatted: old.schema_json == new.schema_json,
        text_diff: unified(&old.schema_text, &new.schema_text, "OLD", "NEW"),
    }
}

/// Every (principal type, action, resource type) the schema allows, as text.
pub fn signatures(schema: &Schema) -> BTreeSet<String> {
    schema
        .request_envs()
        .map(|env| signature_name(&env))
        .collect()
}

pub fn signature_name(env: &cedar_policy::RequestEnv) -> String {
    format!(
        "({}, {}, {})",
        env.principal(),
        env.action(),
        env.resource()
    )
}

fn entity_types(schema: &Schema) -> BTreeSet<String> {
    schema.entity_types().map(ToString::to_string).collect()
}

/// A unified diff with three lines of context; empty when the texts are equal.
pub fn unified(old: &str, new: &str, old_name: &str, new_name: &str) -> String {
    if old == new {
        return String::new();
    }
    let old = with_newline(old);
    let new = with_newline(new);
    TextDiff::from_lines(&old, &new)
        .unified_diff()
        .context_radius(3)
        .header(old_name, new_name)
        .to_string()
}

fn with_newline(text: &str) -> String {
    if text.is_empty() || text.ends_with('\n') {
        text.to_owned()
    } else {
        format!("{text}\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_path_keeps_the_part_below_policies() {
        assert_eq!(
            short_path("/tmp/x/policies/sub/a.cedar"),
            "policies/sub/a.cedar"
        );
    }

    #[test]
    fn unified_diff_is_empty_for_equal_texts_and_marks_changed_lines() {
        assert_eq!(unified("a\nb\n", "a\nb\n", "OLD", "NEW"), "");
        let diff = unified("a\nb\n", "a\nc\n", "OLD", "NEW");
        assert!(diff.contains("-b\n") && diff.contains("+c\n"), "{diff}");
    }
}
