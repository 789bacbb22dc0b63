//! The memory one decision touches, for `benches/footprint.sh`: the full
//! in-process path (request bytes → decision → its record appended to a decision log
//! in a temp dir → response bytes), run warm a few times, then once more between two
//! markers written to stderr. Under `valgrind --tool=lackey --trace-mem=yes`, every
//! instruction fetched and every byte read or written between the markers is
//! listed, and the script counts the distinct cache lines and pages of each.
//!
//! On this project's VM a decision costs 3–4× more after a millisecond without one
//! than in a hot loop (`examples/idle_gaps.rs`): other work evicts its lines from the
//! caches and TLBs, and each must be fetched again. The lines a decision touches set
//! that cost, whatever the instructions it runs.
//!
//! `cargo run --release --example footprint [REQUEST_JSON]` (on its own it only
//! checks the decision; the markers are for the script)

use std::path::PathBuf;

use cdap_authz::api::Outcome;
use cdap_authz::audit::{AuditConfig, AuditLog, Decided};
use cdap_authz::engine;
use cdap_authz::load::Sources;
use cdap_authz::snapshot::{Snapshot, DEFAULT_TIME_ATTRIBUTE};

/// Decisions run before the one measured, so that every lazy initialisation
/// (allocator pages, the log's first file) is done.
const WARM_UP: usize = 20;

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// One request through the whole in-process path; the decision it got.
async fn decide(snapshot: &Snapshot, log: &AuditLog, bytes: &[u8]) -> Outcome {
    let request =
        engine::read_request(snapshot, bytes, log.context_fields()).expect("a valid request");
    let now = chrono::Utc::now();
    let prepared = engine::prepare(snapshot, &request, now).expect("a decision");
    let decision = engine::evaluate(&prepared);
    let response = decision.response(&snapshot.version);
    let decided = Decided {
        request: &request,
        decision: &decision,
        response: &response,
        entities: &prepared.entities,
        stored: &snapshot.entities,
        resource_partner: true,
        found: prepared.found(),
        time: now,
        latency_us: 0,
    };
    log.submit(decided.entry(log.context_fields()))
        .wait()
        .await
        .expect("the record appended");
    std::hint::black_box(serde_json::to_vec(&response).expect("a response"));
    response.decision
}

fn main() {
    let request = std::env::args().nth(1).map_or_else(
        || repo("examples/requests/consult-allowed.json"),
        PathBuf::from,
    );
    let sources = Sources {
        policies: repo("policies"),
        schema: repo("schema/cdap.cedarschema"),
        entities: Some(repo("examples/entities.json")),
        derived: Some(repo("schema/derived.json")),
    };
    let snapshot = Snapshot::load(&sources, DEFAULT_TIME_ATTRIBUTE).expect("bundled model");
    let bytes = std::fs::read(&request).expect("the request file");
    let dir = tempfile::tempdir().expect("a temp dir");
    let log = AuditLog::start(AuditConfig::new(dir.path())).expect("a decision log");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    for _ in 0..WARM_UP {
        runtime.block_on(decide(&snapshot, &log, &bytes));
    }
    // Where `main` was loaded, for the script to name the functions of code lines;
    // each marker written in one call, so that no traced access splits it.
    let loaded_at = format!("@@footprint-main {:p}\n", main as fn());
    eprint!("{loaded_at}");
    eprintln!("@@footprint-start");
    let outcome = runtime.block_on(decide(&snapshot, &log, &bytes));
    eprintln!("@@footprint-end");
    println!("{} {outcome:?}", request.display());
}
