//! The decision path, timed: Cedar alone (the floor E), the sidecar's full
//! in-process path (request bytes → decision → response bytes), and a batch of 30.
//!
//! The `full_path` cases leave `now` to the sidecar, whose clock stands still there;
//! `time_varies` times the T2 case when the time differs from one request to the
//! next: filled in by a clock that advances 1 ms a request, and pinned by the caller
//! to a new millisecond each time (Cedar then builds a new datetime value each time).
//!
//! Every benchmark first checks that its request gets the decision its policy suite
//! expects, so a fast wrong answer cannot pass for a result. Requests are cases of
//! `tests/policies/` (several profiles, allowed and denied). `benches/run.sh` runs
//! the benches and prints the ratios the targets are stated in.

mod common;

use cdap_authz::api::{AuthzRequest, BatchRequest, Outcome};
use cdap_authz::engine;
use cedar_policy::Authorizer;
use criterion::{black_box, criterion_group, Criterion};
use serde_json::Value;

use common::{bundled_model, cases, full_path, full_path_at, interleaved_ratio, now, snapshot};

/// E: Cedar's `is_authorized` alone, on prebuilt requests and the whole store.
fn floor(c: &mut Criterion) {
    let snapshot = snapshot(bundled_model());
    let mut group = c.benchmark_group("floor");
    for case in cases() {
        let request = AuthzRequest::from_slice(&case.bytes).unwrap();
        let prepared = engine::prepare(&snapshot, &request, now()).unwrap();
        let authorizer = Authorizer::new();
        let decide =
            || authorizer.is_authorized(&prepared.request, &snapshot.policies, &snapshot.entities);
        let allowed = decide().decision() == cedar_policy::Decision::Allow;
        assert_eq!(allowed, case.expected == Outcome::Allow, "{}", case.label);
        group.bench_function(case.label, |b| b.iter(|| black_box(decide())));
    }
    group.finish();
}

fn full(c: &mut Criterion) {
    let snapshot = snapshot(bundled_model());
    let mut group = c.benchmark_group("full_path");
    for case in cases() {
        assert_eq!(
            full_path(&snapshot, &case.bytes).0,
            case.expected,
            "{}",
            case.label
        );
        group.bench_function(case.label, |b| {
            b.iter(|| black_box(full_path(&snapshot, black_box(&case.bytes))))
        });
    }
    group.finish();
}

/// Distinct times, one millisecond apart.
const TIMES: usize = 1000;

fn time_varies(c: &mut Criterion) {
    let snapshot = snapshot(bundled_model());
    let case = cases().into_iter().find(|c| c.label == "t2_allow").unwrap();
    let mut request: Value = serde_json::from_slice(&case.bytes).unwrap();
    assert!(
        request["context"].get("now").is_none(),
        "the case leaves now out"
    );
    let clock: Vec<_> = (0..TIMES)
        .map(|i| now() + chrono::Duration::milliseconds(i as i64))
        .collect();
    let pinned: Vec<Vec<u8>> = clock
        .iter()
        .map(|time| {
            request["context"]["now"] = time.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string().into();
            serde_json::to_vec(&request).unwrap()
        })
        .collect();
    for (time, body) in clock.iter().zip(&pinned) {
        assert_eq!(full_path_at(&snapshot, &case.bytes, *time).0, case.expected);
        assert_eq!(full_path(&snapshot, body).0, case.expected);
    }
    let mut group = c.benchmark_group("time_varies");
    let mut i = 0;
    group.bench_function("t2_allow_filled_clock_1ms", |b| {
        b.iter(|| {
            i = (i + 1) % TIMES;
            black_box(full_path_at(&snapshot, black_box(&case.bytes), clock[i]))
        })
    });
    group.bench_function("t2_allow_pinned_new_ms", |b| {
        b.iter(|| {
            i = (i + 1) % TIMES;
            black_box(full_path(&snapshot, black_box(&pinned[i])))
        })
    });
    group.finish();
}

/// Thirty requests in one batch (five rounds of the timed cases), bytes to bytes.
fn batch(c: &mut Criterion) {
    let snapshot = snapshot(bundled_model());
    let cases = cases();
    let requests: Vec<Value> = (0..30)
        .map(|i| serde_json::from_slice(&cases[i % cases.len()].bytes).unwrap())
        .collect();
    let body = serde_json::to_vec(&serde_json::json!({ "requests": requests })).unwrap();
    let run = |body: &[u8]| {
        let batch = BatchRequest::from_slice(body).unwrap();
        let responses: Vec<_> = batch
            .requests
            .into_iter()
            .map(|item| {
                let request = engine::read_request(&snapshot, item.get().as_bytes(), &[]).unwrap();
                engine::decide(&snapshot, &request, now())
                    .unwrap()
                    .response(&snapshot.version)
            })
            .collect();
        let outcomes: Vec<Outcome> = responses.iter().map(|r| r.decision).collect();
        (outcomes, serde_json::to_vec(&responses).unwrap())
    };
    let (outcomes, _) = run(&body);
    for (i, outcome) in outcomes.iter().enumerate() {
        assert_eq!(*outcome, cases[i % cases.len()].expected);
    }
    c.bench_function("batch/30", |b| b.iter(|| black_box(run(black_box(&body)))));
}

/// Full path / E for each case, from interleaved rounds of both (the target ratio,
/// robust to the shared machine's drift between criterion runs).
fn interleaved() {
    let snapshot = snapshot(bundled_model());
    let authorizer = Authorizer::new();
    for case in cases() {
        let request = AuthzRequest::from_slice(&case.bytes).unwrap();
        let prepared = engine::prepare(&snapshot, &request, now()).unwrap();
        let (median, min, max) = interleaved_ratio(
            AB_ROUNDS,
            AB_ITERATIONS,
            || {
                black_box(authorizer.is_authorized(
                    &prepared.request,
                    &snapshot.policies,
                    &snapshot.entities,
                ));
            },
            || {
                black_box(full_path(&snapshot, black_box(&case.bytes)));
            },
        );
        println!(
            "interleaved {}: full path / E, median of {AB_ROUNDS} rounds = {median:.2} (min {min:.2}, max {max:.2})",
            case.label
        );
    }
}

/// Interleaved rounds, and decisions per side and round.
const AB_ROUNDS: usize = 21;
const AB_ITERATIONS: usize = 2_000;

criterion_group!(benches, floor, full, time_varies, batch);

fn main() {
    interleaved();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
