//! The decision path with the decision log on and off: decide one bundled
//! consultation, build its wire reply and, with the log, build its record, hand it
//! to the group-commit writer (a temp dir, no fsync) and wait for the ack.
//!
//! Two shapes: one decision at a time (each writes its own record with one
//! `write`), and 16 concurrent decisions on a 2-worker runtime (the server's case,
//! where group commit shares one write among the waiting decisions).
//!
//! On a shared machine the two criterion runs (off, then on) may see different
//! loads, so the bench first prints an interleaved A/B: after one warm-up pass,
//! rounds timing the same work off-on-on-off or on-off-off-on (alternately), and
//! the median of the per-round ratios.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cdap_authz::api::{AuthzRequest, AuthzResponse, Outcome};
use cdap_authz::audit::{AuditConfig, AuditLog, Decided};
use cdap_authz::engine;
use cdap_authz::load::Sources;
use cdap_authz::snapshot::{Snapshot, DEFAULT_TIME_ATTRIBUTE};
use chrono::Utc;
use criterion::{criterion_group, Criterion};
use serde_json::json;

const CONCURRENT: usize = 16;
/// Interleaved A/B rounds, and iterations per shape and round.
const AB_ROUNDS: usize = 15;
const AB_ITERATIONS: usize = 40;

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn snapshot() -> Arc<Snapshot> {
    let sources = Sources {
        policies: repo("policies"),
        schema: repo("schema/cdap.cedarschema"),
        entities: Some(repo("examples/entities.json")),
        derived: Some(repo("schema/derived.json")),
    };
    Arc::new(Snapshot::load(&sources, DEFAULT_TIME_ATTRIBUTE).unwrap())
}

fn consultation() -> AuthzRequest {
    AuthzRequest::from_value(json!({
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

/// What the HTTP handler does for one decision, minus the HTTP.
async fn decide(
    snapshot: &Snapshot,
    request: &AuthzRequest,
    log: Option<&AuditLog>,
) -> AuthzResponse {
    let now = Utc::now();
    let decision = engine::decide(snapshot, request, now).unwrap();
    let response = decision.response(&snapshot.version);
    if let Some(log) = log {
        let decided = Decided {
            request,
            decision: &decision,
            response: &response,
            entities: &snapshot.entities,
            time: now,
            latency_us: 0,
        };
        log.submit(decided.entry(log.context_fields()))
            .wait()
            .await
            .unwrap();
    }
    response
}

async fn concurrent(
    snapshot: &Arc<Snapshot>,
    request: &Arc<AuthzRequest>,
    log: &Option<Arc<AuditLog>>,
) {
    let tasks: Vec<_> = (0..CONCURRENT)
        .map(|_| {
            let (snapshot, request, log) = (snapshot.clone(), request.clone(), log.clone());
            tokio::spawn(async move { decide(&snapshot, &request, log.as_deref()).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().decision, Outcome::Allow);
    }
}

fn bench(c: &mut Criterion) {
    let snapshot = snapshot();
    let request = Arc::new(consultation());
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(AuditLog::start(AuditConfig::new(dir.path())).unwrap());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for (name, log) in [("off", None), ("on", Some(log))] {
        let response = runtime.block_on(decide(&snapshot, &request, log.as_deref()));
        assert_eq!(
            response.decision,
            Outcome::Allow,
            "the bench decides an allowed consultation"
        );
        c.bench_function(&format!("decision_path/sequential/log_{name}"), |b| {
            b.iter(|| runtime.block_on(decide(&snapshot, &request, log.as_deref())))
        });
        c.bench_function(
            &format!("decision_path/{CONCURRENT}_concurrent/log_{name}"),
            |b| b.iter(|| runtime.block_on(concurrent(&snapshot, &request, &log))),
        );
    }
}

/// Median over rounds of (time with the log) / (time without), per shape.
fn interleaved_ab() {
    let snapshot = snapshot();
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
    let time = |log: &Option<Arc<AuditLog>>, concurrent_shape: bool| -> Duration {
        let started = Instant::now();
        for _ in 0..AB_ITERATIONS {
            if concurrent_shape {
                runtime.block_on(concurrent(&snapshot, &request, log));
            } else {
                runtime.block_on(decide(&snapshot, &request, log.as_deref()));
            }
        }
        started.elapsed()
    };
    for (shape, concurrent_shape) in [("sequential", false), ("16_concurrent", true)] {
        time(&log, concurrent_shape);
        time(&None, concurrent_shape);
        // Each round times off-on-on-off or on-off-off-on, so that neither side
        // always runs first.
        let mut ratios: Vec<f64> = (0..AB_ROUNDS)
            .map(|round| {
                let (mut on, mut off) = (Duration::ZERO, Duration::ZERO);
                for log_first in [round % 2 == 0, round % 2 == 1] {
                    if log_first {
                        on += time(&log, concurrent_shape);
                        off += time(&None, concurrent_shape);
                    } else {
                        off += time(&None, concurrent_shape);
                        on += time(&log, concurrent_shape);
                    }
                }
                on.as_secs_f64() / off.as_secs_f64()
            })
            .collect();
        ratios.sort_by(f64::total_cmp);
        println!(
            "interleaved A/B {shape}: log on / log off, median of {AB_ROUNDS} rounds = {:.2} (min {:.2}, max {:.2})",
            ratios[AB_ROUNDS / 2],
            ratios[0],
            ratios[AB_ROUNDS - 1]
        );
    }
}

criterion_group!(benches, bench);

fn main() {
    interleaved_ab();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
