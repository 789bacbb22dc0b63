//! The binary: `authorize` exit codes, model errors, and `serve` with SIGTERM.

use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crate::util::{allowed_consultation, repo, spawn_serve, terminate};

fn cdap_authz() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cdap-authz"));
    command.current_dir(repo("."));
    command
}

/// Asserts the command exited with `code`, showing its output when not.
#[track_caller]
fn assert_exit(output: &Output, code: i32) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn authorize_exits_0_on_allow_and_2_on_deny() {
    let allowed = cdap_authz()
        .args([
            "authorize",
            "--request",
            "examples/requests/consult-allowed.json",
        ])
        .output()
        .unwrap();
    assert_exit(&allowed, 0);
    assert!(String::from_utf8_lossy(&allowed.stdout).contains("\"Allow\""));
    let denied = cdap_authz()
        .args([
            "authorize",
            "--request",
            "examples/requests/consult-denied.json",
        ])
        .output()
        .unwrap();
    assert_exit(&denied, 2);
    assert!(String::from_utf8_lossy(&denied.stdout).contains("\"Deny\""));
}

#[test]
fn authorize_on_a_broken_policy_exits_3_with_its_location() {
    let (code, stderr) = run_on_policies(
        &[
            "authorize",
            "--request",
            "examples/requests/consult-allowed.json",
        ],
        &[(
            "broken.cedar",
            "permit (principal, action, resource)\nwhen { principal.no_such_attribute };\n",
        )],
    );
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("broken.cedar:2:8"), "{stderr}");
    assert!(stderr.contains("no_such_attribute"), "{stderr}");
}

/// Output read by a reader that goes away (`cdap-authz test | head`) ends the
/// command quietly with 141, as SIGPIPE ends a filter, not with a panic; with
/// stderr gone too (`2>&1 | head`), a failing command still ends with its own code.
#[test]
fn a_closed_stdout_ends_a_command_quietly() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("broken.cedar"), "permit (").unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let status = cdap_authz()
        .arg("validate")
        .arg("--policies")
        .arg(dir.path())
        .stdout(writer.try_clone().unwrap())
        .stderr(writer)
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(3), "{status:?}");
    for args in [
        &["validate"][..],
        &[
            "authorize",
            "--request",
            "examples/requests/consult-allowed.json",
        ],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let output = cdap_authz().args(args).stdout(writer).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(141), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// A log directory that cannot be made leaves the chain's end unknown: `serve`
/// stops before it listens, rather than start a chain that hides the older one.
#[test]
fn serve_stops_when_the_log_directory_cannot_be_made() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_dir = dir.path().join("a-file");
    std::fs::write(&not_a_dir, "").unwrap();
    let output = cdap_authz()
        .args(["serve", "--listen", "127.0.0.1:0", "--audit-dir"])
        .arg(not_a_dir.join("audit"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot open the decision log in"),
        "{stderr}"
    );
    assert!(!stderr.contains("listen="), "{stderr}");
}

#[test]
fn serve_on_a_broken_model_exits_3_without_claiming_a_snapshot_serves() {
    let (code, stderr) = run_on_policies(
        &["serve", "--listen", "127.0.0.1:0", "--no-audit"],
        &[("broken.cedar", "forbid (principal,\n")],
    );
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("broken.cedar:1:19"), "{stderr}");
    assert!(stderr.contains("no snapshot to serve"), "{stderr}");
    assert_eq!(stderr.matches("broken.cedar:1:19").count(), 1, "{stderr}");
    assert!(!stderr.contains("last good snapshot"), "{stderr}");
}

#[test]
fn serve_answers_reloads_on_sighup_and_stops_on_sigterm() {
    let log = tempfile::tempdir().unwrap();
    let (mut child, mut stderr, addr) =
        spawn_serve(&[Path::new("--audit-dir").as_os_str(), log.path().as_os_str()]);
    let ready = ureq::get(&format!("http://{addr}/readyz")).call().unwrap();
    assert_eq!(ready.status(), 200);
    // SIGHUP forces a reload; the files are unchanged, so the same version stays.
    // Startup makes one such reload itself (for changes made while it loaded).
    let unchanged = || {
        let metrics = ureq::get(&format!("http://{addr}/metrics"))
            .call()
            .unwrap()
            .into_string()
            .unwrap();
        metrics
            .lines()
            .find(|l| l.starts_with(r#"cdap_authz_reloads_total{outcome="unchanged"}"#))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let wait_for = |count: u64, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while unchanged() < count {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for(1, "the startup's own reload");
    let hangup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hangup.success());
    wait_for(2, "SIGHUP did not reload");
    let exit = terminate(&mut child);
    assert!(exit.success(), "{exit:?}");
    // The SIGHUP's outcome is logged, not only counted.
    let mut logged = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut logged).unwrap();
    let after_hangup = &logged[logged.find("SIGHUP: reloading").expect(&logged)..];
    assert!(
        after_hangup.contains("reloaded: nothing changed"),
        "{logged}"
    );
    assert!(
        ureq::get(&format!("http://{addr}/healthz")).call().is_err(),
        "still accepting after shutdown"
    );
}

/// `serve` on the bundled model with 4,000 more stored users (a first load of
/// about a second in a debug build), its stderr piped, and its address; returned
/// once it answers, which it does during the load: `/readyz` gets 503 `not_ready`
/// rather than hanging.
fn serving_during_a_slow_first_load(dir: &Path) -> (crate::util::ServeChild, String) {
    let text = std::fs::read_to_string(repo("examples/entities.json")).unwrap();
    let mut entities: serde_json::Value = serde_json::from_str(&text).unwrap();
    let users = entities.as_array_mut().unwrap();
    for n in 0..4000 {
        users.push(serde_json::json!({
            "uid": {"type": "User", "id": format!("filler-{n}")}, "parents": [],
            "attrs": {"role": "user", "suspended": false, "must_change_password": false,
                      "trace_reader": false, "habilitation_admin": false}
        }));
    }
    let path = dir.join("entities.json");
    std::fs::write(&path, entities.to_string()).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let child = crate::util::ServeChild(
        Command::new(env!("CARGO_BIN_EXE_cdap-authz"))
            .current_dir(repo("."))
            .args(["serve", "--listen", &addr, "--no-audit", "--entities"])
            .arg(&path)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    assert_eq!(
        first_readyz(&addr),
        503,
        "the first answer, during the load"
    );
    (child, addr)
}

/// `/readyz`'s status, `None` while nothing listens.
fn readyz(addr: &str) -> Option<u16> {
    match ureq::get(&format!("http://{addr}/readyz"))
        .timeout(Duration::from_millis(500))
        .call()
    {
        Ok(reply) => Some(reply.status()),
        Err(ureq::Error::Status(code, _)) => Some(code),
        Err(ureq::Error::Transport(_)) => None,
    }
}

/// The first status `/readyz` answers, within 10 s.
fn first_readyz(addr: &str) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = readyz(addr) {
            return status;
        }
        assert!(Instant::now() < deadline, "never answered");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// While the first load runs, the sidecar already answers
/// ([`serving_during_a_slow_first_load`]), and a SIGHUP is caught rather than killing
/// the process; it then serves.
#[test]
fn during_the_first_load_probes_get_503_and_a_sighup_does_not_kill_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = serving_during_a_slow_first_load(dir.path());
    let hangup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hangup.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while readyz(&addr) != Some(200) {
        assert!(child.try_wait().unwrap().is_none(), "the sidecar died");
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    let exit = terminate(&mut child);
    assert!(exit.success(), "{exit:?}");
}

/// A SIGTERM during the first load stops the server at once: it does not wait for
/// the load, whose snapshot would be "swapped in" after "stopped".
#[test]
fn a_sigterm_during_the_first_load_stops_without_finishing_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, _) = serving_during_a_slow_first_load(dir.path());
    let exit = terminate(&mut child);
    assert!(exit.success(), "{exit:?}");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let stopped = stderr.find("stopped").expect("logs that it stopped");
    assert!(
        !stderr[stopped..].contains("snapshot swapped in"),
        "{stderr}"
    );
}

/// With no warning either: every bundled policy has its `@id` and `@source`, and
/// every entity the data names is stored.
#[test]
fn validate_accepts_the_bundled_model() {
    let output = cdap_authz()
        .args(["validate", "--deny-warnings"])
        .output()
        .unwrap();
    assert_exit(&output, 0);
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("valid: "));
}

/// A policy without `@id` goes by its place in its file, which changes when a
/// policy is written above it; without `@source` it cites no clause. Cedar accepts
/// both: `validate` warns where each is, and fails with `--deny-warnings`.
#[test]
fn validate_warns_of_a_policy_without_its_id_or_its_source() {
    let files = [(
        "a.cedar",
        "@id(\"A\")\n@source(\"clause 1\")\npermit (principal, action, resource);\n\n\
         @source(\"clause 2\")\nforbid (principal, action, resource)\nwhen { principal == resource };\n\
         @id(\"C\")\n  permit (principal, action, resource) when { false };\n",
    )];
    let stderr = validate_says(&files, 0, "a.cedar:5:1: a policy without @id:");
    // A policy starts at its first annotation.
    assert!(
        stderr.contains("a.cedar:8:1: a policy without @source:"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("warning: ").count(), 2, "{stderr}");
    let (code, stderr) = run_on_policies(&["validate", "--deny-warnings"], &files);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("warnings denied"), "{stderr}");
    // A source that says nothing is none; an id that says nothing names no policy.
    let blank = [(
        "b.cedar",
        "@id(\"B\")\n@source(\" \")\npermit (principal, action, resource);\n",
    )];
    validate_says(&blank, 0, "b.cedar:1:1: a policy with an empty @source:");
    // A policy naming an entity that is not stored: a misspelt id, likely.
    let misspelt = [(
        "e.cedar",
        "@id(\"E\")\n@source(\"s\")\n\
         forbid (principal in Partner::\"ville-maubeug\", action, resource);\n",
    )];
    validate_says(
        &misspelt,
        0,
        "e.cedar:1:1: policy `E` names Partner::\"ville-maubeug\", which is not a stored entity",
    );
    let bare = [("d.cedar", "permit (principal, action, resource);\n")];
    validate_says(
        &bare,
        0,
        "d.cedar:1:1: a policy without @id and without @source:",
    );
    let empty_id = [(
        "c.cedar",
        "@id\n@source(\"s\")\npermit (principal, action, resource);\n",
    )];
    validate_says(&empty_id, 3, "c.cedar:1:1: a policy's @id is empty");
}

/// The bundled schema marks the types whose tags are derived: copied without its
/// `derived.json`, it is refused rather than served with H3 and H4 off.
#[test]
fn validate_refuses_the_schema_without_its_derivation_rules() {
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("cdap.cedarschema");
    std::fs::copy(repo("schema/cdap.cedarschema"), &schema).unwrap();
    assert_invalid(
        "--schema",
        &schema,
        "the schema marks the tags of `Bulletin`, `Group`, `Habilitation` @derived, but no \
         derivation rule writes them",
    );
}

/// Runs `validate FLAG PATH` (the bundled model otherwise); asserts it exits 3,
/// saying `expected`. Its stderr, for more checks.
#[track_caller]
fn assert_invalid(flag: &str, path: &std::path::Path, expected: &str) -> String {
    let output = cdap_authz()
        .arg("validate")
        .arg(flag)
        .arg(path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains(expected), "{stderr}");
    stderr
}

/// Cedar's entity errors carry no position: the message names the entity and what
/// is wrong with it, not only "error during entity deserialization".
#[test]
fn validate_names_the_entity_an_entities_file_gets_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let bundled = std::fs::read_to_string(repo("examples/entities.json")).unwrap();
    let mut entities: serde_json::Value = serde_json::from_str(&bundled).unwrap();
    let undeclared = entities.clone();
    entities.as_array_mut().unwrap().push(serde_json::json!(
        {"uid": {"type": "Bogus", "id": "x"}, "attrs": {}, "parents": []}
    ));
    let mut with_attribute = undeclared;
    with_attribute[0]["attrs"]["undeclared"] = serde_json::json!(1);
    for (json, expected) in [
        (
            entities,
            "entity `Bogus::\"x\"` has type `Bogus` which is not declared",
        ),
        (with_attribute, "attribute `undeclared` on `"),
    ] {
        let path = dir.path().join("entities.json");
        std::fs::write(&path, json.to_string()).unwrap();
        assert_invalid("--entities", &path, expected);
    }
}

/// Cedar stops at an entities file's first error, and says not where: each entity
/// it refuses on its own is a problem, at the line and column where it starts; and
/// what it refuses in the others together (a uid given twice) is one more.
#[test]
fn validate_shows_every_entity_an_entities_file_gets_wrong_where_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let bundled = std::fs::read_to_string(repo("examples/entities.json")).unwrap();
    let mut entities: serde_json::Value = serde_json::from_str(&bundled).unwrap();
    let with_suspended: Vec<usize> = (0..entities.as_array().unwrap().len())
        .filter(|&i| entities[i]["attrs"]["suspended"].is_boolean())
        .take(3)
        .collect();
    // Cedar takes an entity given twice alike as one: this copy differs.
    let mut twice = entities[with_suspended[2]].clone();
    twice["attrs"]["suspended"] = (!twice["attrs"]["suspended"].as_bool().unwrap()).into();
    entities[with_suspended[0]]["attrs"]["suspended"] = "no".into();
    entities[with_suspended[1]]["attrs"]["suspended"] = 0.into();
    entities.as_array_mut().unwrap().push(twice.clone());
    let text = serde_json::to_string_pretty(&entities).unwrap();
    let path = dir.path().join("entities.json");
    std::fs::write(&path, &text).unwrap();
    let stderr = assert_invalid("--entities", &path, "3 problems in the model:");
    // Pretty-printed, entity i starts on the line of the i-th `  {`.
    let starts: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, line)| *line == "  {")
        .map(|(n, _)| n + 1)
        .collect();
    for (entity, wrong) in with_suspended.iter().zip(["type string", "type long"]) {
        let id = entities[*entity]["uid"]["id"].as_str().unwrap();
        let at = format!("entities.json:{}:3: ", starts[*entity]);
        let line = stderr.lines().find(|l| l.contains(&at)).expect(&at);
        assert!(line.contains(id), "{line}");
        assert!(line.contains(wrong), "{line}");
    }
    let id = twice["uid"]["id"].as_str().unwrap();
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("entities.json: duplicate entity entry") && l.contains(id)),
        "{stderr}"
    );
}

/// Cedar allows a stored entity to name one that is not stored, but every decision
/// reading its attributes is denied: `validate` warns, naming the missing entity,
/// and still exits 0. The bundled data names none.
#[test]
fn validate_warns_of_references_to_entities_that_are_not_stored() {
    let bundled = cdap_authz().arg("validate").output().unwrap();
    assert_exit(&bundled, 0);
    assert!(!String::from_utf8_lossy(&bundled.stderr).contains("warning"));

    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo("examples/entities.json")).unwrap();
    let mut entities: serde_json::Value = serde_json::from_str(&text).unwrap();
    let user = entities
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|e| e["uid"]["id"] == "dep-t18")
        .unwrap();
    user["attrs"]["partner"]["id"] = "departement-nrod".into();
    user["parents"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"type": "Group", "id": "no-such-group"}));
    let path = dir.path().join("entities.json");
    std::fs::write(&path, entities.to_string()).unwrap();
    let output = cdap_authz()
        .arg("validate")
        .arg("--entities")
        .arg(&path)
        .output()
        .unwrap();
    assert_exit(&output, 0);
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in [
        r#"warning: stored entities name Partner::"departement-nrod" (by User::"dep-t18"), which is not"#,
        r#"warning: stored entities name Group::"no-such-group" (by User::"dep-t18"), which is not"#,
    ] {
        assert!(stderr.contains(expected), "{stderr}");
    }

    // An enumerated entity is never stored: the schema lists it.
    let files = [
        (
            "schema.cedarschema",
            "entity Color enum [\"red\", \"blue\"];\nentity User = { favourite: Color };\n\
             entity Doc;\naction view appliesTo { principal: User, resource: Doc };\n",
        ),
        (
            "entities.json",
            r#"[{"uid": {"type": "User", "id": "u"}, "parents": [],
                 "attrs": {"favourite": {"__entity": {"type": "Color", "id": "red"}}}}]"#,
        ),
        (
            "policies/p.cedar",
            "@id(\"red\")\n@source(\"a test\")\n\
             permit (principal, action, resource) when { principal.favourite == Color::\"red\" };\n",
        ),
    ];
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let output = cdap_authz()
        .arg("validate")
        .args([
            "--schema",
            "schema.cedarschema",
            "--entities",
            "entities.json",
        ])
        .args(["--policies", "policies"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_exit(&output, 0);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("warning"), "{stderr}");
}

/// serde_json keeps the last of repeated keys: `"suspended": true, "suspended":
/// false` would load a suspended user as active, while a reader of the file sees
/// both. Refused, at the repeated key's line.
#[test]
fn validate_refuses_a_key_repeated_in_the_entities_file() {
    let dir = tempfile::tempdir().unwrap();
    let bundled = std::fs::read_to_string(repo("examples/entities.json")).unwrap();
    let repeated = bundled.replacen(
        r#""suspended": true,"#,
        "\"suspended\": true,\n\"suspended\": false,",
        1,
    );
    assert_ne!(repeated, bundled, "the demo data has a suspended entity");
    // The repeated key is on the line after the first suspended entity's.
    let line = bundled[..bundled.find(r#""suspended": true,"#).unwrap()]
        .lines()
        .count()
        + 1;
    let path = dir.path().join("entities.json");
    std::fs::write(&path, repeated).unwrap();
    assert_invalid("--entities", &path, &format!("entities.json:{line}:"));
    assert_invalid("--entities", &path, "duplicate key `suspended`");
}

/// A filter that could match nothing by a typo is refused (clap's exit 2), as
/// `GET /v1/traces` refuses it with a 400; so is a time range that holds no instant,
/// and a directory without a log file (exit 1).
#[test]
fn audit_query_refuses_a_malformed_filter() {
    let dir = tempfile::tempdir().unwrap();
    let query = |args: &[&str]| {
        cdap_authz()
            .args(["audit", "query", "--dir"])
            .arg(dir.path())
            .args(args)
            .output()
            .unwrap()
    };
    for (flag, value, why) in [
        ("--decision", "maybe", "expected Allow or Deny, got `maybe`"),
        (
            "--principal",
            "User::\"dep-t1",
            "neither an id nor a reference",
        ),
        (
            "--resource",
            "File::dossier",
            "neither an id nor a reference",
        ),
        ("--principal", "", "empty: it would match nothing"),
        ("--partner", " ville-maubeuge", "has spaces around it"),
    ] {
        let output = query(&[flag, value]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{flag} {value}: {stderr}");
        assert!(stderr.contains(why), "{flag} {value}: {stderr}");
    }
    let no_log = query(&[]);
    assert_exit(&no_log, 1);
    assert!(String::from_utf8_lossy(&no_log.stderr).contains("no decision log file"));
    std::fs::write(dir.path().join("decisions-2026-11-23.000.jsonl"), "").unwrap();
    let inverted = query(&[
        "--since",
        "2026-12-04T00:00:00Z",
        "--until",
        "2026-12-01T00:00:00Z",
    ]);
    assert_exit(&inverted, 1);
    assert!(String::from_utf8_lossy(&inverted.stderr).contains("the range is empty"));
    let accepted = query(&[
        "--decision",
        "deny",
        "--principal",
        "mau-t1",
        "--resource",
        "File::\"dossier-59-0001\"",
        "--partner",
        "Partner::\"ville-maubeuge\"",
    ]);
    assert_exit(&accepted, 0);
}

/// A line that holds what a query asks for but is not a record (altered) may be a
/// record the answer lacks: `audit query` says so and exits 1.
#[test]
fn audit_query_warns_of_a_line_that_may_match_but_is_not_a_record() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("decisions-2026-11-23.000.jsonl"),
        "{\"seq\":0,\"principal\":\"User::\\\"mau-t1\\\"\"}\n",
    )
    .unwrap();
    let query = |principal: &str| {
        cdap_authz()
            .args(["audit", "query", "--dir"])
            .arg(dir.path())
            .args(["--principal", principal])
            .output()
            .unwrap()
    };
    let output = query("mau-t1");
    assert_exit(&output, 1);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("1 lines that may match are not decision records")
            && stderr.contains("audit verify"),
        "{stderr}"
    );
    assert_exit(&query("mau-t2"), 0);
}

#[test]
fn the_version_does_not_depend_on_how_the_paths_are_written() {
    let absolute = repo(".");
    let versions: Vec<String> = [
        vec![],
        vec![
            "--policies",
            "./policies",
            "--schema",
            "schema/../schema/cdap.cedarschema",
        ],
        vec![
            "--policies",
            absolute.join("policies").to_str().unwrap(),
            "--entities",
            absolute.join("examples/entities.json").to_str().unwrap(),
        ],
    ]
    .into_iter()
    .map(|args| {
        let output = cdap_authz().arg("validate").args(args).output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert_eq!(output.status.code(), Some(0), "{stdout}");
        stdout.rsplit_once("version ").unwrap().1.trim().to_owned()
    })
    .collect();
    assert!(versions[0].starts_with("sha256:"), "{versions:?}");
    assert!(versions.iter().all(|v| *v == versions[0]), "{versions:?}");
}

/// Runs `cdap-authz ARGS --policies DIR` on a directory of these files; returns the
/// exit code and stderr.
fn run_on_policies(args: &[&str], files: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let output = cdap_authz()
        .args(args)
        .arg("--policies")
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code(), stderr)
}

/// A file the formatter cannot read is shown against its lines, as `validate`
/// shows it: the formatter's own error has no position.
#[test]
fn fmt_shows_where_a_file_does_not_parse() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.cedar");
    std::fs::write(
        &file,
        "@id(\"A\")\npermit (principal, action, resource) when { ",
    )
    .unwrap();
    // The files after it are still checked, and formatted.
    let messy = dir.path().join("messy.cedar");
    std::fs::write(&messy, "permit(principal,action,resource);\n").unwrap();
    for check in [true, false] {
        let output = cdap_authz()
            .arg("fmt")
            .args(check.then_some("--check"))
            .arg(&file)
            .arg(&messy)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("bad.cedar:2:44]"), "{stderr}");
        assert!(stderr.contains("unexpected end of input"), "{stderr}");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let said = if check { "not formatted" } else { "formatted" };
        assert!(stdout.starts_with(&format!("{said}: ")), "{stdout}");
        assert!(stdout.contains("messy.cedar"), "{stdout}");
    }
    let formatted = std::fs::read_to_string(&messy).unwrap();
    assert_eq!(formatted, "permit (principal, action, resource);\n");
}

fn validate_policies(files: &[(&str, &str)]) -> (Option<i32>, String) {
    run_on_policies(&["validate"], files)
}

/// Runs `validate` on policy `files`; asserts it exits `code` saying `expected`.
/// Its stderr, for more checks.
#[track_caller]
fn validate_says(files: &[(&str, &str)], code: i32, expected: &str) -> String {
    let (exit, stderr) = validate_policies(files);
    assert_eq!(exit, Some(code), "{stderr}");
    assert!(stderr.contains(expected), "{expected}: {stderr}");
    stderr
}

/// Cedar gives a file's second and later syntax errors as diagnostics related to
/// its first: each is a problem of its own, counted, and shown at its file.
#[test]
fn validate_shows_each_syntax_error_of_a_file_at_that_file() {
    let broken = "@id(\"A\")\npermit (principal, action, resource\nwhen { true };\n\n\
                  @id(\"B\")\nforbid (principal, action, resource\nwhen { false };\n";
    let (code, stderr) = validate_policies(&[("a.cedar", broken)]);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.starts_with("2 problems in the model:"), "{stderr}");
    for at in ["a.cedar:3:1]", "a.cedar:7:1]"] {
        assert!(stderr.contains(at), "{at}: {stderr}");
    }
}

/// A repeated `@id` is shown where it is repeated, with where it was first used: in
/// another file, at that file's `@id`; in the same file, at its second.
#[test]
fn validate_shows_where_a_policy_id_is_repeated() {
    let policy =
        "@id(\"P\")\npermit (principal, action, resource)\nwhen { principal == resource };\n";
    let (code, stderr) =
        validate_policies(&[("a.cedar", policy), ("b.cedar", &format!("\n{policy}"))]);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr.contains("b.cedar:2:1: policy id `P` is already used at ")
            && stderr.contains("a.cedar:1:1\n"),
        "{stderr}"
    );
    let (code, stderr) = validate_policies(&[("a.cedar", &format!("{policy}  {policy}{policy}"))]);
    assert_eq!(code, Some(3), "{stderr}");
    // Each repeat names the first use, which loaded, not the one before it.
    for at in ["a.cedar:4:3:", "a.cedar:7:1:"] {
        assert!(
            stderr.contains(&format!("{at} policy id `P` is already used at ")),
            "{stderr}"
        );
    }
    assert_eq!(stderr.matches("a.cedar:1:1\n").count(), 2, "{stderr}");
}

/// A byte-order mark, which some editors write, is named (Cedar reads it as an
/// invalid token at a place that looks right).
#[test]
fn validate_names_a_byte_order_mark() {
    validate_says(
        &[(
            "a.cedar",
            "\u{feff}@id(\"A\")\n@source(\"s\")\npermit (principal, action, resource);\n",
        )],
        3,
        "a.cedar:1:1: a byte-order mark (U+FEFF)",
    );
    // One carried along into the middle of a file.
    validate_says(
        &[(
            "b.cedar",
            "\r\n\u{feff}@id(\"B\")\n@source(\"s\")\npermit (principal, action, resource);\n",
        )],
        3,
        "b.cedar:2:1: a byte-order mark (U+FEFF)",
    );
}

#[test]
fn validate_refuses_a_template_that_would_never_apply() {
    validate_says(
        &[(
            "a.cedar",
            "@id(\"T-forbid\")\nforbid (principal == ?principal, action, resource);\n",
        )],
        3,
        "a.cedar:1:1: policy `T-forbid` is a template",
    );
}

#[test]
fn validate_reports_every_problem_at_once_and_exits_3() {
    let (code, stderr) = validate_policies(&[
        (
            "a.cedar",
            "permit (principal, action, resource)\nwhen { principal.nope };\n",
        ),
        ("b.cedar", "forbid (principal,\n  action resource);\n"),
    ]);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.starts_with("2 problems in the model"), "{stderr}");
    assert!(stderr.contains("a.cedar:2:8"), "{stderr}");
    assert!(stderr.contains("b.cedar:2:10"), "{stderr}");
}

#[test]
fn fmt_check_passes_on_the_bundled_policies_and_fails_on_unformatted_input() {
    let bundled = cdap_authz()
        .args(["fmt", "--check", "policies"])
        .output()
        .unwrap();
    assert_exit(&bundled, 0);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("messy.cedar");
    let messy = "permit(principal,action,resource)when{principal==resource};\n";
    std::fs::write(&file, messy).unwrap();
    let check = cdap_authz()
        .args(["fmt", "--check"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&check.stdout).contains("messy.cedar"));
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        messy,
        "--check must not rewrite"
    );

    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let format = cdap_authz().arg("fmt").arg(&file).output().unwrap();
    assert_eq!(format.status.code(), Some(0));
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "the rewritten file keeps its permissions");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "no temporary file left: {leftovers:?}");

    // Through a symlink, the target is formatted and the link stays a link.
    std::fs::write(&file, messy).unwrap();
    let link = dir.path().join("linked.cedar");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    let format = cdap_authz().arg("fmt").arg(&link).output().unwrap();
    assert_eq!(format.status.code(), Some(0));
    assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
    assert_ne!(std::fs::read_to_string(&file).unwrap(), messy);
    let again = cdap_authz()
        .args(["fmt", "--check"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(0), "formatting is not stable");
}

#[test]
fn explain_names_the_determining_permit_and_its_clause() {
    let output = cdap_authz()
        .args([
            "explain",
            "--request",
            "examples/requests/consult-allowed.json",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("decision: Allow"), "{stdout}");
    assert!(
        stdout.contains("permit P6-T18-contentieux-rsa (policies/profiles.cedar)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("source: Bulletin d'adhésion Cdap art. 1, profil T18"),
        "{stdout}"
    );
    assert!(!stdout.contains("closest permits"), "{stdout}");
}

/// `explain` (text) of a `read` of `Doc::"d"` by `User::"u"` with the context
/// `{"k": i64::MAX}`, on a one-action model with `policies`.
fn explain_on_a_small_model(policies: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
    };
    file(
        "schema.cedarschema",
        "entity User; entity Doc;\n\
         action read appliesTo { principal: User, resource: Doc, context: { k: Long } };\n",
    );
    file("policies/p.cedar", policies);
    file(
        "entities.json",
        r#"[{"uid": {"type": "User", "id": "u"}, "attrs": {}, "parents": []},
            {"uid": {"type": "Doc", "id": "d"}, "attrs": {}, "parents": []}]"#,
    );
    file(
        "request.json",
        r#"{"principal": "User::\"u\"", "action": "Action::\"read\"",
            "resource": "Doc::\"d\"", "context": {"k": 9223372036854775807}}"#,
    );
    cdap_authz()
        .current_dir(dir.path())
        .args(["explain", "--request", "request.json"])
        .args(["--policies", "policies", "--schema", "schema.cedarschema"])
        .args(["--entities", "entities.json"])
        .output()
        .unwrap()
}

#[test]
fn explain_of_a_fail_closed_deny_names_the_error_and_the_overridden_permit() {
    // A permit that applies, and a forbid whose condition overflows: Cedar alone
    // would allow; the sidecar denies, and explain must say why.
    let output = explain_on_a_small_model(
        "@id(\"read-all\")\n@source(\"test\")\n\
         permit (principal, action == Action::\"read\", resource);\n\
         @id(\"forbid-overflow\")\n\
         forbid (principal, action, resource) when { context.k + 1 < 0 };\n",
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_exit(&output, 2);
    assert!(stdout.contains("decision: Deny"), "{stdout}");
    assert!(stdout.contains("the fail-closed rule"), "{stdout}");
    assert!(stdout.contains("permit read-all"), "{stdout}");
    assert!(stdout.contains("forbid-overflow"), "{stdout}");
    assert!(!stdout.contains("no permit applies"), "{stdout}");
    assert!(!stdout.contains("closest permits"), "{stdout}");
}

/// A closest permit whose condition errs is named in the error by its `@id`.
#[test]
fn explain_names_a_closest_permit_in_its_condition_error() {
    let output = explain_on_a_small_model(
        "@id(\"read-small\")\n@source(\"test\")\n\
         permit (principal, action == Action::\"read\", resource) when { context.k + 1 > 0 };\n",
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_exit(&output, 2);
    assert!(
        stdout.contains("policy `read-small`: integer overflow"),
        "{stdout}"
    );
    assert!(!stdout.contains("JSON policy"), "{stdout}");
}

#[test]
fn explain_shows_the_closest_permits_of_a_default_deny() {
    let output = cdap_authz()
        .args([
            "explain",
            "--request",
            "examples/requests/consult-denied.json",
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["decision"], "Deny");
    assert_eq!(report["determining"], serde_json::json!([]));
    // The T18 permit matched all but its two-year Rsa window.
    let closest = &report["closest_permits"][0];
    assert_eq!(closest["policy"]["id"], "P6-T18-contentieux-rsa");
    assert_eq!(closest["conditions_met"], 3);
    assert_eq!(closest["conditions"], 4);
    let failed = closest["failed_condition"].as_str().unwrap();
    assert!(
        failed.starts_with("when {") && failed.contains("rsa_last_date"),
        "{failed}"
    );
    assert_eq!(closest["error"], serde_json::Value::Null);
}

#[test]
fn explain_of_a_forbid_shows_the_forbid_and_no_closest_permits() {
    let dir = tempfile::tempdir().unwrap();
    let request = dir.path().join("suspended.json");
    let mut body: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo("examples/requests/consult-allowed.json")).unwrap(),
    )
    .unwrap();
    body["principal"] = "User::\"mau-suspended\"".into();
    std::fs::write(&request, body.to_string()).unwrap();
    let output = cdap_authz()
        .args(["explain", "--request", request.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(2), "{stdout}");
    assert!(stdout.contains("forbid S1-user-suspended"), "{stdout}");
    assert!(!stdout.contains("closest permits"), "{stdout}");
}

#[test]
fn serve_keeps_serving_and_stops_cleanly_when_its_stderr_is_closed() {
    let (mut child, stderr, addr) = spawn_serve(&["--no-audit"]);
    drop(stderr); // every later log line now fails to write
    let reply = ureq::post(&format!("http://{addr}/v1/is_authorized"))
        .send_json(allowed_consultation())
        .unwrap();
    assert_eq!(reply.status(), 200);
    let exit = terminate(&mut child); // shutdown logs a line
    assert!(exit.success(), "{exit:?}");
}

/// Settings that would leave the sidecar unable to serve, or its log unusable, are
/// refused before it starts (clap's exit 2), as is a coverage no suite can reach.
#[test]
fn settings_that_break_the_sidecar_are_refused() {
    for (args, why) in [
        (&["serve", "--max-body", "0"][..], "0 is not in 1.."),
        (&["serve", "--max-batch", "0"], "0 is not in 1.."),
        (
            &["serve", "--audit-max-file-bytes", "1000"],
            "1000 is not in 1048576..",
        ),
        (&["serve", "--audit-retention-days", "0"], "0 is not in 1.."),
        (
            &["serve", "--audit-retention-days", "100000000"],
            "is not in 1..=36500",
        ),
        (
            &["serve", "--read-timeout-secs", "18446744073709551615"],
            "is not in 1..=86400",
        ),
        (&["audit", "query", "--limit", "0"], "0 is not in 1.."),
        (&["serve", "--allow-host", "foo:80"], "without port"),
        (&["test", "--min-coverage", "nan"], "from 0 to 100"),
        (&["test", "--min-coverage", "150"], "from 0 to 100"),
    ] {
        let output = cdap_authz().args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(why), "{args:?}: {stderr}");
    }
}

/// Out of file descriptors, an accept fails until connections close: the server
/// waits between tries and logs it at most every 10 s (it spun on a core, logging
/// ~100,000 lines a second), and serves again.
#[test]
fn serve_out_of_file_descriptors_retries_accepts_quietly_and_recovers() {
    let (mut child, mut stderr, addr) = spawn_serve(&["--no-audit"]);
    let pid = child.id().to_string();
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let limit = format!("--nofile={}:{}", open + 4, open + 4);
    let limited = Command::new("prlimit")
        .args(["--pid", &pid, &limit])
        .status()
        .unwrap();
    assert!(limited.success());
    let connections: Vec<_> = (0..20)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    drop(connections);
    let deadline = Instant::now() + Duration::from_secs(10);
    let healthy = loop {
        let reply = ureq::get(&format!("http://{addr}/healthz"))
            .timeout(Duration::from_secs(1))
            .call();
        if reply.is_ok() || Instant::now() > deadline {
            break reply.is_ok();
        }
    };
    assert!(healthy, "serves again once connections close");
    let exit = terminate(&mut child);
    assert!(exit.success(), "{exit:?}");
    let mut log = String::new();
    stderr.read_to_string(&mut log).unwrap();
    assert_eq!(log.matches("accept failed").count(), 1, "{log}");
}

/// Connections beyond the number of workers share them: eight clients, each on its
/// own keep-alive connection, all open at once (each waits for the others' first
/// answer before going on), against one worker.
#[test]
fn serve_on_one_worker_answers_several_connections_at_once() {
    const CLIENTS: usize = 8;
    let (mut child, _stderr, addr) = spawn_serve(&["--no-audit", "--workers", "1"]);
    let url = format!("http://{addr}/v1/is_authorized");
    let all_answered_once = Arc::new(Barrier::new(CLIENTS));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (url, all_answered_once) = (url.clone(), all_answered_once.clone());
            std::thread::spawn(move || {
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(10))
                    .build();
                let decide = || -> Result<String, String> {
                    let reply = agent
                        .post(&url)
                        .send_json(allowed_consultation())
                        .map_err(|e| e.to_string())?;
                    let body: serde_json::Value = reply.into_json().map_err(|e| e.to_string())?;
                    Ok(body["decision"].as_str().unwrap_or_default().to_owned())
                };
                let first = decide();
                // Reached even if the first request failed, so that no client
                // waits here forever.
                all_answered_once.wait();
                let mut decisions = vec![first.unwrap()];
                decisions.extend((1..20).map(|_| decide().unwrap()));
                decisions
            })
        })
        .collect();
    for client in clients {
        assert_eq!(client.join().unwrap(), vec!["Allow"; 20]);
    }
    assert!(terminate(&mut child).success());
}

/// `--pin-workers`: the i-th worker thread may run only on the i-th CPU the process
/// may use (going round them again: three workers on this 2-core machine), as
/// `/proc` reports them; and the pinned workers answer.
#[test]
fn serve_pins_each_worker_to_one_cpu_when_asked() {
    let (mut child, _stderr, addr) =
        spawn_serve(&["--no-audit", "--workers", "3", "--pin-workers"]);
    let reply: serde_json::Value = ureq::post(&format!("http://{addr}/v1/is_authorized"))
        .send_json(allowed_consultation())
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(reply["decision"], "Allow");
    let process = Path::new("/proc").join(child.id().to_string());
    let allowed = cpus_allowed(&process);
    let mut pinned = std::collections::BTreeMap::new();
    for task in std::fs::read_dir(process.join("task")).unwrap() {
        let task = task.unwrap().path();
        let name = std::fs::read_to_string(task.join("comm")).unwrap();
        if let Some(index) = name.trim().strip_prefix("http-worker-") {
            pinned.insert(index.parse::<usize>().unwrap(), cpus_allowed(&task));
        }
    }
    let expected = (0..3)
        .map(|i| (i, vec![allowed[i % allowed.len()]]))
        .collect();
    assert_eq!(pinned, expected, "the process may use CPUs {allowed:?}");
    assert!(terminate(&mut child).success());
}

/// The CPUs a process or thread may run on: its `Cpus_allowed_list` (`0-1,4`).
fn cpus_allowed(proc_dir: &Path) -> Vec<usize> {
    let status = std::fs::read_to_string(proc_dir.join("status")).unwrap();
    let list = status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .unwrap();
    list.trim()
        .split(',')
        .flat_map(|range| {
            let (first, last) = range.split_once('-').unwrap_or((range, range));
            first.parse::<usize>().unwrap()..=last.parse().unwrap()
        })
        .collect()
}

#[test]
fn serve_refuses_zero_workers() {
    let output = cdap_authz()
        .args(["serve", "--workers", "0", "--no-audit"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--workers"), "{stderr}");
}
