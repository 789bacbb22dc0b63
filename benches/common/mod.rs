//! What the decision benches share: the timed cases (from `tests/policies/`), the
//! bundled model, the full in-process path (with or without a decision log), and
//! the interleaved A/B timing of two paths. `examples/footprint.rs` uses it too.

// Each bench compiles this module and uses its own part of it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cdap_authz::api::Outcome;
use cdap_authz::audit::{AuditLog, Decided};
use cdap_authz::engine;
use cdap_authz::load::{self, Model, Sources};
use cdap_authz::snapshot::{Snapshot, DEFAULT_TIME_ATTRIBUTE};
use chrono::{DateTime, Utc};
use serde_json::Value;

/// The suite cases timed: (suite file, case name, short label).
const CASES: &[(&str, &str, &str)] = &[
    (
        "profiles.json",
        "P3: T2 provider computes participation from quotient familial",
        "t2_allow",
    ),
    (
        "profiles.json",
        "P2: T1 social worker consults for a partner mission",
        "t1_allow",
    ),
    (
        "profiles.json",
        "P4: T4 instructor with own instructor number",
        "t4_allow",
    ),
    (
        "profiles.json",
        "P5: T5 cannot follow files of another department",
        "t5_deny",
    ),
    (
        "missions.json",
        "M2: data beyond the mission is denied",
        "t2_deny_purpose",
    ),
    (
        "suspension.json",
        "S1: suspended user is denied everything [mau-suspended consult_file dossier-59-0004]",
        "suspended_deny",
    ),
];

pub fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

pub struct Case {
    pub label: &'static str,
    pub bytes: Vec<u8>,
    pub expected: Outcome,
}

/// A suite case's request as wire bytes, and its expected decision.
fn case(file: &str, name: &str, label: &'static str) -> Case {
    let suite: Value = serde_json::from_str(
        &std::fs::read_to_string(repo(&format!("tests/policies/{file}"))).unwrap(),
    )
    .unwrap();
    let test = suite["tests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no case {name:?} in {file}"));
    assert!(
        test.get("entities").is_none(),
        "{name}: only base-entity cases are timed"
    );
    let expected = match test["decision"].as_str() {
        Some("allow") => Outcome::Allow,
        _ => Outcome::Deny,
    };
    Case {
        label,
        bytes: serde_json::to_vec(&test["request"]).unwrap(),
        expected,
    }
}

pub fn cases() -> Vec<Case> {
    CASES
        .iter()
        .map(|(file, name, label)| case(file, name, label))
        .collect()
}

pub fn now() -> DateTime<Utc> {
    "2026-11-22T10:00:00Z".parse().unwrap()
}

pub fn bundled_model() -> Model {
    load::load(&Sources::bundled(&repo(""))).unwrap()
}

pub fn snapshot(model: Model) -> Snapshot {
    Snapshot::from_model(
        model,
        &repo("schema/cdap.cedarschema"),
        DEFAULT_TIME_ATTRIBUTE,
    )
    .unwrap()
}

/// The full in-process path: bytes in, bytes out, read as the HTTP handler reads a
/// request (its context by type, nothing recorded: the log is not part of it).
pub fn full_path(snapshot: &Snapshot, bytes: &[u8]) -> (Outcome, Vec<u8>) {
    full_path_at(snapshot, bytes, now())
}

/// [`full_path`] with the sidecar's clock at `now`.
pub fn full_path_at(snapshot: &Snapshot, bytes: &[u8], now: DateTime<Utc>) -> (Outcome, Vec<u8>) {
    let request = engine::read_request(snapshot, bytes, &[]).unwrap();
    let decision = engine::decide(snapshot, &request, now).unwrap();
    let outcome = decision.outcome;
    let response = decision.response(&snapshot.version);
    (outcome, serde_json::to_vec(&response).unwrap())
}

/// Decides `bytes` as the HTTP handler does (the request read by type, with the
/// `recorded` context fields kept for the log) and calls `f` with the decision as
/// the handler hands it to the log.
pub fn with_decided<R>(
    snapshot: &Snapshot,
    bytes: &[u8],
    recorded: &[String],
    f: impl FnOnce(&Decided<'_>) -> R,
) -> R {
    let request = engine::read_request(snapshot, bytes, recorded).unwrap();
    let now = Utc::now();
    let prepared = engine::prepare(snapshot, &request, now).unwrap();
    let decision = engine::evaluate(&prepared);
    let response = decision.response(&snapshot.version);
    f(&Decided {
        request: &request,
        decision: &decision,
        response: &response,
        entities: &prepared.entities,
        stored: &snapshot.entities,
        resource_partner: true,
        found: prepared.found(),
        time: now,
        latency_us: 0,
    })
}

/// [`full_path`] as the HTTP handler runs it with a decision log: the record built
/// and appended, the response serialised, and the record's acknowledgement awaited;
/// without a log, [`full_path`] at the clock's time.
pub async fn logged_path(
    snapshot: &Snapshot,
    bytes: &[u8],
    log: Option<&AuditLog>,
) -> (Outcome, Vec<u8>) {
    let Some(log) = log else {
        return full_path_at(snapshot, bytes, Utc::now());
    };
    let (ack, outcome, body) = with_decided(snapshot, bytes, log.context_fields(), |decided| {
        let ack = log.submit(decided.entry(log.context_fields()));
        let body = serde_json::to_vec(decided.response).unwrap();
        (ack, decided.response.decision, body)
    });
    ack.wait().await.unwrap();
    (outcome, body)
}

/// The ratio of `b`'s time to `a`'s, robust to the load shifts of a shared machine:
/// after a warm-up pass of each, `rounds` rounds each time `iterations` runs of both
/// in the order a-b-b-a or b-a-a-b (alternately, so neither always runs first).
/// Returns the median of the per-round ratios, and their min and max.
pub fn interleaved_ratio(
    rounds: usize,
    iterations: usize,
    mut a: impl FnMut(),
    mut b: impl FnMut(),
) -> (f64, f64, f64) {
    let time = |f: &mut dyn FnMut()| -> Duration {
        let started = Instant::now();
        for _ in 0..iterations {
            f();
        }
        started.elapsed()
    };
    time(&mut a);
    time(&mut b);
    let mut ratios: Vec<f64> = (0..rounds)
        .map(|round| {
            let (mut time_a, mut time_b) = (Duration::ZERO, Duration::ZERO);
            for a_first in [round % 2 == 0, round % 2 == 1] {
                if a_first {
                    time_a += time(&mut a);
                    time_b += time(&mut b);
                } else {
                    time_b += time(&mut b);
                    time_a += time(&mut a);
                }
            }
            time_b.as_secs_f64() / time_a.as_secs_f64()
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    (ratios[rounds / 2], ratios[0], ratios[rounds - 1])
}
