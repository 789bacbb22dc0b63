#!/usr/bin/env bash
# A profile-guided release build of cdap-authz, for production: a fifth less CPU a
# request over HTTP than `cargo build --release` on the 2-core dev VM, 1.19× its
# throughput (`benches/ab.sh`, BENCHMARKS.md). Three steps:
#   1. a release build instrumented to count where the code goes
#      (`-Cprofile-generate`);
#   2. that build serving the bundled model, with its decision log, under the
#      training load of scripts/pgo_train.py (every request of the policy test
#      suites, singly and in batches; not the benchmarked requests);
#   3. the release build again, laid out and inlined by those counts
#      (`-Cprofile-use`), which must then pass the policy test suites.
# Each build has its own target directory under target/pgo/ (their RUSTFLAGS differ
# from the plain build's, which is left as it is). Output: target/pgo/cdap-authz.
# Needs python3 and llvm-profdata of the Rust toolchain (`rustup component add
# llvm-tools`, which this script tries); about 20 minutes on 2 cores from an empty
# target/pgo/ (two fat-LTO release builds).
# Usage: scripts/build-pgo.sh [TRAINING_ROUNDS] (default 200)
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-200}
WORK=$PWD/target/pgo
rustup component add llvm-tools >/dev/null 2>&1 || true
PROFDATA=$(find "$(rustc --print sysroot)/lib/rustlib" -name llvm-profdata -type f | head -1)
[[ -x $PROFDATA ]] || { echo "llvm-profdata not found: rustup component add llvm-tools" >&2; exit 1; }

echo "== 1. instrumented build"
rm -rf "$WORK/profiles"
RUSTFLAGS="-Cprofile-generate=$WORK/profiles" \
  cargo build --release --quiet --bin cdap-authz --target-dir "$WORK/instrumented"

echo "== 2. training"
RUN=$(mktemp -d)
SERVER=""
trap '[[ -n $SERVER ]] && kill "$SERVER" 2>/dev/null; rm -rf "$RUN"' EXIT
"$WORK/instrumented/release/cdap-authz" serve --listen 127.0.0.1:0 --trust-request-time \
  --request-principals --audit-dir "$RUN/audit" 2>"$RUN/serve.log" &
SERVER=$!
for _ in $(seq 200); do
  ADDRESS=$(grep -o 'listen=[0-9.:]*' "$RUN/serve.log" | head -1 | cut -d= -f2) && [[ -n $ADDRESS ]] && break
  sleep 0.05
done
[[ -n ${ADDRESS:-} ]] || { cat "$RUN/serve.log" >&2; echo "the instrumented server did not start" >&2; exit 1; }
python3 scripts/pgo_train.py "http://$ADDRESS" "$ROUNDS"
kill -TERM "$SERVER"
wait "$SERVER" # the counts are written as the process exits
SERVER=""
"$PROFDATA" merge -o "$WORK/cdap-authz.profdata" "$WORK/profiles"

echo "== 3. optimised build"
RUSTFLAGS="-Cprofile-use=$WORK/cdap-authz.profdata" \
  cargo build --release --quiet --bin cdap-authz --target-dir "$WORK/optimized"
# The optimised build decides the policy suites as the plain one does.
"$WORK/optimized/release/cdap-authz" test tests/policies >/dev/null
cp "$WORK/optimized/release/cdap-authz" "$WORK/cdap-authz"
echo "built $WORK/cdap-authz"
