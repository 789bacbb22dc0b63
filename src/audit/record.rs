//! One decision-log record, its canonical line and the hash chaining it to the
//! record before it.
//!
//! A line is the record's JSON (fields in declaration order, no `hash`), then
//! `,"hash":"<hex>"}` appended in place of the closing brace. The hash is
//! `sha256(prev_hash || canonical line without the hash)`, hex encoded; `prev`
//! is inside the hashed text, so the chain can be checked from any line on. The
//! first record ever written has `prev` = [`GENESIS`].

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

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

/// The fields of a record that the writer does not assign.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub time: String,
    pub decision_id: String,
    pub principal: String,
    pub action: String,
    pub resource: String,
    pub partner: Option<String>,
    pub caf: Option<String>,
    pub context: Map<String, Value>,
    pub decision: String,
    pub reason: Vec<String>,
    pub errors: Vec<String>,
    pub policy_version: String,
    pub latency_us: u64,
}

impl Entry {
    /// Places the entry in the chain after `prev`.
    pub fn into_record(self, seq: u64, prev: String) -> Record {
        Record {
            seq,
            prev,
            time: self.time,
            decision_id: self.decision_id,
            principal: self.principal,
            action: self.action,
            resource: self.resource,
            partner: self.partner,
            caf: self.caf,
            context: self.context,
            decision: self.decision,
            reason: self.reason,
            errors: self.errors,
            policy_version: self.policy_version,
            latency_us: self.latency_us,
        }
    }
}

/// Why a line is not a well-formed record.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LineError {
    #[error("no trailing hash field")]
    NoHash,
    #[error("not a record: {0}")]
    Json(String),
}

impl Record {
    /// The record's line (without newline) and its hash.
    pub fn to_line(&self) -> (String, String) {
        let canonical = serde_json::to_string(self).expect("records always serialize");
        let hash = chain_hash(&self.prev, &canonical);
        let mut line = canonical;
        line.pop();
        line.push_str(HASH_KEY);
        line.push_str(&hash);
        line.push_str("\"}");
        (line, hash)
    }
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
    let start = line.rfind(HASH_KEY).ok_or(LineError::NoHash)?;
    let claimed_hash = line[start + HASH_KEY.len()..]
        .strip_suffix("\"}")
        .ok_or(LineError::NoHash)?
        .to_owned();
    let canonical = format!("{}}}", &line[..start]);
    let record: Record =
        serde_json::from_str(&canonical).map_err(|e| LineError::Json(e.to_string()))?;
    let actual_hash = chain_hash(&record.prev, &canonical);
    Ok(ParsedLine {
        record,
        claimed_hash,
        actual_hash,
    })
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
mod tests {
    use super::*;

    pub fn entry(id: &str) -> Entry {
        Entry {
            time: "2026-11-23T00:00:00.000000Z".into(),
            decision_id: id.into(),
            principal: "User::\"mau-t1\"".into(),
            action: "Action::\"consult_file\"".into(),
            resource: "File::\"dossier-59-0001\"".into(),
            partner: Some("ville-maubeuge".into()),
            caf: Some("caf-nord".into()),
            context: Map::new(),
            decision: "Allow".into(),
            reason: vec!["p".into()],
            errors: vec![],
            policy_version: "sha256:x".into(),
            latency_us: 12,
        }
    }

    #[test]
    fn a_line_parses_back_to_its_record_and_hash() {
        let record = entry("a").into_record(0, GENESIS.into());
        let (line, hash) = record.to_line();
        let parsed = parse_line(&line).unwrap();
        assert_eq!(parsed.record, record);
        assert_eq!(parsed.claimed_hash, hash);
        assert_eq!(parsed.actual_hash, hash);
    }

    #[test]
    fn an_edited_line_no_longer_matches_its_hash() {
        let (line, _) = entry("a").into_record(0, GENESIS.into()).to_line();
        let edited = line.replace("Allow", "Deny");
        let parsed = parse_line(&edited).unwrap();
        assert_ne!(parsed.claimed_hash, parsed.actual_hash);
    }

    #[test]
    fn the_hash_depends_on_the_previous_hash() {
        let (_, first) = entry("a").into_record(0, GENESIS.into()).to_line();
        let (_, second) = entry("a").into_record(0, "ff".into()).to_line();
        assert_ne!(first, second);
    }
}
