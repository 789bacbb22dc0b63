//! One decision-log record, its canonical line and the hash chaining it to the
//! record before it.
//!
//! A line is the record's JSON (fields in declaration order, no `hash`), then
//! `,"hash":"<hex>"}` appended in place of the closing brace. The hash is
//! `sha256(prev_hash || canonical line without the hash)`, hex encoded; `prev`
//! is inside the hashed text, so the chain can be checked from any line on. The
//! first record ever written has `prev` = [`GENESIS`].

use std::fmt::Write;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::api::{RecordedValue, WireContext};

/// The `prev` of the first record of a log.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const HASH_KEY: &str = ",\"hash\":\"";

/// What one decision leaves in the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Position in the whole log, from 0, continuing across files.
    pub seq: u64,
    /// Hash of the record before this one ([`GENESIS`] for the first).
    pub prev: String,
    /// Decision time, RFC 3339 UTC with microseconds.
    pub time: String,
    pub decision_id: String,
    pub principal: String,
    pub action: String,
    pub resource: String,
    /// The partner the principal works for (id of its `partner` entity), if any.
    pub partner: Option<String>,
    /// The Caf of the resource, of the principal, or of the partner, if any.
    pub caf: Option<String>,
    /// The recorded context fields (by default the purpose and data categories).
    pub context: Map<String, Value>,
    pub decision: String,
    /// Determining policies.
    pub reason: Vec<String>,
    pub errors: Vec<String>,
    pub policy_version: String,
    pub latency_us: u64,
}

/// The fields of a record that the writer does not assign, borrowed from the
/// decision. Written in this order, after `seq` and `prev`.
#[derive(Debug, Clone, Copy)]
pub struct Fields<'a> {
    pub time: &'a str,
    pub decision_id: &'a str,
    pub principal: &'a str,
    pub action: &'a str,
    pub resource: &'a str,
    pub partner: Option<&'a str>,
    pub caf: Option<&'a str>,
    pub context: RecordedContext<'a>,
    pub decision: &'a str,
    pub reason: &'a [String],
    pub errors: &'a [String],
    pub policy_version: &'a str,
    pub latency_us: u64,
}

impl Fields<'_> {
    /// The fields as one compact JSON object, the text serde_json writes for them
    /// (a test holds the two equal), with strings copied whole when they have
    /// nothing to escape.
    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        let texts = [
            ("time", self.time),
            ("decision_id", self.decision_id),
            ("principal", self.principal),
            ("action", self.action),
            ("resource", self.resource),
        ];
        for (name, text) in texts {
            push_key(out, name);
            push_json_string(out, text);
        }
        for (name, text) in [("partner", self.partner), ("caf", self.caf)] {
            push_key(out, name);
            push_json_option(out, text);
        }
        push_key(out, "context");
        self.context.write_json(out);
        push_key(out, "decision");
        push_json_string(out, self.decision);
        for (name, texts) in [("reason", self.reason), ("errors", self.errors)] {
            push_key(out, name);
            push_json_strings(out, texts);
        }
        push_key(out, "policy_version");
        push_json_string(out, self.policy_version);
        push_key(out, "latency_us");
        serde_json::to_writer(&mut *out, &self.latency_us).expect("a number always serializes");
        out.push(b'}');
    }
}

/// The context fields a record keeps: those of `names` the request's context has.
#[derive(Debug, Clone, Copy)]
pub struct RecordedContext<'a> {
    pub names: &'a [String],
    pub context: Option<&'a WireContext>,
}

impl RecordedContext<'_> {
    fn write_json(&self, out: &mut Vec<u8>) {
        let kept = self.names.iter().filter_map(|name| {
            let value = self.context?.recorded(name)?;
            Some((name.as_str(), value))
        });
        push_json_object(out, kept, |out, value| match value {
            RecordedValue::Json(value) => push_json_value(out, value),
            RecordedValue::Compact(json) => out.extend_from_slice(json.as_bytes()),
        });
    }
}

/// A context value as serde_json writes it; strings, arrays and objects (a
/// purpose, data categories, an entity reference) without its serializer.
fn push_json_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::String(text) => push_json_string(out, text),
        Value::Array(items) => push_json_list(out, items, push_json_value),
        Value::Object(fields) => {
            let fields = fields.iter().map(|(name, v)| (name.as_str(), v));
            push_json_object(out, fields, push_json_value);
        }
        other => serde_json::to_writer(&mut *out, other).expect("a JSON value always serializes"),
    }
}

/// `{"name":value,…}`, each value written by `push`.
fn push_json_object<'n, V>(
    out: &mut Vec<u8>,
    fields: impl Iterator<Item = (&'n str, V)>,
    push: impl Fn(&mut Vec<u8>, V),
) {
    out.push(b'{');
    for (n, (name, value)) in fields.enumerate() {
        if n > 0 {
            out.push(b',');
        }
        push_json_string(out, name);
        out.push(b':');
        push(out, value);
    }
    out.push(b'}');
}

/// `text` as a JSON string, escaped as serde_json escapes it (quote, backslash and
/// control characters; nothing else).
fn push_json_string(out: &mut Vec<u8>, text: &str) {
    // Most strings (ids, times, policy names) have nothing to escape: copied whole.
    let needs_escape = text.bytes().fold(false, |found, b| {
        found | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if needs_escape {
        serde_json::to_writer(out, text).expect("a string always serializes");
    } else {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    }
}

/// `text` as the writer writes it in a line: a JSON string, quotes included.
pub(super) fn json_string(text: &str) -> String {
    let mut out = Vec::with_capacity(text.len() + 2);
    push_json_string(&mut out, text);
    String::from_utf8(out).expect("written from UTF-8 text")
}

/// `"name":` for one of the record's own field names (nothing to escape), after a
/// comma unless it is the object's first key.
fn push_key(out: &mut Vec<u8>, name: &'static str) {
    if out.last() != Some(&b'{') {
        out.push(b',');
    }
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

fn push_json_option(out: &mut Vec<u8>, text: Option<&str>) {
    match text {
        Some(text) => push_json_string(out, text),
        None => out.extend_from_slice(b"null"),
    }
}

fn push_json_strings(out: &mut Vec<u8>, texts: &[String]) {
    push_json_list(out, texts, |out, text| push_json_string(out, text));
}

/// `[a,b,…]`, each item written by `push`.
fn push_json_list<T>(out: &mut Vec<u8>, items: &[T], push: impl Fn(&mut Vec<u8>, &T)) {
    out.push(b'[');
    for (n, item) in items.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        push(out, item);
    }
    out.push(b']');
}

/// A record waiting for its place in the chain. Its fields are serialised by the
/// request handler, so that the writer, which places records one after another,
/// only prepends `seq` and `prev` and hashes.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The JSON object of the fields (its opening brace is left out of the line).
    json: String,
}

/// Room for a typical record's fields, so serialising them allocates once.
const TYPICAL_FIELDS_BYTES: usize = 512;

impl Entry {
    pub fn new(fields: &Fields) -> Self {
        let mut json = Vec::with_capacity(TYPICAL_FIELDS_BYTES);
        fields.write_json(&mut json);
        let json = String::from_utf8(json).expect("the fields are written from UTF-8 text");
        Self { json }
    }

    /// Appends the entry's line after `prev`, at `seq`, and its newline to `out`;
    /// returns the line's hash.
    pub fn append_line(&self, seq: u64, prev: &str, out: &mut String) -> String {
        let start = out.len();
        write!(out, "{{\"seq\":{seq},\"prev\":\"{prev}\",").expect("writing to a String");
        out.push_str(&self.json[1..]);
        let hash = chain_hash(prev, &out[start..]);
        out.pop();
        out.push_str(HASH_KEY);
        out.push_str(&hash);
        out.push_str("\"}\n");
        hash
    }

    /// The entry's line (without newline) after `prev`, at `seq`, and its hash.
    pub fn to_line(&self, seq: u64, prev: &str) -> (String, String) {
        let mut line = String::with_capacity(self.json.len() + 200);
        let hash = self.append_line(seq, prev, &mut line);
        line.pop();
        (line, hash)
    }
}

/// The complete lines of a log file's text. A last piece without its newline is a
/// write torn by a crash, not a record, for the writer, `query` and `verify` alike
/// (even when it happens to parse).
pub fn whole_lines(text: &str) -> std::str::Lines<'_> {
    let text = written(text);
    let end = text.rfind('\n').map_or(0, |i| i + 1);
    text[..end].lines()
}

/// Whether the text ends with such a torn piece (what [`whole_lines`] leaves out).
pub fn ends_torn(text: &str) -> bool {
    let text = written(text);
    !text.is_empty() && !text.ends_with('\n')
}

/// A file's text without the NUL bytes that end a live file (space the writer has
/// reserved and not yet written) or a file left by a crash.
fn written(text: &str) -> &str {
    text.trim_end_matches('\0')
}

/// Why a line is not a well-formed record.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LineError {
    #[error("no trailing hash field")]
    NoHash,
    #[error("not a record: {0}")]
    Json(String),
}

/// A line split into its record, the hash it claims and the hash it has.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedLine {
    pub record: Record,
    pub claimed_hash: String,
    pub actual_hash: String,
}

/// Parses one line and recomputes its hash from its text.
pub fn parse_line(line: &str) -> Result<ParsedLine, LineError> {
    let (canonical, claimed_hash) = split_hash(line)?;
    let record = parse_canonical(&canonical)?;
    let actual_hash = chain_hash(&record.prev, &canonical);
    Ok(ParsedLine {
        record,
        claimed_hash: claimed_hash.to_owned(),
        actual_hash,
    })
}

/// Parses one line's record, as [`parse_line`] does, without hashing it (for
/// reading the log back, where the chain is not checked).
pub fn parse_record(line: &str) -> Result<Record, LineError> {
    parse_canonical(&split_hash(line)?.0)
}

/// A line's canonical text (the record without its trailing hash field, which is
/// what the hash covers) and the hash it claims.
fn split_hash(line: &str) -> Result<(String, &str), LineError> {
    let start = line.rfind(HASH_KEY).ok_or(LineError::NoHash)?;
    let claimed_hash = line[start + HASH_KEY.len()..]
        .strip_suffix("\"}")
        .ok_or(LineError::NoHash)?;
    Ok((format!("{}}}", &line[..start]), claimed_hash))
}

fn parse_canonical(canonical: &str) -> Result<Record, LineError> {
    serde_json::from_str(canonical).map_err(|e| LineError::Json(e.to_string()))
}

fn chain_hash(prev: &str, canonical: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(prev.as_bytes());
    hasher.update(canonical.as_bytes());
    hex(&hasher.finalize())
}

/// Lower-case hex, without a formatting call per byte (this runs once per record).
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(DIGITS[usize::from(byte >> 4)] as char);
        text.push(DIGITS[usize::from(byte & 0x0f)] as char);
    }
    text
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub fn entry(id: &str) -> Entry {
        let context = json!({"mission": "m", "categories": ["rsa"], "secret": "s"});
        let context = WireContext::Json(context.as_object().unwrap().clone());
        let names = [
            "categories".to_owned(),
            "absent".to_owned(),
            "mission".to_owned(),
        ];
        Entry::new(&Fields {
            time: "2026-11-23T00:00:00.000000Z",
            decision_id: id,
            principal: "User::\"mau-t1\"",
            action: "Action::\"consult_file\"",
            resource: "File::\"dossier-59-0001\"",
            partner: Some("ville-maubeuge"),
            caf: None,
            context: RecordedContext {
                names: &names,
                context: Some(&context),
            },
            decision: "Allow",
            reason: &["p".to_owned()],
            errors: &[],
            policy_version: "sha256:x",
            latency_us: 12,
        })
    }

    /// What serde_json wrote for the fields before `write_json` (the derived
    /// serialisation of the same struct, and the context as a map of the kept names
    /// in their order): the line format must not change.
    #[derive(Serialize)]
    struct SerdeFields<'a> {
        time: &'a str,
        decision_id: &'a str,
        principal: &'a str,
        action: &'a str,
        resource: &'a str,
        partner: Option<&'a str>,
        caf: Option<&'a str>,
        context: SerdeContext<'a>,
        decision: &'a str,
        reason: &'a [String],
        errors: &'a [String],
        policy_version: &'a str,
        latency_us: u64,
    }

    struct SerdeContext<'a>(RecordedContext<'a>);

    impl Serialize for SerdeContext<'_> {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let RecordedContext { names, context } = self.0;
            let json = |value| match value {
                RecordedValue::Json(value) => value.clone(),
                RecordedValue::Compact(text) => serde_json::from_str(text).unwrap(),
            };
            serializer.collect_map(names.iter().filter_map(|name| {
                let value = context?.recorded(name)?;
                Some((name, json(value)))
            }))
        }
    }

    /// One generated record: `text` fills most fields, `names` are the recorded
    /// context names (some absent from the context, some needing escapes).
    struct Case {
        text: String,
        partner: Option<String>,
        caf: Option<String>,
        list: Vec<String>,
        names: Vec<String>,
        has_context: bool,
    }

    fn written_both_ways(case: &Case) -> (String, String) {
        let text = case.text.as_str();
        let mut context =
            json!({"mission": {"type": "Mission", "id": text}, "categories": case.list});
        context[text] = json!({"nested": [text, null, -1.5, u64::MAX]});
        let context = WireContext::Json(context.as_object().unwrap().clone());
        let recorded = RecordedContext {
            names: &case.names,
            context: Some(&context).filter(|_| case.has_context),
        };
        let fields = Fields {
            time: text,
            decision_id: text,
            principal: text,
            action: "Action::\"consult_file\"",
            resource: text,
            partner: case.partner.as_deref(),
            caf: case.caf.as_deref(),
            context: recorded,
            decision: "Deny",
            reason: &case.list,
            errors: &case.list,
            policy_version: text,
            latency_us: u64::MAX,
        };
        let mut written = Vec::new();
        fields.write_json(&mut written);
        let written = String::from_utf8(written).unwrap();
        let serde = serde_json::to_string(&SerdeFields {
            time: text,
            decision_id: text,
            principal: text,
            action: fields.action,
            resource: text,
            partner: fields.partner,
            caf: fields.caf,
            context: SerdeContext(recorded),
            decision: "Deny",
            reason: &case.list,
            errors: &case.list,
            policy_version: text,
            latency_us: u64::MAX,
        })
        .unwrap();
        (written, serde)
    }

    const TRICKY: &str = "[a-z\"\\\\\\x00-\\x1f\\x7fé€\u{2028}]{0,12}";

    proptest::proptest! {
        #[test]
        fn strings_are_escaped_as_serde_json_escapes_them(text in "\\PC*|[\\x00-\\x7f]*") {
            let mut written = Vec::new();
            push_json_string(&mut written, &text);
            proptest::prop_assert_eq!(written, serde_json::to_vec(&text).unwrap());
        }

        #[test]
        fn fields_are_written_as_serde_json_wrote_them(
            text in TRICKY,
            partner in proptest::option::of(TRICKY),
            caf in proptest::option::of(TRICKY),
            list in proptest::collection::vec(TRICKY, 0..3),
            names in proptest::collection::vec(
                proptest::prop_oneof!["mission", "categories", "absent", TRICKY],
                0..4,
            ),
            has_context in proptest::bool::ANY,
            name_is_text in proptest::bool::ANY,
        ) {
            let mut names = names;
            if name_is_text {
                names.push(text.clone());
            }
            let case = Case { text, partner, caf, list, names, has_context };
            let (written, serde) = written_both_ways(&case);
            proptest::prop_assert_eq!(written, serde);
        }
    }

    #[test]
    fn a_line_parses_back_to_its_record_and_hash() {
        let (line, hash) = entry("a").to_line(7, GENESIS);
        let parsed = parse_line(&line).unwrap();
        let record = parsed.record;
        assert_eq!((record.seq, record.prev.as_str()), (7, GENESIS));
        assert_eq!(record.decision_id, "a");
        assert_eq!(record.principal, "User::\"mau-t1\"");
        assert_eq!(
            (record.partner.as_deref(), record.caf),
            (Some("ville-maubeuge"), None)
        );
        assert_eq!(record.reason, ["p"]);
        assert_eq!(record.latency_us, 12);
        assert_eq!(parsed.claimed_hash, hash);
        assert_eq!(parsed.actual_hash, hash);
    }

    #[test]
    fn only_the_named_context_fields_are_kept_in_their_order() {
        let (line, _) = entry("a").to_line(0, GENESIS);
        let context = parse_line(&line).unwrap().record.context;
        let kept: Vec<(&String, &Value)> = context.iter().collect();
        assert_eq!(
            kept,
            [
                (&"categories".to_owned(), &json!(["rsa"])),
                (&"mission".to_owned(), &json!("m"))
            ]
        );
    }

    #[test]
    fn an_edited_line_no_longer_matches_its_hash() {
        let (line, _) = entry("a").to_line(0, GENESIS);
        let edited = line.replace("Allow", "Deny");
        let parsed = parse_line(&edited).unwrap();
        assert_ne!(parsed.claimed_hash, parsed.actual_hash);
    }

    #[test]
    fn the_hash_depends_on_the_previous_hash() {
        let (_, first) = entry("a").to_line(0, GENESIS);
        let (_, second) = entry("a").to_line(0, "ff");
        assert_ne!(first, second);
    }
}
