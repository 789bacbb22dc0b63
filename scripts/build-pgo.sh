#!/usr/bin/env bash
# A profile-guided release build of cdap-authz, for production: a fifth less CPU a
# request over HTTP than `cargo build --release` on the 2-core dev VM, 1.19× its
# throughput (`benches/ab.sh`, BENCHMARKS.md). The steps:
#   1. a release build instrumented to count where the code goes
#      (`-Cprofile-generate`);
#   2. that build serving the bundled model, with its decision log, under the
#      training load of scripts/pgo_train.py (every request of the policy test
#      suites, singly and in batches; not the benchmarked requests);
#   3. the release build again, laid out and inlined by those counts
#      (`-Cprofile-use`), which must then pass the policy test suites;
#   4. only with BOLT set: that binary (linked with its relocations kept,
#      `--emit-relocs`) instrumented by LLVM's post-link optimiser BOLT, trained
#      under the same load, then rewritten with its hot code packed together (blocks
#      ordered by the counts, cold blocks split off, hot functions side by side),
#      which must pass the suites too. On the dev VM that took 4% more throughput
#      and 5% less CPU a request at full speed, and changed nothing measurable at
#      half rate (BENCHMARKS.md, session 36); the binary loses its debug line
#      tables (symbols stay). `BOLT=1` finds `llvm-bolt` (Debian: `apt-get install
#      bolt-15`), `BOLT=/path/to/llvm-bolt` names it.
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
BOLT=${BOLT:-0}
LINK_FLAGS=""
if [[ $BOLT != 0 ]]; then
  if [[ $BOLT == 1 ]]; then
    BOLT=$(command -v llvm-bolt || ls /usr/lib/llvm-*/bin/llvm-bolt 2>/dev/null | sort -V | tail -1 || true)
  fi
  [[ -x $BOLT ]] || { echo "llvm-bolt not found: apt-get install bolt-15, or BOLT=/path/to/llvm-bolt" >&2; exit 1; }
  LINK_FLAGS="-Clink-arg=-Wl,--emit-relocs" # BOLT rewrites a binary whose relocations the linker kept
fi

RUN=$(mktemp -d)
SERVER=""
trap '[[ -n $SERVER ]] && kill "$SERVER" 2>/dev/null; rm -rf "$RUN"' EXIT

# Serves the bundled model with BINARY under the training load, then stops it the
# way production does (SIGTERM), as the counts are written when the process exits.
train() {
  local binary=$1 address=""
  rm -rf "$RUN/audit"
  "$binary" serve --listen 127.0.0.1:0 --trust-request-time --request-principals \
    --audit-dir "$RUN/audit" 2>"$RUN/serve.log" &
  SERVER=$!
  for _ in $(seq 200); do
    address=$(grep -o 'listen=[0-9.:]*' "$RUN/serve.log" | head -1 | cut -d= -f2) && [[ -n $address ]] && break
    sleep 0.05
  done
  [[ -n $address ]] || { cat "$RUN/serve.log" >&2; echo "the instrumented server did not start" >&2; exit 1; }
  python3 scripts/pgo_train.py "http://$address" "$ROUNDS"
  kill -TERM "$SERVER"
  wait "$SERVER"
  SERVER=""
}

echo "== 1. instrumented build"
rm -rf "$WORK/profiles"
RUSTFLAGS="-Cprofile-generate=$WORK/profiles" \
  cargo build --release --quiet --bin cdap-authz --target-dir "$WORK/instrumented"

echo "== 2. training"
train "$WORK/instrumented/release/cdap-authz"
"$PROFDATA" merge -o "$WORK/cdap-authz.profdata" "$WORK/profiles"

echo "== 3. optimised build"
RUSTFLAGS="-Cprofile-use=$WORK/cdap-authz.profdata $LINK_FLAGS" \
  cargo build --release --quiet --bin cdap-authz --target-dir "$WORK/optimized"
BUILT=$WORK/optimized/release/cdap-authz
# The optimised build decides the policy suites as the plain one does.
"$BUILT" test tests/policies >/dev/null

if [[ $BOLT != 0 ]]; then
  echo "== 4. BOLT"
  "$BOLT" "$BUILT" -instrument -o "$WORK/bolt-instrumented" \
    --instrumentation-file="$WORK/bolt.fdata" >"$RUN/bolt.log" 2>&1 \
    || { cat "$RUN/bolt.log" >&2; exit 1; }
  rm -f "$WORK/bolt.fdata"
  train "$WORK/bolt-instrumented"
  "$BOLT" "$BUILT" -o "$WORK/bolted" -data="$WORK/bolt.fdata" \
    -reorder-blocks=ext-tsp -reorder-functions=hfsort+ -split-functions -split-all-cold \
    -split-eh -icf=1 -use-gnu-stack >"$RUN/bolt.log" 2>&1 \
    || { cat "$RUN/bolt.log" >&2; exit 1; }
  "$WORK/bolted" test tests/policies >/dev/null
  BUILT=$WORK/bolted
fi
cp "$BUILT" "$WORK/cdap-authz"
echo "built $WORK/cdap-authz"
