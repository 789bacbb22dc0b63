//! The decision path, timed: Cedar alone (the floor E), the sidecar's full
//! in-process path (request bytes → decision → response bytes), and a batch of 30.
//!
//! Every benchmark first checks that its request gets the decision its policy suite
//! expects, so a fast wrong answer cannot pass for a result. Requests are cases of
//! `tests/policies/` (several profiles, allowed and denied). `benches/run.sh` runs
//! the benches and prints the ratios the targets are stated in.

mod common;

use cdap_authz::api::{AuthzRequest, BatchRequest, Outcome};
use cdap_authz::engine;
use cedar_policy::Authorizer;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use serde_json::Value;

use common::{bundled_model, cases, full_path, now, snapshot};

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
                let request = AuthzRequest::from_value(item).unwrap();
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

criterion_group!(benches, floor, full, batch);
criterion_main!(benches);
