//! The decision path with the decision log on and off. The path is the one the
//! decision bench times (`full_path`: request bytes → decision → response bytes),
//! for one bundled consultation; with the log, the record is built and appended to
//! the log (a temp dir, no fsync) and acknowledged, as in the HTTP handler
//! ([`common::logged_path`]; the handler serialises the response after the
//! acknowledgement, this path before waiting for it, which without fsync returns at
//! once: the same work). `record/*` times the log's parts alone.
//!
//! Two shapes: one decision at a time, and 16 concurrent decisions on a 2-worker
//! runtime (the server's case, where appends meet on the writer's lock).
//!
//! On a shared machine the two criterion runs (off, then on) may see different
//! loads, so the bench first prints an interleaved A/B
//! ([`common::interleaved_ratio`]): after one warm-up pass, rounds timing the same
//! work off-on-on-off or on-off-off-on (alternately), and the median of the
//! per-round ratios.
//!
//! `query/*` times reading the log back (`cdap-authz audit query`, `GET
//! /v1/traces`) over a log of [`QUERY_LOG_RECORDS`] records: the newest 100 records
//! of a principal who made them all, and a principal who made none (the whole log is
//! read).

mod common;

use std::sync::Arc;

use cdap_authz::api::Outcome;
use cdap_authz::audit::query::{query, Filter};
use cdap_authz::audit::record::GENESIS;
use cdap_authz::audit::{AuditConfig, AuditLog};
use cdap_authz::snapshot::Snapshot;
use criterion::{criterion_group, BatchSize, Criterion};
use serde_json::json;

use common::{bundled_model, interleaved_ratio, logged_path, snapshot, with_decided};

const CONCURRENT: usize = 16;
/// Interleaved A/B rounds, and iterations a side and round for each shape (about
/// 15 ms a timing: shorter timings were swayed by single preemptions).
const AB_ROUNDS: usize = 21;
const AB_SEQUENTIAL_ITERATIONS: usize = 1_000;
const AB_CONCURRENT_ITERATIONS: usize = 60;
/// Records in the log the query benches read (about 60 MB).
const QUERY_LOG_RECORDS: usize = 100_000;

fn shared_snapshot() -> Arc<Snapshot> {
    Arc::new(snapshot(bundled_model()))
}

fn consultation() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "principal": {"type": "User", "id": "mau-t2"},
        "action": "Action::\"consult_file\"",
        "resource": {"type": "File", "id": "dossier-59-0004"},
        "context": {
            "authentication": "password",
            "habilitation": {"type": "Habilitation", "id": "mau-t2-01"},
            "mission": {"type": "Mission", "id": "maubeuge-centre-loisirs-qf"},
            "categories": ["quotient_familial"],
            "now": "2026-11-22T10:00:00Z"
        }
    }))
    .unwrap()
}

async fn concurrent(snapshot: &Arc<Snapshot>, body: &Arc<Vec<u8>>, log: &Option<Arc<AuditLog>>) {
    let tasks: Vec<_> = (0..CONCURRENT)
        .map(|_| {
            let (snapshot, body, log) = (snapshot.clone(), body.clone(), log.clone());
            tokio::spawn(async move { logged_path(&snapshot, &body, log.as_deref()).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().0, Outcome::Allow);
    }
}

fn bench(c: &mut Criterion) {
    let snapshot = shared_snapshot();
    let request = Arc::new(consultation());
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(AuditLog::start(AuditConfig::new(dir.path())).unwrap());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for (name, log) in [("off", None), ("on", Some(log))] {
        let (outcome, _) = runtime.block_on(logged_path(&snapshot, &request, log.as_deref()));
        assert_eq!(
            outcome,
            Outcome::Allow,
            "the bench decides an allowed consultation"
        );
        c.bench_function(&format!("decision_path/sequential/log_{name}"), |b| {
            b.iter(|| runtime.block_on(logged_path(&snapshot, &request, log.as_deref())))
        });
        c.bench_function(
            &format!("decision_path/{CONCURRENT}_concurrent/log_{name}"),
            |b| b.iter(|| runtime.block_on(concurrent(&snapshot, &request, &log))),
        );
    }
}

/// Log on / log off for each shape, from interleaved rounds of both.
fn interleaved() {
    let snapshot = shared_snapshot();
    let request = Arc::new(consultation());
    let dir = tempfile::tempdir().unwrap();
    let log = Some(Arc::new(
        AuditLog::start(AuditConfig::new(dir.path())).unwrap(),
    ));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let run = |log: &Option<Arc<AuditLog>>, concurrent_shape: bool| {
        if concurrent_shape {
            runtime.block_on(concurrent(&snapshot, &request, log));
        } else {
            runtime.block_on(logged_path(&snapshot, &request, log.as_deref()));
        }
    };
    for (shape, concurrent_shape, iterations) in [
        ("sequential", false, AB_SEQUENTIAL_ITERATIONS),
        ("16_concurrent", true, AB_CONCURRENT_ITERATIONS),
    ] {
        let (median, min, max) = interleaved_ratio(
            AB_ROUNDS,
            iterations,
            || run(&None, concurrent_shape),
            || run(&log, concurrent_shape),
        );
        println!(
            "interleaved A/B {shape}: log on / log off, median of {AB_ROUNDS} rounds = {median:.2} (min {min:.2}, max {max:.2})"
        );
    }
}

/// The parts of what the log adds to a decision, one at a time: building the record
/// from the decision, placing it in the chain (its line and hash), and the whole
/// hand-off (line, hash, one `write`, ack) for a record built beforehand.
fn record_parts(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::start(AuditConfig::new(dir.path())).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    with_decided(
        &shared_snapshot(),
        &consultation(),
        log.context_fields(),
        |decided| {
            let entry = decided.entry(log.context_fields());
            let mut group = c.benchmark_group("record");
            group.bench_function("build", |b| b.iter(|| decided.entry(log.context_fields())));
            group.bench_function("line_and_hash", |b| b.iter(|| entry.to_line(41, GENESIS)));
            group.bench_function("submit_write_ack", |b| {
                b.iter_batched(
                    || entry.clone(),
                    |entry| runtime.block_on(log.submit(entry).wait()).unwrap(),
                    BatchSize::SmallInput,
                )
            });
            group.finish();
        },
    );
}

/// Reading the log back: a log of [`QUERY_LOG_RECORDS`] consultations by `mau-t2`,
/// queried for its newest 100 records, and for a principal with none.
fn queries(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::start(AuditConfig::new(dir.path())).unwrap();
    let entry = with_decided(
        &shared_snapshot(),
        &consultation(),
        log.context_fields(),
        |decided| decided.entry(log.context_fields()),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let entries = vec![entry; QUERY_LOG_RECORDS];
    for ack in log.submit_all(entries) {
        runtime.block_on(ack.wait()).unwrap();
    }
    drop(log);
    let by = |principal: &str| Filter {
        principal: Some(principal.into()),
        ..Filter::default()
    };
    let (everyone, nobody) = (by("mau-t2"), by("nobody"));
    assert_eq!(
        query(dir.path(), &everyone, 100).unwrap().records.len(),
        100
    );
    assert!(query(dir.path(), &nobody, 100).unwrap().records.is_empty());
    let mut group = c.benchmark_group("query");
    group.sample_size(10);
    group.bench_function("newest_100", |b| {
        b.iter(|| query(dir.path(), &everyone, 100).unwrap())
    });
    group.bench_function("no_match", |b| {
        b.iter(|| query(dir.path(), &nobody, 100).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench, record_parts, queries);

fn main() {
    interleaved();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
