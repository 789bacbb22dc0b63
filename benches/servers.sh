# Sourced by the load scripts (load.sh, ab.sh): waiting for a server, checking its
# decision, reading its CPU time and the hypervisor's steal, and one oha run with
# all of those read around it.

wait_for() { # until $1 (host:port, or a socket path) answers /readyz with other than 503
  # (a sidecar's answer until its model is loaded; the others answer 200 or 404), from
  # the server started as pid $2: a server that exited (its port taken, say) fails the
  # wait, so that another process answering on that address is never measured instead
  local via=() url="http://$1/readyz" code
  [[ $1 == /* ]] && via=(--unix-socket "$1") && url=http://localhost/readyz
  for _ in $(seq 400); do
    kill -0 "$2" 2>/dev/null || { echo "the server for $1 exited (is the address taken?)" >&2; exit 1; }
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

preemptions() { # times the process's threads were switched out while still runnable
  # (a thread that ends while this reads is left out)
  { cat "/proc/$1"/task/*/status 2>/dev/null || true; } |
    awk '/^nonvoluntary_ctxt_switches/ {n += $2} END {print n + 0}'
}

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

measure() { # name url body [rate] [socket] [pid]: one oha run of SECONDS_PER_RUN on
  # CONCURRENCY connections, into $OUT/name.json; beside it the steal during the run
  # (name.steal) and, given the server's pid, its CPU ticks (name.cpu) and preemptions
  # (name.preempted). At a fixed rate, latency counts from when each request was due
  # (oha's correction), or with FROM_SENT set, from when it left.
  local name=$1 url=$2 body=$3 rate=${4:-} socket=${5:-} pid=${6:-}
  local before=0 preempted_before=0 machine_before correction=--latency-correction
  [[ -n $pid ]] && before=$(cpu_ticks "$pid") && preempted_before=$(preemptions "$pid")
  machine_before=$(machine_ticks)
  [[ -n ${FROM_SENT:-} ]] && correction=""
  oha -z "${SECONDS_PER_RUN}s" -c "$CONCURRENCY" ${rate:+-q "$rate" $correction} \
    ${socket:+--unix-socket "$socket"} --no-tui \
    --output-format json -m POST -T application/json -D "$body" "$url" >"$OUT/$name.json"
  if [[ -n $pid ]]; then
    echo $(( $(cpu_ticks "$pid") - before )) >"$OUT/$name.cpu"
    echo $(( $(preemptions "$pid") - preempted_before )) >"$OUT/$name.preempted"
  fi
  steal_percent "$machine_before" "$(machine_ticks)" >"$OUT/$name.steal"
}
