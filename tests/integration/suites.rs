//! The policy test suites under `tests/policies/`, run through the same library code
//! as `cdap-authz test`, and the `test` command itself (exit codes, formats,
//! coverage gate).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cdap_authz::load;
use cdap_authz::snapshot::DEFAULT_TIME_ATTRIBUTE;
use cdap_authz::suite::{self, Coverage, Verdict};
use serde_json::Value;

use crate::util::{bundled_sources, repo};

#[test]
fn bundled_suites_pass_and_cover_every_policy_and_rule() {
    let sources = load::Sources {
        entities: None,
        ..bundled_sources()
    };
    let model = load::load(&sources).expect("bundled model loads");
    let suites: Vec<_> = suite::discover(&[repo("tests/policies")])
        .unwrap()
        .iter()
        .map(|path| suite::load_suite(path).unwrap())
        .collect();
    let results = suite::run(&model, &sources.schema, DEFAULT_TIME_ATTRIBUTE, &suites);
    let failures: Vec<String> = results
        .iter()
        .filter(|r| r.verdict != Verdict::Pass)
        .map(|r| format!("{} :: {}: {:?}", r.suite.display(), r.name, r.verdict))
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(results.len() >= 80, "only {} cases", results.len());

    let coverage = Coverage::compute(model.policy_info.iter().map(|p| p.id.as_str()), &results);
    let uncovered: Vec<&str> = coverage.uncovered_policies().collect();
    assert!(uncovered.is_empty(), "no decision by {uncovered:?}");
    let half_covered: Vec<&str> = coverage
        .rules
        .iter()
        .filter(|r| r.allow_cases == 0 || r.deny_cases == 0)
        .map(|r| r.rule.as_str())
        .collect();
    assert!(
        half_covered.is_empty(),
        "rules lacking a side: {half_covered:?}"
    );
    assert!(coverage.unknown_rule_tags.is_empty(), "{coverage:?}");
}

fn cdap_authz_test(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cdap-authz"))
        .current_dir(repo("."))
        .arg("test")
        .args(args)
        .output()
        .unwrap()
}

/// A copy of a bundled suite whose base-entities path still resolves.
fn copy_suite(name: &str, dir: &Path, edit: impl FnOnce(&mut Value)) -> PathBuf {
    let mut suite: Value = serde_json::from_str(
        &std::fs::read_to_string(repo(&format!("tests/policies/{name}"))).unwrap(),
    )
    .unwrap();
    suite["entities"] = Value::String(repo("examples/entities.json").display().to_string());
    edit(&mut suite);
    let path = dir.join(name);
    std::fs::write(&path, suite.to_string()).unwrap();
    path
}

#[test]
fn test_command_passes_on_the_bundled_suites() {
    let output = cdap_authz_test(&["--coverage", "--min-coverage", "100"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(" 0 failed"), "{stdout}");
    assert!(stdout.contains("(100.0%)"), "{stdout}");
}

#[test]
fn a_wrong_expectation_fails_with_expected_and_actual() {
    let dir = tempfile::tempdir().unwrap();
    let path = copy_suite("traces.json", dir.path(), |suite| {
        // The first case is a denial; claim it is allowed, by a permit.
        let case = &mut suite["tests"][0];
        assert_eq!(case["decision"], "deny");
        case["decision"] = "allow".into();
        case["reason"] = serde_json::json!(["T3-partner-managers-read-partner-traces"]);
    });
    let output = cdap_authz_test(&[path.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("decision: expected Allow, got Deny"),
        "{stdout}"
    );
    assert!(
        stdout.contains("reason: expected {\"T3-partner-managers-read-partner-traces\"}, got {}"),
        "{stdout}"
    );
    assert!(stdout.contains("1 failed"), "{stdout}");

    let json = cdap_authz_test(&[path.to_str().unwrap(), "--format", "json"]);
    let report: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(json.status.code(), Some(1));
    assert_eq!(report["summary"]["failed"], 1);
    assert_eq!(report["cases"][0]["passed"], false);
    assert_eq!(report["cases"][0]["actual"]["decision"], "deny");

    let junit = cdap_authz_test(&[path.to_str().unwrap(), "--format", "junit"]);
    let xml = String::from_utf8_lossy(&junit.stdout);
    assert_eq!(junit.status.code(), Some(1));
    assert!(xml.contains("<testsuites"), "{xml}");
    assert_eq!(xml.matches("<failure").count(), 1, "{xml}");
}

/// A repeated key is refused, as in a request: the first case says `allow`, then
/// `deny`, and would otherwise pass on the last one unseen.
#[test]
fn a_repeated_key_in_a_suite_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = copy_suite("traces.json", dir.path(), |suite| {
        assert_eq!(suite["tests"][0]["decision"], "deny");
    });
    let text = std::fs::read_to_string(&path).unwrap();
    let repeated = text.replacen(
        r#""decision":"deny""#,
        r#""decision":"allow","decision":"deny""#,
        1,
    );
    assert_ne!(text, repeated);
    std::fs::write(&path, repeated).unwrap();
    let output = cdap_authz_test(&[path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_ne!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("duplicate key `decision`"), "{stderr}");
}

/// A field the format does not have is refused, saying where it is.
#[test]
fn an_unknown_field_in_a_suite_is_refused_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = copy_suite("traces.json", dir.path(), |suite| {
        suite["tests"][1]["decison"] = "deny".into();
    });
    let output = cdap_authz_test(&[path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_ne!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("unknown field `decison`"), "{stderr}");
    assert!(stderr.contains("at 1:"), "{stderr}");
}

#[test]
fn a_case_that_cannot_be_decided_is_an_error_not_a_pass() {
    let dir = tempfile::tempdir().unwrap();
    let path = copy_suite("traces.json", dir.path(), |suite| {
        suite["tests"][0]["request"]["principal"] = "User::\"nobody\"".into();
    });
    let output = cdap_authz_test(&[path.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("error: principal: entity User::\"nobody\""),
        "{stdout}"
    );
}

/// A case that says nothing about errors expects none: a Deny that only an
/// evaluation error gave (here the habilitation the context names does not exist)
/// is the fail-closed rule, not the policy the case tests, and fails the case.
/// Older Cedar files' `has_error: true` means one error or more.
#[test]
fn a_deny_that_only_an_evaluation_error_gave_fails_unless_errors_are_expected() {
    let dir = tempfile::tempdir().unwrap();
    let run_with = |edit: &dyn Fn(&mut Value), format: &str| {
        let path = copy_suite("profiles.json", dir.path(), |suite| {
            let tests = suite["tests"].as_array_mut().unwrap();
            tests.retain(|case| {
                case["decision"] == "deny" && case["request"]["context"]["habilitation"].is_object()
            });
            tests.truncate(1);
            let case = &mut tests[0];
            case.as_object_mut().unwrap().remove("num_errors");
            case.as_object_mut().unwrap().remove("reason");
            edit(case);
        });
        let output = cdap_authz_test(&[path.to_str().unwrap(), "--format", format]);
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    let run = |edit: &dyn Fn(&mut Value)| run_with(edit, "text");
    let nonexistent = |case: &mut Value| {
        case["request"]["context"]["habilitation"]["id"] = "nope".into();
    };
    let (code, stdout) = run(&nonexistent);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("errors: expected 0, got 18\n"), "{stdout}");
    assert!(stdout.contains("reason any, errors 0"), "{stdout}");

    let one_or_more = |case: &mut Value| {
        nonexistent(case);
        case["has_error"] = true.into();
    };
    let (code, stdout) = run(&one_or_more);
    assert_eq!(code, Some(0), "{stdout}");
    // The JSON report keeps `num_errors` a number or null, as suites write it.
    let (_, json) = run_with(&one_or_more, "json");
    let expected = &serde_json::from_str::<Value>(&json).unwrap()["cases"][0]["expected"];
    assert_eq!(
        (&expected["num_errors"], &expected["has_error"]),
        (&Value::Null, &Value::Bool(true))
    );
    let (code, stdout) = run(&|case| case["has_error"] = true.into());
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("errors: expected at least 1, got 0"),
        "{stdout}"
    );
}

#[test]
fn min_coverage_fails_a_partial_suite() {
    let output = cdap_authz_test(&["tests/policies/traces.json", "--min-coverage", "90"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains(" 0 failed"), "{stdout}");
    assert!(
        stdout.contains("no decision: S1-user-suspended"),
        "{stdout}"
    );
    assert!(
        stdout.contains("rule P3 has no allow and no deny case"),
        "{stdout}"
    );
    assert!(stderr.contains("below --min-coverage 90%"), "{stderr}");
}

#[test]
fn plain_cedar_run_tests_files_are_read_as_is() {
    let dir = tempfile::tempdir().unwrap();
    let entities = repo("examples/entities.json");
    let cases = serde_json::json!([
        {
            "request": {
                "principal": "User::\"mau-admin\"",
                "action": "Action::\"read_traces\"",
                "resource": "Trace::\"ville-maubeuge\"",
                "context": {"authentication": "password", "now": "2026-11-22T10:00:00Z"}
            },
            "entities": entities.display().to_string(),
            "decision": "allow",
            "reason": ["T3-partner-managers-read-partner-traces"],
            "num_errors": 0
        },
        {
            "name": "no entities, so nobody is known",
            "request": {
                "principal": "User::\"mau-admin\"",
                "action": "Action::\"read_traces\"",
                "resource": "Trace::\"ville-maubeuge\"",
                "context": {"authentication": "password", "now": "2026-11-22T10:00:00Z"}
            },
            "entities": [],
            "decision": "deny",
            "reason": []
        }
    ]);
    let path = dir.path().join("cedar.json");
    std::fs::write(&path, cases.to_string()).unwrap();
    let output = cdap_authz_test(&[path.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    // The first case passes; the second cannot be decided (unknown principal).
    let line = |name: &str| {
        stdout
            .lines()
            .find(|l| l.ends_with(name))
            .unwrap_or_default()
    };
    assert!(line("cedar.json#0").starts_with("ok "), "{stdout}");
    assert!(
        line(":: no entities, so nobody is known").starts_with("FAILED "),
        "{stdout}"
    );
    assert_eq!(output.status.code(), Some(1), "{stdout}");
}
