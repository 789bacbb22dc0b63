//! A decision request read from its bytes with its context straight into Cedar's
//! values, by the context type the action declares.
//!
//! The general reading ([`AuthzRequest::from_slice`]) builds serde_json values first,
//! each object a map whose keys are hashed with SipHash, and [`crate::context`] then
//! converts the context's values into Cedar's. Together they were 29% of a
//! consultation's instructions (BENCHMARKS.md). This reader does both in one pass.
//! It reads the forms backends send: strings, whole numbers, booleans, `{"type",
//! "id"}` and `"Type::\"id\""` references, extension values as strings, sets and
//! records.
//!
//! On anything else it gives up, and the request is read the general way, whose
//! answer or error is then the one given:
//! - another accepted form (`__entity`, `__extn`, a reference Cedar's parser reads);
//! - a context before the action, or for an action whose context type
//!   [`crate::context`] cannot read;
//! - an error of any kind, and a repeated key.
//!
//! So this reader never words an error and never accepts what the general reading
//! refuses; a property test holds the two readings equal.
//!
//! The fields the decision log records are read by type too, and also kept as the
//! compact JSON text serde_json writes for them (the backend's own text when it is
//! already so), so that the log keeps what the backend sent.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use cedar_policy::{EntityId, EntityTypeName, EntityUid};
use cedar_policy_core::ast;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;
use smol_str::SmolStr;

use crate::api::{plain_text_ref, AuthzRequest, TypeNames, WireContext};
use crate::context::{enumerates, extension_value, AttrType, ContextTypes, RecordType};
use crate::snapshot::Snapshot;
use crate::strict_json::{self, Strict};

/// What the reader reads by: a snapshot's type names and context types.
pub struct Types<'a> {
    pub names: &'a TypeNames,
    pub contexts: &'a ContextTypes,
    /// The snapshot's version, which a context read by its types is for.
    pub version: &'a str,
}

impl<'a> Types<'a> {
    pub fn of(snapshot: &'a Snapshot) -> Self {
        Self {
            names: &snapshot.type_names,
            contexts: &snapshot.context_types,
            version: &snapshot.version,
        }
    }
}

/// The request in `bytes`, its context read by `types`, with the JSON of the
/// `recorded` fields; `None` where the general reading must read it.
pub fn read(bytes: &[u8], types: &Types, recorded: &[String]) -> Option<AuthzRequest> {
    // The whole body checked as UTF-8 at once: read from text, serde_json then
    // checks no string on its own (it did each of a consultation's 18).
    let text = std::str::from_utf8(bytes).ok()?;
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let request = RequestSeed { types, recorded }
        .deserialize(&mut deserializer)
        .ok()?;
    deserializer.end().ok()?;
    Some(request)
}

/// Why this reader stopped; never shown, since the general reading words the error.
fn give_up<E: de::Error>() -> E {
    E::custom("left to the general reading")
}

/// Sets a field read once; a repeated one gives up.
fn set_once<T, E: de::Error>(slot: &mut Option<T>, value: T) -> Result<(), E> {
    match slot.replace(value) {
        None => Ok(()),
        Some(_) => Err(give_up()),
    }
}

struct RequestSeed<'a> {
    types: &'a Types<'a>,
    recorded: &'a [String],
}

impl<'de> DeserializeSeed<'de> for RequestSeed<'_> {
    type Value = AuthzRequest;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<AuthzRequest, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RequestSeed<'_> {
    type Value = AuthzRequest;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a decision request")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AuthzRequest, A::Error> {
        let (mut principal, mut action, mut resource) = (None, None, None);
        let (mut context, mut entities) = (None, None);
        while let Some(Text(field)) = map.next_key()? {
            match field.as_str() {
                "principal" => set_once(&mut principal, map.next_value::<Strict>()?.0)?,
                "action" => set_once(&mut action, map.next_value::<Strict>()?.0)?,
                "resource" => set_once(&mut resource, map.next_value::<Strict>()?.0)?,
                "context" => {
                    let record = action
                        .as_ref()
                        .and_then(|action| self.types.names.parse("action", action).ok())
                        .and_then(|action| self.types.contexts.get(&action))
                        .ok_or_else(give_up)?;
                    let seed = ContextSeed {
                        record,
                        recorded: self.recorded,
                        version: self.types.version,
                    };
                    set_once(&mut context, map.next_value_seed(seed)?)?;
                }
                "entities" => set_once(&mut entities, map.next_value_seed(EntitiesSeed)?)?,
                _ => return Err(give_up()),
            }
        }
        Ok(AuthzRequest {
            principal: principal.ok_or_else(give_up)?,
            action: action.ok_or_else(give_up)?,
            resource: resource.ok_or_else(give_up)?,
            context,
            entities: entities.flatten(),
        })
    }
}

/// The request's entities, read as the general reading reads them.
struct EntitiesSeed;

impl<'de> DeserializeSeed<'de> for EntitiesSeed {
    type Value = Option<Vec<Value>>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        strict_json::array(deserializer)
    }
}

/// A key or an id: short text, kept inline by `SmolStr`.
struct Text(SmolStr);

impl<'de> serde::Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(TextVisitor)
    }
}

struct TextVisitor;

impl Visitor<'_> for TextVisitor {
    type Value = Text;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Text, E> {
        Ok(Text(SmolStr::new(text)))
    }
}

/// The context's top-level record.
struct ContextSeed<'a> {
    record: &'a RecordType,
    recorded: &'a [String],
    version: &'a str,
}

impl<'de> DeserializeSeed<'de> for ContextSeed<'_> {
    type Value = WireContext;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<WireContext, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ContextSeed<'_> {
    type Value = WireContext;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a context object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<WireContext, A::Error> {
        let mut recorded = Vec::new();
        let fields = fields(self.record, &mut map, |name, ty, map| {
            if !self.recorded.iter().any(|kept| kept == name) {
                return map.next_value_seed(ValueSeed(ty));
            }
            let raw: &RawValue = map.next_value()?;
            let (value, json) = read_recorded(raw, ty).ok_or_else(give_up)?;
            recorded.push((SmolStr::new(name), json));
            Ok(value)
        })?;
        Ok(WireContext::Typed {
            version: self.version.to_owned(),
            fields: Arc::new(fields),
            recorded,
        })
    }
}

/// A field the decision log records, read by its type `ty` from its `raw` text,
/// and its JSON as serde_json writes it (compact, escaped as the log escapes): the
/// log keeps what the backend sent, as when the request is read the general way.
fn read_recorded(raw: &RawValue, ty: &AttrType) -> Option<(ast::Value, String)> {
    let text = raw.get();
    let value = ValueSeed(ty)
        .deserialize(&mut serde_json::Deserializer::from_str(text))
        .ok()?;
    if let Some(json) = as_serde_json_writes(text) {
        return Some((value, json.into_owned()));
    }
    let mut json = Vec::with_capacity(text.len());
    serde_transcode::transcode(
        &mut serde_json::Deserializer::from_str(text),
        &mut serde_json::Serializer::new(&mut json),
    )
    .ok()?;
    Some((value, String::from_utf8(json).ok()?))
}

/// The JSON value `json` as serde_json writes it, when that is `json` itself or
/// `json` without the whitespace between its tokens (`{"type": "Mission", "id":
/// "m"}`, as backends that indent send it); `None` when it holds escapes or
/// numbers, which serde_json may write otherwise (`"\u00e9"`, `1E2`, `1.0`).
/// Backends send purposes and categories so; the others are re-written.
fn as_serde_json_writes(json: &str) -> Option<Cow<'_, str>> {
    let mut in_string = false;
    let mut spaced = false;
    for byte in json.bytes() {
        match byte {
            b'\\' => return None,
            b'"' => in_string = !in_string,
            _ if in_string => {}
            b'{' | b'}' | b'[' | b']' | b',' | b':' => {}
            b' ' | b'\t' | b'\n' | b'\r' => spaced = true,
            _ if byte.is_ascii_lowercase() => {}
            _ => return None,
        }
    }
    if !spaced {
        return Some(Cow::Borrowed(json));
    }
    // Copied in runs between the whitespace bytes (ASCII, so on char boundaries).
    let mut compact = String::with_capacity(json.len());
    let (mut in_string, mut run) = (false, 0);
    for (at, byte) in json.bytes().enumerate() {
        in_string ^= byte == b'"';
        if !in_string && byte.is_ascii_whitespace() {
            compact.push_str(&json[run..at]);
            run = at + 1;
        }
    }
    compact.push_str(&json[run..]);
    Some(Cow::Owned(compact))
}

/// A value of a declared type.
#[derive(Clone, Copy)]
struct ValueSeed<'a>(&'a AttrType);

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = ast::Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<ast::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = ast::Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a value of the declared type")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<ast::Value, E> {
        match self.0 {
            AttrType::String => Ok(ast::Value::from(text)),
            AttrType::Entity {
                name,
                type_name,
                eids,
            } => match plain_text_ref(text) {
                Some((ty, id)) if ty == name => entity(type_name, eids.as_deref(), id),
                _ => Err(give_up()),
            },
            AttrType::Extension(name) => extension_value(name, text).map_err(|_| give_up()),
            _ => Err(give_up()),
        }
    }

    fn visit_i64<E: de::Error>(self, number: i64) -> Result<ast::Value, E> {
        match self.0 {
            AttrType::Long => Ok(ast::Value::from(number)),
            _ => Err(give_up()),
        }
    }

    fn visit_u64<E: de::Error>(self, number: u64) -> Result<ast::Value, E> {
        let number = i64::try_from(number).map_err(|_| give_up())?;
        self.visit_i64(number)
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<ast::Value, E> {
        match self.0 {
            AttrType::Bool => Ok(ast::Value::from(value)),
            _ => Err(give_up()),
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ast::Value, A::Error> {
        let AttrType::Set(element) = self.0 else {
            return Err(give_up());
        };
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element_seed(ValueSeed(element))? {
            items.push(item);
        }
        Ok(ast::Value::set(items, None))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ast::Value, A::Error> {
        match self.0 {
            AttrType::Entity {
                name,
                type_name,
                eids,
            } => {
                let (ty, id) = type_and_id(map)?;
                if ty != name.as_str() {
                    return Err(give_up());
                }
                entity(type_name, eids.as_deref(), &id)
            }
            AttrType::Record(record) => self::record(record, map),
            _ => Err(give_up()),
        }
    }
}

/// `{"type": …, "id": …}`, both strings, in either order, and nothing else.
fn type_and_id<'de, A: MapAccess<'de>>(mut map: A) -> Result<(SmolStr, SmolStr), A::Error> {
    let (mut ty, mut id) = (None, None);
    while let Some(Text(key)) = map.next_key()? {
        let slot = match key.as_str() {
            "type" => &mut ty,
            "id" => &mut id,
            _ => return Err(give_up()),
        };
        set_once(slot, map.next_value::<Text>()?.0)?;
    }
    Ok((ty.ok_or_else(give_up)?, id.ok_or_else(give_up)?))
}

/// A reference to entity `id` of type `type_name`, one of `eids` when the schema
/// enumerates them.
fn entity<E: de::Error>(
    type_name: &EntityTypeName,
    eids: Option<&[String]>,
    id: &str,
) -> Result<ast::Value, E> {
    if !enumerates(eids, id) {
        return Err(give_up());
    }
    let uid = EntityUid::from_type_name_and_id(type_name.clone(), EntityId::new(id));
    Ok(ast::Value::from(ast::EntityUID::from(uid)))
}

/// A record of the declared attributes, each once, the required ones all there.
fn record<'de, A: MapAccess<'de>>(record: &RecordType, mut map: A) -> Result<ast::Value, A::Error> {
    let fields = fields(record, &mut map, |_, ty, map| {
        map.next_value_seed(ValueSeed(ty))
    })?;
    if record
        .missing_where(|name| fields.contains_key(name))
        .next()
        .is_some()
    {
        return Err(give_up());
    }
    Ok(ast::Value::record_arc(Arc::new(fields), None))
}

/// The attributes in `map`, each declared by `record` and there once, each value
/// read by `read`.
fn fields<'de, A: MapAccess<'de>>(
    record: &RecordType,
    map: &mut A,
    mut read: impl FnMut(&str, &AttrType, &mut A) -> Result<ast::Value, A::Error>,
) -> Result<BTreeMap<SmolStr, ast::Value>, A::Error> {
    let mut fields = BTreeMap::new();
    while let Some(Text(name)) = map.next_key()? {
        let (ty, _) = record.attributes.get(name.as_str()).ok_or_else(give_up)?;
        let value = read(&name, ty, map)?;
        if fields.insert(name, value).is_some() {
            return Err(give_up());
        }
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    use super::*;

    const SCHEMA: &str = r#"
        entity User; entity Mission; entity Channel enum ["web", "api"];
        action consult appliesTo { principal: User, resource: User, context: {
            now: datetime, mission: Mission, categories: Set<String>, count?: Long,
            flag?: Bool, channel?: Channel, addr?: ipaddr,
            place?: { city: String, zip?: String } } };
    "#;

    /// Each attribute's candidate values, the first the most common: the forms this
    /// reader reads, forms only the general reading reads, and errors of every kind.
    const VALUES: &[(&str, &[&str])] = &[
        (
            "now",
            &[
                r#""2026-11-22T10:00:00Z""#,
                r#""2026-11-22""#,
                r#""not a date""#,
                r#"{"__extn": {"fn": "datetime", "arg": "2026-11-22"}}"#,
                "1",
            ],
        ),
        (
            "mission",
            &[
                r#"{"type": "Mission", "id": "m"}"#,
                r#"{"id": "m é", "type": "Mission"}"#,
                r#"{"type":"Mission","id":"\u006d\/"}"#,
                r#""Mission::\"m\"""#,
                r#""Mission::\"a\\\"b\"""#,
                r#"{"type": "User", "id": "u"}"#,
                r#"{"__entity": {"type": "Mission", "id": "m"}}"#,
                r#"{"type": "Mission"}"#,
                r#"{"type": "Mission", "id": "m", "id": "n"}"#,
                r#"{"type": "Mission", "id": 3}"#,
                "null",
            ],
        ),
        (
            "categories",
            &[
                "[]",
                r#"["rsa"]"#,
                r#"["rsa", "rsa", "x\u00e9"]"#,
                r#"["x\u00e9","y"]"#,
                "[1]",
                r#""rsa""#,
            ],
        ),
        (
            "count",
            &[
                "3",
                "-7",
                "1.5",
                "9223372036854775807",
                "9223372036854775808",
                r#""3""#,
            ],
        ),
        ("flag", &["true", "false", "0"]),
        (
            "channel",
            &[
                r#"{"type": "Channel", "id": "web"}"#,
                r#"{"type": "Channel", "id": "fax"}"#,
                r#""Channel::\"api\"""#,
            ],
        ),
        (
            "addr",
            &[
                r#""10.0.0.1""#,
                r#""10.0.0.256""#,
                r#"{"fn": "ip", "arg": "10.0.0.1"}"#,
            ],
        ),
        (
            "place",
            &[
                r#"{"city": "M"}"#,
                r#"{"zip": "59600", "city": "M"}"#,
                r#"{"zip": "1"}"#,
                r#"{"city": "M", "x": 1}"#,
                r#"{"city": "M", "city": "N"}"#,
                r#"{"city": 3}"#,
            ],
        ),
        ("extra", &["1"]),
    ];

    /// A request's text: some of the attributes, each with one of its candidate
    /// values (mostly the first), in any order, one of them maybe twice, the context
    /// maybe before the action.
    fn request_text() -> impl Strategy<Value = String> {
        let attributes = VALUES
            .iter()
            .map(|(name, values)| {
                let value = prop_oneof![4 => Just(values[0]), 1 => prop::sample::select(*values)];
                let present = if *name == "extra" { 0.05 } else { 0.7 };
                prop::option::weighted(present, value)
                    .prop_map(move |value| value.map(|v| format!("\"{name}\": {v}")))
            })
            .collect::<Vec<_>>();
        (attributes, any::<prop::sample::Index>(), prop::bool::weighted(0.1), any::<bool>())
            .prop_flat_map(|(attributes, repeated, twice, context_first)| {
                let mut members: Vec<String> = attributes.into_iter().flatten().collect();
                if twice && !members.is_empty() {
                    members.push(repeated.get(&members).clone());
                }
                Just(members).prop_shuffle().prop_map(move |members| {
                    let context = format!("\"context\": {{{}}}", members.join(", "));
                    let action = r#""action": "Action::\"consult\"""#;
                    let (first, second) = if context_first { (&context[..], action) } else { (action, &context[..]) };
                    format!(r#"{{"principal": "User::\"p\"", {first}, {second}, "resource": "User::\"r\""}}"#)
                })
            })
    }

    /// Whenever this reader reads a request, the general reading reads it too, into
    /// the same context and the same recorded JSON; and it reads most requests in
    /// the forms backends send.
    #[test]
    fn reads_only_as_the_general_reading_reads() {
        let contexts = ContextTypes::from_schema_text(SCHEMA).unwrap();
        let names =
            TypeNames::new(["User", "Mission", "Channel", "Action"].map(|n| n.parse().unwrap()));
        let types = Types {
            names: &names,
            contexts: &contexts,
            version: "v",
        };
        let record = contexts
            .get(&"Action::\"consult\"".parse().unwrap())
            .unwrap();
        let recorded = ["mission".to_owned(), "categories".to_owned()];
        let (typed_ok, general_ok) = (Cell::new(0u32), Cell::new(0u32));
        let mut runner = TestRunner::new(Config::with_cases(3000));
        runner
            .run(&(request_text(), 0..=2usize), |(text, kept)| {
                let recorded = &recorded[..kept];
                let general = AuthzRequest::from_slice(text.as_bytes())
                    .ok()
                    .and_then(|request| {
                        let Some(WireContext::Json(json)) = request.context else {
                            return None;
                        };
                        let built = record.build(&json, Vec::new()).ok()?;
                        Some((built, json))
                    });
                general_ok.set(general_ok.get() + u32::from(general.is_some()));
                let Some(typed) = read(text.as_bytes(), &types, recorded) else {
                    return Ok(());
                };
                typed_ok.set(typed_ok.get() + 1);
                let Some((built, json)) = general else {
                    return Err(TestCaseError::fail(format!(
                        "read what the general reading refuses: {text}"
                    )));
                };
                let Some(WireContext::Typed {
                    fields,
                    recorded: kept_json,
                    version,
                }) = typed.context
                else {
                    return Err(TestCaseError::fail(format!("no typed context: {text}")));
                };
                prop_assert_eq!(version, "v");
                prop_assert_eq!(&ast::Context::Value(fields), built.as_ref(), "{}", text);
                // As the log writes them from the general reading: serde_json's text.
                let expected: Vec<(SmolStr, String)> = json
                    .iter()
                    .filter(|(name, _)| recorded.contains(name))
                    .map(|(name, value)| (name.into(), value.to_string()))
                    .collect();
                prop_assert_eq!(kept_json, expected, "{}", text);
                Ok(())
            })
            .unwrap();
        assert!(
            general_ok.get() > 300,
            "too few valid requests: {}",
            general_ok.get()
        );
        assert!(
            typed_ok.get() * 10 >= general_ok.get() * 4,
            "read {} of the {} requests the general reading read",
            typed_ok.get(),
            general_ok.get()
        );
    }
}
