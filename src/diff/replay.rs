//! The replay part of a diff: recorded requests re-decided under both sides, and
//! the decisions that flip.
//!
//! A replay file is one request in the wire format (`examples/requests/*.json`), a
//! JSON array of such requests, or JSON lines. A line may carry more than a
//! request (a decision-log record): only `principal`, `action`, `resource`,
//! `context` and `entities` are read, from the line itself or from its `request`
//! object. Each request is decided by [`engine::decide`] on a snapshot of each
//! side; a request without `context.now` is decided at the record's `time` (when
//! the decision was made) if it has one, else at one instant for both.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::api::{parse_entity_ref, AuthzRequest};
use crate::engine;
use crate::load::{LoadError, Sources};
use crate::snapshot::{Snapshot, DEFAULT_TIME_ATTRIBUTE};

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}: {reason}", path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error(
        "{side}: no stored entities to replay against (no examples/entities.json; pass --entities FILE)"
    )]
    NoEntities { side: &'static str },
    #[error("{side}: the model does not load for the replay:\n{source}")]
    Load {
        side: &'static str,
        #[source]
        source: LoadError,
    },
}

/// One recorded request whose decision differs between the sides.
#[derive(Debug, Serialize)]
pub struct Flip {
    /// `file:line`.
    pub origin: String,
    pub principal: String,
    pub action: String,
    pub resource: String,
    pub old: String,
    pub new: String,
    pub old_reasons: Vec<String>,
    pub new_reasons: Vec<String>,
    /// Evaluation errors on each side: a Deny with errors is the fail-closed rule's.
    pub old_errors: Vec<String>,
    pub new_errors: Vec<String>,
}

/// A recorded request neither side could decide (the same error on both), e.g. a
/// decision-log line whose context lacks attributes the log did not record.
#[derive(Debug, Serialize)]
pub struct Undecided {
    /// `file:line`.
    pub origin: String,
    pub error: String,
}

#[derive(Debug, Serialize)]
pub struct ReplayDiff {
    pub replayed: usize,
    pub flips: Vec<Flip>,
    /// Requests that compare nothing: both sides refused them with the same error.
    pub undecided: Vec<Undecided>,
}

impl ReplayDiff {
    pub fn newly_allowed(&self) -> usize {
        self.flips.iter().filter(|f| f.new == "Allow").count()
    }

    pub fn newly_denied(&self) -> usize {
        self.flips.iter().filter(|f| f.old == "Allow").count()
    }
}

pub fn replay(old: &Sources, new: &Sources, files: &[PathBuf]) -> Result<ReplayDiff, ReplayError> {
    let old = snapshot("OLD", old)?;
    let new = snapshot("NEW", new)?;
    let now = Utc::now();
    let mut replayed = 0;
    let mut flips = Vec::new();
    let mut undecided = Vec::new();
    for file in files {
        for (origin, Recorded { request, time }) in read_requests(file)? {
            replayed += 1;
            let at = time.unwrap_or(now);
            let old_decision = decision(&old, &request, at);
            let new_decision = decision(&new, &request, at);
            if old_decision.outcome != new_decision.outcome {
                flips.push(flip(origin, &request, old_decision, new_decision));
            } else if let Some(error) = old_decision.outcome.strip_prefix("error: ") {
                undecided.push(Undecided {
                    origin,
                    error: error.to_owned(),
                });
            }
        }
    }
    Ok(ReplayDiff {
        replayed,
        flips,
        undecided,
    })
}

fn snapshot(side: &'static str, sources: &Sources) -> Result<Snapshot, ReplayError> {
    if sources.entities.is_none() {
        return Err(ReplayError::NoEntities { side });
    }
    Snapshot::load(sources, DEFAULT_TIME_ATTRIBUTE)
        .map_err(|source| ReplayError::Load { side, source })
}

/// A request's decision on one side.
struct Decided {
    /// "Allow", "Deny" or "error: …".
    outcome: String,
    reasons: Vec<String>,
    errors: Vec<String>,
}

fn decision(snapshot: &Snapshot, request: &AuthzRequest, now: DateTime<Utc>) -> Decided {
    match engine::decide(snapshot, request, now) {
        Ok(d) => Decided {
            outcome: d.outcome.as_str().to_owned(),
            reasons: d.diagnostics.reason,
            errors: d.diagnostics.errors,
        },
        Err(e) => Decided {
            outcome: format!("error: {e}"),
            reasons: Vec::new(),
            errors: Vec::new(),
        },
    }
}

fn flip(origin: String, request: &AuthzRequest, old: Decided, new: Decided) -> Flip {
    let text = |field, v: &Value| {
        parse_entity_ref(field, v)
            .map(|uid| uid.to_string())
            .unwrap_or_else(|_| v.to_string())
    };
    Flip {
        origin,
        principal: text("principal", &request.principal),
        action: text("action", &request.action),
        resource: text("resource", &request.resource),
        old: old.outcome,
        new: new.outcome,
        old_reasons: old.reasons,
        new_reasons: new.reasons,
        old_errors: old.errors,
        new_errors: new.errors,
    }
}

/// A request to replay, and when it was decided (a log record's `time`).
struct Recorded {
    request: AuthzRequest,
    time: Option<DateTime<Utc>>,
}

/// The requests of one file, each with its `file:line` (`file:N` for the N-th
/// element of an array).
fn read_requests(path: &Path) -> Result<Vec<(String, Recorded)>, ReplayError> {
    let text = std::fs::read_to_string(path).map_err(|source| ReplayError::Read {
        path: path.to_owned(),
        source,
    })?;
    // A live decision-log file ends in space reserved ahead, NUL bytes, which
    // readers take for its end.
    let text = text.trim_end_matches('\0');
    let whole: Option<Value> = serde_json::from_str(text).ok();
    let values: Vec<(usize, Value)> = match whole {
        Some(Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| (i + 1, v))
            .collect(),
        Some(value) => vec![(1, value)],
        None => json_lines(path, text)?,
    };
    values
        .into_iter()
        .map(|(line, value)| {
            let recorded = request_of(value).map_err(|reason| ReplayError::Parse {
                path: path.to_owned(),
                line,
                reason,
            })?;
            Ok((format!("{}:{line}", path.display()), recorded))
        })
        .collect()
}

fn json_lines(path: &Path, text: &str) -> Result<Vec<(usize, Value)>, ReplayError> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line)
                .map(|v| (i + 1, v))
                .map_err(|e| ReplayError::Parse {
                    path: path.to_owned(),
                    line: i + 1,
                    reason: format!("invalid JSON: {e}"),
                })
        })
        .collect()
}

/// The request fields of a request or of a log record, and the record's `time`.
fn request_of(value: Value) -> Result<Recorded, String> {
    let Value::Object(mut record) = value else {
        return Err("expected a JSON object".to_owned());
    };
    let time = match record.get("time") {
        None => None,
        Some(time) => Some(
            time.as_str()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc))
                .ok_or_else(|| format!("time: {time} is not an RFC 3339 time"))?,
        ),
    };
    if let Some(Value::Object(inner)) = record.remove("request") {
        record = inner;
    }
    let fields: Map<String, Value> = ["principal", "action", "resource", "context", "entities"]
        .into_iter()
        .filter_map(|key| record.remove(key).map(|v| (key.to_owned(), v)))
        .collect();
    let request =
        serde_json::from_value(Value::Object(fields)).map_err(|e| format!("not a request: {e}"))?;
    Ok(Recorded { request, time })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_log_record_yields_its_request_fields() {
        let record = json!({
            "decision_id": "x",
            "request": {"principal": "User::\"a\"", "action": "Action::\"b\"", "resource": "File::\"c\""},
            "decision": "Allow"
        });
        let recorded = request_of(record).unwrap();
        assert_eq!(recorded.request.principal, json!("User::\"a\""));
        assert_eq!(recorded.time, None);
    }

    #[test]
    fn a_log_record_is_replayed_at_its_time() {
        let record = |time: Value| {
            json!({"time": time, "principal": "User::\"a\"", "action": "Action::\"b\"",
                   "resource": "File::\"c\""})
        };
        let at = request_of(record(json!("2025-06-01T10:00:00.000000Z"))).unwrap();
        assert_eq!(at.time, Some("2025-06-01T10:00:00Z".parse().unwrap()));
        let error = request_of(record(json!("June"))).err().unwrap();
        assert!(error.contains("not an RFC 3339 time"), "{error}");
    }

    #[test]
    fn a_record_without_request_fields_is_refused() {
        assert!(request_of(json!({"decision": "Allow"})).is_err());
    }
}
