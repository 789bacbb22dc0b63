//! Why a request was decided as it was: the policies that determined the decision,
//! with the contract clause each cites (`@source`), and, for a Deny that no forbid
//! caused, the permits that came closest — their scope matched the request but a
//! condition was false or failed — with the first condition that did not hold.
//!
//! A Deny caused by an evaluation error alone (the fail-closed rule) says so, with
//! the permits that were satisfied and would have allowed the request.
//!
//! A permit's conditions are its `when`/`unless` clauses, with top-level `&&` split
//! into separate conditions. They are checked in order, each with those before it
//! (as Cedar evaluates `&&`), so a guard such as `context has x` protects the
//! conditions after it. Every check is a real Cedar evaluation of a policy derived
//! from the permit, on the request's own entities.

use cedar_policy::{Authorizer, Decision as CedarDecision, Effect, Policy, PolicyId, PolicySet};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};

use crate::api::{AuthzRequest, RequestError};
use crate::engine::{self, Decision, Prepared};
use crate::load::PolicyInfo;
use crate::snapshot::Snapshot;

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("policy `{id}` cannot be analysed: {reason}")]
    Policy { id: String, reason: String },
}

#[derive(Debug)]
pub struct Explanation {
    pub decision: Decision,
    /// The policies in the decision's reason, with their clauses.
    pub determining: Vec<PolicyInfo>,
    /// For a Deny the fail-closed rule caused: the satisfied permits it overrode.
    pub overridden_permits: Vec<PolicyInfo>,
    /// For a Deny no forbid caused: the permits whose scope matched, closest first.
    pub near_misses: Vec<NearMiss>,
}

/// A permit whose scope matched the request but which did not allow it.
#[derive(Debug, Clone, Serialize)]
pub struct NearMiss {
    pub policy: PolicyInfo,
    /// How many of its conditions held before the first that did not.
    pub conditions_met: usize,
    pub conditions: usize,
    /// The first condition that did not hold, as Cedar text (`when { … }`).
    pub failed_condition: String,
    /// `None` when the condition was false; the evaluation error otherwise.
    pub error: Option<String>,
}

/// Decides `request` and explains the decision.
pub fn explain(
    snapshot: &Snapshot,
    request: &AuthzRequest,
    now: DateTime<Utc>,
) -> Result<Explanation, ExplainError> {
    let prepared = engine::prepare(snapshot, request, now)?;
    let decision = engine::evaluate(&prepared);
    let info = |id: &str| snapshot.policy_info.iter().find(|p| p.id == id).cloned();
    let determining: Vec<PolicyInfo> = decision
        .diagnostics
        .reason
        .iter()
        .filter_map(|id| info(id))
        .collect();
    let denied_by_forbid = determining.iter().any(|p| p.effect == "forbid");
    let overridden_permits: Vec<PolicyInfo> = match denied_by_forbid {
        true => Vec::new(),
        false => overridden_permits(&prepared, &decision)
            .iter()
            .filter_map(|id| info(id))
            .collect(),
    };
    let mut near_misses = Vec::new();
    if decision.outcome == crate::api::Outcome::Deny
        && !denied_by_forbid
        && overridden_permits.is_empty()
    {
        for policy in snapshot.policies.policies() {
            let id = policy.id().to_string();
            if policy.effect() != Effect::Permit || decision.diagnostics.reason.contains(&id) {
                continue;
            }
            let policy_info = info(&id).expect("every loaded policy has its info");
            near_misses.extend(near_miss(policy, policy_info, &prepared)?);
        }
        near_misses.sort_by(|a, b| {
            let share = |m: &NearMiss| m.conditions_met as f64 / m.conditions.max(1) as f64;
            share(b).total_cmp(&share(a))
        });
    }
    Ok(Explanation {
        decision,
        determining,
        overridden_permits,
        near_misses,
    })
}

/// The permits Cedar found satisfied when an evaluation error turned its Allow into
/// the sidecar's Deny (none otherwise).
fn overridden_permits(prepared: &Prepared, decision: &Decision) -> Vec<String> {
    if decision.diagnostics.errors.is_empty() || decision.outcome == crate::api::Outcome::Allow {
        return Vec::new();
    }
    let cedar = prepared.authorize();
    match cedar.allowed {
        true => cedar.reason,
        false => Vec::new(),
    }
}

/// How far `permit` got on this request: `None` when its scope does not match.
fn near_miss(
    permit: &Policy,
    info: PolicyInfo,
    prepared: &Prepared,
) -> Result<Option<NearMiss>, ExplainError> {
    let analysis_error = |reason: String| ExplainError::Policy {
        id: info.id.clone(),
        reason,
    };
    let est = permit
        .to_json()
        .map_err(|e| analysis_error(e.to_string()))?;
    let conditions = conditions(&est);
    let check = |count: usize| -> Result<Check, ExplainError> {
        let mut variant = est.clone();
        variant["conditions"] = Value::Array(conditions[..count].to_vec());
        // Under the permit's id, which Cedar's error messages name.
        let policy = Policy::from_json(Some(PolicyId::new(&info.id)), variant)
            .map_err(|e| analysis_error(e.to_string()))?;
        Ok(evaluate_alone(policy, prepared))
    };
    if check(0)? != Check::Held {
        return Ok(None);
    }
    for count in 1..=conditions.len() {
        let error = match check(count)? {
            Check::Held => continue,
            Check::False => None,
            Check::Error(message) => Some(message),
        };
        let failed_condition = condition_text(&conditions[count - 1]).map_err(analysis_error)?;
        return Ok(Some(NearMiss {
            policy: info,
            conditions_met: count - 1,
            conditions: conditions.len(),
            failed_condition,
            error,
        }));
    }
    Ok(None)
}

#[derive(Debug, PartialEq)]
enum Check {
    Held,
    False,
    Error(String),
}

fn evaluate_alone(policy: Policy, prepared: &Prepared) -> Check {
    let mut set = PolicySet::new();
    set.add(policy)
        .expect("a one-policy set has no id conflict");
    let response = Authorizer::new().is_authorized(&prepared.request, &set, &prepared.entities);
    if let Some(error) = response.diagnostics().errors().next() {
        return Check::Error(crate::diagnostic::describe(error));
    }
    match response.decision() {
        CedarDecision::Allow => Check::Held,
        CedarDecision::Deny => Check::False,
    }
}

/// A policy's conditions in order, with top-level `&&` of `when` bodies split.
fn conditions(est: &Value) -> Vec<Value> {
    let mut split = Vec::new();
    for clause in est["conditions"].as_array().into_iter().flatten() {
        if clause["kind"] == "when" {
            let mut conjuncts = Vec::new();
            conjuncts_of(&clause["body"], &mut conjuncts);
            split.extend(
                conjuncts
                    .into_iter()
                    .map(|body| json!({"kind": "when", "body": body})),
            );
        } else {
            split.push(clause.clone());
        }
    }
    split
}

fn conjuncts_of(body: &Value, out: &mut Vec<Value>) {
    match body.get("&&") {
        Some(and) => {
            conjuncts_of(&and["left"], out);
            conjuncts_of(&and["right"], out);
        }
        None => out.push(body.clone()),
    }
}

/// One condition as Cedar text, e.g. `when { principal.suspended == false }`.
fn condition_text(condition: &Value) -> Result<String, String> {
    let alone = json!({
        "effect": "permit",
        "principal": {"op": "All"},
        "action": {"op": "All"},
        "resource": {"op": "All"},
        "conditions": [condition],
    });
    let text = Policy::from_json(None, alone)
        .map_err(|e| e.to_string())?
        .to_string();
    let start = text.find(") ").map_or(0, |i| i + 2);
    let body = text[start..].trim().trim_end_matches(';');
    Ok(body.split_whitespace().collect::<Vec<_>>().join(" "))
}
