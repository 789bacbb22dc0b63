#!/usr/bin/env bash
# The memory one decision touches: distinct 64-byte cache lines and 4 KiB pages of
# code and of data, counted by valgrind's lackey over one warm run of the full
# in-process path with its decision-log record (examples/footprint.rs). Like
# benches/instructions.sh, a count that the hypervisor's steal and the VM's speed do
# not move; unlike it, the count that sets what a decision costs when its lines
# have been evicted since the last one (BENCHMARKS.md, session 35).
# Prints the totals (code also less SHA-256, which valgrind runs in software), then
# the code lines of the crates and functions that take most.
# Needs valgrind. Usage: benches/footprint.sh [REQUEST_JSON] (default: a
# consultation allowed, examples/requests/consult-allowed.json)
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet --example footprint
EXAMPLE=target/release/examples/footprint
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

valgrind --tool=lackey --trace-mem=yes "$EXAMPLE" "$@" 2>&1 >"$OUT/decision" |
  sed -n '/^@@footprint-main/p; /^@@footprint-start/,/^@@footprint-end/p' >"$OUT/trace"
echo "decision: $(<"$OUT/decision")"
nm -C --defined-only "$EXAMPLE" | grep -E ' [tTwW] ' >"$OUT/symbols"

python3 - "$OUT/trace" "$OUT/symbols" <<'PY'
import bisect, collections, re, sys

LINE, PAGE = 64, 4096
trace, symbols = sys.argv[1:3]

def touched(address, size):
    """The cache lines an access of `size` bytes at `address` covers."""
    return range(address // LINE, (address + max(size, 1) - 1) // LINE + 1)

code, data, instructions, main_at = set(), set(), 0, None
for record in open(trace):
    if record.startswith("@@footprint-main"):
        main_at = int(record.split()[1], 16)
        continue
    parts = record.split()
    if len(parts) != 2 or "," not in parts[1]:
        continue
    address, size = (int(v, 16) for v in parts[1].split(","))
    if parts[0] == "I":
        instructions += 1
        code.update(touched(address, size))
    else:  # L(oad), S(tore), M(odify)
        data.update(touched(address, size))

pages = lambda lines: len({line * LINE // PAGE for line in lines})
print(f"instructions: {instructions:,}")
for name, lines in [("code", code), ("data", data)]:
    print(f"{name}: {len(lines):,} lines ({len(lines) * LINE / 1024:.0f} KiB) "
          f"on {pages(lines):,} pages")

table = []
for entry in open(symbols):
    address, _kind, name = entry.rstrip("\n").split(" ", 2)
    table.append((int(address, 16), name))
table.sort()
offset = main_at - next(a for a, n in table if n == "footprint::main")
starts = [a + offset for a, _ in table]

def crate(name):
    match = re.match(r"<?(?:&(?:mut )?)?([A-Za-z_][A-Za-z_0-9]*)::", name)
    return match.group(1) if match else "(other: libc, allocator)"

by_crate, by_function = collections.Counter(), collections.Counter()
for line in code:
    i = bisect.bisect_right(starts, line * LINE) - 1
    name = table[i][1] if i >= 0 and line * LINE - starts[i] < 1 << 20 else "(outside the binary)"
    by_crate[crate(name)] += 1
    by_function[name[:100]] += 1
# Under valgrind the CPU reports no SHA extensions, so sha2 runs its software rounds
# (the real CPU's take a few lines): the count less those, as instructions.sh does.
software_sha = by_crate["sha2"]
print(f"code less SHA-256's software rounds: {len(code) - software_sha:,} lines")
print("code lines by crate:", ", ".join(f"{c} {n}" for c, n in by_crate.most_common(8)))
print("code lines by function:")
for name, n in by_function.most_common(15):
    print(f"  {n:5}  {name}")
PY
