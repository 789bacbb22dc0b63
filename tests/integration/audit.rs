//! The decision log: one record per answered decision, Deny when it cannot be
//! written, a hash chain that `verify` checks, rotation and retention, and trace
//! reading by role (DOMAIN.md T1–T3).

use std::collections::HashSet;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::{ChildStderr, Command};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cdap_authz::audit::query::{query, Filter};
use cdap_authz::audit::record::{parse_line, whole_lines};
use cdap_authz::audit::rotate::segments;
use cdap_authz::audit::verify::{verify, Break, Verified};
use cdap_authz::audit::{AuditConfig, AuditLog, Entry, Fields, Record, RecordedContext};
use cdap_authz::http::AppState;
use cdap_authz::snapshot::{Snapshot, DEFAULT_TIME_ATTRIBUTE};
use chrono::{DateTime, Duration as Days, Utc};
use serde_json::{json, Value};

use crate::util::{allowed_consultation, bundled_sources, consult, pinned_time, Server};

/// A sidecar serving the bundled model with a decision log.
fn audited(config: AuditConfig) -> Server {
    Server::serve(audited_state(config))
}

/// The state of such a sidecar, for a test that reaches into it while it serves.
fn audited_state(config: AuditConfig) -> Arc<AppState> {
    let snapshot =
        Snapshot::load(&bundled_sources(), DEFAULT_TIME_ATTRIBUTE).expect("bundled model loads");
    let state = AppState::new(pinned_time()).with_audit(AuditLog::start(config).unwrap());
    state.install(Arc::new(snapshot));
    Arc::new(state)
}

fn records(dir: &Path) -> Vec<Record> {
    query(dir, &Filter::default(), usize::MAX).unwrap().records
}

fn decision_ids(dir: &Path) -> Vec<String> {
    records(dir).into_iter().map(|r| r.decision_id).collect()
}

#[track_caller]
fn verified(dir: &Path) -> Verified {
    match verify(dir, None).unwrap() {
        Ok(verified) => verified,
        Err((path, line, why)) => panic!("{}:{line}: {why}", path.display()),
    }
}

fn decision_id(body: &Value) -> String {
    body["decision_id"].as_str().unwrap().to_owned()
}

#[test]
fn concurrent_decisions_each_leave_one_record_with_their_decision_id() {
    let dir = tempfile::tempdir().unwrap();
    let server = audited(AuditConfig::new(dir.path()));
    let answered: Vec<String> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|worker| {
                let server = &server;
                scope.spawn(move || {
                    (0..25)
                        .map(|n| {
                            let mut request = allowed_consultation();
                            if (worker + n) % 3 == 0 {
                                request["resource"] =
                                    json!({"type": "File", "id": "dossier-33-0001"});
                            }
                            let (status, body) = server.post("/v1/is_authorized", &request);
                            assert_eq!(status, 200, "{body}");
                            decision_id(&body)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    let batch = json!({"requests": vec![allowed_consultation(); 10]});
    let (status, body) = server.post("/v1/batch_is_authorized", &batch);
    assert_eq!(status, 200, "{body}");
    let batch_ids: Vec<String> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(decision_id)
        .collect();
    let expected: HashSet<String> = answered.into_iter().chain(batch_ids).collect();
    assert_eq!(expected.len(), 110);
    let logged = records(dir.path());
    assert_eq!(logged.len(), 110, "one record per decision");
    let logged_ids: HashSet<String> = logged.iter().map(|r| r.decision_id.clone()).collect();
    assert_eq!(logged_ids, expected);
    assert_eq!(verified(dir.path()).records, 110);
}

#[test]
fn a_record_says_who_what_which_file_why_and_keeps_only_the_chosen_context() {
    let dir = tempfile::tempdir().unwrap();
    let server = audited(AuditConfig::new(dir.path()));
    let (_, body) = server.post("/v1/is_authorized", &allowed_consultation());
    let line = std::fs::read_to_string(&segments(dir.path()).unwrap()[0].path).unwrap();
    let record = &records(dir.path())[0];
    assert_eq!(record.decision_id, decision_id(&body));
    assert_eq!(record.principal, r#"User::"mau-t2""#);
    assert_eq!(record.action, r#"Action::"consult_file""#);
    assert_eq!(record.resource, r#"File::"dossier-59-0004""#);
    assert_eq!(record.partner.as_deref(), Some("ville-maubeuge"));
    assert_eq!(record.caf.as_deref(), Some("caf-nord"));
    assert_eq!(record.decision, "Allow");
    assert_eq!(record.reason, vec!["P3-T2-prestataire-service-social"]);
    assert_eq!(record.policy_version, body["policy_version"]);
    let keys: Vec<&str> = record.context.keys().map(String::as_str).collect();
    assert_eq!(keys, ["mission", "categories"]);
    assert_eq!(record.context["categories"], json!(["quotient_familial"]));
    for secret in ["authentication", "habilitation", "mau-t2-01"] {
        assert!(!line.contains(secret), "{secret} written: {line}");
    }
}

/// A web page may POST to the sidecar from a browser on the backend's host (a
/// `text/plain` body needs no preflight); the answer is unreadable to it, but the
/// decision would be logged, a consultation that never happened. Browsers mark such
/// requests with `Origin` and `Sec-Fetch-Site`: they are refused, and leave no
/// record. A backend's request (neither header, or `Sec-Fetch-Site: none`, which is
/// a person typing the address) is decided and logged.
#[test]
fn a_web_pages_request_is_refused_and_leaves_no_record() {
    let dir = tempfile::tempdir().unwrap();
    let server = audited(AuditConfig::new(dir.path()));
    let page_post = |header: &str, value: &str| {
        let reply = ureq::post(&server.url("/v1/is_authorized"))
            .set("content-type", "text/plain;charset=UTF-8")
            .set(header, value)
            .send_string(&allowed_consultation().to_string());
        crate::util::status_and_json(reply)
    };
    for (header, value) in [
        ("origin", "https://evil.example"),
        ("origin", "null"),
        ("sec-fetch-site", "cross-site"),
        ("sec-fetch-site", "same-site"),
    ] {
        let (status, body) = page_post(header, value);
        assert_eq!(status, 403, "{header}: {body}");
        assert_eq!(body["error"]["code"], "browser_request", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(value), "{message}");
        assert!(body.get("decision").is_none(), "{body}");
    }
    // Every line of the header counts, not the first alone.
    let body = allowed_consultation().to_string();
    let twice = server.exchange_raw(&format!(
        "POST /v1/is_authorized HTTP/1.1\r\nHost: localhost\r\nSec-Fetch-Site: none\r\n\
         Sec-Fetch-Site: cross-site\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    assert!(twice.starts_with("HTTP/1.1 403"), "{twice}");
    assert!(twice.contains("browser_request"), "{twice}");
    assert!(
        records(dir.path()).is_empty(),
        "a refused request was logged"
    );
    let (status, body) = page_post("sec-fetch-site", "none");
    assert_eq!(
        (status, &body["decision"]),
        (200, &json!("Allow")),
        "{body}"
    );
    let (status, body) = server.post("/v1/is_authorized", &allowed_consultation());
    assert_eq!(
        (status, &body["decision"]),
        (200, &json!("Allow")),
        "{body}"
    );
    assert_eq!(records(dir.path()).len(), 2);
}

/// The log keeps what the backend sent, whatever the request's layout: the same
/// consultation written compactly, pretty-printed, with escapes, or with `__entity`
/// (which the handler reads the general way) leaves the same recorded context, as
/// serde_json writes it.
#[test]
fn the_recorded_context_is_the_same_text_whatever_the_requests_layout() {
    let dir = tempfile::tempdir().unwrap();
    let server = audited(AuditConfig::new(dir.path()));
    let compact = allowed_consultation().to_string();
    let pretty = serde_json::to_string_pretty(&allowed_consultation()).unwrap();
    let escaped = compact
        .replace("\"quotient_familial\"", "\"\\u0071uotient_familial\"")
        .replace("\"maubeuge-centre", "\"\\u006daubeuge-centre");
    let mut general = allowed_consultation();
    let mission = general["context"]["mission"].take();
    general["context"]["mission"] = json!({ "__entity": mission });
    for body in [&compact, &pretty, &escaped, &general.to_string()] {
        let (status, reply) = server.post_raw("/v1/is_authorized", body);
        assert_eq!(
            (status, reply["decision"].as_str()),
            (200, Some("Allow")),
            "{body}"
        );
    }
    let text = std::fs::read_to_string(&segments(dir.path()).unwrap()[0].path).unwrap();
    let contexts: Vec<&str> = whole_lines(&text)
        .map(|line| {
            let start = line.find(r#""context":"#).expect("a context field");
            let end = line.find(r#","decision":"#).expect("a decision field");
            &line[start..end]
        })
        .collect();
    let expected = r#""context":{"mission":{"type":"Mission","id":"maubeuge-centre-loisirs-qf"},"categories":["quotient_familial"]}"#;
    let written = [
        expected,
        expected,
        expected,
        r#""context":{"mission":{"__entity":{"type":"Mission","id":"maubeuge-centre-loisirs-qf"}},"categories":["quotient_familial"]}"#,
    ];
    assert_eq!(contexts, written);
}

/// A record names the file's Caf, here another Caf than the partner's (which the
/// decision denies under M3), whether the file is stored or, as usually, comes with
/// the request.
#[test]
fn a_record_names_the_files_caf_whether_stored_or_brought() {
    let dir = tempfile::tempdir().unwrap();
    let server = audited(AuditConfig::new(dir.path()));
    let mut stored = allowed_consultation();
    stored["resource"] = json!({"type": "File", "id": "dossier-33-0001"});
    let mut brought = allowed_consultation();
    brought["resource"] = json!({"type": "File", "id": "dossier-33-new"});
    brought["entities"] = json!([{
        "uid": {"type": "File", "id": "dossier-33-new"},
        "attrs": {"caf": {"type": "Caf", "id": "caf-gironde"}, "department": "33",
                  "rsa_now": false, "categories": ["quotient_familial"]},
        "parents": []
    }]);
    for request in [&stored, &brought] {
        let (status, body) = server.post("/v1/is_authorized", request);
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["diagnostics"]["reason"],
            json!(["M3-file-of-another-caf"])
        );
    }
    let records = records(dir.path());
    for (record, file) in records.iter().zip(["dossier-33-0001", "dossier-33-new"]) {
        assert_eq!(record.resource, format!(r#"File::"{file}""#));
        assert_eq!(record.partner.as_deref(), Some("ville-maubeuge"));
        assert_eq!(record.caf.as_deref(), Some("caf-gironde"));
    }
}

/// A record's partner decides whose administrators read it. Caf staff have no
/// partner, so their record takes the stored resource's; a resource the request
/// brings, which a denied decision has not vouched for, cannot file the record under
/// the partner it claims (a Caf du Nord agent's act would show in the Gironde
/// partner's traces). The record still names the agent's Caf.
#[test]
fn a_caf_agents_record_takes_the_partner_of_a_stored_resource_only() {
    let dir = tempfile::tempdir().unwrap();
    let server = audited(AuditConfig::new(dir.path()));
    let manage = |resource: &str| {
        json!({
            "principal": "User::\"caf-nord-agent\"",
            "action": "Action::\"manage_user\"",
            "resource": format!("User::\"{resource}\""),
            "context": {"authentication": "password"},
        })
    };
    let mut planted = manage("planted");
    planted["entities"] = json!([{
        "uid": {"type": "User", "id": "planted"},
        "attrs": {"role": "user", "suspended": false, "must_change_password": false,
                  "trace_reader": false, "habilitation_admin": false,
                  "partner": {"type": "Partner", "id": "mairie-bouscat"}},
        "parents": []
    }]);
    for request in [manage("mau-t2"), planted] {
        let (status, body) = server.post("/v1/is_authorized", &request);
        assert_eq!(status, 200, "{body}");
    }
    let records = records(dir.path());
    let filed: Vec<_> = records
        .iter()
        .map(|r| (r.resource.as_str(), r.partner.as_deref(), r.caf.as_deref()))
        .collect();
    assert_eq!(
        filed,
        [
            (
                r#"User::"mau-t2""#,
                Some("ville-maubeuge"),
                Some("caf-nord")
            ),
            (r#"User::"planted""#, None, Some("caf-nord")),
        ]
    );
}

/// A log directory deleted under the running writer: its file, unlinked, would take
/// records no one can read. Within a second an append finds the file gone and is
/// refused (Deny), and so is every one while the directory is missing; once it is
/// back, the log goes on there, its chain continuing.
#[test]
fn a_log_directory_deleted_while_open_refuses_records_until_it_is_back() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("audit");
    let log = AuditLog::start(AuditConfig::new(&dir)).unwrap();
    write_entries(&log, 0..1);
    std::fs::remove_dir_all(&dir).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let append = |n: usize| runtime.block_on(log.submit(entry(n)).wait());
    let moved = append(1).unwrap_err().to_string();
    assert!(
        moved.contains("was removed or replaced while open"),
        "{moved}"
    );
    assert!(append(2).is_err(), "refused while the directory is missing");
    assert!(log.probe().is_some());
    std::fs::create_dir(&dir).unwrap();
    append(3).unwrap();
    assert!(log.probe().is_none());
    log.close();
    assert_eq!(decision_ids(&dir), ["id-3"]);
    assert_eq!(
        verified(&dir).first_seq,
        1,
        "the chain goes on from the lost record"
    );
}

/// Today's `index`-th log file in `dir` (from 0), a link to `/dev/full`: every write
/// to it fails with no space left, until the link is removed.
fn todays_file_on_dev_full(dir: &Path, index: u32) -> PathBuf {
    let today = Utc::now().format("%Y-%m-%d");
    let file = dir.join(format!("decisions-{today}.{index:03}.jsonl"));
    std::os::unix::fs::symlink("/dev/full", &file).unwrap();
    file
}

/// `/readyz` checks the log itself: without traffic, a log directory deleted shows
/// at once, and one back is opened, so a probe that took the sidecar out of
/// service lets it back in.
#[test]
fn readyz_sees_a_log_directory_deleted_and_back_without_traffic() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("audit");
    let server = audited(AuditConfig::new(&dir));
    assert_eq!(server.get("/readyz").0, 200);
    std::fs::remove_dir_all(&dir).unwrap();
    let (status, ready) = server.get("/readyz");
    assert_eq!(status, 503, "{ready}");
    assert!(ready.contains("removed or replaced while open"), "{ready}");
    std::fs::create_dir(&dir).unwrap();
    let (status, ready) = server.get("/readyz");
    assert_eq!(status, 200, "{ready}");
    let (_, body) = server.post("/v1/is_authorized", &allowed_consultation());
    assert_eq!(body["decision"], "Allow", "{body}");
    assert_eq!(
        records(&dir).len(),
        1,
        "recorded in the directory back in place"
    );
}

/// A batch whose records fill the disk part way: the items whose records were
/// written are answered as their records say, the rest Deny (each record one
/// file, the second file on a full disk).
#[test]
fn a_batch_cut_short_by_a_full_disk_answers_each_item_as_its_record_says() {
    let dir = tempfile::tempdir().unwrap();
    let server = audited(AuditConfig {
        max_file_bytes: 1,
        ..AuditConfig::new(dir.path())
    });
    // After the start, which opened the first file (an existing one would be the
    // newest, continued).
    todays_file_on_dev_full(dir.path(), 1);
    let batch = json!({"requests": vec![allowed_consultation(); 3]});
    let (_, body) = server.post("/v1/batch_is_authorized", &batch);
    let decisions: Vec<&Value> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["decision"])
        .collect();
    assert_eq!(
        decisions,
        [&json!("Allow"), &json!("Deny"), &json!("Deny")],
        "{body}"
    );
    let written = records(dir.path());
    assert_eq!(written.len(), 1);
    assert_eq!(written[0].decision, "Allow");
    assert_eq!(written[0].decision_id, decision_id(&body["results"][0]));
}

#[test]
fn an_unwritable_log_answers_deny_not_allow_readyz_reports_it_and_it_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let file = todays_file_on_dev_full(dir.path(), 0);
    let server = audited(AuditConfig::new(dir.path()));
    let (status, body) = server.post("/v1/is_authorized", &allowed_consultation());
    assert_eq!(status, 200);
    assert_eq!(body["decision"], "Deny", "{body}");
    let error = body["diagnostics"]["errors"][0].as_str().unwrap();
    assert!(error.starts_with("audit log unavailable: "), "{error}");
    let batch = json!({"requests": [allowed_consultation()]});
    let (_, body) = server.post("/v1/batch_is_authorized", &batch);
    assert_eq!(body["results"][0]["decision"], "Deny", "{body}");
    let (status, ready) = server.get("/readyz");
    assert_eq!(status, 503, "{ready}");
    assert!(ready.contains("audit_unavailable"), "{ready}");
    // A trace read is a decision too, denied for want of its record: the caller,
    // who may read these traces, is told the log is down, not that they may not.
    let (status, body) = traces_as(&server, Some("mau-admin"), "");
    assert_eq!(
        (status, &body["error"]["code"]),
        (503, &json!("audit_unavailable")),
        "{body}"
    );
    let (_, metrics) = server.get("/metrics");
    assert!(
        metrics.contains("cdap_authz_audit_write_failures_total 3"),
        "{metrics}"
    );
    // Counted by the answer given: Deny, not the Allow the policies gave.
    assert!(
        metrics.contains(r#"cdap_authz_decisions_total{action="consult_file",decision="Deny"} 2"#),
        "{metrics}"
    );
    assert!(!metrics.contains(r#"decision="Allow""#), "{metrics}");
    // Space again: the next write succeeds and the log is healthy again.
    std::fs::remove_file(&file).unwrap();
    let (_, body) = server.post("/v1/is_authorized", &allowed_consultation());
    assert_eq!(body["decision"], "Allow", "{body}");
    assert_eq!(server.get("/readyz").0, 200);
    assert_eq!(records(dir.path())[0].decision_id, decision_id(&body));
    verified(dir.path());
}

fn entry(n: usize) -> Entry {
    entry_with_id(n, &format!("id-{n}"))
}

fn entry_with_id(n: usize, decision_id: &str) -> Entry {
    entry_made_at(&format!("2026-11-23T00:00:{n:02}.000000Z"), decision_id)
}

fn entry_made_at(time: &str, decision_id: &str) -> Entry {
    Entry::new(&Fields {
        time,
        decision_id,
        principal: r#"User::"mau-t1""#,
        action: r#"Action::"consult_file""#,
        resource: r#"File::"dossier-59-0001""#,
        partner: Some("ville-maubeuge"),
        caf: Some("caf-nord"),
        context: RecordedContext {
            names: &[],
            context: None,
        },
        decision: "Allow",
        reason: &["P2-T1-action-sociale".to_owned()],
        errors: &[],
        policy_version: "sha256:test",
        latency_us: 10,
    })
}

/// Appends the entries numbered `range` as one batch, and waits.
fn write_entries(log: &AuditLog, range: std::ops::Range<usize>) {
    write_all(log, range.map(entry).collect());
}

/// Appends entries as one batch, and waits for each acknowledgement.
fn write_all(log: &AuditLog, entries: Vec<Entry>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for ack in log.submit_all(entries) {
        runtime.block_on(ack.wait()).unwrap();
    }
}

/// With `--audit-fsync`, an acknowledgement completes once a sync covers its
/// record; a record whose acknowledgement is dropped unawaited (its client gone) is
/// in the log all the same. The live log (its reserved end reads as NULs) reads and
/// verifies as the closed one does; a restart continues it.
#[test]
fn an_fsync_log_acknowledges_after_its_sync_and_loses_no_dropped_record() {
    let dir = tempfile::tempdir().unwrap();
    let config = AuditConfig {
        fsync: true,
        ..small_files(dir.path())
    };
    let log = AuditLog::start(config.clone()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    drop(log.submit(entry(0)));
    for acks in [
        log.submit_all((1..4).map(entry).collect()),
        vec![log.submit(entry(4))],
    ] {
        for ack in acks {
            let waited = runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(10), ack.wait()).await
            });
            waited.expect("a sync covered the record").unwrap();
        }
    }
    let live = ["id-0", "id-1", "id-2", "id-3", "id-4"];
    assert_eq!(decision_ids(dir.path()), live);
    assert_eq!(verified(dir.path()).records, 5);
    log.close();
    assert_eq!(decision_ids(dir.path()), live);
    let files = segments(dir.path()).unwrap();
    assert!(files.len() > 1, "{files:?}");
    for file in files {
        let bytes = std::fs::read(&file.path).unwrap();
        assert!(bytes.ends_with(b"\n") && !bytes.contains(&0), "{file:?}");
    }
    // A restart syncs every file (records a crash left unsynced may be in any),
    // then continues the chain.
    let log = AuditLog::start(config).unwrap();
    let ack = log.submit(entry(5));
    runtime.block_on(ack.wait()).unwrap();
    log.close();
    assert_eq!(verified(dir.path()).records, 6);
}

/// A record longer than the block the writer reads at a time from the file's end
/// at startup (256 KiB) still gives the chain its next sequence number and hash.
#[test]
fn a_record_longer_than_a_block_read_at_startup_still_continues_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::start(AuditConfig::new(dir.path())).unwrap();
    write_all(&log, vec![entry_with_id(0, &"x".repeat(1_200_000))]);
    drop(log);
    let log = AuditLog::start(AuditConfig::new(dir.path())).unwrap();
    write_entries(&log, 1..2);
    drop(log);
    assert_eq!(verified(dir.path()).records, 2);
}

/// A log of five records in one file, and that file's lines.
fn five_records() -> (tempfile::TempDir, PathBuf, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::start(AuditConfig::new(dir.path())).unwrap();
    write_entries(&log, 0..5);
    log.close();
    let path = segments(dir.path()).unwrap()[0].path.clone();
    let lines = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    (dir, path, lines)
}

#[track_caller]
fn broken_at(path: &Path, lines: &[String]) -> (usize, Break) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
    match verify(path.parent().unwrap(), None).unwrap() {
        Ok(verified) => panic!("tampering not detected: {verified:?}"),
        Err((_, line, why)) => (line, why),
    }
}

#[test]
fn editing_deleting_or_swapping_a_line_fails_verify_at_that_line() {
    let (dir, path, lines) = five_records();
    assert_eq!(verified(dir.path()).records, 5);

    let mut edited = lines.clone();
    edited[2] = edited[2].replace("\"Allow\"", "\"Deny\"");
    assert_eq!(broken_at(&path, &edited), (3, Break::Altered));

    let mut deleted = lines.clone();
    deleted.remove(2);
    assert!(matches!(
        broken_at(&path, &deleted),
        (
            3,
            Break::OutOfChain {
                expected_seq: 2,
                found_seq: 3
            }
        )
    ));

    // Rewritten with its hash recomputed, a line checks out on its own: the next
    // one, chained to its old hash, does not.
    let mut rewritten = lines.clone();
    let forged = rewritten[1].replace("\"Allow\"", "\"Deny\"");
    let claimed = parse_line(&forged).unwrap().claimed_hash;
    rewritten[1] = forged.replace(&claimed, &parse_line(&forged).unwrap().actual_hash);
    assert_eq!(
        broken_at(&path, &rewritten),
        (3, Break::NotChained { seq: 2 })
    );

    let mut swapped = lines.clone();
    swapped.swap(1, 2);
    assert!(matches!(
        broken_at(&path, &swapped),
        (
            2,
            Break::OutOfChain {
                expected_seq: 1,
                found_seq: 2
            }
        )
    ));

    let output = Command::new(env!("CARGO_BIN_EXE_cdap-authz"))
        .args(["audit", "verify"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(".jsonl:2: record removed or reordered"),
        "{stdout}"
    );
}

/// A write torn by a crash leaves an incomplete last line; the log continues in a
/// new file from the last whole record, and verify notes the torn line and checks
/// on. A whole record cut into a torn line is still caught at the next file.
#[test]
fn a_torn_last_line_is_noted_and_the_chain_checked_past_it() {
    let (dir, path, lines) = five_records();
    let torn = format!("{}\n{}", lines.join("\n"), &lines[4][..40]);
    // As a crash leaves it: the torn piece, then the space reserved past it.
    std::fs::write(&path, format!("{torn}{}", "\0".repeat(5000))).unwrap();
    let log = AuditLog::start(AuditConfig::new(dir.path())).unwrap();
    // The file left behind keeps its torn piece, and no reserved space.
    assert_eq!(std::fs::read_to_string(&path).unwrap(), torn);
    write_entries(&log, 5..7);
    log.close();
    let found = verified(dir.path());
    assert_eq!(found.records, 7);
    assert_eq!(found.torn, [(path.clone(), 6)]);

    // The fifth record itself cut short: the next file no longer chains.
    let cut = format!("{}\n{}", lines[..4].join("\n"), &lines[4][..40]);
    std::fs::write(&path, cut).unwrap();
    let (broken_file, line, why) = verify(dir.path(), None).unwrap().unwrap_err();
    assert_ne!(broken_file, path);
    assert_eq!(line, 1);
    assert!(matches!(why, Break::OutOfChain { .. }), "{why}");

    // A torn line that still parses (only its newline lost) is no record either:
    // the writer continues from the one before it, and queries do not return it.
    std::fs::remove_dir_all(dir.path()).unwrap();
    std::fs::create_dir_all(dir.path()).unwrap();
    std::fs::write(&path, lines.join("\n")).unwrap();
    let log = AuditLog::start(AuditConfig::new(dir.path())).unwrap();
    write_entries(&log, 5..7);
    log.close();
    assert_eq!(verified(dir.path()).records, 6);
    let ids = decision_ids(dir.path());
    assert_eq!(ids, ["id-0", "id-1", "id-2", "id-3", "id-5", "id-6"]);
}

/// A whole record at the end without its newline passes for a torn write only if
/// its hash matches it: altered, and its newline removed to hide it from queries,
/// it is reported altered.
#[test]
fn an_altered_last_record_without_its_newline_is_altered_not_torn() {
    let (dir, path, lines) = five_records();
    let altered = lines[4].replace("\"decision\":\"Deny\"", "\"decision\":\"Allow\"");
    let altered = if altered == lines[4] {
        lines[4].replace("\"decision\":\"Allow\"", "\"decision\":\"Deny\"")
    } else {
        altered
    };
    assert_ne!(altered, lines[4]);
    std::fs::write(&path, format!("{}\n{altered}", lines[..4].join("\n"))).unwrap();
    let (file, line, why) = verify(dir.path(), None).unwrap().unwrap_err();
    assert_eq!((file, line, why), (path.clone(), 5, Break::Altered));
    // Untouched, it is a torn write (a crash before the newline), noted.
    std::fs::write(&path, lines.join("\n")).unwrap();
    assert_eq!(verified(dir.path()).torn, [(path, 5)]);
}

/// The chain continues from the last whole line of the newest file; one that is
/// not a record (appended by hand, altered) stops the start, rather than every
/// later record being chained past a line `audit verify` refuses.
#[test]
fn a_log_whose_last_whole_line_is_not_a_record_is_not_continued() {
    let (dir, path, lines) = five_records();
    std::fs::write(&path, format!("{}\ngarbage\n", lines.join("\n"))).unwrap();
    let error = AuditLog::start(AuditConfig::new(dir.path()))
        .err()
        .expect("the log is not continued");
    assert!(
        error
            .to_string()
            .contains("its last whole line is not a decision record"),
        "{error}"
    );
}

/// Records cut off either end leave a valid chain; the first kept seq shows a cut
/// head, and a hash noted elsewhere shows a cut tail.
#[test]
fn cut_ends_show_in_the_first_seq_and_in_an_expected_hash() {
    let (dir, path, lines) = five_records();
    let hash_of = |line: &str| parse_line(line).unwrap().claimed_hash;
    let last = hash_of(&lines[4]);
    let found = verify(dir.path(), Some(&last)).unwrap().unwrap();
    assert_eq!((found.first_seq, found.records), (0, 5));

    std::fs::write(&path, lines[2..].join("\n") + "\n").unwrap();
    assert_eq!(verified(dir.path()).first_seq, 2);

    std::fs::write(&path, lines[..3].join("\n") + "\n").unwrap();
    assert!(verify(dir.path(), Some(&hash_of(&lines[1])))
        .unwrap()
        .is_ok());
    let (_, line, why) = verify(dir.path(), Some(&last)).unwrap().unwrap_err();
    assert_eq!((line, why), (3, Break::HashNotFound(last.clone())));
    // A hash noted elsewhere may have been written in capitals.
    assert!(verify(dir.path(), Some(&hash_of(&lines[1]).to_uppercase()))
        .unwrap()
        .is_ok());
}

/// A directory with no log file is an error (a mistyped path), not an empty chain.
#[test]
fn verifying_a_directory_without_a_log_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let error = verify(dir.path(), None).unwrap_err();
    assert!(
        error.to_string().contains("no decision log file"),
        "{error}"
    );
}

/// A log rotated every few records (1,200 bytes a file).
fn small_files(dir: &std::path::Path) -> AuditConfig {
    AuditConfig {
        max_file_bytes: 1200,
        ..AuditConfig::new(dir)
    }
}

#[test]
fn size_rotation_and_restarts_keep_one_chain_across_files() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_files(dir.path());
    let log = AuditLog::start(config.clone()).unwrap();
    write_entries(&log, 0..10);
    drop(log);
    let log = AuditLog::start(config).unwrap();
    write_entries(&log, 10..14);
    drop(log);
    let files = segments(dir.path()).unwrap();
    assert!(files.len() >= 5, "{files:?}");
    let verified = verified(dir.path());
    assert_eq!(verified.records, 14);
    let seqs: Vec<u64> = records(dir.path()).iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (0..14).collect::<Vec<u64>>());
    // Removing a whole file in the middle breaks the chain at the next file.
    std::fs::remove_file(&files[2].path).unwrap();
    let (path, line, _) = verify(dir.path(), None).unwrap().unwrap_err();
    assert_eq!((path, line), (files[3].path.clone(), 1));
    // Retention deletes whole days: with the day's first files gone, the next file
    // of the same day cannot start the chain.
    std::fs::remove_file(&files[0].path).unwrap();
    std::fs::remove_file(&files[1].path).unwrap();
    let (path, line, why) = verify(dir.path(), None).unwrap().unwrap_err();
    assert_eq!((path, line), (files[3].path.clone(), 1));
    assert!(
        matches!(why, Break::HeadRemoved { found_seq } if found_seq > 0),
        "{why}"
    );
}

/// A log in `dir` with the default settings and `clock`.
fn log_with_clock(dir: &Path, clock: cdap_authz::audit::Clock) -> AuditLog {
    AuditLog::start(AuditConfig {
        clock,
        ..AuditConfig::new(dir)
    })
    .unwrap()
}

fn clock_at(start: DateTime<Utc>) -> (Arc<AtomicI64>, cdap_authz::audit::Clock) {
    let now = Arc::new(AtomicI64::new(start.timestamp()));
    let read = now.clone();
    let clock = Arc::new(move || DateTime::from_timestamp(read.load(Ordering::SeqCst), 0).unwrap());
    (now, clock)
}

/// The log says who consulted which claimant's file: other local users may neither
/// read nor write it, whatever the umask leaves them.
#[test]
fn the_log_is_its_owners_and_its_groups_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("new").join("audit");
    let log = AuditLog::start(AuditConfig::new(&logs)).unwrap();
    write_entries(&log, 0..1);
    log.close();
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    let file = &segments(&logs).unwrap()[0].path;
    for (path, at_most) in [(&logs, 0o750), (file, 0o640)] {
        assert_eq!(
            mode(path) & !at_most,
            0,
            "{}: {:o}",
            path.display(),
            mode(path)
        );
    }
}

/// A clock set back past midnight (NTP stepping a fast clock back) must not send
/// records into an older file, which would put the chain out of the files' order
/// and make an untampered log fail `verify`: they go on in the newest file, whether
/// the clock moves back while the log runs or between two runs; and a query ending
/// before that file's day still finds them.
#[test]
fn a_clock_set_back_past_midnight_keeps_the_chain_in_file_order() {
    let dir = tempfile::tempdir().unwrap();
    let late_on_the_3rd: DateTime<Utc> = "2026-12-03T23:00:00Z".parse().unwrap();
    let (now, clock) = clock_at(late_on_the_3rd);
    let write = |log: &AuditLog, ids: std::ops::Range<usize>| {
        let time = DateTime::from_timestamp(now.load(Ordering::SeqCst), 0).unwrap();
        let time = time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        write_all(
            log,
            ids.map(|n| entry_made_at(&time, &format!("id-{n}")))
                .collect(),
        );
    };
    let log = log_with_clock(dir.path(), clock.clone());
    write(&log, 0..2);
    log.close();
    now.store(
        (late_on_the_3rd + Days::hours(2)).timestamp(),
        Ordering::SeqCst,
    );
    let log = log_with_clock(dir.path(), clock.clone());
    write(&log, 2..4);
    now.store(late_on_the_3rd.timestamp(), Ordering::SeqCst);
    write(&log, 4..6);
    log.close();
    let log = log_with_clock(dir.path(), clock);
    write(&log, 6..8);
    log.close();
    assert_eq!(verified(dir.path()).records, 8);
    let ids: Vec<String> = (0..8).map(|n| format!("id-{n}")).collect();
    assert_eq!(decision_ids(dir.path()), ids);
    let days: HashSet<String> = segments(dir.path())
        .unwrap()
        .iter()
        .map(|s| s.day.to_string())
        .collect();
    assert_eq!(
        days,
        HashSet::from(["2026-12-03".into(), "2026-12-04".into()])
    );
    let until_the_3rd = Filter {
        until: Some(late_on_the_3rd + Days::minutes(30)),
        ..Filter::default()
    };
    let found = query(dir.path(), &until_the_3rd, usize::MAX)
        .unwrap()
        .records;
    let ids: Vec<&str> = found.iter().map(|r| r.decision_id.as_str()).collect();
    assert_eq!(ids, ["id-0", "id-1", "id-4", "id-5", "id-6", "id-7"]);
}

/// A panic halfway through a batch (a bug: here the clock) leaves the chain where
/// the file ends, so the next records chain onto the last one written.
#[test]
fn a_panic_midway_through_a_batch_leaves_the_chain_where_the_file_ends() {
    let dir = tempfile::tempdir().unwrap();
    let panic_on_call = Arc::new(AtomicI64::new(-1));
    let countdown = panic_on_call.clone();
    let clock: cdap_authz::audit::Clock = Arc::new(move || {
        if countdown.fetch_sub(1, Ordering::SeqCst) == 0 {
            panic!("the clock failed");
        }
        "2026-11-23T12:00:00Z".parse().unwrap()
    });
    let log = log_with_clock(dir.path(), clock);
    write_entries(&log, 0..2);
    // The next batch's first record is appended, then the clock panics before
    // its second is.
    panic_on_call.store(1, Ordering::SeqCst);
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        write_entries(&log, 2..4);
    }));
    assert!(panicked.is_err());
    write_entries(&log, 4..6);
    log.close();
    let ids = decision_ids(dir.path());
    assert_eq!(ids, ["id-0", "id-1", "id-2", "id-4", "id-5"]);
    verified(dir.path());
}

#[test]
fn a_query_returns_the_newest_matches_in_log_order_across_files() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_files(dir.path());
    let log = AuditLog::start(config).unwrap();
    write_entries(&log, 0..14);
    drop(log);
    assert!(segments(dir.path()).unwrap().len() >= 5);
    let ids = |found: &cdap_authz::audit::query::Found| -> Vec<String> {
        found
            .records
            .iter()
            .map(|r| r.decision_id.clone())
            .collect()
    };
    let newest = query(dir.path(), &Filter::default(), 5).unwrap();
    assert_eq!(ids(&newest), ["id-9", "id-10", "id-11", "id-12", "id-13"]);
    assert!(newest.truncated);
    let since = Filter {
        since: Some("2026-11-23T00:00:11Z".parse().unwrap()),
        ..Filter::default()
    };
    let all_since = query(dir.path(), &since, 5).unwrap();
    assert_eq!(ids(&all_since), ["id-11", "id-12", "id-13"]);
    assert!(!all_since.truncated);
    let everything = query(dir.path(), &Filter::default(), 14).unwrap();
    assert_eq!(everything.records.len(), 14);
    assert!(!everything.truncated);
}

#[test]
fn a_new_day_starts_a_new_file_and_loses_no_record() {
    let dir = tempfile::tempdir().unwrap();
    let start: DateTime<Utc> = "2026-11-23T23:59:00Z".parse().unwrap();
    let (now, clock) = clock_at(start);
    let log = log_with_clock(dir.path(), clock);
    write_entries(&log, 0..3);
    now.fetch_add(120, Ordering::SeqCst);
    write_entries(&log, 3..6);
    drop(log);
    assert_eq!(
        segment_names(dir.path()),
        [
            "decisions-2026-11-23.000.jsonl",
            "decisions-2026-11-24.000.jsonl"
        ]
    );
    assert_eq!(verified(dir.path()).records, 6);
}

#[test]
fn retention_deletes_only_expired_log_files() {
    let dir = tempfile::tempdir().unwrap();
    let today: DateTime<Utc> = "2026-11-23T12:00:00Z".parse().unwrap();
    let day = |back: i64| (today - Days::days(back)).format("%Y-%m-%d").to_string();
    let name = |back: i64| format!("decisions-{}.000.jsonl", day(back));
    for file in [
        name(200),
        name(184),
        name(183),
        name(10),
        "notes-2020-01-01.txt".into(),
        // Not a name the writer gives (its date not zero-padded): not the log's.
        "decisions-2020-1-1.000.jsonl".into(),
    ] {
        std::fs::write(dir.path().join(file), "").unwrap();
    }
    let (_, clock) = clock_at(today);
    let log = log_with_clock(dir.path(), clock);
    write_entries(&log, 0..1);
    drop(log);
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    let mut expected = vec![
        name(183),
        name(10),
        name(0),
        "notes-2020-01-01.txt".to_owned(),
        "decisions-2020-1-1.000.jsonl".to_owned(),
    ];
    expected.sort();
    assert_eq!(left, expected);
}

/// The log's file names in `dir`, oldest first.
fn segment_names(dir: &Path) -> Vec<String> {
    segments(dir)
        .unwrap()
        .iter()
        .map(|s| s.path.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// A running log deletes what retention expires when a new day rotates it (off the
/// writer's lock: the deletion is done by the log's background thread, which
/// closing waits for).
#[test]
fn a_new_days_rotation_deletes_the_files_retention_expires() {
    let dir = tempfile::tempdir().unwrap();
    let start: DateTime<Utc> = "2026-11-23T12:00:00Z".parse().unwrap();
    let (now, clock) = clock_at(start);
    let log = AuditLog::start(AuditConfig {
        clock,
        retention_days: 2,
        ..AuditConfig::new(dir.path())
    })
    .unwrap();
    write_entries(&log, 0..2);
    now.fetch_add(86_400, Ordering::SeqCst);
    write_entries(&log, 2..4);
    now.fetch_add(2 * 86_400, Ordering::SeqCst);
    write_entries(&log, 4..6);
    drop(log);
    assert_eq!(
        segment_names(dir.path()),
        [
            "decisions-2026-11-24.000.jsonl",
            "decisions-2026-11-26.000.jsonl"
        ],
        "the 23rd is over two days old on the 26th, the 24th is not"
    );
}

fn traces_as(server: &Server, caller: Option<&str>, query: &str) -> (u16, Value) {
    traces_authenticated(server, caller, Some("password"), query)
}

/// `GET /v1/traces` with the backend's headers: the caller, and how they authenticated.
fn traces_authenticated(
    server: &Server,
    caller: Option<&str>,
    authentication: Option<&str>,
    query: &str,
) -> (u16, Value) {
    let mut request = ureq::get(&server.url(&format!("/v1/traces{query}")));
    if let Some(caller) = caller {
        request = request.set("x-cdap-principal", &format!("User::\"{caller}\""));
    }
    if let Some(authentication) = authentication {
        request = request.set("x-cdap-authentication", authentication);
    }
    crate::util::status_and_json(request.call())
}

/// A GET written by hand on a socket, for headers an HTTP client would merge; the
/// whole response as text.
fn raw_get(server: &Server, path: &str, headers: &[(&str, &str)]) -> String {
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n", server.addr);
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("Connection: close\r\n\r\n");
    server.exchange_raw(&request)
}

fn partners_seen(body: &Value) -> HashSet<String> {
    body["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["partner"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[test]
fn a_trace_query_beyond_the_limit_is_refused_with_429_until_one_ends() {
    let dir = tempfile::tempdir().unwrap();
    let state = audited_state(AuditConfig::new(dir.path()));
    let server = Server::serve(state.clone());
    server.post("/v1/is_authorized", &allowed_consultation());
    // The default limit is one log read at a time: the test holds that one.
    let running = state.trace_queries.clone().try_acquire_owned().unwrap();
    let (status, body) = traces_as(&server, Some("mau-admin"), "");
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "too_many_trace_queries", "{body}");
    // Refused before the log is read, but after the caller was authorised: a caller
    // without rights still gets 403, not a hint that someone is reading.
    let (status, _) = traces_as(&server, Some("bou-t2a"), "");
    assert_eq!(status, 403);
    drop(running);
    for _ in 0..2 {
        let (status, body) = traces_as(&server, Some("mau-admin"), "");
        assert_eq!(status, 200, "each read gives its permit back: {body}");
        let consulted = body["records"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["principal"] == r#"User::"mau-t2""#);
        assert!(consulted, "the consultation is among the traces: {body}");
    }
}

#[test]
fn traces_are_read_by_partner_managers_and_authorised_caf_staff_only() {
    let dir = tempfile::tempdir().unwrap();
    let server = audited(AuditConfig::new(dir.path()));
    let maubeuge = decision_id(&server.post("/v1/is_authorized", &allowed_consultation()).1);
    let bouscat = consult(
        "bou-t2a",
        "bou-t2-01",
        "bouscat-restauration-qf",
        &["quotient_familial"],
        "dossier-33-0001",
    );
    server.post("/v1/is_authorized", &bouscat);
    let departement = consult(
        "dep-t18",
        "dep-t18-01",
        "departement-rsa-contentieux",
        &["rsa"],
        "dossier-59-0002",
    );
    server.post("/v1/is_authorized", &departement);

    for manager in ["mau-admin", "mau-deputy"] {
        let (status, body) = traces_as(&server, Some(manager), "");
        assert_eq!(status, 200, "{manager}: {body}");
        assert_eq!(
            partners_seen(&body),
            HashSet::from(["ville-maubeuge".to_owned()])
        );
        assert!(body.to_string().contains(&maubeuge), "{body}");
        assert_eq!(body["unreadable_lines"], 0, "{body}");
    }
    let (status, body) = traces_as(&server, Some("caf-nord-traces"), "?limit=1000");
    assert_eq!(status, 200, "{body}");
    let seen = partners_seen(&body);
    assert!(
        seen.contains("ville-maubeuge") && seen.contains("departement-nord"),
        "{seen:?}"
    );
    assert!(!seen.contains("mairie-bouscat"), "{seen:?}");
    // That unscoped listing asked about every partner; its refusal for Bouscat (of
    // another Caf) is logged under no partner, so it is not in Bouscat's traces.
    let (status, body) = traces_as(&server, Some("bou-admin"), "?limit=1000");
    assert_eq!(status, 200, "{body}");
    assert!(!body.to_string().contains("caf-nord-traces"), "{body}");
    let refusal = records(dir.path())
        .into_iter()
        .find(|r| r.principal == r#"User::"caf-nord-traces""# && r.decision == "Deny")
        .expect("the refusal is logged");
    assert_eq!(
        (refusal.resource.as_str(), refusal.partner),
        (r#"Trace::"mairie-bouscat""#, None)
    );
    let (status, body) = traces_as(
        &server,
        Some("caf-nord-traces"),
        "?partner=departement-nord&decision=allow",
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        partners_seen(&body),
        HashSet::from(["departement-nord".to_owned()])
    );

    for (caller, query) in [
        ("mau-t1", ""),
        ("mau-manager", ""),
        ("caf-nord-agent", ""),
        ("caf-nord-traces", "?partner=mairie-bouscat"),
        ("bou-admin", "?partner=ville-maubeuge"),
    ] {
        let (status, body) = traces_as(&server, Some(caller), query);
        assert_eq!(status, 403, "{caller}{query}: {body}");
        assert_eq!(body["error"]["code"], "forbidden");
    }
    // H6 applies to trace reads: a manager on a shared account is refused. The 403
    // gives no reasons, which would differ between a partner that exists and one
    // that does not (and count the partners of an unscoped listing); the decision
    // log has them.
    let shared = |query: &str| {
        traces_authenticated(&server, Some("mau-admin"), Some("shared_account"), query)
    };
    let (status, body) = shared("");
    assert_eq!(status, 403, "{body}");
    assert_eq!(body, shared("?partner=nowhere").1);
    assert!(!body.to_string().contains("H6"), "{body}");
    let refusal = records(dir.path())
        .into_iter()
        .rfind(|r| r.principal == r#"User::"mau-admin""# && r.decision == "Deny")
        .expect("the refusal is logged");
    assert_eq!(refusal.reason, ["H6-authentication-not-personal"]);
    // A caller that is not stored, or of a type that may not read traces, is
    // refused alike, whether the partner exists.
    for query in ["?partner=ville-maubeuge", "?partner=nowhere"] {
        let (status, body) = traces_as(&server, Some("nobody"), query);
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["code"], "unknown_entity", "{body}");
        assert_eq!(
            body["error"]["message"], r#"X-Cdap-Principal: User::"nobody" is not a stored entity"#,
            "{body}"
        );
        let partner = ureq::get(&server.url(&format!("/v1/traces{query}")))
            .set("x-cdap-principal", r#"Partner::"ville-maubeuge""#)
            .set("x-cdap-authentication", "password")
            .call();
        let (status, body) = crate::util::status_and_json(partner);
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request", "{body}");
    }
    let (status, body) = traces_authenticated(&server, Some("mau-admin"), None, "");
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("x-cdap-authentication"), "{body}");
    assert_eq!(traces_as(&server, None, "").0, 400);
    let repeated = raw_get(
        &server,
        "/v1/traces",
        &[
            ("X-Cdap-Principal", "User::\"mau-admin\""),
            ("X-Cdap-Authentication", "shared_account"),
            ("X-Cdap-Authentication", "password"),
        ],
    );
    assert!(repeated.starts_with("HTTP/1.1 400"), "{repeated}");
    assert!(repeated.contains("sent more than once"), "{repeated}");
    let unreadable = raw_get(
        &server,
        "/v1/traces",
        &[
            ("X-Cdap-Principal", "User::\"mau-admin\""),
            ("X-Cdap-Authentication", "passé"),
        ],
    );
    assert!(unreadable.starts_with("HTTP/1.1 400"), "{unreadable}");
    assert!(unreadable.contains("not visible ASCII"), "{unreadable}");
    for (query, why) in [
        ("?since=yesterday", "not an RFC 3339 time"),
        ("?decision=maybe", "expected Allow or Deny"),
        (
            "?principal=User::%22mau-t1",
            "neither an id nor a reference",
        ),
        (
            "?partner=mairie-bouscat&partner=ville-maubeuge",
            "given more than once",
        ),
        ("?partner=", "empty: it would match nothing"),
        ("?principal=", "empty: it would match nothing"),
        ("?resource=%20dossier-59-0001", "has spaces around it"),
        (
            "?since=2026-12-04T00:00:00Z&until=2026-12-01T00:00:00Z",
            "the range is empty",
        ),
        ("?since=2026-12-03T00:00:00+01:00", "write it %2B"),
    ] {
        let (status, body) = traces_as(&server, Some("mau-admin"), query);
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["code"], "invalid_trace_query", "{query}");
        assert!(body.to_string().contains(why), "{query}: {body}");
    }
    // A partner that does not exist is refused as one the caller may not read; so is
    // a reference to the caller's partner's id with another type (it was read as the
    // partner's).
    for (partner, status) in [("Partner", 200), ("Caf", 403)] {
        let query = format!("?partner={partner}::%22ville-maubeuge%22");
        let (got, body) = traces_as(&server, Some("mau-admin"), &query);
        assert_eq!(got, status, "{query}: {body}");
    }
    for query in ["?partner=nowhere", "?partner=Partner::%22nowhere%22"] {
        let (status, body) = traces_as(&server, Some("mau-t1"), query);
        assert_eq!(status, 403, "{query}: {body}");
        assert_eq!(
            body["error"],
            traces_as(&server, Some("mau-t1"), "?partner=mairie-bouscat").1["error"]
        );
    }
}

/// Runs `cdap-authz serve` on a port-0 listener with its log in `dir`.
fn spawn_serve(dir: &Path) -> (crate::util::ServeChild, BufReader<ChildStderr>, String) {
    crate::util::spawn_serve(&[Path::new("--audit-dir").as_os_str(), dir.as_os_str()])
}

/// While the log stays down its failure is logged once, not once a record (a full
/// disk would fill with the same line), and its recovery is logged too.
#[test]
fn a_log_that_stays_down_is_reported_once_and_its_recovery_too() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let file = todays_file_on_dev_full(dir.path(), 0);
    let (mut child, mut stderr, addr) = spawn_serve(dir.path());
    let decide = || {
        let url = format!("http://{addr}/v1/is_authorized");
        let reply: Value = ureq::post(&url)
            .send_json(allowed_consultation())
            .unwrap()
            .into_json()
            .unwrap();
        reply["decision"].as_str().unwrap().to_owned()
    };
    for _ in 0..5 {
        assert_eq!(decide(), "Deny");
    }
    std::fs::remove_file(&file).unwrap();
    assert_eq!(decide(), "Allow");
    assert!(crate::util::terminate(&mut child).success());
    let mut log = String::new();
    stderr.read_to_string(&mut log).unwrap();
    // Reported at startup (before the `listen=` line `spawn_serve` reads up to),
    // then not once more for the five records refused.
    assert_eq!(log.matches("audit log unavailable").count(), 0, "{log}");
    assert!(log.contains("audit log available again"), "{log}");
}

#[test]
fn sigterm_closes_the_log_with_every_answered_decision_in_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, _stderr, addr) = spawn_serve(dir.path());
    let url = format!("http://{addr}/v1/is_authorized");
    let ids: Vec<String> = (0..5)
        .map(|_| {
            let reply = ureq::post(&url).send_json(allowed_consultation()).unwrap();
            decision_id(&reply.into_json().unwrap())
        })
        .collect();
    let exit = crate::util::terminate(&mut child);
    assert!(exit.success(), "{exit:?}");
    let logged: Vec<String> = records(dir.path())
        .into_iter()
        .map(|r| r.decision_id)
        .collect();
    assert_eq!(logged, ids);
    verified(dir.path());
}

#[test]
fn kill_9_under_load_loses_no_answered_decision() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, _stderr, addr) = spawn_serve(dir.path());
    let url = format!("http://{addr}/v1/is_authorized");
    let killed = AtomicBool::new(false);
    let answered: Vec<String> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..3)
            .map(|_| {
                let (url, killed) = (&url, &killed);
                scope.spawn(move || {
                    let mut ids = Vec::new();
                    let deadline = Instant::now() + Duration::from_secs(5);
                    while !killed.load(Ordering::SeqCst) && Instant::now() < deadline {
                        let reply = ureq::post(url)
                            .timeout(Duration::from_secs(2))
                            .send_json(allowed_consultation());
                        match reply {
                            Ok(r) => ids.push(decision_id(&r.into_json().unwrap())),
                            Err(_) => break,
                        }
                    }
                    ids
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(1500));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        killed.store(true, Ordering::SeqCst);
        clients
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect()
    });
    assert!(
        answered.len() > 10,
        "too few answers under load: {}",
        answered.len()
    );
    let logged: HashSet<String> = records(dir.path())
        .into_iter()
        .map(|r| r.decision_id)
        .collect();
    let lost: Vec<&String> = answered.iter().filter(|id| !logged.contains(*id)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} answered decisions not in the log: {lost:?}",
        lost.len(),
        answered.len()
    );
    verified(dir.path());
}
