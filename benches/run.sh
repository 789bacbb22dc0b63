#!/usr/bin/env bash
# Every benchmark of the decision path, in one run on this machine, then the ratios
# the targets are stated in (BENCHMARKS.md), then the HTTP load runs (load.sh).
# Usage: benches/run.sh [--no-load]
set -euo pipefail
cd "$(dirname "$0")/.."

cargo bench --bench decision -- --noplot
cargo bench --bench scaling -- --noplot
cargo bench --bench snapshot_build -- --noplot

python3 - <<'PY'
import json, pathlib
root = pathlib.Path("target/criterion")
def median(*parts):
    path = root.joinpath(*parts, "new", "estimates.json")
    return json.load(open(path))["median"]["point_estimate"] / 1000  # µs
cases = sorted(p.name for p in (root / "floor").iterdir() if p.name != "report")
print(f"{'case':<18}{'E (µs)':>10}{'full (µs)':>12}{'full/E':>9}")
for case in cases:
    e, full = median("floor", case), median("full_path", case)
    print(f"{case:<18}{e:>10.1f}{full:>12.1f}{full / e:>9.2f}   target ≤ 1.5")
base = median("full_path", "t2_allow")
for name in sorted(p.name for p in (root / "time_varies").iterdir() if p.name != "report"):
    t = median("time_varies", name)
    print(f"time varies, {name}: {t:.1f} µs, ×{t / base:.2f} the clock standing still")
def scaled(group, label, kind):
    d = root / group / f"{label}_{kind}"
    return sorted((int(p.name), median(group, d.name, p.name)) for p in d.iterdir() if p.name.isdigit())
for group, kind, target in [("store_size", "users", 1.2), ("policy_count", "policies", 3.0)]:
    for label in sorted(p.name.rsplit("_", 1)[0] for p in (root / group).iterdir() if p.name.endswith(kind)):
        runs = scaled(group, label, kind)
        base = runs[0][1]
        for n, t in runs:
            print(f"{group} {label} {n:>8} {kind}: {t:8.1f} µs  ×{t / base:.2f} (target ≤ {target} at the largest)")
print(f"batch of 30: {median('batch_30'):.0f} µs")
PY

if [[ "${1:-}" != "--no-load" ]]; then
  benches/load.sh
fi
