//! The JSON wire contract: decision requests and responses, batch envelopes and
//! the error body. Shared by the HTTP server and the offline CLI commands.
//!
//! An entity reference is either Cedar's text form `"Type::\"id\""` or the object
//! `{"type": "Type", "id": "id"}` (as cedar-agent and Cedar's tools write it), or
//! `{"__entity": {"type": …, "id": …}}`, with no other key. A key repeated in any
//! object of a request is refused ([`crate::strict_json`]).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::{EntityId, EntityTypeName, EntityUid};
use cedar_policy_core::ast;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use smol_str::SmolStr;

use crate::fast_hash::HashMap;
use crate::load::Lines;
use crate::strict_json;

/// Most requests one batch may carry.
pub const DEFAULT_MAX_BATCH: usize = 100;

/// One decision request, as received.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthzRequest {
    #[serde(deserialize_with = "strict_json::value")]
    pub principal: Value,
    #[serde(deserialize_with = "strict_json::value")]
    pub action: Value,
    #[serde(deserialize_with = "strict_json::value")]
    pub resource: Value,
    #[serde(default, deserialize_with = "json_context")]
    pub context: Option<WireContext>,
    /// Entities added to the stored ones for this decision only.
    #[serde(default, deserialize_with = "strict_json::array")]
    pub entities: Option<Vec<Value>>,
}

/// A request's context, as read.
#[derive(Debug, Clone)]
pub enum WireContext {
    /// As JSON, every key checked unique ([`AuthzRequest::from_slice`]).
    Json(Map<String, Value>),
    /// Straight into Cedar's values by the action's declared context type
    /// ([`crate::typed_request`]), for the snapshot of version `version` only; with
    /// the fields the decision log records, each as compact JSON text.
    Typed {
        version: String,
        fields: Arc<BTreeMap<SmolStr, ast::Value>>,
        recorded: Vec<(SmolStr, String)>,
    },
}

/// A context field as the decision log records it: the JSON the backend sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RecordedValue<'a> {
    Json(&'a Value),
    /// As serde_json writes it: compact, escaped as serde_json escapes.
    Compact(&'a str),
}

impl WireContext {
    pub fn contains_key(&self, name: &str) -> bool {
        match self {
            WireContext::Json(json) => json.contains_key(name),
            WireContext::Typed { fields, .. } => fields.contains_key(name),
        }
    }

    /// The names of the context's attributes.
    pub fn keys(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        match self {
            WireContext::Json(json) => Box::new(json.keys().map(String::as_str)),
            WireContext::Typed { fields, .. } => Box::new(fields.keys().map(SmolStr::as_str)),
        }
    }

    /// Field `name` as the decision log records it, if the request has it and,
    /// for a typed context, it was read to be recorded.
    pub fn recorded(&self, name: &str) -> Option<RecordedValue<'_>> {
        match self {
            WireContext::Json(json) => json.get(name).map(RecordedValue::Json),
            WireContext::Typed { recorded, .. } => recorded
                .iter()
                .find(|(kept, _)| kept == name)
                .map(|(_, text)| RecordedValue::Compact(text)),
        }
    }
}

fn json_context<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<WireContext>, D::Error> {
    strict_json::object(deserializer).map(|json| json.map(WireContext::Json))
}

/// A batch envelope. Each item is kept as its text in the body and read as a single
/// request is: a problem of an item, a repeated key included, is that item's result.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest<'a> {
    #[serde(borrow)]
    pub requests: Vec<&'a RawValue>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Outcome {
    Allow,
    Deny,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allow => "Allow",
            Outcome::Deny => "Deny",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diagnostics {
    /// The `@id`s of the policies that determined the decision, in id order.
    pub reason: Vec<String>,
    /// Evaluation errors, each naming its policy, in the order of those names. Any
    /// error makes the decision Deny.
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuthzResponse {
    pub decision: Outcome,
    pub diagnostics: Diagnostics,
    pub policy_version: String,
    pub decision_id: String,
}

/// A batch result: a decision, or the error that kept this request from one.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum BatchItem {
    Decided(AuthzResponse),
    Failed { error: ErrorBody },
}

#[derive(Debug, Serialize)]
pub struct BatchResponse {
    pub results: Vec<BatchItem>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorBody {
    pub code: &'static str,
    pub message: String,
}

/// The longest error message sent back, in bytes: an error quoting the request (an
/// id, a reference, a context value) quotes at most this much of it.
pub const MAX_ERROR_MESSAGE: usize = 1024;

impl ErrorBody {
    /// The error `code` with its `message` cut after [`MAX_ERROR_MESSAGE`] bytes (at a
    /// character's end), saying how long the whole message was.
    pub fn new(code: &'static str, message: String) -> Self {
        Self {
            code,
            message: cut_message(message),
        }
    }
}

/// `message` cut after [`MAX_ERROR_MESSAGE`] bytes (at a character's end), saying how
/// long the whole message was: for any message that may quote the request.
pub fn cut_message(mut message: String) -> String {
    if message.len() > MAX_ERROR_MESSAGE {
        let whole = message.len();
        let cut = (0..=MAX_ERROR_MESSAGE)
            .rev()
            .find(|&at| message.is_char_boundary(at))
            .unwrap_or(0);
        message.truncate(cut);
        message.push_str(&format!("… (cut: {whole} bytes in all)"));
    }
    message
}

/// Why a request could not be decided. Each variant is a client error (4xx).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    #[error("malformed JSON: {0}")]
    MalformedJson(JsonError),
    #[error("{field}: {reason}")]
    InvalidEntityRef { field: &'static str, reason: String },
    #[error("{field}: unknown entity type `{type_name}` (not in the schema)")]
    UnknownEntityType {
        field: &'static str,
        type_name: String,
    },
    #[error("action: unknown action {0} (not in the schema)")]
    UnknownAction(String),
    #[error("{field}: entity {uid} is neither stored nor in the request's entities")]
    UnknownEntity { field: &'static str, uid: String },
    /// A trace reader named in `X-Cdap-Principal` (a trace read brings no entities).
    #[error("X-Cdap-Principal: {0} is not a stored entity")]
    UnknownCaller(String),
    #[error("context: {0}")]
    InvalidContext(String),
    #[error("entities: {0}")]
    InvalidEntities(String),
    #[error("entities: {0} is already stored; request entities may add entities, never replace stored ones")]
    EntityConflict(String),
    #[error("entities: {0} is of a type whose tags the sidecar derives from the stored entities (schema/derived.json); a request may not bring one")]
    DerivedType(String),
    #[error("entities: {0} has tags, which the sidecar derives for its type from the stored entities (schema/derived.json); a request may bring one only without tags")]
    DerivedTags(String),
    #[error("request does not match the schema: {0}")]
    InvalidRequest(String),
    #[error("batch of {count} requests is over the limit of {max}")]
    BatchTooLarge { count: usize, max: usize },
    #[error("context: `{0}` is the sidecar's clock; a request may not set it (serve --trust-request-time lets tests and replays pin it)")]
    TimeNotAccepted(String),
    #[error("principal: {0} is not a stored entity; a request may not bring its own principal (serve --request-principals allows it)")]
    PrincipalNotStored(String),
    #[error("entities: {0} is named by stored entities (as a parent, or in an attribute or tag) but is not stored; a request may not define it (serve --request-principals allows it)")]
    CompletesStoredEntities(String),
}

/// serde_json's reading error: its message, and the line and column it was found at.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonError {
    message: String,
    at: Option<(usize, usize)>,
}

impl From<serde_json::Error> for JsonError {
    fn from(error: serde_json::Error) -> Self {
        let (line, column) = (error.line(), error.column());
        let whole = error.to_string();
        // serde_json writes the position last, and line 0 for an error without one.
        let located = format!(" at line {line} column {column}");
        match whole.strip_suffix(&located) {
            Some(message) if line > 0 => Self {
                message: message.to_owned(),
                at: Some((line, column)),
            },
            _ => Self {
                message: whole,
                at: None,
            },
        }
    }
}

impl JsonError {
    /// This error of a text that starts at byte `start` of `whole`, placed in `whole`.
    fn within(self, whole: &[u8], start: usize) -> Self {
        let (first_line, first_column) = Lines::new(whole).at(start);
        let at = self.at.map(|(line, column)| match line {
            1 => (first_line, first_column - 1 + column),
            _ => (first_line + line - 1, column),
        });
        Self { at, ..self }
    }
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        match self.at {
            Some((line, column)) => write!(f, " at line {line} column {column}"),
            None => Ok(()),
        }
    }
}

impl RequestError {
    /// This error of a request whose text starts at byte `start` of `body` (a batch
    /// item), with a JSON error's position given in `body`.
    pub fn within(self, body: &[u8], start: usize) -> Self {
        match self {
            RequestError::MalformedJson(error) => {
                RequestError::MalformedJson(error.within(body, start))
            }
            other => other,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            RequestError::MalformedJson(_) => "malformed_json",
            RequestError::InvalidEntityRef { .. } => "invalid_entity_ref",
            RequestError::UnknownEntityType { .. } => "unknown_entity_type",
            RequestError::UnknownAction(_) => "unknown_action",
            RequestError::UnknownEntity { .. } | RequestError::UnknownCaller(_) => "unknown_entity",
            RequestError::InvalidContext(_) => "invalid_context",
            RequestError::InvalidEntities(_) => "invalid_entities",
            RequestError::EntityConflict(_)
            | RequestError::DerivedType(_)
            | RequestError::DerivedTags(_) => "entity_conflict",
            RequestError::InvalidRequest(_) => "invalid_request",
            RequestError::BatchTooLarge { .. } => "batch_too_large",
            RequestError::TimeNotAccepted(_) => "time_not_accepted",
            RequestError::PrincipalNotStored(_) => "principal_not_stored",
            RequestError::CompletesStoredEntities(_) => "entity_conflict",
        }
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody::new(self.code(), self.to_string())
    }
}

impl AuthzRequest {
    pub fn from_slice(bytes: &[u8]) -> Result<Self, RequestError> {
        object_from_slice(bytes)
    }
}

/// Where `item`, read from `body`, starts in it; `None` if its text is not in
/// `body` (it always is: serde_json borrows it).
pub fn offset_in(body: &[u8], item: &RawValue) -> Option<usize> {
    let text = item.get().as_bytes();
    let start = text.as_ptr().addr().checked_sub(body.as_ptr().addr())?;
    (start.checked_add(text.len())? <= body.len()).then_some(start)
}

impl<'a> BatchRequest<'a> {
    pub fn from_slice(bytes: &'a [u8]) -> Result<Self, RequestError> {
        object_from_slice(bytes)
    }
}

/// A `T` from the bytes of one JSON object (and nothing after it).
fn object_from_slice<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, RequestError> {
    let malformed = |e: serde_json::Error| RequestError::MalformedJson(e.into());
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let read = strict_json::struct_from_object(&mut deserializer).map_err(malformed)?;
    deserializer.end().map_err(malformed)?;
    Ok(read)
}

/// The entity type names of a schema, so that references to them are read without
/// Cedar's parser (whose lexer costs about a microsecond a reference); any other
/// reference goes through [`parse_entity_ref`], which gives the same uid.
#[derive(Debug, Default)]
pub struct TypeNames(HashMap<String, EntityTypeName>);

impl TypeNames {
    pub fn new(names: impl IntoIterator<Item = EntityTypeName>) -> Self {
        Self(names.into_iter().map(|n| (n.to_string(), n)).collect())
    }

    /// Parses an entity reference in either accepted shape.
    pub fn parse(&self, field: &'static str, value: &Value) -> Result<EntityUid, RequestError> {
        match plain_ref(value).and_then(|(ty, id)| Some((self.0.get(ty)?, id))) {
            Some((type_name, id)) => Ok(EntityUid::from_type_name_and_id(
                type_name.clone(),
                EntityId::new(id),
            )),
            None => parse_entity_ref(field, value),
        }
    }
}

/// The type name and id of a reference that needs no parser: the object form, or
/// the text form `Type::"id"` whose id is printable ASCII with no quote, apostrophe
/// or backslash (Cedar accepts ids only in the form `escape_debug` leaves alone;
/// anything else goes to Cedar's parser).
pub fn plain_ref(value: &Value) -> Option<(&str, &str)> {
    match value {
        Value::String(text) => plain_text_ref(text),
        Value::Object(map) => {
            let (type_name, id) = object_ref(map)?;
            Some((type_name.as_str()?, id.as_str()?))
        }
        _ => None,
    }
}

/// The text form of [`plain_ref`].
pub fn plain_text_ref(text: &str) -> Option<(&str, &str)> {
    // Split at the first quote, which must follow `::` (a type name has none): a
    // search for one byte, where a search for `::"` sets up a substring searcher.
    let (head, quoted) = text.split_once('"')?;
    let type_name = head.strip_suffix("::")?;
    let id = quoted.strip_suffix('"')?;
    id.bytes()
        .all(|b| matches!(b, b' '..=b'~') && !matches!(b, b'"' | b'\'' | b'\\'))
        .then_some((type_name, id))
}

/// The `type` and `id` of an object reference: exactly `{"type", "id"}`, or exactly
/// `{"__entity": {"type", "id"}}` (any other key would leave readers disagreeing on
/// which entity is meant).
///
/// The keys are compared in turn: a map's own look-up would hash each key (with
/// SipHash), three times a reference, where two or one keys are all there is.
fn object_ref(map: &Map<String, Value>) -> Option<(&Value, &Value)> {
    let map = match map.iter().next() {
        Some((key, Value::Object(inner))) if key == "__entity" && map.len() == 1 => inner,
        _ => map,
    };
    let mut fields = map.iter().map(|(key, value)| (key.as_str(), value));
    match (fields.next()?, fields.next()?, fields.next()) {
        (("type", type_name), ("id", id), None) | (("id", id), ("type", type_name), None) => {
            Some((type_name, id))
        }
        _ => None,
    }
}

/// Parses an entity reference in either accepted shape.
pub fn parse_entity_ref(field: &'static str, value: &Value) -> Result<EntityUid, RequestError> {
    let invalid = |reason: String| RequestError::InvalidEntityRef { field, reason };
    match value {
        Value::String(text) => EntityUid::from_str(text).map_err(|e| {
            invalid(format!(
                "`{text}` is not an entity reference like \"Type::\\\"id\\\"\": {e} (Cedar \
                 reads an id as it displays it, escapes only where it escapes; the \
                 {{\"type\", \"id\"}} form takes any id as it is)"
            ))
        }),
        Value::Object(map) => {
            let Some((Value::String(type_name), Value::String(id))) = object_ref(map) else {
                return Err(invalid(
                    "expected {\"type\": \"…\", \"id\": \"…\"} (two strings, no other key) \
                     or {\"__entity\": {\"type\": \"…\", \"id\": \"…\"}}"
                        .into(),
                ));
            };
            let type_name = EntityTypeName::from_str(type_name)
                .map_err(|e| invalid(format!("`{type_name}` is not an entity type name: {e}")))?;
            Ok(EntityUid::from_type_name_and_id(
                type_name,
                EntityId::new(id),
            ))
        }
        other => Err(invalid(format!(
            "expected \"Type::\\\"id\\\"\" or {{\"type\", \"id\"}}, found {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn entity_refs_in_text_and_object_forms_are_equal() {
        let text = parse_entity_ref("principal", &json!("User::\"alice\"")).unwrap();
        let object =
            parse_entity_ref("principal", &json!({"type": "User", "id": "alice"})).unwrap();
        let escaped = parse_entity_ref(
            "principal",
            &json!({"__entity": {"type": "User", "id": "alice"}}),
        )
        .unwrap();
        let reversed =
            parse_entity_ref("principal", &json!({"id": "alice", "type": "User"})).unwrap();
        assert_eq!(text, object);
        assert_eq!(text, escaped);
        assert_eq!(text, reversed);
    }

    #[test]
    fn bad_entity_refs_name_their_field() {
        for bad in [
            json!("alice"),
            json!({"type": "User"}),
            json!(42),
            json!({"type": "9x", "id": "a"}),
            json!({"type": "User", "id": "a", "role": "x"}),
            json!({"__entity": {"type": "User", "id": "a"}, "type": "Caf", "id": "x"}),
            json!({"__entity": {"type": "User", "id": "a", "x": 1}}),
            json!({"__entity": "User::\"a\""}),
            json!({"id": "a", "__entity": {"type": "User", "id": "a"}}),
            json!({"type": "User", "type2": "User"}),
        ] {
            let err = parse_entity_ref("resource", &bad).unwrap_err();
            assert_eq!(err.code(), "invalid_entity_ref", "{bad}");
            assert!(err.to_string().starts_with("resource: "), "{err}");
        }
    }

    /// The schema-free parse, by Cedar, is the reference the fast path must equal.
    fn assert_same_as_cedar(names: &TypeNames, value: &Value) {
        let fast = names.parse("principal", value);
        let cedar = parse_entity_ref("principal", value);
        assert_eq!(fast, cedar, "{value}");
    }

    #[test]
    fn known_type_names_parse_as_cedar_does() {
        let names = TypeNames::new(["User", "Ns::Doc"].map(|n| n.parse().unwrap()));
        for value in [
            json!("User::\"alice\""),
            json!("Ns::Doc::\"a b::c\""),
            json!("User::\"\""),
            json!("User::\"al\\\"ice\""),
            json!("User::\"tab\\tbed\""),
            json!("User::\"uni\\u{e9}\""),
            json!("User::\"it's\""),
            json!("User::\"tab\tin\""),
            json!("User::\"\u{301}accent first\""),
            json!("User::\"nbsp\u{a0}\""),
            json!("User :: \"spaced\""),
            json!("User::\"unterminated"),
            json!("User::\"two\" \"ids\""),
            json!("Us\"er::\"x\""),
            json!("\"User::\"x\""),
            json!("User:\"x\"::\"y\""),
            json!("Other::\"x\""),
            json!({"type": "User", "id": "al\"ice"}),
            json!({"__entity": {"type": "Ns::Doc", "id": "d"}}),
            json!({"type": "User"}),
        ] {
            assert_same_as_cedar(&names, &value);
        }
    }

    proptest::proptest! {
        #[test]
        fn any_text_reference_parses_as_cedar_does(
            id in "[a-z\"'\\\\ :{}u0-9é*\n\t\r\u{0}\u{a0}\u{200b}\u{301}]{0,8}",
            ty in "(User|Ns::Doc|Other|User )",
        ) {
            let names = TypeNames::new(["User", "Ns::Doc"].map(|n| n.parse().unwrap()));
            assert_same_as_cedar(&names, &Value::String(format!("{ty}::\"{id}\"")));
            assert_same_as_cedar(&names, &json!({"type": ty, "id": id}));
        }
    }

    #[test]
    fn a_key_repeated_anywhere_in_a_request_is_refused() {
        let request = |inner: &str| {
            format!(
                r#"{{"principal":"User::\"a\"","action":"Action::\"x\"","resource":"File::\"f\"",{inner}}}"#
            )
        };
        for body in [
            request(r#""context":{"authentication":"shared_account","authentication":"password"}"#),
            request(r#""context":{"m":{"type":"Mission","id":"a","id":"b"}}"#),
            request(r#""entities":[{"uid":{"type":"File","id":"f"},"attrs":{"caf":1,"caf":2}}]"#),
            r#"{"principal":{"type":"User","type":"Caf","id":"a"},"action":"Action::\"x\"","resource":"File::\"f\""}"#.to_owned(),
        ] {
            let err = AuthzRequest::from_slice(body.as_bytes()).unwrap_err();
            assert_eq!(err.code(), "malformed_json", "{body}");
            assert!(err.to_string().contains("duplicate key"), "{body}: {err}");
        }
        let err = BatchRequest::from_slice(br#"{"requests":[],"requests":[]}"#).unwrap_err();
        assert!(err.to_string().contains("duplicate field"), "{err}");
    }

    #[test]
    fn a_json_error_of_a_batch_item_is_placed_in_the_body() {
        let body = b"{\"requests\": [\n  {\"principal\": 1,\n\"x\": 2}, {\"y\": 3}]}";
        let batch = BatchRequest::from_slice(body).unwrap();
        let placed = |item: &RawValue| {
            let error = AuthzRequest::from_slice(item.get().as_bytes()).unwrap_err();
            let start = offset_in(body, item).unwrap();
            (error.to_string(), error.within(body, start).to_string())
        };
        let (alone, placed_first) = placed(batch.requests[0]);
        assert!(alone.ends_with("at line 2 column 3"), "{alone}");
        assert!(
            placed_first.ends_with("at line 3 column 3"),
            "{placed_first}"
        );
        let (alone, placed_second) = placed(batch.requests[1]);
        assert!(alone.ends_with("at line 1 column 4"), "{alone}");
        assert!(
            placed_second.ends_with("at line 3 column 13"),
            "{placed_second}"
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = AuthzRequest::from_slice(br#"{"principal":"User::\"a\"","action":"Action::\"x\"","resource":"File::\"f\"","contxt":{}}"#)
            .unwrap_err();
        assert_eq!(err.code(), "malformed_json");
        assert!(err.to_string().contains("contxt"), "{err}");
    }
}
