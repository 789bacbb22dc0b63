//! Derived data: facts the sidecar computes from the stored entities each time it
//! builds a snapshot, so that policies can read them and nobody types them by hand.
//!
//! The rules live in a JSON file beside the schema (`schema/derived.json`) and are
//! applied to the entities JSON before Cedar parses and validates it, so derived
//! values are checked against the schema like any other. One kind of rule exists:
//! `counts` — count the entities of a type whose attributes match, grouped by an
//! entity they reference and by a string attribute, and write the counts as tags of
//! the referenced entity. The Cdap model uses it for habilitation ceilings (H4).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::Deserialize;
use serde_json::{Map, Value};

/// The contents of a derivation file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DerivationRules {
    #[serde(default)]
    pub counts: Vec<CountRule>,
}

/// Count `source` entities matching `where`, per entity referenced by `target` and
/// per value of `tag_by`; write each count as a tag of the referenced entity.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CountRule {
    pub id: String,
    /// Free text for readers: what the rule is for and which clause needs it.
    #[serde(default)]
    pub about: Option<String>,
    /// Entity type whose entities are counted.
    pub source: String,
    /// Attribute values an entity must have (JSON equality) to be counted.
    #[serde(default, rename = "where")]
    pub filter: Map<String, Value>,
    /// Entity-reference attribute of the source naming the entity that receives the tags.
    pub target: String,
    /// String attribute of the source whose value is the tag key.
    pub tag_by: String,
    /// Optional tag key that receives the count over all `tag_by` values.
    #[serde(default)]
    pub total_tag: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DeriveError {
    #[error(
        "rule `{rule}`: the schema declares no entity attribute `{attr}` of type `{source_type}`"
    )]
    TargetNotInSchema {
        rule: String,
        source_type: String,
        attr: String,
    },
    #[error("the entities file must be a JSON array of entities")]
    NotAnArray,
    #[error("rule `{rule}`: {entity} has no entity reference in attribute `{attr}`")]
    MissingTarget {
        rule: String,
        entity: String,
        attr: String,
    },
    #[error("rule `{rule}`: {entity} has no string attribute `{attr}`")]
    MissingKey {
        rule: String,
        entity: String,
        attr: String,
    },
    #[error("rule `{rule}`: {target} is referenced but is not in the entities file")]
    UnknownTarget { rule: String, target: String },
    #[error(
        "rule `{rule}`: {entity} has tags written by hand, but the tags of `{entity_type}` entities are derived"
    )]
    AuthoredTags {
        rule: String,
        entity: String,
        entity_type: String,
    },
}

type Uid = (String, String);

/// Applies every rule to the entities JSON, in place.
pub fn apply(rules: &DerivationRules, entities: &mut Value) -> Result<(), DeriveError> {
    let list = entities.as_array_mut().ok_or(DeriveError::NotAnArray)?;
    for rule in &rules.counts {
        let counts = count(rule, list)?;
        write_tags(rule, list, counts)?;
    }
    Ok(())
}

fn count(
    rule: &CountRule,
    list: &[Value],
) -> Result<HashMap<Uid, BTreeMap<String, i64>>, DeriveError> {
    let mut counts: HashMap<Uid, BTreeMap<String, i64>> = HashMap::new();
    // Cedar keeps one entity of identical duplicates (and refuses differing ones):
    // each uid counts once.
    let mut counted: HashSet<Uid> = HashSet::new();
    for entity in list {
        let Some(uid) = entity.get("uid").and_then(entity_ref) else {
            continue;
        };
        if uid.0 != rule.source || !counted.insert(uid.clone()) {
            continue;
        }
        let attrs = entity.get("attrs");
        let attr = |name: &str| attrs.and_then(|a| a.get(name));
        if !rule.filter.iter().all(|(k, v)| attr(k) == Some(v)) {
            continue;
        }
        let target =
            attr(&rule.target)
                .and_then(entity_ref)
                .ok_or_else(|| DeriveError::MissingTarget {
                    rule: rule.id.clone(),
                    entity: display(&uid),
                    attr: rule.target.clone(),
                })?;
        let key =
            attr(&rule.tag_by)
                .and_then(Value::as_str)
                .ok_or_else(|| DeriveError::MissingKey {
                    rule: rule.id.clone(),
                    entity: display(&uid),
                    attr: rule.tag_by.clone(),
                })?;
        let tags = counts.entry(target).or_default();
        *tags.entry(key.to_owned()).or_default() += 1;
        if let Some(total) = &rule.total_tag {
            *tags.entry(total.clone()).or_default() += 1;
        }
    }
    Ok(counts)
}

fn write_tags(
    rule: &CountRule,
    list: &mut [Value],
    counts: HashMap<Uid, BTreeMap<String, i64>>,
) -> Result<(), DeriveError> {
    let target_types: BTreeSet<String> = counts.keys().map(|(t, _)| t.clone()).collect();
    let mut written: HashSet<Uid> = HashSet::new();
    for entity in list.iter_mut() {
        let Some(uid) = entity.get("uid").and_then(entity_ref) else {
            continue;
        };
        if !target_types.contains(&uid.0) {
            continue;
        }
        let has_tags = entity
            .get("tags")
            .and_then(Value::as_object)
            .is_some_and(|t| !t.is_empty());
        if has_tags {
            return Err(DeriveError::AuthoredTags {
                rule: rule.id.clone(),
                entity: display(&uid),
                entity_type: uid.0,
            });
        }
        // Every copy of a listed-twice target gets the same tags.
        if let (Some(tags), Some(object)) = (counts.get(&uid), entity.as_object_mut()) {
            let tags = tags
                .iter()
                .map(|(k, v)| (k.clone(), Value::from(*v)))
                .collect();
            object.insert("tags".into(), Value::Object(tags));
            written.insert(uid);
        }
    }
    match counts.into_keys().find(|target| !written.contains(target)) {
        Some(target) => Err(DeriveError::UnknownTarget {
            rule: rule.id.clone(),
            target: display(&target),
        }),
        None => Ok(()),
    }
}

/// The entity types whose tags the rules derive: the type of each rule's `target`
/// attribute on its `source` type, read from the schema as
/// [`crate::context::resolved_schema_json`] gives it. A request may not bring an
/// entity of one, as its derived tags would be whatever the request wrote (or none:
/// a count of 0). A rule whose source type the schema does not declare, or whose
/// `target` is not an entity attribute of it, is an error: it could never count.
pub fn target_types(
    rules: &DerivationRules,
    schema: &Value,
) -> Result<HashSet<cedar_policy::EntityTypeName>, DeriveError> {
    rules
        .counts
        .iter()
        .map(|rule| {
            let (namespace, name) = rule.source.rsplit_once("::").unwrap_or(("", &rule.source));
            let attribute = schema
                .get(namespace)
                .and_then(|ns| ns.pointer(&format!("/entityTypes/{name}/shape/attributes")))
                .and_then(|attributes| attributes.get(&rule.target));
            attribute
                .filter(|ty| ty.get("type").and_then(Value::as_str) == Some("Entity"))
                .and_then(|ty| ty.get("name")?.as_str()?.parse().ok())
                .ok_or_else(|| DeriveError::TargetNotInSchema {
                    rule: rule.id.clone(),
                    source_type: rule.source.clone(),
                    attr: rule.target.clone(),
                })
        })
        .collect()
}

/// An entity reference in Cedar's entity JSON: `{"type","id"}` or `{"__entity":{…}}`.
fn entity_ref(value: &Value) -> Option<Uid> {
    let value = value.get("__entity").unwrap_or(value);
    let type_name = value.get("type")?.as_str()?;
    let id = value.get("id")?.as_str()?;
    Some((type_name.to_owned(), id.to_owned()))
}

fn display((type_name, id): &Uid) -> String {
    format!("{type_name}::{id:?}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::resolved_schema_json;
    use serde_json::json;

    fn rules() -> DerivationRules {
        serde_json::from_value(json!({"counts": [{
            "id": "active", "source": "Hab", "where": {"suspended": false},
            "target": "box", "tag_by": "profile", "total_tag": "*"
        }]}))
        .unwrap()
    }

    fn hab(id: &str, profile: &str, suspended: bool) -> Value {
        json!({"uid": {"type": "Hab", "id": id}, "parents": [],
               "attrs": {"box": {"__entity": {"type": "Box", "id": "b"}},
                         "profile": profile, "suspended": suspended}})
    }

    #[test]
    fn counts_matching_sources_per_key_and_in_total() {
        let mut entities = json!([
            {"uid": {"type": "Box", "id": "b"}, "attrs": {}, "parents": []},
            {"uid": {"type": "Box", "id": "empty"}, "attrs": {}, "parents": []},
            hab("1", "T1", false), hab("2", "T1", false), hab("3", "T2", false), hab("4", "T2", true)
        ]);
        apply(&rules(), &mut entities).unwrap();
        assert_eq!(entities[0]["tags"], json!({"T1": 2, "T2": 1, "*": 3}));
        assert_eq!(entities[1].get("tags"), None);
    }

    #[test]
    fn an_entity_listed_twice_counts_once_and_both_copies_get_the_tags() {
        let the_box = json!({"uid": {"type": "Box", "id": "b"}, "attrs": {}, "parents": []});
        let mut entities = json!([
            the_box.clone(),
            the_box,
            hab("1", "T1", false),
            hab("1", "T1", false)
        ]);
        apply(&rules(), &mut entities).unwrap();
        assert_eq!(entities[0]["tags"], json!({"T1": 1, "*": 1}));
        assert_eq!(entities[1]["tags"], entities[0]["tags"]);
    }

    #[test]
    fn refuses_hand_written_tags_on_derived_targets() {
        let mut entities = json!([
            {"uid": {"type": "Box", "id": "b"}, "attrs": {}, "parents": [], "tags": {"T1": 0}},
            hab("1", "T1", false)
        ]);
        let err = apply(&rules(), &mut entities).unwrap_err();
        assert!(matches!(err, DeriveError::AuthoredTags { .. }), "{err}");
    }

    #[test]
    fn refuses_a_reference_to_a_missing_target() {
        let mut entities = json!([hab("1", "T1", false)]);
        let err = apply(&rules(), &mut entities).unwrap_err();
        assert_eq!(
            err.to_string(),
            "rule `active`: Box::\"b\" is referenced but is not in the entities file"
        );
    }

    fn rule(source: &str, target: &str) -> DerivationRules {
        serde_json::from_value(json!({"counts": [{
            "id": "active", "source": source, "target": target, "tag_by": "profile"
        }]}))
        .unwrap()
    }

    fn schema(text: &str) -> Value {
        resolved_schema_json(text).unwrap()
    }

    #[test]
    fn the_target_type_is_read_from_the_schema_with_no_entity_stored() {
        let plain = schema("entity Box tags Long; entity Hab = { box: Box, profile: String };");
        assert_eq!(
            target_types(&rule("Hab", "box"), &plain).unwrap(),
            HashSet::from(["Box".parse().unwrap()])
        );
        let namespaced = schema(
            "namespace Ns { entity Box tags Long; entity Hab = { box: Box, profile: String }; }",
        );
        assert_eq!(
            target_types(&rule("Ns::Hab", "box"), &namespaced).unwrap(),
            HashSet::from(["Ns::Box".parse().unwrap()])
        );
    }

    #[test]
    fn a_rule_the_schema_cannot_count_is_refused() {
        let plain = schema("entity Box tags Long; entity Hab = { box: Box, profile: String };");
        for (source, target) in [("Hab", "profile"), ("Hab", "crate"), ("Crate", "box")] {
            assert_eq!(
                target_types(&rule(source, target), &plain),
                Err(DeriveError::TargetNotInSchema {
                    rule: "active".into(),
                    source_type: source.into(),
                    attr: target.into(),
                }),
                "{source}.{target}"
            );
        }
    }
}
