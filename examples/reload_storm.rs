//! Load run: request latency at steady state vs during a reload storm.
//!
//! Serves a copy of the bundled model on 127.0.0.1 (in process, real sockets), fires
//! consultations from client threads over keep-alive connections, first for a steady
//! phase, then while the policies are edited and reloaded every 50 ms. Prints request
//! p50/p99/max and throughput for both phases, and the reload latency.
//!
//!     cargo run --release --example reload_storm [SECONDS_PER_PHASE]

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cdap_authz::http::{self, AppState, Limits};
use cdap_authz::load::Sources;
use cdap_authz::reload::{Reloaded, Reloader};
use cdap_authz::snapshot::DEFAULT_TIME_ATTRIBUTE;
use cdap_authz::workers;

const CLIENTS: usize = 2;
const REQUEST: &str = r#"{"principal":"User::\"mau-t2\"","action":"Action::\"consult_file\"",
 "resource":"File::\"dossier-59-0004\"","context":{"authentication":"password",
 "habilitation":{"type":"Habilitation","id":"mau-t2-01"},
 "mission":{"type":"Mission","id":"maubeuge-centre-loisirs-qf"},"categories":["quotient_familial"]}}"#;

fn main() {
    let seconds: u64 = std::env::args()
        .nth(1)
        .map_or(5, |s| s.parse().expect("seconds"));
    let phase = Duration::from_secs(seconds);
    let root = tempfile::tempdir().unwrap();
    copy_model(root.path());
    let state = Arc::new(AppState::new(Limits::default()));
    let sources = Sources {
        policies: root.path().join("policies"),
        schema: root.path().join("schema/cdap.cedarschema"),
        entities: Some(root.path().join("entities.json")),
        derived: Some(root.path().join("schema/derived.json")),
    };
    let reloader = Reloader::new(sources, DEFAULT_TIME_ATTRIBUTE, state.clone());
    reloader.reload().expect("model loads");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}/v1/is_authorized", listener.local_addr().unwrap());
    runtime.spawn(http::serve(
        listener,
        state,
        workers::Plan::default(),
        std::future::pending(),
    ));

    report("steady", phase, &fire(&url, phase));

    let traces = root.path().join("policies/traces.cedar");
    let original = std::fs::read_to_string(&traces).unwrap();
    let storming = Arc::new(AtomicBool::new(true));
    let storm = {
        let storming = storming.clone();
        std::thread::spawn(move || {
            let mut took = Vec::new();
            let mut round = 0usize;
            while storming.load(Ordering::Relaxed) {
                round += 1;
                let text = if round.is_multiple_of(2) {
                    original.clone()
                } else {
                    format!("{original}\n// edit\n")
                };
                std::fs::write(&traces, text).unwrap();
                if let Ok(Reloaded::Swapped { took: t, .. }) = reloader.reload() {
                    took.push(t);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            took
        })
    };
    let latencies = fire(&url, phase);
    storming.store(false, Ordering::Relaxed);
    let mut reloads = storm.join().unwrap();
    report("reload storm", phase, &latencies);
    reloads.sort();
    println!(
        "reloads during the storm: {} swaps, reload latency p50 {:?}, max {:?}",
        reloads.len(),
        reloads[reloads.len() / 2],
        reloads[reloads.len() - 1]
    );
}

/// Fires requests from `CLIENTS` threads for `phase`; returns every latency.
fn fire(url: &str, phase: Duration) -> Vec<Duration> {
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let url = url.to_owned();
            std::thread::spawn(move || {
                let agent = ureq::AgentBuilder::new().build();
                let end = Instant::now() + phase;
                let mut latencies = Vec::new();
                while Instant::now() < end {
                    let started = Instant::now();
                    let reply = agent
                        .post(&url)
                        .send_string(REQUEST)
                        .expect("request answered");
                    let body = reply.into_string().unwrap();
                    assert!(body.contains("\"Allow\""), "{body}");
                    latencies.push(started.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut all: Vec<Duration> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    all.sort();
    all
}

fn report(name: &str, phase: Duration, sorted: &[Duration]) {
    let at = |q: f64| sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)];
    println!(
        "{name}: {} requests, {:.0} req/s, p50 {:?}, p99 {:?}, max {:?}",
        sorted.len(),
        sorted.len() as f64 / phase.as_secs_f64(),
        at(0.50),
        at(0.99),
        sorted[sorted.len() - 1]
    );
}

fn copy_model(to: &Path) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in ["policies", "schema"] {
        std::fs::create_dir_all(to.join(dir)).unwrap();
        for file in std::fs::read_dir(repo.join(dir)).unwrap() {
            let file = file.unwrap().path();
            std::fs::copy(&file, to.join(dir).join(file.file_name().unwrap())).unwrap();
        }
    }
    std::fs::copy(
        repo.join("examples/entities.json"),
        to.join("entities.json"),
    )
    .unwrap();
}
