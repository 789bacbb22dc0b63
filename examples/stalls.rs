//! The machine's own stalls, the floor under any server's tail latency: a thread
//! that never sleeps reads the clock in a loop, and every gap between two readings
//! is time it was kept from running (the hypervisor running another guest, an
//! interrupt, a kernel thread), as jHiccup measures a JVM's platform. A request in
//! flight during a 3 ms stall takes 3 ms more, whatever the server does, so
//! `benches/load.sh` runs this before its loads: if stalls of a millisecond or more
//! cover more than a fraction of a percent of the time, no server on this machine
//! has a p99 under a millisecond.
//!
//! Prints, for gaps of 50–250 µs, 250 µs–1 ms, 1–5 ms and 5 ms or more, how many
//! there were and the share of the time they cover, then the longest.
//!
//! `cargo run --release --example stalls -- [SECONDS]` (default 5)

use std::time::{Duration, Instant};

/// The lower bounds of the gap classes reported, in microseconds.
const CLASSES_US: [u64; 4] = [50, 250, 1000, 5000];

fn main() {
    let seconds: f64 = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("SECONDS, a number"))
        .unwrap_or(5.0);
    let span = Duration::from_secs_f64(seconds);
    let mut count = [0u64; CLASSES_US.len()];
    let mut covered = [Duration::ZERO; CLASSES_US.len()];
    let mut longest = Duration::ZERO;
    let started = Instant::now();
    let mut previous = started;
    while previous - started < span {
        let now = Instant::now();
        let gap = now - previous;
        previous = now;
        longest = longest.max(gap);
        if let Some(class) = CLASSES_US
            .iter()
            .rposition(|&low| gap >= Duration::from_micros(low))
        {
            count[class] += 1;
            covered[class] += gap;
        }
    }
    let elapsed = previous - started;
    let classes: Vec<String> = CLASSES_US
        .iter()
        .enumerate()
        .map(|(class, low)| {
            let upper = CLASSES_US
                .get(class + 1)
                .map_or(" or more".to_owned(), |high| format!("–{}", micros(*high)));
            format!(
                "{}{upper}: {} ({:.2}% of the time)",
                micros(*low),
                count[class],
                covered[class].as_secs_f64() / elapsed.as_secs_f64() * 100.0
            )
        })
        .collect();
    println!(
        "stalls of a spinning thread over {:.0} s: {}; longest {:.2} ms",
        elapsed.as_secs_f64(),
        classes.join(", "),
        longest.as_secs_f64() * 1e3
    );
}

/// `250 µs`, `1 ms`.
fn micros(us: u64) -> String {
    if us >= 1000 {
        format!("{} ms", us / 1000)
    } else {
        format!("{us} µs")
    }
}
