//! `cdap-authz diff`: copies of the bundled model edited in temporary directories
//! (and a temporary git repository), compared by the real binary.
//!
//! The semantic tests need the cvc5 solver (on PATH, or named by `CVC5`); without
//! it they fail, saying how to install it, unless `CDAP_AUTHZ_SKIP_SOLVER_TESTS=1`
//! asks to skip them (each then says it was skipped). CI installs it.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{json, Value};
use tempfile::TempDir;

use crate::util::{consult, repo};

const CONSULT: &str = "(User, Action::\"consult_file\", File)";
const CHANGE_PASSWORD: &str = "(User, Action::\"change_password\", User)";

/// A copy of the repository's `policies/`, `schema/` and `examples/`.
fn model_copy() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["policies", "schema", "examples"] {
        copy_dir(&repo(sub), &dir.path().join(sub));
    }
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

fn edit(dir: &Path, file: &str, change: impl FnOnce(String) -> String) {
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    let changed = change(text.clone());
    assert_ne!(text, changed, "the edit of {file} changed nothing");
    std::fs::write(path, changed).unwrap();
}

/// The policy block of `@id(id)`: from its `@id` line to the end of its `;` line.
fn block(text: &str, id: &str) -> (usize, usize) {
    let start = text.find(&format!("@id(\"{id}\")")).unwrap();
    let end = start + text[start..].find("};\n").unwrap() + 3;
    (start, end)
}

fn drop_policy(text: String, id: &str) -> String {
    let (start, end) = block(&text, id);
    format!("{}{}", &text[..start], &text[end..])
}

fn drop_suspension_forbid(dir: &Path) {
    edit(dir, "policies/suspension.cedar", |t| {
        drop_policy(t, "S1-user-suspended")
    });
}

fn cdap_authz(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cdap-authz"))
        .current_dir(dir)
        .arg("diff")
        .args(args)
        .output()
        .unwrap()
}

/// The text report of `diff OLD NEW --no-semantic`.
fn text_without_solver(old: &Path, new: &Path) -> String {
    let output = cdap_authz(
        old,
        &[
            old.to_str().unwrap(),
            new.to_str().unwrap(),
            "--no-semantic",
        ],
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs `diff OLD NEW --format json ARGS`; returns the exit code and the report.
fn diff_json(old: &Path, new: &Path, args: &[&str]) -> (i32, Value) {
    let mut all = vec![
        old.to_str().unwrap(),
        new.to_str().unwrap(),
        "--format",
        "json",
    ];
    all.extend(args);
    let output = cdap_authz(old, &all);
    let report = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}); stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.code().unwrap(), report)
}

/// Whether the semantic tests can run: panics when the solver is missing, unless
/// skipping them was asked for (never a silent pass).
fn solver_available() -> bool {
    let found = match std::env::var_os("CVC5").filter(|p| !p.is_empty()) {
        Some(path) => Path::new(&path).is_file(),
        None => std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .any(|dir| dir.join("cvc5").is_file()),
    };
    let skip = std::env::var_os("CDAP_AUTHZ_SKIP_SOLVER_TESTS").is_some_and(|v| v == "1");
    match (found, skip) {
        (true, _) => true,
        (false, true) => {
            eprintln!("SKIPPED (CDAP_AUTHZ_SKIP_SOLVER_TESTS=1): cvc5 not found");
            false
        }
        (false, false) => panic!(
            "cvc5 not found: apt-get install -y cvc5 (or set CVC5 to its path); \
             CDAP_AUTHZ_SKIP_SOLVER_TESTS=1 skips the solver tests"
        ),
    }
}

fn signature<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["semantic"]["signatures"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["signature"] == name)
        .unwrap_or_else(|| panic!("no signature {name} in {report:#}"))
}

fn verdicts(report: &Value) -> Vec<(String, String)> {
    report["semantic"]["signatures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let text = |v: &Value| v.as_str().unwrap().to_owned();
            (text(&s["signature"]), text(&s["verdict"]))
        })
        .collect()
}

fn policy<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["structural"]["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == id)
        .unwrap_or_else(|| panic!("no policy {id} in the structural diff"))
}

#[test]
fn dropping_the_suspension_forbid_widens_with_a_suspended_user_counterexample() {
    if !solver_available() {
        return;
    }
    let (old, new) = (model_copy(), model_copy());
    drop_suspension_forbid(new.path());
    let (code, report) = diff_json(old.path(), new.path(), &["--fail-on", "widen"]);
    assert_eq!(code, 4, "--fail-on widen must trip: {report:#}");
    assert_eq!(policy(&report, "S1-user-suspended")["change"], "removed");
    let consult = signature(&report, CONSULT);
    assert_eq!(consult["verdict"], "widens", "{consult:#}");
    assert_eq!(consult["narrowing"]["result"], "none");
    let example = &consult["widening"]["example"];
    assert_eq!(example["confirmed"], true, "{example:#}");
    assert_eq!(
        (&example["old_decision"], &example["new_decision"]),
        (&json!("Deny"), &json!("Allow"))
    );
    assert_eq!(example["old_reasons"], json!(["S1-user-suspended"]));
    let principal = &example["entities"][0];
    assert_eq!(principal["uid"]["type"], "User");
    assert_eq!(principal["attrs"]["suspended"], true, "{principal:#}");
    for signature in report["semantic"]["signatures"].as_array().unwrap() {
        assert_ne!(signature["verdict"], "narrows", "{signature:#}");
    }
}

#[test]
fn the_text_report_shows_the_counterexample_readably() {
    if !solver_available() {
        return;
    }
    let (old, new) = (model_copy(), model_copy());
    drop_suspension_forbid(new.path());
    let output = cdap_authz(
        old.path(),
        &[old.path().to_str().unwrap(), new.path().to_str().unwrap()],
    );
    assert_eq!(output.status.code(), Some(0), "no gate asked for");
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        text.contains("S1-user-suspended (forbid): removed"),
        "{text}"
    );
    assert!(text.contains(&format!("{CONSULT}: WIDENS")), "{text}");
    assert!(text.contains("suspended: true"), "{text}");
    assert!(text.contains("OLD: Deny (S1-user-suspended)"), "{text}");
    assert!(!text.contains("UNCONFIRMED"), "{text}");
}

/// Reverses the policies of one file, reformats one policy, and moves another
/// to a new file.
fn reorder_reformat_and_move(dir: &Path) {
    edit(dir, "policies/suspension.cedar", |text| {
        let start = text.find("@id(").unwrap();
        let mut blocks: Vec<&str> = text[start..]
            .split_inclusive("};\n")
            .filter(|b| !b.trim().is_empty())
            .collect();
        blocks.reverse();
        format!("{}{}", &text[..start], blocks.join("\n"))
    });
    edit(dir, "policies/account.cedar", |text| {
        text.replace(
            "when { principal == resource };",
            "when {\n    principal == resource\n};",
        )
    });
    let missions = std::fs::read_to_string(dir.join("policies/missions.cedar")).unwrap();
    let (start, end) = block(&missions, "M3-file-of-another-caf");
    std::fs::write(dir.join("policies/moved.cedar"), &missions[start..end]).unwrap();
    edit(dir, "policies/missions.cedar", |t| {
        drop_policy(t, "M3-file-of-another-caf")
    });
}

#[test]
fn reordering_reformatting_and_moving_rules_is_equivalent_everywhere() {
    if !solver_available() {
        return;
    }
    let (old, new) = (model_copy(), model_copy());
    reorder_reformat_and_move(new.path());
    let (code, report) = diff_json(old.path(), new.path(), &["--fail-on", "any"]);
    assert_eq!(code, 0, "{report:#}");
    let verdicts = verdicts(&report);
    assert!(verdicts.len() >= 9, "{verdicts:?}");
    for (signature, verdict) in &verdicts {
        assert_eq!(verdict, "equivalent", "{signature}");
    }
    assert_eq!(report["semantic"]["skipped"], json!([]));
    assert_structurally_unchanged_but_moved(&report);
}

fn assert_structurally_unchanged_but_moved(report: &Value) {
    let moved = policy(report, "M3-file-of-another-caf");
    assert_eq!(moved["change"], "unchanged");
    assert_eq!(moved["old_file"], "policies/missions.cedar");
    assert_eq!(moved["new_file"], "policies/moved.cedar");
    assert_eq!(
        policy(report, "S2-change-own-password")["change"],
        "reformatted"
    );
    for policy in report["structural"]["policies"].as_array().unwrap() {
        let change = policy["change"].as_str().unwrap();
        assert!(["unchanged", "reformatted"].contains(&change), "{policy:#}");
    }
}

#[test]
fn moving_rules_is_matched_by_id_without_the_solver() {
    let (old, new) = (model_copy(), model_copy());
    reorder_reformat_and_move(new.path());
    let (code, report) = diff_json(
        old.path(),
        new.path(),
        &["--no-semantic", "--fail-on", "any"],
    );
    assert_eq!(code, 0, "nothing changed in meaning: {report:#}");
    assert_eq!(report["semantic"], Value::Null);
    assert_structurally_unchanged_but_moved(&report);
}

#[test]
fn a_tightened_condition_is_a_narrowing_only() {
    if !solver_available() {
        return;
    }
    let (old, new) = (model_copy(), model_copy());
    edit(new.path(), "policies/account.cedar", |text| {
        text.replace(
            "when { principal == resource };",
            "when { principal == resource && context.authentication == \"password\" };",
        )
    });
    let (code, report) = diff_json(old.path(), new.path(), &["--fail-on", "widen"]);
    assert_eq!(code, 0, "a narrowing must not trip the widen gate");
    assert_eq!(
        policy(&report, "S2-change-own-password")["change"],
        "changed"
    );
    for (signature, verdict) in verdicts(&report) {
        let expected = if signature == CHANGE_PASSWORD {
            "narrows"
        } else {
            "equivalent"
        };
        assert_eq!(verdict, expected, "{signature}");
    }
    let example = &signature(&report, CHANGE_PASSWORD)["narrowing"]["example"];
    assert_eq!(example["confirmed"], true, "{example:#}");
    assert_eq!(example["new_decision"], "Deny");
    assert_ne!(example["context"]["authentication"], "password");
    let (code, _) = diff_json(old.path(), new.path(), &["--fail-on", "narrow"]);
    assert_eq!(code, 4);
}

/// `ZZ-overflow`: a forbid whose condition errs (an overflow) on every
/// consultation, so that the sidecar denies them all (fail-closed).
fn add_an_overflowing_forbid(dir: &Path) {
    std::fs::write(
        dir.join("policies/zz-overflow.cedar"),
        "@id(\"ZZ-overflow\")\n@source(\"test\")\n\
         forbid (principal, action == Action::\"consult_file\", resource)\n\
         when { 9223372036854775807 + 1 > 0 };\n",
    )
    .unwrap();
}

/// A replayed Deny of the fail-closed rule shows the errors that made it: without
/// them it read as a default deny (`OLD: []`).
#[test]
fn a_replayed_flip_shows_the_errors_of_a_fail_closed_deny() {
    let (old, new) = (model_copy(), model_copy());
    add_an_overflowing_forbid(old.path());
    let log_path = old.path().join("requests.json");
    std::fs::write(&log_path, crate::util::allowed_consultation().to_string()).unwrap();
    let replay = ["--no-semantic", "--replay", log_path.to_str().unwrap()];
    let (_, report) = diff_json(old.path(), new.path(), &replay);
    let flip = &report["replay"]["flips"][0];
    assert_eq!(
        (&flip["old"], &flip["new"]),
        (&json!("Deny"), &json!("Allow"))
    );
    assert_eq!(flip["new_errors"], json!([]));
    let mut args = vec![old.path().to_str().unwrap(), new.path().to_str().unwrap()];
    args.extend(replay);
    let text = String::from_utf8(cdap_authz(old.path(), &args).stdout).unwrap();
    assert!(
        text.contains(
            "Deny → Allow (OLD: [], errors (fail-closed): error while evaluating policy \
             `ZZ-overflow`: integer overflow"
        ),
        "{text}"
    );
}

/// An evaluation error denies in the sidecar, which the proof (on Cedar's rule: a
/// policy in error is skipped) does not see: dropping a forbid that errs on every
/// consultation allows them all, so the widening is not proven absent, and the
/// gate trips. A policy that cannot err leaves the verdicts as they were.
#[test]
fn a_policy_one_side_lacks_that_can_err_leaves_its_direction_unproven() {
    if !solver_available() {
        return;
    }
    let (old, new) = (model_copy(), model_copy());
    add_an_overflowing_forbid(old.path());
    let (code, report) = diff_json(old.path(), new.path(), &["--fail-on", "widen"]);
    assert_eq!(code, 4, "{report:#}");
    let consult = signature(&report, CONSULT);
    assert_eq!(consult["verdict"], "unknown", "{consult:#}");
    let reason = consult["widening"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("OLD's `ZZ-overflow` can raise an evaluation error"),
        "{reason}"
    );
    assert_eq!(consult["narrowing"]["result"], "none", "{consult:#}");
    for (signature, verdict) in verdicts(&report) {
        if signature != CONSULT {
            assert_eq!(verdict, "equivalent", "{signature}");
        }
    }
    // The same forbid, unable to err: no difference, proven.
    edit(old.path(), "policies/zz-overflow.cedar", |text| {
        text.replace("9223372036854775807 + 1 > 0", "1 > 2")
    });
    let (code, report) = diff_json(old.path(), new.path(), &["--fail-on", "widen"]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(signature(&report, CONSULT)["verdict"], "equivalent");
}

#[test]
fn replay_lists_the_recorded_decisions_that_flip() {
    let (old, new) = (model_copy(), model_copy());
    drop_suspension_forbid(new.path());
    let suspended = consult(
        "mau-suspended",
        "mau-t2-03",
        "maubeuge-centre-loisirs-qf",
        &["quotient_familial"],
        "dossier-59-0004",
    );
    // A decision-log-like record, a bare request, and a log record that kept only
    // some context fields (it cannot be decided again).
    let mut partial = crate::util::allowed_consultation();
    partial["context"] = json!({"categories": ["quotient_familial"]});
    let log = format!(
        "{}\n{}\n{}\n",
        json!({"decision": "Deny", "request": suspended}),
        crate::util::allowed_consultation(),
        partial
    );
    let log_path = old.path().join("decisions.jsonl");
    std::fs::write(&log_path, log).unwrap();
    let (code, report) = diff_json(
        old.path(),
        new.path(),
        &[
            "--no-semantic",
            "--fail-on",
            "widen",
            "--replay",
            log_path.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 4, "a replayed Deny → Allow is a widening");
    assert_eq!(report["replay"]["replayed"], 3);
    let undecided = report["replay"]["undecided"].as_array().unwrap();
    assert_eq!(undecided.len(), 1, "{undecided:?}");
    assert!(undecided[0]["origin"]
        .as_str()
        .unwrap()
        .ends_with("decisions.jsonl:3"));
    assert!(
        undecided[0]["error"]
            .as_str()
            .unwrap()
            .contains("missing required attribute"),
        "{undecided:?}"
    );
    let flips = report["replay"]["flips"].as_array().unwrap();
    assert_eq!(flips.len(), 1, "{flips:?}");
    assert_eq!(flips[0]["principal"], "User::\"mau-suspended\"");
    assert_eq!(
        (&flips[0]["old"], &flips[0]["new"]),
        (&json!("Deny"), &json!("Allow"))
    );
    assert!(flips[0]["origin"]
        .as_str()
        .unwrap()
        .ends_with("decisions.jsonl:1"));
}

/// A log record without `context.now` is replayed at its `time`, when it was
/// decided: a rule on dates flips the records of the dates it covers only. A live
/// log file's NUL end is its end.
#[test]
fn replay_decides_a_log_record_at_its_time() {
    let (old, new) = (model_copy(), model_copy());
    std::fs::write(
        new.path().join("policies/zz-before-november.cedar"),
        "@id(\"ZZ-before-november\")\n@source(\"test\")\n\
         forbid (principal, action == Action::\"consult_file\", resource)\n\
         when { context.now < datetime(\"2026-11-01\") };\n",
    )
    .unwrap();
    let mut request = crate::util::allowed_consultation();
    request["context"].as_object_mut().unwrap().remove("now");
    let record = |time: &str| {
        let mut record = request.clone();
        record["time"] = json!(time);
        record
    };
    let log_path = old.path().join("decisions.jsonl");
    std::fs::write(
        &log_path,
        // As a live log file ends: in space reserved ahead, NUL bytes.
        format!(
            "{}\n{}\n\0\0\0\0",
            record("2026-10-15T10:00:00.000000Z"),
            record(crate::util::NOW)
        ),
    )
    .unwrap();
    let (code, report) = diff_json(
        old.path(),
        new.path(),
        &["--no-semantic", "--replay", log_path.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{report:#}");
    let flips = report["replay"]["flips"].as_array().unwrap();
    assert_eq!(flips.len(), 1, "{flips:?}");
    assert!(flips[0]["origin"]
        .as_str()
        .unwrap()
        .ends_with("decisions.jsonl:1"));
    assert_eq!(
        (&flips[0]["old"], &flips[0]["new"]),
        (&json!("Allow"), &json!("Deny"))
    );
}

fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git")
        .current_dir(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@example.org"])
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "git {args:?}");
}

#[test]
fn git_revisions_and_the_working_tree_are_compared() {
    let dir = model_copy();
    git(dir.path(), &["init", "-q"]);
    git(dir.path(), &["add", "."]);
    git(dir.path(), &["commit", "-qm", "bundled model"]);
    drop_suspension_forbid(dir.path());
    git(
        dir.path(),
        &["commit", "-qam", "drop the suspension forbid"],
    );
    reorder_reformat_and_move(dir.path());
    let output = cdap_authz(
        dir.path(),
        &[
            "--git",
            "HEAD~1",
            "HEAD",
            "--no-semantic",
            "--format",
            "json",
        ],
    );
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(policy(&report, "S1-user-suspended")["change"], "removed");
    assert_eq!(report["new"], "git:HEAD");
    assert_eq!(
        policy(&report, "M3-file-of-another-caf")["new_file"],
        "policies/missions.cedar"
    );
    let output = cdap_authz(
        dir.path(),
        &["--git", "HEAD", "--no-semantic", "--format", "json"],
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["new"], "working tree");
    assert_eq!(
        policy(&report, "M3-file-of-another-caf")["new_file"],
        "policies/moved.cedar"
    );
}

#[test]
fn a_missing_solver_exits_1_naming_the_install_command() {
    let (old, new) = (model_copy(), model_copy());
    let output = Command::new(env!("CARGO_BIN_EXE_cdap-authz"))
        .args([
            "diff",
            old.path().to_str().unwrap(),
            new.path().to_str().unwrap(),
        ])
        .env("CVC5", "")
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("apt-get install -y cvc5"), "{stderr}");
    assert!(stderr.contains("CVC5"), "{stderr}");
}

#[test]
fn markdown_output_is_a_merge_request_comment() {
    let (old, new) = (model_copy(), model_copy());
    drop_suspension_forbid(new.path());
    let output = cdap_authz(
        old.path(),
        &[
            old.path().to_str().unwrap(),
            new.path().to_str().unwrap(),
            "--no-semantic",
            "--format",
            "markdown",
        ],
    );
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.starts_with("# Policy diff"), "{text}");
    assert!(
        text.contains("**S1-user-suspended** (forbid): removed"),
        "{text}"
    );
    assert!(text.contains("```diff\n--- OLD\n+++ NEW"), "{text}");
}

fn add_action(dir: &Path, name: &str) {
    edit(dir, "schema/cdap.cedarschema", |text| {
        format!(
            "{text}\naction {name} appliesTo {{\n  principal: User,\n  resource: File,\n  context: Session,\n}};\n"
        )
    });
}

#[test]
fn schema_changes_are_listed_and_removed_signatures_skipped() {
    if !solver_available() {
        return;
    }
    let (old, new) = (model_copy(), model_copy());
    add_action(old.path(), "archive_file");
    add_action(new.path(), "export_file");
    let (code, report) = diff_json(old.path(), new.path(), &["--fail-on", "any"]);
    assert_eq!(code, 0, "{report:#}");
    let schema = &report["structural"]["schema"];
    assert_eq!(
        schema["signatures_added"],
        json!(["(User, Action::\"export_file\", File)"])
    );
    assert_eq!(
        schema["signatures_removed"],
        json!(["(User, Action::\"archive_file\", File)"])
    );
    let skipped = report["semantic"]["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert_eq!(
        skipped[0]["signature"],
        "(User, Action::\"archive_file\", File)"
    );
    assert_eq!(
        signature(&report, "(User, Action::\"export_file\", File)")["verdict"],
        "equivalent"
    );
}

/// Derivation rules write data, not policies: counting suspended habilitations
/// instead of active ones lets grants past the H4 ceilings, with every policy the
/// same. The solver compares policies over every entity store and cannot see it, so
/// the change is shown and trips every gate, as an unproven signature does.
#[test]
fn a_change_of_derivation_rules_is_shown_and_trips_every_gate() {
    let (old, new) = (model_copy(), model_copy());
    let (code, report) = diff_json(
        old.path(),
        new.path(),
        &["--no-semantic", "--fail-on", "any"],
    );
    assert_eq!((code, &report["structural"]["derived"]), (0, &Value::Null));
    edit(new.path(), "schema/derived.json", |t| {
        t.replacen(r#""total_tag": "*""#, r#""total_tag": "all""#, 1)
    });
    for gate in ["widen", "narrow", "any"] {
        let (code, report) = diff_json(
            old.path(),
            new.path(),
            &["--no-semantic", "--fail-on", gate],
        );
        assert_eq!(code, 4, "--fail-on {gate}: {report:#}");
        let text_diff = report["structural"]["derived"].as_str().unwrap();
        assert!(
            text_diff.contains(r#"-      "total_tag": "*""#)
                && text_diff.contains(r#"+      "total_tag": "all""#),
            "{text_diff}"
        );
    }
    let text = text_without_solver(old.path(), new.path());
    assert!(
        text.contains("derived data: changed") && text.contains("UNPROVEN"),
        "{text}"
    );
}

#[test]
fn a_signature_the_solver_cannot_compare_trips_every_gate() {
    if !solver_available() {
        return;
    }
    // NEW drops an attribute that OLD's S2 forbid reads, so OLD's policies do not
    // compile under NEW's schema and nothing is proven; the S1 forbid it also drops
    // would widen unseen if skipped signatures passed the gate.
    let (old, new) = (model_copy(), model_copy());
    drop_suspension_forbid(new.path());
    edit(new.path(), "policies/suspension.cedar", |t| {
        drop_policy(t, "S2-must-change-password")
    });
    edit(new.path(), "schema/cdap.cedarschema", |t| {
        t.replace("  must_change_password: Bool, // S2\n", "")
    });
    for gate in ["widen", "narrow", "any"] {
        let (code, report) = diff_json(old.path(), new.path(), &["--fail-on", gate]);
        assert_eq!(code, 4, "--fail-on {gate}: {report:#}");
        let skipped = report["semantic"]["skipped"].as_array().unwrap();
        assert!(
            skipped.iter().any(|s| s["signature"] == CONSULT
                && s["unproven"] == true
                && s["reason"]
                    .as_str()
                    .unwrap()
                    .contains("OLD's policies do not compile")),
            "{skipped:#?}"
        );
    }
}

#[test]
fn a_query_over_its_time_limit_is_unknown_and_trips_the_gate() {
    if !solver_available() {
        return;
    }
    let (old, new) = (model_copy(), model_copy());
    drop_suspension_forbid(new.path());
    let (code, report) = diff_json(
        old.path(),
        new.path(),
        &["--timeout-ms", "1", "--fail-on", "widen"],
    );
    assert_eq!(code, 4, "an unknown answer proves nothing: {report:#}");
    let unknown = report["semantic"]["signatures"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["verdict"] == "unknown")
        .unwrap_or_else(|| panic!("no query reached 1 ms: {report:#}"));
    let reason = unknown["widening"]["reason"].as_str().unwrap();
    assert!(reason.contains("time limit"), "{reason}");
}

const GRANT: &str = "(User, Action::\"grant_habilitation\", Habilitation)";

/// Makes `change_password` a member of the `manage_user` action group.
fn group_change_password_under_manage_user(dir: &Path) {
    edit(dir, "schema/cdap.cedarschema", |t| {
        t.replace(
            "action change_password appliesTo",
            "action change_password in [manage_user] appliesTo",
        )
    });
}

/// Takes `grant_habilitation` out of the `manage_habilitations` action group.
fn ungroup_grant_habilitation(dir: &Path) {
    edit(dir, "schema/cdap.cedarschema", |t| {
        t.replace(
            "action grant_habilitation, revoke_habilitation, suspend_habilitation in [\"manage_habilitations\"] appliesTo {",
            "action grant_habilitation appliesTo {\n  principal: User,\n  resource: Habilitation,\n  context: Session,\n};\n\
             action revoke_habilitation, suspend_habilitation in [\"manage_habilitations\"] appliesTo {",
        )
    });
}

/// Both policy sets are compiled under NEW's schema; OLD's `action in G` must still
/// mean OLD's group, or moving an action into a group would read "equivalent".
#[test]
fn moving_an_action_into_a_group_widens_through_policies_on_that_group() {
    if !solver_available() {
        return;
    }
    let (old, new) = (model_copy(), model_copy());
    group_change_password_under_manage_user(new.path());
    let (code, report) = diff_json(old.path(), new.path(), &["--fail-on", "widen"]);
    assert_eq!(code, 4, "--fail-on widen must trip: {report:#}");
    let change = signature(&report, CHANGE_PASSWORD);
    assert!(
        ["widens", "widens_and_narrows"].contains(&change["verdict"].as_str().unwrap()),
        "{change:#}"
    );
    assert!(
        change["regrouped"]
            .as_str()
            .unwrap()
            .contains("moves Action::\"change_password\" into Action::\"manage_user\""),
        "{change:#}"
    );
    let example = &change["widening"]["example"];
    assert_eq!(example["confirmed"], true, "{example:#}");
    assert_eq!(
        (&example["old_decision"], &example["new_decision"]),
        (&json!("Deny"), &json!("Allow"))
    );
    assert_eq!(signature(&report, CONSULT)["verdict"], "equivalent");
}

#[test]
fn taking_an_action_out_of_a_group_narrows() {
    if !solver_available() {
        return;
    }
    let (old, new) = (model_copy(), model_copy());
    ungroup_grant_habilitation(new.path());
    let (code, report) = diff_json(old.path(), new.path(), &["--fail-on", "narrow"]);
    assert_eq!(code, 4, "--fail-on narrow must trip: {report:#}");
    let grant = signature(&report, GRANT);
    assert!(
        ["narrows", "widens_and_narrows"].contains(&grant["verdict"].as_str().unwrap()),
        "{grant:#}"
    );
    assert!(
        grant["regrouped"]
            .as_str()
            .unwrap()
            .contains("out of Action::\"manage_habilitations\""),
        "{grant:#}"
    );
    let example = &grant["narrowing"]["example"];
    assert_eq!(example["confirmed"], true, "{example:#}");
    assert_eq!(example["new_decision"], "Deny");
}

/// `--no-semantic` proves nothing: a changed permit (or action groups) must not
/// pass a gate silently, while annotation-only and comment-only changes still do.
#[test]
fn without_the_solver_a_changed_policy_or_schema_trips_every_gate() {
    let (old, new) = (model_copy(), model_copy());
    edit(new.path(), "policies/account.cedar", |t| {
        t.replace("(S2): the one action", "(S2): the only action")
    });
    edit(new.path(), "schema/cdap.cedarschema", |t| {
        t.replace("entity Caf = {", "// a comment\nentity Caf = {")
    });
    let (code, report) = diff_json(
        old.path(),
        new.path(),
        &["--no-semantic", "--fail-on", "any"],
    );
    assert_eq!(code, 0, "only annotations and comments changed: {report:#}");
    assert_eq!(
        policy(&report, "S2-change-own-password")["change"],
        "annotated"
    );
    assert_eq!(report["structural"]["schema"]["reformatted"], true);

    let (tightened, regrouped) = (model_copy(), model_copy());
    edit(tightened.path(), "policies/account.cedar", |t| {
        t.replace(
            "when { principal == resource };",
            "when { principal == resource && context.authentication == \"password\" };",
        )
    });
    group_change_password_under_manage_user(regrouped.path());
    for (new, what) in [(&tightened, "a permit"), (&regrouped, "the action groups")] {
        for gate in ["widen", "narrow", "any"] {
            let (code, report) = diff_json(
                old.path(),
                new.path(),
                &["--no-semantic", "--fail-on", gate],
            );
            assert_eq!(code, 4, "{what} changed, --fail-on {gate}: {report:#}");
        }
    }
    let text = text_without_solver(old.path(), tightened.path());
    assert!(
        text.contains("not run (--no-semantic), so nothing was proven")
            && text.contains("UNPROVEN"),
        "{text}"
    );
}

/// Stored entities are data the solver does not see (it compares the policies
/// over every entity store): a mission granted one more data category lets its
/// users consult more, with every policy the same, so the change trips the gates.
#[test]
fn a_change_of_stored_entities_is_shown_and_trips_the_gate() {
    if !solver_available() {
        return;
    }
    let (old, new) = (model_copy(), model_copy());
    edit(new.path(), "examples/entities.json", |t| {
        t.replacen(
            "\"ressources\",\n    \"composition_familiale\"\n",
            "\"ressources\",\n    \"composition_familiale\",\n    \"rsa\"\n",
            1,
        )
    });
    let (code, report) = diff_json(old.path(), new.path(), &["--fail-on", "widen"]);
    assert_eq!(code, 4, "{report:#}");
    for (signature, verdict) in verdicts(&report) {
        assert_eq!(
            verdict, "equivalent",
            "{signature}: the policies are the same"
        );
    }
    let text_diff = report["structural"]["entities"].as_str().unwrap();
    assert!(text_diff.contains("+    \"rsa\""), "{text_diff}");
    let text = text_without_solver(old.path(), new.path());
    assert!(
        text.contains("stored entities: changed") && text.contains("UNPROVEN"),
        "{text}"
    );
}

/// The solver picks derived tags as freely as any data: for a ceiling test moved
/// from `>=` to `>` its example has a ceiling of i64::MAX, reached with one
/// habilitation. Recounted over the example's entities, as the sidecar would store
/// them, the tags no longer reach the ceiling: the example is not confirmed, and
/// says why. The widening still trips the gate.
#[test]
fn an_example_that_rests_on_derived_tags_the_sidecar_would_not_compute_is_unconfirmed() {
    if !solver_available() {
        return;
    }
    let (old, new) = (model_copy(), model_copy());
    edit(new.path(), "policies/habilitations.cedar", |t| {
        t.replacen(
            r#"resource.bulletin.getTag("*") else 0) >= resource.bulletin"#,
            r#"resource.bulletin.getTag("*") else 0) > resource.bulletin"#,
            1,
        )
    });
    let (code, report) = diff_json(old.path(), new.path(), &["--fail-on", "widen"]);
    assert_eq!(code, 4, "{report:#}");
    let example = &signature(&report, GRANT)["widening"]["example"];
    assert_eq!(example["confirmed"], false, "{example:#}");
    let note = example["note"].as_str().unwrap();
    assert!(
        note.contains("rests on derived tags the solver chose"),
        "{note}"
    );
    // The entities shown carry the recounted tags, not the solver's.
    let bulletin = example["entities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["uid"]["type"] == "Bulletin")
        .unwrap();
    assert_eq!(bulletin["tags"]["*"], 1, "{bulletin:#}");
}

/// A counterexample is made under NEW's schema: with a User attribute only NEW
/// declares, OLD's side is still decided on the example's entities built under
/// NEW's schema (with OLD's derived tags), and a real widening stays confirmed.
#[test]
fn an_example_under_a_schema_with_a_new_attribute_is_still_confirmed() {
    if !solver_available() {
        return;
    }
    let (old, new) = (model_copy(), model_copy());
    drop_suspension_forbid(new.path());
    edit(new.path(), "schema/cdap.cedarschema", |t| {
        t.replace("  role: String,\n", "  role: String,\n  archived: Bool,\n")
    });
    let (code, report) = diff_json(old.path(), new.path(), &["--fail-on", "widen"]);
    assert_eq!(code, 4, "{report:#}");
    let example = &signature(&report, CONSULT)["widening"]["example"];
    assert_eq!(example["confirmed"], true, "{example:#}");
    assert_eq!(example["note"], Value::Null, "{example:#}");
    assert!(
        example["entities"][0]["attrs"]["archived"].is_boolean(),
        "{example:#}"
    );
}
