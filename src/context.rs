//! Request contexts built from wire JSON by the types the schema declares, and the
//! entity types' attribute types ([`EntityShapes`]) that a request's own entities
//! are checked against.
//!
//! Cedar's JSON context parser is general and costs 6–18 µs a request, and even
//! `Context::from_pairs` evaluates its restricted expressions again (≈4.5 µs for a
//! Cdap consultation). So each action's context type is read once per snapshot from
//! the schema, and a request's context is converted value by value against it, with
//! an error that names the attribute, straight into the values Cedar evaluates
//! (`cedar_policy_core::ast::Value`, the same constructors Cedar's own evaluation of
//! those expressions calls; a test holds the result equal to Cedar's parse). The conversion is the
//! context's schema validation: undeclared attributes, missing required ones, wrong
//! types (in sets and nested records too), entity references of another type or
//! outside an enumerated type's eids, and malformed extension values are refused,
//! so the engine does not ask Cedar to validate such a context again (≈4 µs). An
//! action whose context type this module cannot read keeps Cedar's parser and
//! Cedar's validation.
//!
//! Accepted forms: strings, numbers and booleans as such; an entity as
//! `{"type", "id"}`, `{"__entity": {…}}` or `"Type::\"id\""`; an extension value
//! (`datetime`, `duration`, `decimal`, `ipaddr`) as its string or as Cedar's escape
//! `{"__extn": {"fn", "arg"}}` (or without `__extn`) naming the type's constructor
//! (`ip` for `ipaddr`); sets as arrays; records as objects. Escapes with several
//! arguments (`offset(…)`) are refused.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, LazyLock};

use cedar_policy::{Context, EntityId, EntityTypeName, EntityUid};
use cedar_policy_core::ast::{self, ExtensionFunction};
use cedar_policy_core::extensions::Extensions;
use serde_json::{Map, Value};

use crate::api::{parse_entity_ref, plain_ref};
use crate::fast_hash::{HashMap, HashSet};

/// A context attribute's type, as the schema declares it.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrType {
    String,
    Long,
    Bool,
    /// An entity type, and its eids when the schema enumerates them.
    Entity {
        name: String,
        type_name: EntityTypeName,
        eids: Option<Vec<String>>,
    },
    Extension(String),
    Set(Box<AttrType>),
    Record(RecordType),
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct RecordType {
    /// Attribute name → (type, required).
    pub attributes: BTreeMap<String, (AttrType, bool)>,
}

/// The context type of every action whose context this module can build.
#[derive(Debug, Default)]
pub struct ContextTypes {
    by_action: HashMap<EntityUid, RecordType>,
}

impl ContextTypes {
    /// Reads the context types from the schema text (Cedar syntax or JSON): for
    /// tests; a snapshot reads them from the model's resolved schema.
    #[cfg(test)]
    pub fn from_schema_text(schema_text: &str) -> Result<Self, String> {
        Self::from_resolved_schema(&resolved_schema_json(schema_text)?)
    }

    /// Reads the context types from a schema as [`resolved_schema_json`] gives it.
    pub fn from_resolved_schema(json: &Value) -> Result<Self, String> {
        let declared = Declared::new(json);
        let mut by_action = HashMap::default();
        for (namespace, body) in namespaces(json) {
            for (name, action) in body["actions"].as_object().into_iter().flatten() {
                let context = action.pointer("/appliesTo/context");
                if let Some(record) = record_type(context, &declared) {
                    by_action.insert(action_uid(namespace, name)?, record);
                }
            }
        }
        Ok(Self { by_action })
    }

    /// The context type of `action`, when this module can build its contexts.
    pub fn get(&self, action: &EntityUid) -> Option<&RecordType> {
        self.by_action.get(action)
    }
}

/// The attribute and tag types of every entity type: what a request's own entities
/// are checked against before Cedar parses them.
#[derive(Debug, Default, Clone)]
pub struct EntityShapes {
    by_type: HashMap<String, EntityShape>,
    /// The enumerated entity types (qualified names), whose entities are never
    /// stored: the schema lists them.
    enumerated: HashSet<String>,
}

/// An entity type's attributes and tags, as far as [`attr_type`] reads them.
#[derive(Debug, Default, Clone)]
pub struct EntityShape {
    /// Empty when the type declares none, or a shape holding a type this module
    /// does not read.
    pub attributes: RecordType,
    /// The type of its tags, when it declares tags of a type this module reads.
    pub tags: Option<AttrType>,
}

impl EntityShapes {
    /// Reads the entity types' shapes and tag types from a schema as
    /// [`resolved_schema_json`] gives it.
    pub fn from_resolved_schema(json: &Value) -> Self {
        let declared = Declared::new(json);
        let mut by_type = HashMap::default();
        for (namespace, body) in namespaces(json) {
            for (name, entity) in body["entityTypes"].as_object().into_iter().flatten() {
                let shape = EntityShape {
                    attributes: record_type(entity.get("shape"), &declared).unwrap_or_default(),
                    tags: entity.get("tags").and_then(|ty| attr_type(ty, &declared)),
                };
                by_type.insert(qualified(namespace, name), shape);
            }
        }
        let enumerated = declared.enums.into_keys().collect();
        Self {
            by_type,
            enumerated,
        }
    }

    /// The attributes and tags of the entity type named `type_name` (qualified).
    pub fn get(&self, type_name: &str) -> Option<&EntityShape> {
        self.by_type.get(type_name)
    }

    /// Whether the schema enumerates the entities of `type_name` (qualified).
    pub fn is_enumerated(&self, type_name: &str) -> bool {
        self.enumerated.contains(type_name)
    }
}

/// The schema (Cedar syntax or JSON) as Cedar's JSON schema format, with every type
/// name resolved to its qualified name (a JSON schema goes through its Cedar text
/// for that).
pub fn resolved_schema_json(schema_text: &str) -> Result<Value, String> {
    let cedar_text = if schema_text.trim_start().starts_with('{') {
        cedar_policy::SchemaFragment::from_json_str(schema_text)
            .map_err(|e| e.to_string())?
            .to_cedarschema()
            .map_err(|e| e.to_string())?
    } else {
        schema_text.to_owned()
    };
    Ok(
        cedar_policy::schema_str_to_json_with_resolved_types(&cedar_text)
            .map_err(|e| e.to_string())?
            .0,
    )
}

/// What a resolved schema declares that attribute types may name.
struct Declared<'a> {
    schema: &'a Value,
    /// Enumerated entity types (qualified names) and their eids.
    enums: HashMap<String, Vec<String>>,
}

impl<'a> Declared<'a> {
    fn new(schema: &'a Value) -> Self {
        Self {
            schema,
            enums: enumerated_entity_types(schema),
        }
    }

    /// The definition of the common type `name`, as a resolved schema names it:
    /// qualified by its namespace (`Ns::Prof`), bare in the empty one.
    fn common_type(&self, name: &str) -> Option<&'a Value> {
        let (namespace, base) = name.rsplit_once("::").unwrap_or(("", name));
        self.schema.get(namespace)?.get("commonTypes")?.get(base)
    }
}

fn qualified(namespace: &str, name: &str) -> String {
    if namespace.is_empty() {
        name.to_owned()
    } else {
        format!("{namespace}::{name}")
    }
}

fn action_uid(namespace: &str, name: &str) -> Result<EntityUid, String> {
    let text = qualified(
        namespace,
        &format!("Action::{}", Value::String(name.to_owned())),
    );
    text.parse().map_err(|e| format!("action {text}: {e}"))
}

/// The schema's enumerated entity types (`entity Service enum ["cdap", …]`).
fn enumerated_entity_types(schema: &Value) -> HashMap<String, Vec<String>> {
    let mut enums = HashMap::default();
    for (namespace, body) in namespaces(schema) {
        for (name, entity) in body["entityTypes"].as_object().into_iter().flatten() {
            if let Some(eids) = entity.get("enum").and_then(Value::as_array) {
                let eids = eids.iter().filter_map(Value::as_str).map(str::to_owned);
                enums.insert(qualified(namespace, name), eids.collect());
            }
        }
    }
    enums
}

/// Each namespace of a resolved schema: its name and its body.
fn namespaces(json: &Value) -> impl Iterator<Item = (&String, &Value)> {
    json.as_object().into_iter().flatten()
}

/// A context or an entity shape: a record type, empty when none is declared;
/// `None` for what this module does not handle.
fn record_type(ty: Option<&Value>, declared: &Declared) -> Option<RecordType> {
    match ty.map(|ty| attr_type(ty, declared)) {
        None => Some(RecordType::default()),
        Some(Some(AttrType::Record(record))) => Some(record),
        Some(_) => None,
    }
}

/// Reads a schema JSON type; `None` for what this module does not handle.
fn attr_type(ty: &Value, declared: &Declared) -> Option<AttrType> {
    let kind = ty.get("type")?.as_str()?;
    Some(match kind {
        // A resolved schema keeps the `__cedar::` a schema wrote before a primitive.
        "String" | "__cedar::String" => AttrType::String,
        "Long" | "__cedar::Long" => AttrType::Long,
        "Boolean" | "Bool" | "__cedar::Bool" => AttrType::Bool,
        "Entity" => {
            let name = ty.get("name")?.as_str()?;
            AttrType::Entity {
                name: name.to_owned(),
                type_name: name.parse().ok()?,
                eids: declared.enums.get(name).cloned(),
            }
        }
        "Extension" => AttrType::Extension(extension_name(ty.get("name")?.as_str()?)),
        // A common type may take an extension's name (`type ipaddr = String;`), and
        // then Cedar reads the bare name as the common type.
        name if declared.common_type(name).is_some() => {
            attr_type(declared.common_type(name)?, declared)?
        }
        "datetime" | "duration" | "decimal" | "ipaddr" | "__cedar::datetime"
        | "__cedar::duration" | "__cedar::decimal" | "__cedar::ipaddr" => {
            AttrType::Extension(extension_name(kind))
        }
        "Set" => AttrType::Set(Box::new(attr_type(ty.get("element")?, declared)?)),
        "Record" => {
            let mut attributes = BTreeMap::new();
            for (name, attr) in ty.get("attributes")?.as_object()? {
                let required = attr
                    .get("required")
                    .and_then(Value::as_bool)
                    .unwrap_or(true);
                attributes.insert(name.clone(), (attr_type(attr, declared)?, required));
            }
            AttrType::Record(RecordType { attributes })
        }
        "EntityOrCommon" | "CommonType" => {
            attr_type(declared.common_type(ty.get("name")?.as_str()?)?, declared)?
        }
        _ => return None,
    })
}

fn extension_name(name: &str) -> String {
    name.trim_start_matches("__cedar::").to_owned()
}

impl RecordType {
    /// Whether attribute `name` is declared required, with extension type `extension`.
    pub fn requires(&self, name: &str, extension: &str) -> bool {
        matches!(self.attributes.get(name), Some((AttrType::Extension(e), true)) if e == extension)
    }

    /// Builds a context from `json`, plus the `extra` attributes already built.
    pub fn build(
        &self,
        json: &Map<String, Value>,
        extra: Vec<(String, ast::Value)>,
    ) -> Result<Context, String> {
        let mut fields = self.fields(json, "")?;
        fields.extend(extra.into_iter().map(|(name, value)| (name.into(), value)));
        Ok(Context::from(ast::Context::Value(Arc::new(fields))))
    }

    fn fields(
        &self,
        json: &Map<String, Value>,
        prefix: &str,
    ) -> Result<BTreeMap<smol_str::SmolStr, ast::Value>, String> {
        if let Some(name) = json.keys().find(|k| !self.attributes.contains_key(*k)) {
            return Err(format!("`{prefix}{name}` is not declared by the schema"));
        }
        let mut fields = BTreeMap::new();
        for (name, value) in json {
            let (ty, _) = &self.attributes[name];
            let path = Path { prefix, name };
            fields.insert(name.as_str().into(), convert(value, ty, &path)?);
        }
        Ok(fields)
    }

    /// Required attributes missing from `json` (the time attribute may be filled in).
    pub fn missing<'a>(&'a self, json: &'a Map<String, Value>) -> impl Iterator<Item = &'a str> {
        self.missing_where(|name| json.contains_key(name))
    }

    /// Required attributes for which `has` is false.
    pub fn missing_where<'a>(
        &'a self,
        has: impl Fn(&str) -> bool + 'a,
    ) -> impl Iterator<Item = &'a str> {
        self.attributes
            .iter()
            .filter(move |(name, (_, required))| *required && !has(name))
            .map(|(name, _)| name.as_str())
    }
}

/// Whether `id` is an entity of a type whose ids the schema enumerates as `eids`
/// (any id is, when the type is not enumerated).
pub fn enumerates(eids: Option<&[String]>, id: &str) -> bool {
    eids.is_none_or(|eids| eids.iter().any(|eid| eid == id))
}

/// An attribute's path in the context, written out only for an error message.
struct Path<'a> {
    prefix: &'a str,
    name: &'a str,
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.prefix, self.name)
    }
}

fn convert(value: &Value, ty: &AttrType, path: &Path) -> Result<ast::Value, String> {
    let mismatch = || {
        format!(
            "`{path}`: expected {}, found {}",
            describe(ty),
            found(value)
        )
    };
    Ok(match (ty, value) {
        (AttrType::String, Value::String(s)) => ast::Value::from(s.as_str()),
        (AttrType::Long, Value::Number(n)) => ast::Value::from(n.as_i64().ok_or_else(mismatch)?),
        (AttrType::Bool, Value::Bool(b)) => ast::Value::from(*b),
        (
            AttrType::Entity {
                name,
                type_name,
                eids,
            },
            _,
        ) => {
            let uid = match plain_ref(value) {
                Some((ty, id)) if ty == name => {
                    EntityUid::from_type_name_and_id(type_name.clone(), EntityId::new(id))
                }
                _ => parse_entity_ref("context", value).map_err(|_| mismatch())?,
            };
            if uid.type_name() != type_name {
                return Err(mismatch());
            }
            if !enumerates(eids.as_deref(), uid.id().unescaped()) {
                let eids = eids.as_deref().unwrap_or_default().join(", ");
                return Err(format!(
                    "`{path}`: {uid} is not one of the {name} entities the schema enumerates ({eids})"
                ));
            }
            ast::Value::from(ast::EntityUID::from(uid))
        }
        (AttrType::Extension(name), _) => {
            let arg = extension_arg(name, value).ok_or_else(mismatch)?;
            extension_value(name, arg).map_err(|e| format!("`{path}`: {e}"))?
        }
        (AttrType::Set(element), Value::Array(items)) => ast::Value::set(
            items
                .iter()
                .map(|item| convert(item, element, path))
                .collect::<Result<Vec<_>, _>>()?,
            None,
        ),
        (AttrType::Record(record), Value::Object(map)) => {
            if let Some(name) = record.missing(map).next() {
                return Err(format!("`{path}.{name}`: missing required attribute"));
            }
            let fields = record.fields(map, &format!("{path}."))?;
            ast::Value::record_arc(Arc::new(fields), None)
        }
        _ => return Err(mismatch()),
    })
}

/// `value` as an error message quotes it: a number no Cedar value holds is not
/// quoted, as serde_json reads it into a float whose text is not the request's
/// (`1e2` would read `100.0`, `-0` `-0.0`).
fn found(value: &Value) -> String {
    match value {
        Value::Number(number) if !number.is_i64() => {
            "a number that is not a whole one from -2^63 to 2^63-1".to_owned()
        }
        other => other.to_string(),
    }
}

/// An extension value's argument: its string, or Cedar's escape naming the
/// extension's constructor (`{"__extn": {"fn": "datetime", "arg": "…"}}`, with or
/// without `__extn`; the constructor of `ipaddr` is `ip`), with no other key: a
/// reader in front of the sidecar could take an outer `arg` for the value.
fn extension_arg<'a>(name: &str, value: &'a Value) -> Option<&'a str> {
    match value {
        Value::String(arg) => Some(arg.as_str()),
        Value::Object(map) => {
            let escape = match map.get("__extn") {
                Some(inner) if map.len() == 1 => inner.as_object()?,
                Some(_) => return None,
                None => map,
            };
            if escape.len() != 2 || escape.get("fn")?.as_str()? != constructor_name(name)? {
                return None;
            }
            escape.get("arg")?.as_str()
        }
        _ => None,
    }
}

thread_local! {
    /// The last extension value built on this thread, by (extension, argument).
    static LAST_EXTENSION: std::cell::RefCell<Option<(String, String, ast::Value)>> =
        const { std::cell::RefCell::new(None) };
}

/// `datetime("…")` and the like, as Cedar evaluates them. Parsing the argument costs
/// about a µs (a regex for a datetime), and consecutive requests mostly carry the
/// same value (the current time, filled in to the second), so the last one is kept
/// per thread.
pub fn extension_value(name: &str, arg: &str) -> Result<ast::Value, String> {
    LAST_EXTENSION.with_borrow_mut(|last| {
        if let Some((last_name, last_arg, value)) = last.as_ref() {
            if last_name == name && last_arg == arg {
                return Ok(value.clone());
            }
        }
        let value = evaluate_extension(name, arg)?;
        *last = Some((name.to_owned(), arg.to_owned(), value.clone()));
        Ok(value)
    })
}

/// Each extension type, and the name of its constructor function in Cedar.
const EXTENSIONS: [(&str, &str); 4] = [
    ("datetime", "datetime"),
    ("duration", "duration"),
    ("decimal", "decimal"),
    ("ipaddr", "ip"),
];

fn constructor_name(extension: &str) -> Option<&'static str> {
    EXTENSIONS
        .iter()
        .find(|(name, _)| *name == extension)
        .map(|(_, constructor)| *constructor)
}

/// Cedar's constructor of each extension type, looked up once (Cedar's
/// `RestrictedExpression::new_datetime` and the like parse the function's name with
/// the policy parser on every call, ≈4 µs).
static CONSTRUCTORS: LazyLock<HashMap<&'static str, &'static ExtensionFunction>> =
    LazyLock::new(|| {
        EXTENSIONS
            .into_iter()
            .filter_map(|(extension, function)| {
                let function = Extensions::all_available()
                    .func(&function.parse().ok()?)
                    .ok()?;
                Some((extension, function))
            })
            .collect()
    });

/// Cedar's own evaluation of an extension constructor call.
fn evaluate_extension(name: &str, arg: &str) -> Result<ast::Value, String> {
    let constructor = CONSTRUCTORS
        .get(name)
        .ok_or_else(|| format!("unknown extension type `{name}`"))?;
    match constructor.call(&[ast::Value::from(arg)]) {
        Ok(ast::PartialValue::Value(value)) => Ok(value),
        Ok(ast::PartialValue::Residual(_)) => {
            Err(format!("{name}(\"{arg}\") did not evaluate to a value"))
        }
        Err(error) => Err(error.to_string()),
    }
}

fn describe(ty: &AttrType) -> String {
    match ty {
        AttrType::String => "a string".into(),
        AttrType::Long => "a whole number".into(),
        AttrType::Bool => "a boolean".into(),
        AttrType::Entity { name, .. } => format!("a {name} entity reference"),
        AttrType::Extension(name) => format!("a {name} string"),
        AttrType::Set(element) => format!("an array, each item {}", describe(element)),
        AttrType::Record(_) => "an object".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SCHEMA: &str = r#"
        entity User; entity Mission; entity Channel enum ["web", "api"];
        type Session = { authentication: String, now: datetime };
        action consult appliesTo { principal: User, resource: User, context: {
            now: datetime, mission: Mission, categories: Set<String>, count?: Long,
            channel?: Channel, addr?: ipaddr,
            place: { city: String, zip?: String } } };
        action session appliesTo { principal: User, resource: User, context: Session };
        action later appliesTo { principal: User, resource: User, context: { now?: datetime } };
    "#;

    fn consult() -> RecordType {
        let types = ContextTypes::from_schema_text(SCHEMA).unwrap();
        types
            .get(&"Action::\"consult\"".parse().unwrap())
            .unwrap()
            .clone()
    }

    fn build(json: serde_json::Value) -> Result<Context, String> {
        consult().build(json.as_object().unwrap(), Vec::new())
    }

    fn valid() -> serde_json::Value {
        json!({
            "now": "2026-11-22T10:00:00Z",
            "mission": {"type": "Mission", "id": "m"},
            "categories": ["rsa"],
            "place": {"city": "Maubeuge"}
        })
    }

    #[test]
    fn common_types_and_time_attributes_are_read() {
        let types = ContextTypes::from_schema_text(SCHEMA).unwrap();
        let session = types.get(&"Action::\"session\"".parse().unwrap()).unwrap();
        assert!(session.requires("now", "datetime"));
        assert!(!session.requires("authentication", "datetime"));
        let later = types.get(&"Action::\"later\"".parse().unwrap()).unwrap();
        assert!(!later.requires("now", "datetime"), "optional");
    }

    #[test]
    fn every_accepted_form_builds() {
        assert!(build(valid()).is_ok());
        let mut escaped = valid();
        escaped["now"] = json!({"__extn": {"fn": "datetime", "arg": "2026-11-22"}});
        escaped["mission"] = json!({"__entity": {"type": "Mission", "id": "m"}});
        escaped["count"] = json!(3);
        escaped["channel"] = json!({"type": "Channel", "id": "api"});
        assert!(build(escaped).is_ok());
        let mut text_ref = valid();
        text_ref["mission"] = json!("Mission::\"m\"");
        assert!(build(text_ref).is_ok());
    }

    #[test]
    fn errors_name_the_attribute() {
        let cases = [
            (
                "categories",
                json!("rsa"),
                "`categories`: expected an array",
            ),
            (
                "mission",
                json!({"type": "User", "id": "u"}),
                "`mission`: expected a Mission",
            ),
            ("count", json!(1.5), "`count`: expected a whole number"),
            (
                "mission",
                json!(1e2),
                "`mission`: expected a Mission entity reference, found a number that is not a whole one",
            ),
            (
                "place",
                json!({"zip": "59600"}),
                "`place.city`: missing required attribute",
            ),
            (
                "place",
                json!({"city": "M", "x": 1}),
                "`place.x` is not declared",
            ),
            ("extra", json!(1), "`extra` is not declared"),
            (
                "channel",
                json!({"type": "Channel", "id": "fax"}),
                "`channel`: Channel::\"fax\" is not one of the Channel entities",
            ),
            ("now", json!("not a date"), "datetime"),
        ];
        for (key, value, message) in cases {
            let mut json = valid();
            json[key] = value;
            let error = build(json).unwrap_err();
            assert!(error.contains(message), "{key}: {error}");
        }
    }

    /// Cedar's own reading of a context, by its schema-based JSON parser.
    fn cedar_reading(json: &serde_json::Value) -> Context {
        let (schema, _) = cedar_policy::Schema::from_cedarschema_str(SCHEMA).unwrap();
        let action = "Action::\"consult\"".parse().unwrap();
        Context::from_json_value(json.clone(), Some((&schema, &action))).unwrap()
    }

    fn assert_same_as_cedar(json: serde_json::Value) {
        let built = build(json.clone()).unwrap();
        let cedar = cedar_reading(&json);
        assert_eq!(built.as_ref(), cedar.as_ref(), "{json}");
    }

    #[test]
    fn contexts_equal_cedars_reading() {
        assert_same_as_cedar(json!({
            "now": {"__extn": {"fn": "datetime", "arg": "2026-11-22T10:00:00.123Z"}},
            "mission": {"__entity": {"type": "Mission", "id": "m \" q"}},
            "categories": ["rsa", "quotient_familial", "rsa", ""],
            "count": -7,
            "channel": {"__entity": {"type": "Channel", "id": "web"}},
            "place": {"city": "Maubeuge", "zip": "59600"}
        }));
        assert_same_as_cedar(json!({
            "now": {"__extn": {"fn": "datetime", "arg": "2026-11-22"}},
            "mission": {"__entity": {"type": "Mission", "id": ""}},
            "categories": [],
            "place": {"city": "é"}
        }));
    }

    #[test]
    fn extension_escapes_are_read_as_cedar_reads_them() {
        let mut escaped = valid();
        escaped["addr"] = json!({"__extn": {"fn": "ip", "arg": "10.0.0.1"}});
        escaped["now"] = json!({"fn": "datetime", "arg": "2026-11-22"});
        assert_same_as_cedar(escaped);
        let mut misnamed = valid();
        misnamed["addr"] = json!({"__extn": {"fn": "ipaddr", "arg": "10.0.0.1"}});
        assert!(build(misnamed).is_err());
    }

    #[test]
    fn an_extension_escape_with_another_key_is_refused() {
        for now in [
            json!({"__extn": {"fn": "datetime", "arg": "2030-01-01"}, "fn": "datetime", "arg": "2026-01-01"}),
            json!({"fn": "datetime", "arg": "2030-01-01", "junk": 1}),
            json!({"__extn": {"fn": "datetime", "arg": "2030-01-01", "junk": true}}),
        ] {
            let mut escaped = valid();
            escaped["now"] = now.clone();
            assert!(build(escaped).is_err(), "{now}");
        }
    }

    #[test]
    fn a_common_type_named_like_an_extension_is_the_common_type() {
        let schema = r#"
            type ipaddr = String;
            entity User;
            action view appliesTo { principal: User, resource: User, context: { source: ipaddr } };
        "#;
        let types = ContextTypes::from_schema_text(schema).unwrap();
        let action = "Action::\"view\"".parse().unwrap();
        let record = types.get(&action).unwrap();
        let json = json!({"source": "10.6.6.6"});
        let built = record.build(json.as_object().unwrap(), Vec::new()).unwrap();
        let (schema, _) = cedar_policy::Schema::from_cedarschema_str(schema).unwrap();
        let cedar = Context::from_json_value(json, Some((&schema, &action))).unwrap();
        assert_eq!(built.as_ref(), cedar.as_ref());
    }

    #[test]
    fn names_in_a_json_schema_namespace_are_qualified() {
        let schema = json!({"Ns": {
            "entityTypes": {"Mission": {}},
            "actions": {"go": {"appliesTo": {
                "principalTypes": ["Mission"], "resourceTypes": ["Mission"],
                "context": {"type": "Record", "attributes": {
                    "m": {"type": "Entity", "name": "Mission"}}}}}}}});
        let types = ContextTypes::from_schema_text(&schema.to_string()).unwrap();
        let record = types.get(&"Ns::Action::\"go\"".parse().unwrap()).unwrap();
        let build =
            |m: serde_json::Value| record.build(json!({ "m": m }).as_object().unwrap(), Vec::new());
        assert!(build(json!({"type": "Ns::Mission", "id": "x"})).is_ok());
        assert!(build(json!({"type": "Mission", "id": "x"})).is_err());
    }

    /// A resolved schema names a namespace's common types qualified (`Ns::Prof`),
    /// while its `commonTypes` key them bare.
    #[test]
    fn common_types_of_a_namespace_are_read() {
        let schema = r#"namespace Ns {
            type Prof = String;
            type Place = { city: Prof };
            entity Box;
            entity Hab = { box: Box, profile: Prof, place: Place, all: Set<Prof> } tags Prof;
            action go appliesTo { principal: Hab, resource: Hab, context: { place: Place } };
        }"#;
        let json = resolved_schema_json(schema).unwrap();
        let shapes = EntityShapes::from_resolved_schema(&json);
        let hab = shapes.get("Ns::Hab").unwrap();
        let names: Vec<&String> = hab.attributes.attributes.keys().collect();
        assert_eq!(names, ["all", "box", "place", "profile"]);
        assert_eq!(hab.attributes.attributes["profile"].0, AttrType::String);
        assert_eq!(hab.tags, Some(AttrType::String));
        let types = ContextTypes::from_resolved_schema(&json).unwrap();
        let record = types.get(&"Ns::Action::\"go\"".parse().unwrap()).unwrap();
        let place = json!({"place": {"city": "Maubeuge"}});
        assert!(record.build(place.as_object().unwrap(), Vec::new()).is_ok());
        let wrong = json!({"place": {"city": 59}});
        assert!(record
            .build(wrong.as_object().unwrap(), Vec::new())
            .is_err());
    }

    #[test]
    fn primitives_written_with_their_namespace_are_read() {
        let schema = "entity Hab = { a: __cedar::String, b: __cedar::Long, \
                      c: __cedar::Bool, d: Set<__cedar::String>, e: __cedar::datetime };";
        let shapes = EntityShapes::from_resolved_schema(&resolved_schema_json(schema).unwrap());
        let read: Vec<&AttrType> = shapes
            .get("Hab")
            .unwrap()
            .attributes
            .attributes
            .values()
            .map(|(ty, _)| ty)
            .collect();
        let string = AttrType::String;
        let expected = [
            &string,
            &AttrType::Long,
            &AttrType::Bool,
            &AttrType::Set(Box::new(AttrType::String)),
            &AttrType::Extension("datetime".into()),
        ];
        assert_eq!(read, expected);
    }

    #[test]
    fn extension_values_equal_cedars_constructors() {
        use cedar_policy::RestrictedExpression as Expr;
        type Constructor = fn(String) -> Expr;
        let cases: [(&str, &str, Constructor); 4] = [
            ("datetime", "2026-11-22T10:00:00+0100", Expr::new_datetime),
            ("duration", "-1d2h3m4s5ms", Expr::new_duration),
            ("decimal", "12.3456", Expr::new_decimal),
            ("ipaddr", "10.0.0.0/8", Expr::new_ip),
        ];
        for (name, arg, constructor) in cases {
            let expression = constructor(arg.to_owned());
            let cedar = Context::from_pairs([("v".to_owned(), expression)]).unwrap();
            let ast::Context::Value(fields) = cedar.as_ref() else {
                panic!("{name}: not a value")
            };
            assert_eq!(
                evaluate_extension(name, arg).unwrap(),
                fields["v"],
                "{name}"
            );
        }
        assert!(evaluate_extension("decimal", "1.23456").is_err());
        assert!(evaluate_extension("ipaddr", "10.0.0.256").is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_context_equals_cedars_reading(
            categories in proptest::collection::vec("[a-z_\"\\\\é]{0,6}", 0..5),
            count in proptest::option::of(proptest::num::i64::ANY),
            mission in "[a-z\"\\\\ :]{0,6}",
            city in "[A-Za-z é]{0,6}",
            zip in proptest::option::of("[0-9]{5}"),
            seconds in 0u32..86_400,
        ) {
            let mut json = json!({
                "now": {"__extn": {"fn": "datetime", "arg": format!(
                    "2026-11-22T{:02}:{:02}:{:02}Z", seconds / 3600, seconds / 60 % 60, seconds % 60)}},
                "mission": {"__entity": {"type": "Mission", "id": mission}},
                "categories": categories,
                "place": {"city": city},
            });
            if let Some(count) = count {
                json["count"] = json!(count);
            }
            if let Some(zip) = zip {
                json["place"]["zip"] = json!(zip);
            }
            assert_same_as_cedar(json);
        }
    }

    #[test]
    fn a_missing_required_attribute_is_reported() {
        let json = valid();
        let record = consult();
        let mut without = json.as_object().unwrap().clone();
        without.remove("mission");
        assert_eq!(record.missing(&without).collect::<Vec<_>>(), ["mission"]);
    }
}
