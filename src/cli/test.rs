//! `cdap-authz test`: run policy test suites (Cedar `run-tests` JSON, see
//! [`crate::suite`]) through the sidecar's decision path; report failures with the
//! expected and actual decisions and reasons, and optionally what the suites cover.
//!
//! Exit 0 when every case passes (and coverage is at least `--min-coverage`), 1 when
//! not, 3 when the model is invalid.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
use serde_json::{json, Value};

use super::PolicyArgs;
use crate::suite::{self, CaseResult, Coverage, ExpectedErrors, Verdict};

#[derive(Debug, Args)]
pub struct TestArgs {
    /// Suite files, or directories searched for `.json` suites (skipping `fixtures/`).
    #[arg(value_name = "PATH", default_value = "tests/policies")]
    paths: Vec<PathBuf>,
    #[command(flatten)]
    policy: PolicyArgs,
    /// Output format: `text` for people, `json` or `junit` (XML) for CI.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Report the policies that determined no decision and the rules lacking an
    /// allow or a deny case.
    #[arg(long)]
    coverage: bool,
    /// Fail when policy coverage or rule coverage (in percent) is below this.
    #[arg(long, value_name = "PERCENT", value_parser = percent)]
    min_coverage: Option<f64>,
}

/// A percentage, from 0 to 100.
fn percent(value: &str) -> Result<f64, String> {
    value
        .parse::<f64>()
        .ok()
        .filter(|p| (0.0..=100.0).contains(p))
        .ok_or_else(|| format!("expected a percentage from 0 to 100, got `{value}`"))
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
    Junit,
}

pub fn run(args: TestArgs) -> anyhow::Result<ExitCode> {
    let model = args.policy.load_model()?;
    let suites = suite::discover(&args.paths)?
        .iter()
        .map(|path| suite::load_suite(path))
        .collect::<Result<Vec<_>, _>>()?;
    anyhow::ensure!(
        suites.iter().any(|s| !s.cases.is_empty()),
        "no test case found in {:?}",
        args.paths
    );
    let sources = args.policy.sources(None);
    let results = suite::run(
        &model,
        &sources.schema,
        &args.policy.time_attribute,
        &suites,
    );
    let coverage = (args.coverage || args.min_coverage.is_some())
        .then(|| Coverage::compute(model.policy_info.iter().map(|p| p.id.as_str()), &results));
    let output = match args.format {
        Format::Text => text(&results, coverage.as_ref(), &model.policy_info),
        Format::Json => serde_json::to_string_pretty(&json_report(&results, coverage.as_ref()))?,
        Format::Junit => junit(&results).context("cannot write the JUnit report")?,
    };
    outln!("{}", output.trim_end())?;
    let all_passed = results.iter().all(CaseResult::passed);
    let covered = match (&coverage, args.min_coverage) {
        (Some(coverage), Some(min)) => {
            let lowest = coverage.policy_percent().min(coverage.rule_percent());
            if lowest < min {
                errln!("coverage {lowest:.1}% is below --min-coverage {min}%");
            }
            lowest >= min
        }
        _ => true,
    };
    Ok(if all_passed && covered {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn text(
    results: &[CaseResult],
    coverage: Option<&Coverage>,
    policies: &[crate::load::PolicyInfo],
) -> String {
    let mut out = String::new();
    for result in results {
        let status = if result.passed() { "ok" } else { "FAILED" };
        out += &format!("{status:6} {} :: {}\n", short(&result.suite), result.name);
    }
    let failed: Vec<&CaseResult> = results.iter().filter(|r| !r.passed()).collect();
    for result in &failed {
        out += &format!("\n--- {} :: {}\n", short(&result.suite), result.name);
        let reason = match &result.expected.reason {
            Some(reason) => format!("{reason:?}"),
            None => "any".to_owned(),
        };
        out += &format!(
            "    expected: {:?}, reason {reason}, errors {}\n",
            result.expected.decision, result.expected.errors
        );
        if let Some(actual) = &result.actual {
            out += &format!(
                "    actual:   {:?}, reason {:?}, errors {:?}\n",
                actual.outcome, actual.diagnostics.reason, actual.diagnostics.errors
            );
        }
        match &result.verdict {
            Verdict::Fail(lines) => lines.iter().for_each(|l| out += &format!("    {l}\n")),
            Verdict::Error(error) => out += &format!("    error: {error}\n"),
            Verdict::Pass => {}
        }
    }
    out += &format!(
        "\n{} passed, {} failed, {} cases\n",
        results.len() - failed.len(),
        failed.len(),
        results.len()
    );
    if let Some(coverage) = coverage {
        out += &coverage_text(coverage, policies);
    }
    out
}

fn coverage_text(coverage: &Coverage, policies: &[crate::load::PolicyInfo]) -> String {
    let total = coverage.policies.len();
    let uncovered: Vec<&str> = coverage.uncovered_policies().collect();
    let mut out = format!(
        "\ncoverage: {}/{total} policies determined a decision ({:.1}%); rules with both an allow and a deny case: {:.1}% of rule sides\n",
        total - uncovered.len(),
        coverage.policy_percent(),
        coverage.rule_percent()
    );
    for id in &uncovered {
        let file = policies
            .iter()
            .find(|p| p.id == *id)
            .map(|p| p.file.as_str());
        out += &format!("  no decision: {id} ({})\n", file.unwrap_or("?"));
    }
    for rule in &coverage.rules {
        let missing: Vec<&str> = [(rule.allow_cases, "allow"), (rule.deny_cases, "deny")]
            .into_iter()
            .filter(|(count, _)| *count == 0)
            .map(|(_, side)| side)
            .collect();
        if !missing.is_empty() {
            out += &format!(
                "  rule {} has no {} case\n",
                rule.rule,
                missing.join(" and no ")
            );
        }
    }
    for tag in &coverage.unknown_rule_tags {
        out += &format!("  rule tag {tag} matches no policy id\n");
    }
    out
}

fn json_report(results: &[CaseResult], coverage: Option<&Coverage>) -> Value {
    let failed = results.iter().filter(|r| !r.passed()).count();
    let cases: Vec<Value> = results.iter().map(case_json).collect();
    json!({
        "summary": {"cases": results.len(), "passed": results.len() - failed, "failed": failed},
        "cases": cases,
        "coverage": coverage.map(|c| json!({
            "policy_percent": c.policy_percent(),
            "rule_percent": c.rule_percent(),
            "uncovered_policies": c.uncovered_policies().collect::<Vec<_>>(),
            "policies": c.policies,
            "rules": c.rules,
            "unknown_rule_tags": c.unknown_rule_tags,
        })),
    })
}

fn case_json(result: &CaseResult) -> Value {
    let (failures, error) = match &result.verdict {
        Verdict::Pass => (Vec::new(), None),
        Verdict::Fail(lines) => (lines.clone(), None),
        Verdict::Error(error) => (Vec::new(), Some(error.clone())),
    };
    json!({
        "suite": result.suite.display().to_string(),
        "name": result.name,
        "rules": result.rules,
        "passed": result.passed(),
        "expected": {
            "decision": format!("{:?}", result.expected.decision).to_lowercase(),
            "reason": result.expected.reason,
            // A number, as in the suite; `null` with `has_error` for "one or more".
            "num_errors": match result.expected.errors {
                ExpectedErrors::Exactly(count) => Some(count),
                ExpectedErrors::AtLeastOne => None,
            },
            "has_error": result.expected.errors == ExpectedErrors::AtLeastOne,
        },
        "actual": result.actual.as_ref().map(|d| json!({
            "decision": d.outcome.as_str().to_lowercase(),
            "reason": d.diagnostics.reason,
            "errors": d.diagnostics.errors,
        })),
        "failures": failures,
        "error": error,
    })
}

/// One `<testsuite>` per suite file, one `<testcase>` per case.
fn junit(results: &[CaseResult]) -> Result<String, quick_junit::SerializeError> {
    let mut report = Report::new("cdap-authz policy tests");
    let mut current: Option<TestSuite> = None;
    for result in results {
        let name = short(&result.suite);
        if current.as_ref().is_none_or(|s| s.name.as_str() != name) {
            report.add_test_suites(current.take());
            current = Some(TestSuite::new(name.clone()));
        }
        let status = match &result.verdict {
            Verdict::Pass => TestCaseStatus::success(),
            Verdict::Fail(lines) => non_success(NonSuccessKind::Failure, lines.join("\n")),
            Verdict::Error(error) => non_success(NonSuccessKind::Error, error.clone()),
        };
        let mut case = TestCase::new(result.name.clone(), status);
        case.set_classname(name);
        if let Some(suite) = current.as_mut() {
            suite.add_test_case(case);
        }
    }
    report.add_test_suites(current);
    report.to_string()
}

fn non_success(kind: NonSuccessKind, message: String) -> TestCaseStatus {
    let mut status = TestCaseStatus::non_success(kind);
    status.set_message(message);
    status
}

/// A suite path as the user would write it (relative to the working directory).
fn short(path: &Path) -> String {
    let cwd = std::env::current_dir().unwrap_or_default();
    path.strip_prefix(&cwd)
        .unwrap_or(path)
        .display()
        .to_string()
}
