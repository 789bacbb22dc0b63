#!/usr/bin/env bash
# What a large entity store costs `serve`: a copy of the bundled model whose entities
# file also holds USERS generated users of the Ville de Maubeuge (as the scaling
# bench's), served without the decision log; prints the time to be ready (the first
# load, then the check for changes made during it), then the time from a policy
# edited (a comment appended to a policy file, written in place and closed) to the
# new snapshot swapped in, and the process's resident memory after each.
# Usage: benches/reload_store.sh [USERS (default 100000)]; BIN names the binary
# (default target/release/cdap-authz, built by `cargo build --release`).
set -euo pipefail
cd "$(dirname "$0")/.."

USERS=${1:-100000}
BIN=$(realpath "${BIN:-target/release/cdap-authz}")
[[ -x $BIN ]] || { echo "no $BIN: cargo build --release" >&2; exit 1; }
MODEL=$(mktemp -d)
SERVER=""
trap '[[ -n $SERVER ]] && kill "$SERVER" 2>/dev/null; rm -rf "$MODEL"' EXIT

cp -r policies "$MODEL/policies"
cp -r schema "$MODEL/schema"
python3 - examples/entities.json "$USERS" "$MODEL/entities.json" <<'PY'
import json, sys
entities = json.load(open(sys.argv[1]))
partner = {"type": "Partner", "id": "ville-maubeuge"}
entities += [{"uid": {"type": "User", "id": f"generated-{i}"},
              "attrs": {"role": "user", "suspended": False, "must_change_password": False,
                        "trace_reader": False, "habilitation_admin": False,
                        "partner": partner},
              "parents": [partner]} for i in range(int(sys.argv[2]))]
json.dump(entities, open(sys.argv[3], "w"))
PY
echo "$USERS generated users: $(du -h "$MODEL/entities.json" | cut -f1) of entities"

now() { date +%s.%N; }
seconds() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$2"; }
rss() { awk '/VmRSS/ { printf "%.0f MiB", $2 / 1024 }' "/proc/$SERVER/status"; }
swaps() { grep -c 'snapshot swapped in' "$MODEL/serve.log" || true; }

started=$(now)
RUST_LOG=info "$BIN" serve --listen 127.0.0.1:0 --no-audit --policies "$MODEL/policies" \
  --schema "$MODEL/schema/cdap.cedarschema" --entities "$MODEL/entities.json" \
  >"$MODEL/serve.log" 2>&1 &
SERVER=$!
until grep -q 'reloaded: nothing changed' "$MODEL/serve.log"; do
  kill -0 "$SERVER" 2>/dev/null || { cat "$MODEL/serve.log" >&2; exit 1; }
  sleep 0.2
done
echo "ready (first load, then the check for changes): $(seconds "$started" "$(now)") s, $(rss)"

echo "// edited" >>"$MODEL/policies/suspension.cedar"
edited=$(now)
until (( $(swaps) >= 2 )); do sleep 0.05; done
took=$(grep 'snapshot swapped in' "$MODEL/serve.log" | tail -1 | grep -o 'took_ms=[0-9.]*' | cut -d= -f2)
echo "a policy edited, swapped in after $(seconds "$edited" "$(now)") s (the reload itself: ${took%.*} ms), $(rss)"
