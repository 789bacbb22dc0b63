//! The suite file format (see the module doc of [`crate::suite`]) parsed into typed
//! cases, with every path resolved against the suite's directory.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use crate::api::AuthzRequest;
use crate::strict_json::Strict;

/// A suite file that cannot be used; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum SuiteError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
}

/// One suite file, parsed.
#[derive(Debug, Clone)]
pub struct Suite {
    pub path: PathBuf,
    /// What the suite is about (object form only).
    pub description: Option<String>,
    /// Entities every case starts from (the object form's `entities`).
    pub base: Option<Vec<Value>>,
    /// The time filled in for requests that leave it out (else the current time).
    pub now: Option<DateTime<Utc>>,
    pub cases: Vec<Case>,
}

/// One test case.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub request: AuthzRequest,
    /// The case's own entities: the whole set, or additions to the suite's base.
    pub entities: Vec<Value>,
    pub expected: Expected,
    /// DOMAIN.md rule ids the case exercises.
    pub rules: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Expected {
    pub decision: ExpectedDecision,
    /// Policy ids that must determine the decision, compared as a set.
    pub reason: Option<Vec<String>>,
    pub errors: ExpectedErrors,
}

/// The evaluation errors a case expects. A case that says nothing expects none: a
/// Deny that only an error gave (an entity that does not exist, an attribute
/// missing) is the fail-closed rule at work, not the policy the case means to test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedErrors {
    /// `num_errors: N`, or none said (0), or `has_error: false` (0).
    Exactly(usize),
    /// `has_error: true` (older Cedar CLI files): one or more.
    AtLeastOne,
}

impl ExpectedErrors {
    fn of(num_errors: Option<usize>, has_error: Option<bool>) -> Self {
        match (num_errors, has_error) {
            (Some(count), _) => ExpectedErrors::Exactly(count),
            (None, Some(true)) => ExpectedErrors::AtLeastOne,
            (None, Some(false) | None) => ExpectedErrors::Exactly(0),
        }
    }

    pub fn allows(self, count: usize) -> bool {
        match self {
            ExpectedErrors::Exactly(expected) => count == expected,
            ExpectedErrors::AtLeastOne => count > 0,
        }
    }
}

impl std::fmt::Display for ExpectedErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            ExpectedErrors::Exactly(count) => write!(f, "{count}"),
            ExpectedErrors::AtLeastOne => f.write_str("at least 1"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExpectedDecision {
    #[serde(alias = "Allow")]
    Allow,
    #[serde(alias = "Deny")]
    Deny,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSuite {
    #[serde(default)]
    entities: Option<String>,
    #[serde(default)]
    now: Option<DateTime<Utc>>,
    #[serde(default)]
    description: Option<String>,
    tests: Vec<RawCase>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    #[serde(default)]
    name: Option<String>,
    request: AuthzRequest,
    #[serde(default)]
    entities: Option<RawEntities>,
    decision: ExpectedDecision,
    #[serde(default)]
    reason: Option<Vec<String>>,
    #[serde(default)]
    num_errors: Option<usize>,
    /// Older Cedar CLI files say `has_error` instead of `num_errors`.
    #[serde(default)]
    has_error: Option<bool>,
    #[serde(default)]
    rules: Vec<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawEntities {
    Inline(Vec<Value>),
    File(String),
}

/// Reads and parses one suite file.
pub fn load_suite(path: &Path) -> Result<Suite, SuiteError> {
    let text = read_json(path)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let raw = if text.trim_start().starts_with('[') {
        RawSuite {
            entities: None,
            now: None,
            description: None,
            tests: parse(path, &text)?,
        }
    } else {
        parse(path, &text)?
    };
    let base = match &raw.entities {
        Some(file) => Some(entities_file(path, &dir.join(file))?),
        None => None,
    };
    let file_name = path.file_name().unwrap_or_default().to_string_lossy();
    let mut cases = Vec::with_capacity(raw.tests.len());
    for (index, case) in raw.tests.into_iter().enumerate() {
        let name = case
            .name
            .clone()
            .unwrap_or_else(|| format!("{file_name}#{index}"));
        let entities = match case.entities {
            None => Vec::new(),
            Some(RawEntities::Inline(entities)) => entities,
            Some(RawEntities::File(file)) => entities_file(path, &dir.join(file))?,
        };
        cases.push(Case {
            name,
            request: case.request,
            entities,
            expected: Expected {
                decision: case.decision,
                reason: case.reason,
                errors: ExpectedErrors::of(case.num_errors, case.has_error),
            },
            rules: case.rules,
        });
    }
    Ok(Suite {
        path: path.to_owned(),
        description: raw.description,
        base,
        now: raw.now,
        cases,
    })
}

/// The suite files named by `paths`: a file is taken as is; a directory gives its
/// `.json` files, recursively, in path order, except those under a `fixtures`
/// directory (where suites keep their shared entities).
pub fn discover(paths: &[PathBuf]) -> Result<Vec<PathBuf>, SuiteError> {
    let mut found = Vec::new();
    for path in paths {
        if path.is_dir() {
            collect_json(path, &mut found).map_err(|source| SuiteError::Read {
                path: path.clone(),
                source,
            })?;
        } else {
            found.push(path.clone());
        }
    }
    Ok(found)
}

fn collect_json(dir: &Path, found: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for path in entries {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with('.') || name == "fixtures" {
            continue;
        }
        if path.is_dir() {
            collect_json(&path, found)?;
        } else if name.ends_with(".json") {
            found.push(path);
        }
    }
    Ok(())
}

/// The text of the JSON file `path`, checked to be JSON with no repeated key.
fn read_json(path: &Path) -> Result<String, SuiteError> {
    let text = std::fs::read_to_string(path).map_err(|source| SuiteError::Read {
        path: path.to_owned(),
        source,
    })?;
    // A repeated key is refused, as in a request: `"decision": "allow", "decision":
    // "deny"` would otherwise assert the last one unseen.
    serde_json::from_str::<Strict>(&text).map_err(|e| SuiteError::Format {
        path: path.to_owned(),
        message: format!("invalid JSON at {}:{}: {e}", e.line(), e.column()),
    })?;
    Ok(text)
}

/// `text` read as a `T`; an error says where (an unknown or missing field).
fn parse<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T, SuiteError> {
    serde_json::from_str(text).map_err(|e| SuiteError::Format {
        path: path.to_owned(),
        message: format!("at {}:{}: {e}", e.line(), e.column()),
    })
}

/// An entities file named by a suite (an error names the suite, then the file).
fn entities_file(suite: &Path, file: &Path) -> Result<Vec<Value>, SuiteError> {
    let text = read_json(file).map_err(|e| SuiteError::Format {
        path: suite.to_owned(),
        message: e.to_string(),
    })?;
    parse(file, &text).map_err(|e| SuiteError::Format {
        path: suite.to_owned(),
        message: format!("{e} (an entities file is a JSON array of entities)"),
    })
}
