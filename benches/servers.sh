# Sourced by the load scripts (load.sh, ab.sh): waiting for a server, checking its
# decision, reading its CPU time and the hypervisor's steal.

wait_for() { # until $1 (host:port, or a socket path) answers /readyz with other than 503
  # (a sidecar's answer until its model is loaded; the others answer 200 or 404)
  local via=() url="http://$1/readyz" code
  [[ $1 == /* ]] && via=(--unix-socket "$1") && url=http://localhost/readyz
  for _ in $(seq 400); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "${via[@]}" "$url") || true
    [[ $code != 000 && $code != 503 ]] && return 0
    sleep 0.05
  done
  echo "nothing ready on $1" >&2
  exit 1
}

expect_decision() { # url body expected-substring [socket]
  local reply via=(); [[ -n ${4:-} ]] && via=(--unix-socket "$4")
  reply=$(curl -s "${via[@]}" -X POST -H 'content-type: application/json' --data-binary "@$2" "$1")
  grep -q "$3" <<<"$reply" || { echo "$1 answered $reply, expected $3" >&2; exit 1; }
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # user + system, in clock ticks

machine_ticks() { grep '^cpu ' /proc/stat; } # both cores' time by kind, in ticks

steal_percent() { # machine_ticks before, and after → the share of that time in which
  # this VM was ready to run and another guest ran instead, in percent
  python3 - "$1" "$2" <<'PY'
import sys
# user nice system idle iowait irq softirq steal
before, after = ([int(t) for t in line.split()[1:9]] for line in sys.argv[1:3])
ticks = [b - a for a, b in zip(before, after)]
print(f"{ticks[7] / max(sum(ticks), 1) * 100:.1f}")
PY
}
