//! How long one decision takes when the process was idle just before, as it is
//! between requests of a lightly loaded sidecar: the full in-process path (bytes →
//! decision → response bytes) on the bundled model, 2,000 times after each sleep
//! gap, with the median, p90 and p99 per gap. A gap of 0 is the hot loop the
//! criterion benches measure.
//!
//! `cargo run --release --example idle_gaps`

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cdap_authz::api::Outcome;
use cdap_authz::engine;
use cdap_authz::load::Sources;
use cdap_authz::snapshot::{Snapshot, DEFAULT_TIME_ATTRIBUTE};

const RUNS: usize = 2000;
const GAPS_US: [u64; 4] = [0, 100, 300, 1000];

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn main() {
    let sources = Sources::bundled(&repo(""));
    let snapshot = Snapshot::load(&sources, DEFAULT_TIME_ATTRIBUTE).expect("bundled model");
    let bytes = std::fs::read(repo("examples/requests/consult-allowed.json")).expect("request");
    for gap in GAPS_US {
        let mut micros: Vec<f64> = (0..RUNS)
            .map(|_| {
                std::thread::sleep(Duration::from_micros(gap));
                let started = Instant::now();
                let request =
                    engine::read_request(&snapshot, &bytes, &[]).expect("a valid request");
                let decision =
                    engine::decide(&snapshot, &request, chrono::Utc::now()).expect("a decision");
                assert_eq!(decision.outcome, Outcome::Allow);
                let body = serde_json::to_vec(&decision.response(&snapshot.version));
                std::hint::black_box(body.expect("a response"));
                started.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        micros.sort_by(f64::total_cmp);
        let at = |q: f64| micros[(q * RUNS as f64) as usize];
        println!(
            "idle gap {gap:>5} µs: p50 {:6.1} µs   p90 {:6.1} µs   p99 {:6.1} µs",
            at(0.5),
            at(0.9),
            at(0.99)
        );
    }
}
