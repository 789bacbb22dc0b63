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
//! `cargo run --release --example footprint [REQUEST_JSON]` (on its own it prints
//! the decision; the markers are for the script)

#[path = "../benches/common/mod.rs"]
mod common;

use std::path::PathBuf;

use cdap_authz::audit::{AuditConfig, AuditLog};

use common::{bundled_model, logged_path, repo, snapshot};

/// Decisions run before the one measured, so that every lazy initialisation
/// (allocator pages, the log's first file) is done.
const WARM_UP: usize = 20;

fn main() {
    let request = std::env::args().nth(1).map_or_else(
        || repo("examples/requests/consult-allowed.json"),
        PathBuf::from,
    );
    let snapshot = snapshot(bundled_model());
    let bytes = std::fs::read(&request).expect("the request file");
    let dir = tempfile::tempdir().expect("a temp dir");
    let log = AuditLog::start(AuditConfig::new(dir.path())).expect("a decision log");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    for _ in 0..WARM_UP {
        runtime.block_on(logged_path(&snapshot, &bytes, Some(&log)));
    }
    // Where `main` was loaded, for the script to name the functions of code lines;
    // each marker written in one call, so that no traced access splits it.
    let loaded_at = format!("@@footprint-main {:p}\n", main as fn());
    eprint!("{loaded_at}");
    eprintln!("@@footprint-start");
    let (outcome, _) = runtime.block_on(logged_path(&snapshot, &bytes, Some(&log)));
    eprintln!("@@footprint-end");
    println!("{} {outcome:?}", request.display());
}
