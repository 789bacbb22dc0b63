#!/usr/bin/env bash
# Two builds of `cdap-authz serve` (A and B) and the constant endpoint under the
# same load, in alternated rounds: this VM's speed drifts by tens of percent within
# minutes, so a change to the request path is judged by ratios taken within each
# round, not by two runs minutes apart. Each round runs `oha -z SECONDS -c 16`
# against the three servers (the order reversed every other round), each started
# once, with its decision log on, and prints each one's requests a second and CPU
# a request (user + system of the whole process, from /proc/PID/stat); then the
# medians of B/A (throughput, and CPU a request) and of each build against the
# constant endpoint.
# ARGS_A and ARGS_B add arguments to each build's `serve`: one binary against itself
# with an option on (`ARGS_B=--pin-workers benches/ab.sh BIN BIN`).
# Needs oha (`cargo install oha`).
# Usage: benches/ab.sh BIN_A BIN_B [ROUNDS (default 6)] [SECONDS (default 5)]
set -euo pipefail
cd "$(dirname "$0")/.."

A=$1 B=$2 ROUNDS=${3:-6} SECONDS_PER_RUN=${4:-5}
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
for port in 8381 8382 8383; do wait_for "127.0.0.1:$port"; done
for port in 8382 8383; do
  expect_decision "http://127.0.0.1:$port/v1/is_authorized" "$REQUEST" '"decision":"Allow"'
done

load() { # port pid → "req/s µs-of-CPU-a-request"
  local before; before=$(cpu_ticks "$2")
  oha -z "${SECONDS_PER_RUN}s" -c 16 --no-tui --output-format json -m POST \
    -T application/json -D "$REQUEST" "http://127.0.0.1:$1/v1/is_authorized" >"$OUT/run.json"
  python3 - "$OUT/run.json" "$(( $(cpu_ticks "$2") - before ))" "$(getconf CLK_TCK)" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
codes = r["statusCodeDistribution"]
bad = {k: v for k, v in codes.items() if not k.startswith("2")}
if bad:
    sys.exit(f"non-2xx answers: {bad}")
print(f'{r["summary"]["requestsPerSec"]:.0f} {int(sys.argv[2]) / int(sys.argv[3]) / sum(codes.values()) * 1e6:.1f}')
PY
}

echo "A = $A ${ARGS_A:-}"
echo "B = $B ${ARGS_B:-}"
: >"$OUT/rounds"
for round in $(seq "$ROUNDS"); do
  order=(constant a b); (( round % 2 == 0 )) && order=(b a constant)
  for server in "${order[@]}"; do
    case $server in
      constant) result=$(load 8381 "$PID_C"); read -r c_rps c_cpu <<<"$result" ;;
      a) result=$(load 8382 "$PID_A"); read -r a_rps a_cpu <<<"$result" ;;
      b) result=$(load 8383 "$PID_B"); read -r b_rps b_cpu <<<"$result" ;;
    esac
  done
  echo "$c_rps $c_cpu $a_rps $a_cpu $b_rps $b_cpu" >>"$OUT/rounds"
  echo "round $round: constant $c_rps req/s ($c_cpu µs), A $a_rps ($a_cpu µs), B $b_rps ($b_cpu µs)"
done
python3 - "$OUT/rounds" <<'PY'
import statistics, sys
rounds = [list(map(float, line.split())) for line in open(sys.argv[1])]
for name, pick in (("B / A, throughput", lambda c, cc, a, ac, b, bc: b / a),
                   ("B / A, CPU a request", lambda c, cc, a, ac, b, bc: bc / ac),
                   ("A / constant endpoint", lambda c, cc, a, ac, b, bc: a / c),
                   ("B / constant endpoint", lambda c, cc, a, ac, b, bc: b / c)):
    ratios = [pick(*r) for r in rounds]
    print(f"{name}, per round: {' '.join(f'{x:.2f}' for x in ratios)}; "
          f"median {statistics.median(ratios):.2f}")
PY
