//! Running suites: each case is decided by the engine on a snapshot whose stored
//! entities are the case's own, and compared with what the case expects.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::Utc;
use serde_json::Value;

use super::format::{Case, Expected, ExpectedDecision, Suite};
use crate::api::{parse_entity_ref, Outcome};
use crate::engine::{self, Decision};
use crate::load::Model;
use crate::snapshot::Snapshot;

/// How one case went.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Pass,
    /// Decided, but not as expected: one line per mismatch.
    Fail(Vec<String>),
    /// Could not be decided (bad request or entities): never a pass.
    Error(String),
}

#[derive(Debug, Clone)]
pub struct CaseResult {
    pub suite: PathBuf,
    pub name: String,
    pub rules: Vec<String>,
    pub expected: Expected,
    pub actual: Option<Decision>,
    pub verdict: Verdict,
}

impl CaseResult {
    pub fn passed(&self) -> bool {
        self.verdict == Verdict::Pass
    }
}

/// Runs every case of every suite against `model` (whose stored entities are
/// ignored: each case brings its own).
pub fn run(
    model: &Model,
    schema_path: &Path,
    time_attribute: &str,
    suites: &[Suite],
) -> Vec<CaseResult> {
    let mut snapshots = SnapshotCache {
        model,
        schema_path,
        time_attribute,
        built: HashMap::new(),
    };
    let mut results = Vec::new();
    for suite in suites {
        let now = suite.now.unwrap_or_else(Utc::now);
        for case in &suite.cases {
            let entities = entity_set(suite.base.as_deref(), &case.entities);
            let outcome = snapshots.get(entities).and_then(|snapshot| {
                engine::decide(&snapshot, &case.request, now).map_err(|e| e.to_string())
            });
            results.push(judge(suite, case, outcome));
        }
    }
    results
}

fn judge(suite: &Suite, case: &Case, outcome: Result<Decision, String>) -> CaseResult {
    let (actual, verdict) = match outcome {
        Ok(decision) => {
            let mismatches = mismatches(&case.expected, &decision);
            let verdict = if mismatches.is_empty() {
                Verdict::Pass
            } else {
                Verdict::Fail(mismatches)
            };
            (Some(decision), verdict)
        }
        Err(error) => (None, Verdict::Error(error)),
    };
    CaseResult {
        suite: suite.path.clone(),
        name: case.name.clone(),
        rules: case.rules.clone(),
        expected: case.expected.clone(),
        actual,
        verdict,
    }
}

/// What differs between the expectation and the decision, one line each.
fn mismatches(expected: &Expected, actual: &Decision) -> Vec<String> {
    let mut found = Vec::new();
    let decision = match expected.decision {
        ExpectedDecision::Allow => Outcome::Allow,
        ExpectedDecision::Deny => Outcome::Deny,
    };
    if decision != actual.outcome {
        found.push(format!(
            "decision: expected {}, got {}",
            decision.as_str(),
            actual.outcome.as_str()
        ));
    }
    if let Some(reason) = &expected.reason {
        let want: BTreeSet<&str> = reason.iter().map(String::as_str).collect();
        let got: BTreeSet<&str> = actual
            .diagnostics
            .reason
            .iter()
            .map(String::as_str)
            .collect();
        if want != got {
            found.push(format!("reason: expected {want:?}, got {got:?}"));
        }
    }
    let errors = &actual.diagnostics.errors;
    if !expected.errors.allows(errors.len()) {
        // The errors themselves are in the decision, shown beside this line.
        found.push(format!(
            "errors: expected {}, got {}",
            expected.errors,
            errors.len()
        ));
    }
    found
}

/// The base entities with the case's added; a case entity replaces the base entity
/// with the same uid.
fn entity_set(base: Option<&[Value]>, added: &[Value]) -> Vec<Value> {
    let Some(base) = base else {
        return added.to_vec();
    };
    let uid = |entity: &Value| parse_entity_ref("entities", &entity["uid"]).ok();
    let replaced: BTreeSet<String> = added
        .iter()
        .filter_map(|e| uid(e).map(|u| u.to_string()))
        .collect();
    base.iter()
        .filter(|e| uid(e).is_none_or(|u| !replaced.contains(&u.to_string())))
        .chain(added)
        .cloned()
        .collect()
}

/// One snapshot per distinct entity set, built on first use.
struct SnapshotCache<'a> {
    model: &'a Model,
    schema_path: &'a Path,
    time_attribute: &'a str,
    built: HashMap<String, Result<Arc<Snapshot>, String>>,
}

impl SnapshotCache<'_> {
    fn get(&mut self, entities: Vec<Value>) -> Result<Arc<Snapshot>, String> {
        let json = Value::Array(entities);
        let key = json.to_string();
        if let Some(built) = self.built.get(&key) {
            return built.clone();
        }
        let built = self.build(json);
        self.built.insert(key, built.clone());
        built
    }

    fn build(&self, entities: Value) -> Result<Arc<Snapshot>, String> {
        let mut model = self.model.clone();
        model
            .set_entities(entities)
            .map_err(|e| format!("entities: {e}"))?;
        Snapshot::from_model(model, self.schema_path, self.time_attribute)
            .map(Arc::new)
            .map_err(|e| e.to_string())
    }
}
