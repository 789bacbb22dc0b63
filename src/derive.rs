//! Derived data: facts the sidecar computes from the stored entities each time it
//! builds a snapshot, so that policies can read them and nobody types them by hand.
//!
//! The rules live in a JSON file beside the schema (`schema/derived.json`) and are
//! applied to the entities JSON before Cedar parses and validates it, so derived
//! values are checked against the schema like any other. One kind of rule exists:
//! `counts` — count the entities of a type whose attributes match, grouped by a
//! string attribute and by the entity that receives them, and write the counts as
//! tags of that entity. The receiver is either the entity an attribute references
//! (`target`), or each ancestor of given types (`target_ancestors`: its parents,
//! theirs, and so on). The Cdap model counts the habilitations of each bulletin for
//! the ceilings (H4), and the roles of the users holding each habilitation and group
//! (H3).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::context::{AttrType, EntityShapes, RecordType};

/// The contents of a derivation file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DerivationRules {
    #[serde(default)]
    pub counts: Vec<CountRule>,
}

/// Count `source` entities matching `where`, per receiving entity (the one `target`
/// references, or each ancestor of a `target_ancestors` type) and per value of
/// `tag_by`; write each count as a tag of the receiving entity.
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
    #[serde(default)]
    pub target: Option<String>,
    /// Instead of `target`: the types of the source's ancestors that receive the
    /// tags, each counting the sources below it (a user in a group that holds a
    /// habilitation counts for both).
    #[serde(default)]
    pub target_ancestors: Vec<String>,
    /// String attribute of the source whose value is the tag key.
    pub tag_by: String,
    /// Optional tag key that receives the count over all `tag_by` values.
    #[serde(default)]
    pub total_tag: Option<String>,
}

/// Which entities receive a rule's counts.
#[derive(Debug, Clone, Copy)]
enum Receivers<'a> {
    /// The entity this attribute of the source references.
    Attribute(&'a str),
    /// The source's ancestors of these types.
    Ancestors(&'a [String]),
}

impl CountRule {
    fn receivers(&self) -> Result<Receivers<'_>, DeriveError> {
        match (&self.target, self.target_ancestors.is_empty()) {
            (Some(attribute), true) => Ok(Receivers::Attribute(attribute)),
            (None, false) => Ok(Receivers::Ancestors(&self.target_ancestors)),
            _ => Err(DeriveError::TargetChoice {
                rule: self.id.clone(),
            }),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DeriveError {
    #[error("rule `{rule}`: give either `target` or `target_ancestors`")]
    TargetChoice { rule: String },
    #[error(
        "rule `{rule}`: `{attr}` is not {kind} attribute of type `{source_type}` in the schema"
    )]
    AttributeNotInSchema {
        rule: String,
        source_type: String,
        attr: String,
        kind: AttributeKind,
    },
    #[error("the schema marks the tags of {entity_types} @derived, but no derivation rule writes them (is the derivation file missing, or a rule?)")]
    Underived {
        /// Every such type, each in backquotes.
        entity_types: String,
    },
    #[error("rule `{rule}`: `where` compares `{attr}` with {value}, which is not a value of its type (a `where` attribute is a Bool, Long or String)")]
    WhereValue {
        rule: String,
        attr: String,
        value: String,
    },
    #[error("rule `{rule}`: an earlier rule already derives the tags of `{entity_type}`")]
    DerivedTwice { rule: String, entity_type: String },
    #[error("rule `{rule}`: the schema declares no entity type `{entity_type}`")]
    TypeNotInSchema { rule: String, entity_type: String },
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

/// Applies every rule to the entities JSON, in place; `types` are the rules' as
/// [`target_types`] read them from the schema.
pub fn apply(
    rules: &DerivationRules,
    types: &DerivedTypes,
    entities: &mut Value,
) -> Result<(), DeriveError> {
    let list = entities.as_array_mut().ok_or(DeriveError::NotAnArray)?;
    for (rule, target_types) in rules.counts.iter().zip(&types.by_rule) {
        let counts = count(rule, rule.receivers()?, list)?;
        write_tags(rule, list, counts, target_types)?;
    }
    Ok(())
}

/// Each entity's parents, as the first copy of it lists them.
fn parents_by_uid(list: &[Value]) -> HashMap<Uid, Vec<Uid>> {
    let mut parents = HashMap::new();
    for entity in list {
        if let Some(uid) = entity.get("uid").and_then(entity_ref) {
            parents.entry(uid).or_insert_with(|| {
                entity
                    .get("parents")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(entity_ref)
                    .collect()
            });
        }
    }
    parents
}

/// The stored ancestors of `uid` whose type is one of `types`, each once.
fn ancestors_of_types(uid: &Uid, types: &[String], parents: &HashMap<Uid, Vec<Uid>>) -> Vec<Uid> {
    let mut seen: HashSet<&Uid> = HashSet::new();
    let mut to_visit: Vec<&Uid> = parents.get(uid).into_iter().flatten().collect();
    let mut found = Vec::new();
    while let Some(ancestor) = to_visit.pop() {
        // An ancestor the store lacks has no entity to receive tags (nor parents).
        let Some(its_parents) = parents.get(ancestor) else {
            continue;
        };
        if !seen.insert(ancestor) {
            continue;
        }
        if types.contains(&ancestor.0) {
            found.push(ancestor.clone());
        }
        to_visit.extend(its_parents);
    }
    found
}

fn count(
    rule: &CountRule,
    receivers: Receivers,
    list: &[Value],
) -> Result<HashMap<Uid, BTreeMap<String, i64>>, DeriveError> {
    let parents = match receivers {
        Receivers::Ancestors(_) => parents_by_uid(list),
        Receivers::Attribute(_) => HashMap::new(),
    };
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
        let targets = match receivers {
            Receivers::Attribute(attribute) => vec![attr(attribute)
                .and_then(entity_ref)
                .ok_or_else(|| DeriveError::MissingTarget {
                    rule: rule.id.clone(),
                    entity: display(&uid),
                    attr: attribute.to_owned(),
                })?],
            Receivers::Ancestors(types) => ancestors_of_types(&uid, types, &parents),
        };
        let key =
            attr(&rule.tag_by)
                .and_then(Value::as_str)
                .ok_or_else(|| DeriveError::MissingKey {
                    rule: rule.id.clone(),
                    entity: display(&uid),
                    attr: rule.tag_by.clone(),
                })?;
        for target in targets {
            let tags = counts.entry(target).or_default();
            *tags.entry(key.to_owned()).or_default() += 1;
            if let Some(total) = &rule.total_tag {
                *tags.entry(total.clone()).or_default() += 1;
            }
        }
    }
    Ok(counts)
}

/// Writes the counts as tags; an entity of `target_types` may have none of its own.
fn write_tags(
    rule: &CountRule,
    list: &mut [Value],
    counts: HashMap<Uid, BTreeMap<String, i64>>,
    target_types: &BTreeSet<String>,
) -> Result<(), DeriveError> {
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

/// The entity types whose tags the rules derive, read from the schema as
/// [`crate::context::resolved_schema_json`] gives it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DerivedTypes {
    /// Types whose tags count entities that reference them (`target`): a request may
    /// not bring an entity of one, as its tags would be whatever the request wrote
    /// (or none: a count of 0).
    pub referenced: HashSet<cedar_policy::EntityTypeName>,
    /// Types whose tags count entities below them (`target_ancestors`): a request may
    /// bring one without tags. No stored entity is below it (a request bringing an
    /// entity that stored ones name as a parent is refused), and no tags say so.
    pub ancestors: HashSet<cedar_policy::EntityTypeName>,
    /// Each rule's receiving types, by name, in the rules' order: whatever the
    /// entities hold, an entity of one may have no tags of its own.
    by_rule: Vec<BTreeSet<String>>,
}

/// The types each rule writes tags to: the type of its `target` attribute on its
/// `source` type, or its `target_ancestors`. A rule naming a type or an attribute the
/// schema does not declare (its `source`, `target`, `tag_by` or a `where` key) is an
/// error: it would count nothing, silently, and a policy reading its tags would see
/// none. `schema` is the resolved schema ([`crate::context::resolved_schema_json`]),
/// and `shapes` its entity types' attributes.
pub fn target_types(
    rules: &DerivationRules,
    schema: &Value,
    shapes: &EntityShapes,
) -> Result<DerivedTypes, DeriveError> {
    let mut types = DerivedTypes::default();
    for rule in &rules.counts {
        let receiving = receiving_types(rule, shapes)?;
        let kind = match rule.receivers()? {
            Receivers::Attribute(_) => &mut types.referenced,
            Receivers::Ancestors(_) => &mut types.ancestors,
        };
        kind.extend(receiving.iter().cloned());
        let names: BTreeSet<String> = receiving.iter().map(ToString::to_string).collect();
        let earlier = types.by_rule.iter().flatten().find(|t| names.contains(*t));
        if let Some(taken) = earlier {
            return Err(DeriveError::DerivedTwice {
                rule: rule.id.clone(),
                entity_type: taken.clone(),
            });
        }
        types.by_rule.push(names);
    }
    let underived: Vec<String> = annotated_derived(schema)
        .into_iter()
        .filter(|t| !types.referenced.contains(t) && !types.ancestors.contains(t))
        .map(|t| format!("`{t}`"))
        .collect();
    if !underived.is_empty() {
        return Err(DeriveError::Underived {
            entity_types: underived.join(", "),
        });
    }
    Ok(types)
}

/// The types `rule` writes tags to, as the schema declares them (its `source` type's
/// attributes checked on the way).
fn receiving_types(
    rule: &CountRule,
    shapes: &EntityShapes,
) -> Result<Vec<cedar_policy::EntityTypeName>, DeriveError> {
    let attributes = source_attributes(rule, shapes)?;
    match rule.receivers()? {
        Receivers::Attribute(attribute) => match attributes.attributes.get(attribute) {
            Some((AttrType::Entity { type_name, .. }, _)) => Ok(vec![type_name.clone()]),
            _ => Err(not_declared(rule, attribute, AttributeKind::Entity)),
        },
        Receivers::Ancestors(names) => names
            .iter()
            .map(|name| {
                shapes.get(name).and(name.parse().ok()).ok_or_else(|| {
                    DeriveError::TypeNotInSchema {
                        rule: rule.id.clone(),
                        entity_type: name.clone(),
                    }
                })
            })
            .collect(),
    }
}

/// The entity types the schema marks `@derived`: their tags must come from a rule.
fn annotated_derived(schema: &Value) -> Vec<cedar_policy::EntityTypeName> {
    let mut types = Vec::new();
    for (namespace, body) in schema.as_object().into_iter().flatten() {
        for (name, declared) in body["entityTypes"].as_object().into_iter().flatten() {
            if declared.pointer("/annotations/derived").is_some() {
                let qualified = if namespace.is_empty() {
                    name.clone()
                } else {
                    format!("{namespace}::{name}")
                };
                types.extend(qualified.parse().ok());
            }
        }
    }
    types
}

/// The attributes the schema declares for the rule's `source` type (as
/// [`EntityShapes`] reads them), once its
/// `tag_by` and `where` attributes are checked among them (a `where` value must be
/// of its attribute's type, a Bool, Long or String: a value of another JSON type
/// would match no entity, and the rule would count nothing, silently).
fn source_attributes<'a>(
    rule: &CountRule,
    shapes: &'a EntityShapes,
) -> Result<&'a RecordType, DeriveError> {
    let source = shapes
        .get(&rule.source)
        .ok_or_else(|| DeriveError::TypeNotInSchema {
            rule: rule.id.clone(),
            entity_type: rule.source.clone(),
        })?;
    let attributes = &source.attributes;
    declared_attribute(rule, attributes, &rule.tag_by, AttributeKind::String)?;
    for (key, value) in &rule.filter {
        let matches = match declared_attribute(rule, attributes, key, AttributeKind::Any)? {
            AttrType::Bool => value.is_boolean(),
            AttrType::Long => value.is_i64(),
            AttrType::String => value.is_string(),
            _ => false,
        };
        if !matches {
            return Err(DeriveError::WhereValue {
                rule: rule.id.clone(),
                attr: key.clone(),
                value: value.to_string(),
            });
        }
    }
    Ok(attributes)
}

/// The type a rule needs an attribute of its source to have.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AttributeKind {
    Entity,
    String,
    Any,
}

impl std::fmt::Display for AttributeKind {
    /// How the kind reads before "attribute" in an error message.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Entity => "an entity",
            Self::String => "a String",
            Self::Any => "an",
        })
    }
}

impl AttributeKind {
    /// Whether an attribute of type `ty` is of this kind.
    fn admits(self, ty: &AttrType) -> bool {
        match self {
            Self::Entity => matches!(ty, AttrType::Entity { .. }),
            Self::String => *ty == AttrType::String,
            Self::Any => true,
        }
    }
}

/// The type of the source's attribute `name`, which must be of `kind`.
fn declared_attribute<'a>(
    rule: &CountRule,
    attributes: &'a RecordType,
    name: &str,
    kind: AttributeKind,
) -> Result<&'a AttrType, DeriveError> {
    attributes
        .attributes
        .get(name)
        .map(|(ty, _)| ty)
        .filter(|ty| kind.admits(ty))
        .ok_or_else(|| not_declared(rule, name, kind))
}

fn not_declared(rule: &CountRule, name: &str, kind: AttributeKind) -> DeriveError {
    DeriveError::AttributeNotInSchema {
        rule: rule.id.clone(),
        source_type: rule.source.clone(),
        attr: name.to_owned(),
        kind,
    }
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

    /// [`target_types`] on a resolved schema, its shapes read from it.
    fn types_of(rules: &DerivationRules, schema: &Value) -> Result<DerivedTypes, DeriveError> {
        target_types(rules, schema, &EntityShapes::from_resolved_schema(schema))
    }
    use crate::context::resolved_schema_json;
    use serde_json::json;

    fn rules() -> DerivationRules {
        serde_json::from_value(json!({"counts": [{
            "id": "active", "source": "Hab", "where": {"suspended": false},
            "target": "box", "tag_by": "profile", "total_tag": "*"
        }]}))
        .unwrap()
    }

    /// The types `rules()` derives, on a schema that declares what it reads.
    fn box_types() -> DerivedTypes {
        let declared = schema(
            "entity Box tags Long; entity Hab = { box: Box, profile: String, suspended: Bool };",
        );
        types_of(&rules(), &declared).unwrap()
    }

    /// The types `held_by_role()` derives.
    fn holder_types() -> DerivedTypes {
        let declared = schema(
            "entity Partner; entity Hab tags Long; entity Group in [Hab, Group] tags Long; \
             entity User in [Group, Hab, Partner] = { role: String };",
        );
        types_of(&held_by_role(), &declared).unwrap()
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
        apply(&rules(), &box_types(), &mut entities).unwrap();
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
        apply(&rules(), &box_types(), &mut entities).unwrap();
        assert_eq!(entities[0]["tags"], json!({"T1": 1, "*": 1}));
        assert_eq!(entities[1]["tags"], entities[0]["tags"]);
    }

    #[test]
    fn refuses_hand_written_tags_on_derived_targets() {
        let mut entities = json!([
            {"uid": {"type": "Box", "id": "b"}, "attrs": {}, "parents": [], "tags": {"T1": 0}},
            hab("1", "T1", false)
        ]);
        let err = apply(&rules(), &box_types(), &mut entities).unwrap_err();
        assert!(matches!(err, DeriveError::AuthoredTags { .. }), "{err}");
    }

    #[test]
    fn refuses_a_reference_to_a_missing_target() {
        let mut entities = json!([hab("1", "T1", false)]);
        let err = apply(&rules(), &box_types(), &mut entities).unwrap_err();
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
            types_of(&rule("Hab", "box"), &plain).unwrap().referenced,
            HashSet::from(["Box".parse().unwrap()])
        );
        let namespaced = schema(
            "namespace Ns { entity Box tags Long; entity Hab = { box: Box, profile: String }; }",
        );
        assert_eq!(
            types_of(&rule("Ns::Hab", "box"), &namespaced)
                .unwrap()
                .referenced,
            HashSet::from(["Ns::Box".parse().unwrap()])
        );
    }

    #[test]
    fn a_rule_the_schema_cannot_count_is_refused() {
        let plain = schema(
            "entity Box tags Long; entity Hab = { box: Box, profile: String, level: Long, on: Bool };",
        );
        let missing = |attr: &str, kind| DeriveError::AttributeNotInSchema {
            rule: "active".into(),
            source_type: "Hab".into(),
            attr: attr.into(),
            kind,
        };
        let with = |edit: Value| -> DerivationRules {
            let mut rule =
                json!({"id": "active", "source": "Hab", "target": "box", "tag_by": "profile"});
            rule.as_object_mut()
                .unwrap()
                .extend(edit.as_object().unwrap().clone());
            serde_json::from_value(json!({ "counts": [rule] })).unwrap()
        };
        let cases = [
            (
                json!({"target": "profile"}),
                missing("profile", AttributeKind::Entity),
            ),
            (
                json!({"target": "crate"}),
                missing("crate", AttributeKind::Entity),
            ),
            (
                json!({"tag_by": "level"}),
                missing("level", AttributeKind::String),
            ),
            (
                json!({"tag_by": "profil"}),
                missing("profil", AttributeKind::String),
            ),
            (
                json!({"where": {"on ": false}}),
                missing("on ", AttributeKind::Any),
            ),
            (
                json!({"source": "Crate"}),
                DeriveError::TypeNotInSchema {
                    rule: "active".into(),
                    entity_type: "Crate".into(),
                },
            ),
        ];
        for (edit, error) in cases {
            assert_eq!(types_of(&with(edit.clone()), &plain), Err(error), "{edit}");
        }
        assert!(types_of(&with(json!({"where": {"on": false}})), &plain).is_ok());
    }

    fn held_by_role() -> DerivationRules {
        serde_json::from_value(json!({"counts": [{
            "id": "held", "source": "User", "target_ancestors": ["Hab", "Group"], "tag_by": "role"
        }]}))
        .unwrap()
    }

    fn node(type_name: &str, id: &str, role: Option<&str>, parents: &[(&str, &str)]) -> Value {
        let parents: Vec<Value> = parents
            .iter()
            .map(|(t, i)| json!({"type": t, "id": i}))
            .collect();
        let attrs = role.map_or(json!({}), |r| json!({ "role": r }));
        json!({"uid": {"type": type_name, "id": id}, "attrs": attrs, "parents": parents})
    }

    #[test]
    fn ancestors_count_the_sources_below_them_directly_or_through_groups() {
        let mut entities = json!([
            node("Hab", "h", None, &[]),
            node("Hab", "other", None, &[]),
            node("Group", "g", None, &[("Hab", "h"), ("Group", "outer")]),
            node("Group", "outer", None, &[("Hab", "h")]),
            node("Partner", "p", None, &[]),
            node(
                "User",
                "admin",
                Some("administrator"),
                &[("Group", "g"), ("Hab", "h"), ("Partner", "p")]
            ),
            node(
                "User",
                "u",
                Some("user"),
                &[("Hab", "h"), ("Hab", "missing")]
            ),
        ]);
        apply(&held_by_role(), &holder_types(), &mut entities).unwrap();
        // The administrator reaches h three ways and counts once.
        assert_eq!(entities[0]["tags"], json!({"administrator": 1, "user": 1}));
        assert_eq!(entities[1].get("tags"), None);
        assert_eq!(entities[2]["tags"], json!({"administrator": 1}));
        assert_eq!(entities[3]["tags"], json!({"administrator": 1}));
        assert_eq!(entities[4].get("tags"), None, "not a target type");
    }

    #[test]
    fn a_rule_gives_one_kind_of_target() {
        for rule in [
            json!({"id": "r", "source": "User", "tag_by": "role"}),
            json!({"id": "r", "source": "User", "tag_by": "role", "target": "box", "target_ancestors": ["Hab"]}),
        ] {
            let rules: DerivationRules =
                serde_json::from_value(json!({ "counts": [rule] })).unwrap();
            let declared = schema("entity User = { role: String };");
            assert_eq!(
                types_of(&rules, &declared),
                Err(DeriveError::TargetChoice { rule: "r".into() })
            );
        }
    }

    #[test]
    fn ancestor_types_are_read_from_the_schema() {
        let plain = schema("entity Hab tags Long; entity Group in [Hab] tags Long; entity User in [Group, Hab] = { role: String };");
        let types = types_of(&held_by_role(), &plain).unwrap();
        assert_eq!(types.referenced, HashSet::new());
        assert_eq!(
            types.ancestors,
            HashSet::from(["Hab".parse().unwrap(), "Group".parse().unwrap()])
        );
        let no_group = schema("entity Hab tags Long; entity User in [Hab] = { role: String };");
        assert_eq!(
            types_of(&held_by_role(), &no_group),
            Err(DeriveError::TypeNotInSchema {
                rule: "held".into(),
                entity_type: "Group".into()
            })
        );
    }

    #[test]
    fn a_type_the_schema_marks_derived_needs_a_rule() {
        let marked = schema(
            "@derived entity Hab tags Long; @derived entity Group in [Hab] tags Long; \
             entity User in [Group, Hab] = { role: String };",
        );
        assert!(types_of(&held_by_role(), &marked).is_ok());
        let underived = |rules: &DerivationRules| match types_of(rules, &marked) {
            Err(DeriveError::Underived { entity_types }) => entity_types,
            other => panic!("{other:?}"),
        };
        // Every type lacking its rule is named.
        assert_eq!(underived(&DerivationRules::default()), "`Group`, `Hab`");
        let mut group_only = held_by_role();
        group_only.counts[0].target_ancestors = vec!["Group".into()];
        assert_eq!(underived(&group_only), "`Hab`");
    }

    /// Whatever the entities hold: read from the schema, not from what was counted.
    #[test]
    fn two_rules_may_not_derive_the_tags_of_one_type() {
        let declared = schema(
            "entity Box tags Long; entity Hab = { box: Box, profile: String, suspended: Bool }; \
             entity Group tags Long; entity User in [Group, Box] = { role: String };",
        );
        let mut ancestors = held_by_role();
        ancestors.counts[0].target_ancestors = vec!["Group".into(), "Box".into()];
        for first in [rules(), ancestors] {
            let mut both = first.clone();
            both.counts
                .extend(rules().counts.into_iter().map(|mut rule| {
                    rule.id = "again".into();
                    rule
                }));
            assert_eq!(
                types_of(&both, &declared),
                Err(DeriveError::DerivedTwice {
                    rule: "again".into(),
                    entity_type: "Box".into()
                })
            );
        }
    }

    /// A target type's entity with tags of its own is refused even when no source
    /// entity counts for it.
    #[test]
    fn hand_written_tags_are_refused_with_nothing_counted() {
        let mut entities = json!([
            {"uid": {"type": "Box", "id": "b"}, "attrs": {}, "parents": [], "tags": {"*": -100}},
            hab("1", "T1", true)
        ]);
        let err = apply(&rules(), &box_types(), &mut entities).unwrap_err();
        assert!(matches!(err, DeriveError::AuthoredTags { .. }), "{err}");
    }

    #[test]
    fn common_types_of_a_namespace_are_followed() {
        let declared = schema(
            "namespace Ns { type Prof = String; type Flag = Bool; entity Box tags Long; \
             entity Hab = { box: Box, profile: Prof, suspended: Flag }; }",
        );
        let mut rule = rule("Ns::Hab", "box");
        rule.counts[0]
            .filter
            .insert("suspended".into(), json!(false));
        let types = types_of(&rule, &declared).unwrap();
        assert_eq!(
            types.referenced,
            HashSet::from(["Ns::Box".parse().unwrap()])
        );
        rule.counts[0].filter.insert("suspended".into(), json!(0));
        assert!(matches!(
            types_of(&rule, &declared),
            Err(DeriveError::WhereValue { .. })
        ));
    }

    #[test]
    fn a_where_value_of_another_type_is_refused_and_common_types_are_followed() {
        let declared = schema(
            "type Prof = String; type Flag = Bool; entity Box tags Long; \
             entity Hab = { box: Box, profile: Prof, suspended: Flag };",
        );
        assert!(types_of(&rules(), &declared).is_ok());
        for value in [json!("false"), json!(0), json!(null)] {
            let mut rule = rules();
            rule.counts[0]
                .filter
                .insert("suspended".into(), value.clone());
            assert_eq!(
                types_of(&rule, &declared),
                Err(DeriveError::WhereValue {
                    rule: "active".into(),
                    attr: "suspended".into(),
                    value: value.to_string()
                })
            );
        }
    }
}
