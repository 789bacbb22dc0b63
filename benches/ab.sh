#!/usr/bin/env bash
# Two builds of `cdap-authz serve` (A and B) and the constant endpoint under the
# same load, in alternated rounds: this VM's speed drifts by tens of percent within
# minutes, so a change to the request path is judged by ratios taken within each
# round, not by two runs minutes apart. Each round runs `oha -z SECONDS -c 16`
# against the three servers (the order reversed every other round), each started
# once, with its decision log on, and prints each one's requests a second and CPU
# a request (user + system of the whole process, from /proc/PID/stat), its p99 and
# the hypervisor's steal during the run (/proc/stat); then the medians of B/A
# (throughput, and CPU a request), of each build against the constant endpoint, and
# of each server's p99.
# With RATE set, every run is paced at RATE requests a second (`oha -q`, latency
# counted from when each request left), to compare the p99 at a given load: the
# summary then leaves out the throughput ratios and says in how many rounds B's p99
# was below A's.
# ARGS_A and ARGS_B add arguments to each build's `serve`: one binary against itself
# with an option on (`ARGS_B=--pin-workers benches/ab.sh BIN BIN`).
# Needs oha (`cargo install oha`).
# Usage: benches/ab.sh BIN_A BIN_B [ROUNDS (default 6)] [SECONDS (default 5)]
set -euo pipefail
cd "$(dirname "$0")/.."

A=$1 B=$2 ROUNDS=${3:-6} SECONDS_PER_RUN=${4:-5}
CONCURRENCY=16 FROM_SENT=1 # a paced run counts from when each request left
OUT=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; rm -rf "$OUT"' EXIT
command -v oha >/dev/null || { echo "oha not found: cargo install oha" >&2; exit 1; }
cargo build --release --quiet --example constant_server

REQUEST=examples/requests/consult-allowed.json
target/release/examples/constant_server 127.0.0.1:8381 2>/dev/null & PIDS+=($!); PID_C=$!
read -ra EXTRA_A <<<"${ARGS_A:-}"
read -ra EXTRA_B <<<"${ARGS_B:-}"
"$A" serve --listen 127.0.0.1:8382 --trust-request-time --audit-dir "$OUT/a" "${EXTRA_A[@]}" 2>/dev/null & PIDS+=($!); PID_A=$!
"$B" serve --listen 127.0.0.1:8383 --trust-request-time --audit-dir "$OUT/b" "${EXTRA_B[@]}" 2>/dev/null & PIDS+=($!); PID_B=$!
source benches/servers.sh
wait_for 127.0.0.1:8381 "$PID_C"
wait_for 127.0.0.1:8382 "$PID_A"
wait_for 127.0.0.1:8383 "$PID_B"
for port in 8382 8383; do
  expect_decision "http://127.0.0.1:$port/v1/is_authorized" "$REQUEST" '"decision":"Allow"'
done

load() { # port pid → "req/s µs-of-CPU-a-request p99-in-ms steal-in-percent"
  measure run "http://127.0.0.1:$1/v1/is_authorized" "$REQUEST" "${RATE:-}" "" "$2"
  python3 - "$OUT/run.json" "$(<"$OUT/run.cpu")" "$(getconf CLK_TCK)" \
    "$(<"$OUT/run.steal")" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
codes = r["statusCodeDistribution"]
bad = {k: v for k, v in codes.items() if not k.startswith("2")}
if bad:
    sys.exit(f"non-2xx answers: {bad}")
cpu = int(sys.argv[2]) / int(sys.argv[3]) / sum(codes.values()) * 1e6
p99 = r["latencyPercentiles"]["p99"] * 1000
print(f'{r["summary"]["requestsPerSec"]:.0f} {cpu:.1f} {p99:.3f} {sys.argv[4]}')
PY
}

echo "A = $A ${ARGS_A:-}"
echo "B = $B ${ARGS_B:-}"
[[ -n ${RATE:-} ]] && echo "every run at $RATE req/s"
: >"$OUT/rounds"
for round in $(seq "$ROUNDS"); do
  order=(constant a b); (( round % 2 == 0 )) && order=(b a constant)
  for server in "${order[@]}"; do
    case $server in
      constant) read -r c_rps c_cpu c_p99 c_steal <<<"$(load 8381 "$PID_C")" ;;
      a) read -r a_rps a_cpu a_p99 a_steal <<<"$(load 8382 "$PID_A")" ;;
      b) read -r b_rps b_cpu b_p99 b_steal <<<"$(load 8383 "$PID_B")" ;;
    esac
  done
  echo "$c_rps $c_cpu $c_p99 $a_rps $a_cpu $a_p99 $b_rps $b_cpu $b_p99" >>"$OUT/rounds"
  echo "round $round: constant $c_rps req/s ($c_cpu µs, p99 $c_p99 ms, steal $c_steal%)," \
    "A $a_rps ($a_cpu µs, $a_p99 ms, $a_steal%), B $b_rps ($b_cpu µs, $b_p99 ms, $b_steal%)"
done
python3 - "$OUT/rounds" "${RATE:-}" <<'PY'
import statistics, sys
rounds = [list(map(float, line.split())) for line in open(sys.argv[1])]
paced = bool(sys.argv[2])
# each round: constant, A, B, each as requests a second, CPU a request, p99
c, a, b = ([r[i:i + 3] for r in rounds] for i in (0, 3, 6))
ratios = [("B / A, throughput", [y[0] / x[0] for x, y in zip(a, b)]),
          ("B / A, CPU a request", [y[1] / x[1] for x, y in zip(a, b)]),
          ("A / constant endpoint", [x[0] / k[0] for x, k in zip(a, c)]),
          ("B / constant endpoint", [y[0] / k[0] for y, k in zip(b, c)])]
for name, values in ratios:
    if paced and "CPU" not in name:
        continue  # every server ran at the same rate
    print(f"{name}, per round: {' '.join(f'{v:.2f}' for v in values)}; "
          f"median {statistics.median(values):.2f}")
print("p99 medians: " + ", ".join(
    f"{name} {statistics.median(r[2] for r in runs):.2f} ms"
    for name, runs in (("A", a), ("B", b), ("constant endpoint", c))))
if paced:
    lower = sum(y[2] < x[2] for x, y in zip(a, b))
    print(f"B's p99 below A's in {lower} of {len(rounds)} rounds")
PY
