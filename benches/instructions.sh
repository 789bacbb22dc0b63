#!/usr/bin/env bash
# Instructions a decision costs over HTTP, counted by valgrind's callgrind in the
# running server: a count the hypervisor's steal and the VM's drifting speed do not
# move, for comparing two states of the code where timings on this VM cannot
# (BENCHMARKS.md). The sidecar serves the bundled model with its decision log;
# oha sends 2,000 requests to warm it, the counters are zeroed, then 10,000 more
# (16 connections), and the counts are read for those. Prints the instructions a
# request, in total and less SHA-256's block function (under valgrind the CPU
# reports no SHA extensions, so the log's chain hash runs sha2's software code,
# about 35k instructions a record, where the real CPU's extensions take ~1k), and
# the main parts of the path.
# Needs valgrind and oha. Usage: benches/instructions.sh [BIN] [REQUEST_JSON]
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/servers.sh

BIN=${1:-target/release/cdap-authz}
REQUEST=${2:-examples/requests/consult-allowed.json}
ADDRESS=127.0.0.1:${PORT:-8199}
URL=http://$ADDRESS/v1/is_authorized
OUT=$(mktemp -d)
SERVER=""
trap '[[ -n $SERVER ]] && kill "$SERVER" 2>/dev/null; rm -rf "$OUT"' EXIT

valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out" --dump-instr=no \
  "$BIN" serve --listen "$ADDRESS" --trust-request-time --audit-dir "$OUT/audit" \
  >"$OUT/serve.log" 2>&1 &
SERVER=$!
wait_for "$ADDRESS" "$SERVER"
send() { # count connections
  oha -n "$1" -c "$2" --no-tui --output-format json -m POST -T application/json \
    -D "$REQUEST" "$URL" >"$OUT/oha.json"
  python3 -c 'import json,sys; c=json.load(open(sys.argv[1]))["statusCodeDistribution"]
if set(c) != {"200"}: sys.exit(f"answers other than 200: {c}")' "$OUT/oha.json"
}
send 2000 4
callgrind_control --zero "$SERVER" >/dev/null 2>&1
send 10000 16
callgrind_control --dump "$SERVER" >/dev/null 2>&1
kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; SERVER=""

DUMP=$(ls "$OUT"/callgrind.out.* | tail -1)
# From outside the repository: run inside it, callgrind_annotate splits a function
# between its absolute and relative source paths.
(cd / && callgrind_annotate --inclusive=yes --threshold=100 "$DUMP" 2>/dev/null) >"$OUT/inclusive.txt"
python3 - "$OUT/inclusive.txt" <<'PY'
import re, sys
REQUESTS = 10_000
text = open(sys.argv[1]).read()
count = lambda line: int(line.split()[0].replace(",", ""))
total = count(next(l for l in text.splitlines() if "PROGRAM TOTALS" in l))
def inclusive(pattern):
    # A function inlined into others has a line for each; its own is the largest.
    return max((count(l) for l in text.splitlines() if re.search(pattern, l)), default=0)
sha = inclusive(r"sha2-[\d.]+/src/core_api\.rs:cdap_authz::audit::record::chain_hash")
print(f"instructions a request: {total / REQUESTS:,.0f}; "
      f"less SHA-256's software blocks: {(total - sha) / REQUESTS:,.0f}")
for name in ["http::decide_unlogged", "engine::prepare", "engine::evaluate",
             "fast_eval::Condition::boolean", "typed_request::read",
             "engine::Decision::response", "audit::writer::AuditLog::submit_all"]:
    n = inclusive(r"\S+:cdap_authz::" + re.escape(name) + r" \[")
    print(f"  {name:<40} {n / REQUESTS:>8,.0f}")
PY
