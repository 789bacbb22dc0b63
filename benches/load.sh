#!/usr/bin/env bash
# HTTP load runs on this machine, over loopback, in one go:
#   0. the machine's own stalls, before any server starts (examples/stalls.rs, 5 s):
#      the floor under every p99 below,
#   1. a minimal hyper endpoint answering a constant body (examples/constant_server.rs),
#   2. `cdap-authz serve` on the bundled model (decision log on, in a temp dir), at
#      full speed, then at half its measured throughput (for the p99 under moderate
#      load), and the constant endpoint at that same rate (the p99 that oha's own
#      pacing gives at that rate: the floor of that measure on this machine), both
#      also counted from when each request left rather than when it was due
#      (`-from-sent`: what the client's own pacing adds is left out), and both again
#      on 4 connections instead of CONCURRENCY; then
#      `serve --no-audit` at full speed (the decision log's cost),
#      then the three again in alternating rounds (ROUNDS, default 4), each ratio
#      taken within its round, since this VM's speed drifts between runs, with the
#      half-rate pair (from when sent) in each round,
#   3. the constant endpoint again, keeping the CPU busy 10, 15, 20 and 25 µs a
#      request: the throughput a handler of a given cost reaches on this machine, to
#      read the sidecar's against,
#   4. the round trip on one connection over TCP and over a Unix-domain socket
#      (`serve --listen unix:PATH`), and the socket's throughput,
#   5. cedar-agent and `cdap-authz serve` on a policy set both accept
#      (benches/agent/: the T3 trace rules and the S1 suspension forbid).
# Every cdap-authz and cedar-agent server is checked to answer the expected decision
# before it is loaded (the constant endpoints answer one fixed body). Each
# line also gives the server's CPU time per request (user + system, from
# /proc/PID/stat): with oha on the same two cores, throughput ratios move with how
# the cores are shared, the CPU a request costs the server much less. And how often
# the server's threads were preempted a request (switched out while runnable, from
# /proc/PID/task/*/status): on loopback a response wakes oha's thread, which then
# often preempts a server thread (BENCHMARKS.md, session 21). And the hypervisor's
# steal during the run: the share of both cores' time in which this VM was ready to
# run and another guest ran instead (/proc/stat).
#
# Needs oha (`cargo install oha`) and, for part 5, cedar-agent (`cargo install
# cedar-agent`); part 5 is skipped, saying so, without it.
# The sidecar measured is `cargo build --release`'s, or with BIN set, that binary
# (`BIN=target/pgo/cdap-authz`: the profile-guided build of scripts/build-pgo.sh).
# SERVE_ARGS adds arguments to every sidecar's `serve` (`SERVE_ARGS=--pin-workers`).
# Usage: benches/load.sh [SECONDS] (default 10); CONCURRENCY (default 16); ROUNDS
# (default 4); BIN; SERVE_ARGS.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_RUN=${1:-10}
CONCURRENCY=${CONCURRENCY:-16}
OUT=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; rm -rf "$OUT"' EXIT

command -v oha >/dev/null || { echo "oha not found: cargo install oha" >&2; exit 1; }
cargo build --release --quiet --example constant_server --example stalls
if [[ -z ${BIN:-} ]]; then
  cargo build --release --quiet --bin cdap-authz
  BIN=target/release/cdap-authz
fi

source benches/servers.sh
read -ra EXTRA <<<"${SERVE_ARGS:-}"

load() { # name url body [rate] [socket] [pid] → name req/s p50 p99 (ms) server CPU and preemptions a request
  measure "$@"
  local name=$1 ticks="" preempted=""
  [[ -n ${6:-} ]] && ticks=$(<"$OUT/$name.cpu") && preempted=$(<"$OUT/$name.preempted")
  python3 - "$OUT/$name.json" "$name" "$ticks" "$(getconf CLK_TCK)" "$preempted" \
    "$(<"$OUT/$name.steal")" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
steal = float(sys.argv[6])
codes = r.get("statusCodeDistribution", {})
bad = {k: v for k, v in codes.items() if not k.startswith("2")}
p = r["latencyPercentiles"]
cpu = ""
if sys.argv[3]:
    requests = sum(codes.values())
    cpu = (f'   server {int(sys.argv[3]) / int(sys.argv[4]) / requests * 1e6:5.1f} µs CPU/req'
           f', preempted {int(sys.argv[5]) / requests:4.2f}/req')
print(f'{sys.argv[2]:<40} {r["summary"]["requestsPerSec"]:>8.0f} req/s   '
      f'p50 {p["p50"]*1000:6.3f} ms   p99 {p["p99"]*1000:6.3f} ms{cpu}   '
      f'steal {steal:4.1f}%   {"all 2xx" if not bad else "NON-2xx: " + str(bad)}')
PY
}

p99_and_steal() { # the run's p99 in ms, and the steal during it in percent
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["latencyPercentiles"]["p99"] * 1000)' "$OUT/$1.json"
  cat "$OUT/$1.steal"
}

rps() { python3 -c 'import json,sys; print(int(json.load(open(sys.argv[1]))["summary"]["requestsPerSec"]))' "$OUT/$1.json"; }

echo "== $(nproc) cores, ${SECONDS_PER_RUN}s per run, $CONCURRENCY connections, oha $(oha --version | awk '{print $2}'), sidecar $BIN ${SERVE_ARGS:-}"
target/release/examples/stalls 5

target/release/examples/constant_server 127.0.0.1:8181 2>/dev/null & PIDS+=($!); CONSTANT=$!
# The request pins `now` (examples/requests/consult-allowed.json), which serve
# accepts only with --trust-request-time.
"$BIN" serve --listen 127.0.0.1:8180 --trust-request-time --audit-dir "$OUT/audit" "${EXTRA[@]}" 2>/dev/null & PIDS+=($!); SERVE=$!
"$BIN" serve --listen 127.0.0.1:8183 --trust-request-time --no-audit "${EXTRA[@]}" 2>/dev/null & PIDS+=($!); NO_AUDIT=$!
wait_for 127.0.0.1:8181 "$CONSTANT"
wait_for 127.0.0.1:8180 "$SERVE"
wait_for 127.0.0.1:8183 "$NO_AUDIT"
REQUEST=examples/requests/consult-allowed.json
expect_decision http://127.0.0.1:8180/v1/is_authorized "$REQUEST" '"decision":"Allow"'
expect_decision http://127.0.0.1:8183/v1/is_authorized "$REQUEST" '"decision":"Allow"'

load constant-endpoint http://127.0.0.1:8181/v1/is_authorized "$REQUEST" "" "" "$CONSTANT"
load cdap-authz http://127.0.0.1:8180/v1/is_authorized "$REQUEST" "" "" "$SERVE"
HALF=$(( $(rps cdap-authz) / 2 ))
load "cdap-authz-at-half-rate" http://127.0.0.1:8180/v1/is_authorized "$REQUEST" "$HALF" "" "$SERVE"
load "constant-endpoint-at-that-rate" http://127.0.0.1:8181/v1/is_authorized "$REQUEST" "$HALF" "" "$CONSTANT"
FROM_SENT=1 load "cdap-authz-at-half-rate-from-sent" http://127.0.0.1:8180/v1/is_authorized "$REQUEST" "$HALF" "" "$SERVE"
FROM_SENT=1 load "constant-endpoint-at-that-rate-from-sent" http://127.0.0.1:8181/v1/is_authorized "$REQUEST" "$HALF" "" "$CONSTANT"
# The same rate on 4 connections (a backend with a few workers): fewer requests
# in flight at once; counted from when each left, then from when each was due (where a
# request due while all 4 connections are busy waits in oha, and that wait counts).
for FROM in 1 ""; do
  FROM_SENT=$FROM CONCURRENCY=4 load "cdap-authz-half-rate-4-conn${FROM:+-from-sent}" http://127.0.0.1:8180/v1/is_authorized "$REQUEST" "$HALF" "" "$SERVE"
  FROM_SENT=$FROM CONCURRENCY=4 load "constant-that-rate-4-conn${FROM:+-from-sent}" http://127.0.0.1:8181/v1/is_authorized "$REQUEST" "$HALF" "" "$CONSTANT"
done
echo "throughput vs constant endpoint: $(python3 -c "print(f'{$(rps cdap-authz)/$(rps constant-endpoint):.2f}')")"
load cdap-authz-no-audit http://127.0.0.1:8183/v1/is_authorized "$REQUEST" "" "" "$NO_AUDIT"
echo "throughput without the decision log / with it: $(python3 -c "print(f'{$(rps cdap-authz-no-audit)/$(rps cdap-authz):.2f}')")"

# The runs above follow one another, and this VM's speed drifts by tens of percent
# within minutes; so the same three servers again, in ROUNDS alternating rounds
# (the order reversed every other round), each ratio taken within its round; and in
# each round the half-rate pair again (counted from when each request left, the
# two runs next to each other), each p99 beside the steal during its run.
ROUNDS=${ROUNDS:-4}
RATIOS=()
HALF_RATE_P99=()
for round in $(seq "$ROUNDS"); do
  ORDER=(constant serve no-audit half constant-half)
  (( round % 2 == 0 )) && ORDER=(constant-half half no-audit serve constant)
  for server in "${ORDER[@]}"; do
    case $server in
      constant) load "round-$round-constant" http://127.0.0.1:8181/v1/is_authorized "$REQUEST" "" "" "$CONSTANT" ;;
      serve) load "round-$round-cdap-authz" http://127.0.0.1:8180/v1/is_authorized "$REQUEST" "" "" "$SERVE" ;;
      no-audit) load "round-$round-no-audit" http://127.0.0.1:8183/v1/is_authorized "$REQUEST" "" "" "$NO_AUDIT" ;;
      half) FROM_SENT=1 load "round-$round-half-rate-from-sent" http://127.0.0.1:8180/v1/is_authorized "$REQUEST" "$HALF" "" "$SERVE" ;;
      constant-half) FROM_SENT=1 load "round-$round-constant-that-rate-from-sent" http://127.0.0.1:8181/v1/is_authorized "$REQUEST" "$HALF" "" "$CONSTANT" ;;
    esac
  done
  RATIOS+=("$(rps "round-$round-cdap-authz") $(rps "round-$round-constant") $(rps "round-$round-no-audit")")
  HALF_RATE_P99+=("$(p99_and_steal "round-$round-half-rate-from-sent") $(p99_and_steal "round-$round-constant-that-rate-from-sent")")
done
python3 - "${RATIOS[@]}" <<'PY'
import statistics, sys
rounds = [list(map(int, r.split())) for r in sys.argv[1:]]
for name, pick in (("cdap-authz / constant endpoint", lambda s, c, n: s / c),
                   ("without the decision log / with it", lambda s, c, n: n / s)):
    ratios = [pick(*r) for r in rounds]
    print(f"{name}, per round: {' '.join(f'{x:.2f}' for x in ratios)}; "
          f"median {statistics.median(ratios):.2f}")
PY
python3 - "${HALF_RATE_P99[@]}" <<'PY'
import statistics, sys
rounds = [list(map(float, r.split())) for r in sys.argv[1:]]
for name, at in (("cdap-authz", 0), ("constant endpoint", 2)):
    runs = ", ".join(f"{r[at]:.2f} ms (steal {r[at + 1]:.0f}%)" for r in rounds)
    print(f"half-rate p99 from when sent, {name}, per round: {runs}; "
          f"median {statistics.median(r[at] for r in rounds):.2f} ms")
PY

for BUSY in 10 15 20 25; do
  target/release/examples/constant_server "127.0.0.1:$((8190 + BUSY))" "$BUSY" 2>/dev/null & PIDS+=($!)
  BUSY_PID=$!
  wait_for "127.0.0.1:$((8190 + BUSY))" "$BUSY_PID"
  load "constant-busy-${BUSY}us" "http://127.0.0.1:$((8190 + BUSY))/v1/is_authorized" "$REQUEST" "" "" "$BUSY_PID"
done

SOCKET="$OUT/authz.sock"
"$BIN" serve --listen "unix:$SOCKET" --trust-request-time --audit-dir "$OUT/audit-unix" "${EXTRA[@]}" 2>/dev/null & PIDS+=($!); UNIX_SERVE=$!
wait_for "$SOCKET" "$UNIX_SERVE"
expect_decision http://localhost/v1/is_authorized "$REQUEST" '"decision":"Allow"' "$SOCKET"
CONCURRENCY=1 load tcp-one-connection http://127.0.0.1:8180/v1/is_authorized "$REQUEST"
CONCURRENCY=1 load unix-one-connection http://localhost/v1/is_authorized "$REQUEST" "" "$SOCKET"
load unix-socket http://localhost/v1/is_authorized "$REQUEST" "" "$SOCKET"
echo "one-connection round trips per second, Unix socket / TCP: $(python3 -c "print(f'{$(rps unix-one-connection)/$(rps tcp-one-connection):.2f}')")"
kill "${PIDS[@]}"; PIDS=()

if ! command -v cedar-agent >/dev/null; then
  echo "== cedar-agent comparison skipped: cedar-agent not found (cargo install cedar-agent)"
  exit 0
fi
POLICIES="$OUT/policies"; mkdir -p "$POLICIES"
cp benches/agent/policies.cedar "$POLICIES/"
python3 benches/agent/to_agent.py "$POLICIES/policies.cedar" examples/entities.json "$OUT"
"$BIN" serve --listen 127.0.0.1:8180 --policies "$POLICIES" --audit-dir "$OUT/audit-agent-run" "${EXTRA[@]}" 2>/dev/null & PIDS+=($!); SAME_POLICIES=$!
cedar-agent --addr 127.0.0.1 --port 8182 --log-level error \
  --policies "$OUT/agent-policies.json" --data "$OUT/agent-entities.json" >/dev/null 2>&1 & PIDS+=($!); AGENT=$!
wait_for 127.0.0.1:8180 "$SAME_POLICIES"
wait_for 127.0.0.1:8182 "$AGENT"
TRACES=benches/agent/request.json
expect_decision http://127.0.0.1:8180/v1/is_authorized "$TRACES" '"decision":"Allow"'
expect_decision http://127.0.0.1:8182/v1/is_authorized "$TRACES" '"decision":"Allow"'
load cedar-agent http://127.0.0.1:8182/v1/is_authorized "$TRACES"
load cdap-authz-same-policies http://127.0.0.1:8180/v1/is_authorized "$TRACES"
echo "throughput vs cedar-agent: $(python3 -c "print(f'{$(rps cdap-authz-same-policies)/$(rps cedar-agent):.2f}')")"
