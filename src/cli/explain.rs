//! `cdap-authz explain`: decide one request offline and say why: the determining
//! policies with their clauses, and for a Deny no forbid caused, the permits that
//! came closest. Exit 0 on allow, 2 on deny (as `authorize`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use serde_json::json;

use super::{read_request, ModelArgs, EXIT_DENY};
use crate::api::Outcome;
use crate::explain::{self, Explanation, NearMiss};
use crate::load::PolicyInfo;

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The request, in the JSON body format of `POST /v1/is_authorized`.
    #[arg(long, value_name = "FILE")]
    pub request: PathBuf,
    /// How many of the closest permits to show.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub closest: usize,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    #[command(flatten)]
    pub model: ModelArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

pub fn run(args: ExplainArgs) -> anyhow::Result<ExitCode> {
    let snapshot = args.model.load()?;
    let request = read_request(&args.request)?;
    let mut explanation = explain::explain(&snapshot, &request, chrono::Utc::now())
        .with_context(|| args.request.display().to_string())?;
    explanation.near_misses.truncate(args.closest);
    match args.format {
        Format::Text => out!("{}", text(&explanation))?,
        Format::Json => outln!("{}", serde_json::to_string_pretty(&as_json(&explanation))?)?,
    }
    Ok(match explanation.decision.outcome {
        Outcome::Allow => ExitCode::SUCCESS,
        Outcome::Deny => ExitCode::from(EXIT_DENY),
    })
}

fn text(explanation: &Explanation) -> String {
    let decision = &explanation.decision;
    let mut out = format!("decision: {}\n", decision.outcome.as_str());
    let failed = !decision.diagnostics.errors.is_empty();
    if !explanation.overridden_permits.is_empty() {
        out += "determined by: the fail-closed rule (a policy failed to evaluate), \
                overriding the permits that allowed it:\n";
        for policy in &explanation.overridden_permits {
            out += &policy_line(policy);
        }
    } else if explanation.determining.is_empty() && failed {
        out += "determined by: no permit applies (default deny); \
                a policy also failed to evaluate (fail-closed)\n";
    } else if explanation.determining.is_empty() {
        out += "determined by: no policy (no permit applies: default deny)\n";
    } else {
        out += "determined by:\n";
        for policy in &explanation.determining {
            out += &policy_line(policy);
        }
    }
    for error in &decision.diagnostics.errors {
        out += &format!("error (fails closed): {error}\n");
    }
    if decision.outcome == Outcome::Deny
        && explanation.determining.is_empty()
        && explanation.overridden_permits.is_empty()
    {
        out += &near_misses_text(&explanation.near_misses);
    }
    out
}

fn policy_line(policy: &PolicyInfo) -> String {
    format!(
        "  {} {} ({})\n    source: {}\n",
        policy.effect,
        policy.id,
        policy.file,
        policy.source.as_deref().unwrap_or("(no @source)")
    )
}

fn near_misses_text(misses: &[NearMiss]) -> String {
    if misses.is_empty() {
        return "closest permits: none (no permit's scope matches this principal, action and resource)\n".into();
    }
    let mut out = String::from("closest permits (scope matched, a condition did not hold):\n");
    for miss in misses {
        out += &policy_line(&miss.policy);
        let outcome = match &miss.error {
            None => "false".to_owned(),
            Some(error) => format!("error: {error}"),
        };
        out += &format!(
            "    {} of {} conditions held; then {} was {outcome}\n",
            miss.conditions_met, miss.conditions, miss.failed_condition
        );
    }
    out
}

fn as_json(explanation: &Explanation) -> serde_json::Value {
    let decision = &explanation.decision;
    json!({
        "decision": decision.outcome,
        "determining": explanation.determining,
        "overridden_permits": explanation.overridden_permits,
        "errors": decision.diagnostics.errors,
        "closest_permits": explanation.near_misses,
    })
}
