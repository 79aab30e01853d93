#!/usr/bin/env bash
# Times a backup restore on a large cluster while an operator writes
# (docs/performance.md, "An eighteenth run"). It copies a cluster that
# `make bench-fanout` kept (.bench-cache/n20000 by default) to a scratch
# directory, so the kept one is not changed, starts its three nodes on
# 127.0.0.11-13 with the harness's flags (no gateway connects), saves a
# backup, then registers gateways one at a time with govnetctl while an
# officer restores the backup through 127.0.0.12 (a follower or the
# leader, as elections had it). It prints the restore's time, the longest
# and median registration, and each node's peak RSS; it stops the nodes
# and removes the copy when it ends, even on failure (keeping the nodes'
# logs in $RESTORE_TIMING_LOGS, if set).
#
#   make build bench-fanout   # once: the cluster and its people
#   deploy/scripts/restore-timing.sh [CLUSTER_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
src=$(realpath "${1:-.bench-cache/n20000}")
bin=$PWD/bin
[ -f "$src/ctl1.yaml" ] || { echo "no kept cluster in $src: run make bench-fanout first" >&2; exit 1; }
work=$(mktemp -d /tmp/govnet-restore.XXXXXX)
pids=()
loop=
cleanup() {
  [ -n "$loop" ] && kill "$loop" 2>/dev/null
  [ ${#pids[@]} -gt 0 ] && kill "${pids[@]}" 2>/dev/null
  wait 2>/dev/null || true
  [ -n "${RESTORE_TIMING_LOGS:-}" ] && mkdir -p "$RESTORE_TIMING_LOGS" && cp "$work"/ctl*.log "$RESTORE_TIMING_LOGS"/
  rm -rf "$work"
}
trap cleanup EXIT

cp -a "$src" "$work/c"
d=$work/c
sed -i "s|$src|$d|g" "$d"/ctl*.yaml "$d/hsm/softhsm2.conf"
export SOFTHSM2_CONF=$d/hsm/softhsm2.conf
for i in 1 2 3; do
  "$bin/govnetd" run --config "$d/ctl$i.yaml" --log-level warn \
    --raft-heartbeat-timeout 500ms --raft-election-timeout 1s --raft-leader-lease-timeout 500ms \
    --max-conns-per-ip 1000000 >"$work/ctl$i.log" 2>&1 &
  pids+=($!)
done
as() { # as ROLE ARGS...: govnetctl as the cluster's operator (op) or officer (off)
  local who=$1; shift
  "$bin/govnetctl" --root "$d/ctl1/pki/root.pem" --cert "$d/people/$who.crt" --key "$d/people/$who.key" "$@"
}
now() { date +%s.%N; }

for _ in $(seq 120); do
  as op --controller https://127.0.0.11:17443 cluster status >"$work/status" 2>&1 && grep -q '^ctl[0-9]* *voter.*\*' "$work/status" && break
  sleep 2
done
cat "$work/status"
sleep 20 # the start settles
# A restore needs cluster level 2, which a cluster kept from a release
# before levels reaches once its three nodes have reported theirs.
for _ in $(seq 30); do
  as op --controller https://127.0.0.11:17443 cluster status -o json |
    python3 -c 'import json,sys; sys.exit(json.load(sys.stdin).get("level", 1) < 2)' && break
  sleep 2
done
agency=$(as op --controller https://127.0.0.11:17443 agency list -o json |
  python3 -c 'import json,sys; print(next(a["code"] for a in json.load(sys.stdin) if a.get("level")=="commune"))')

s=$(now); as op --controller https://127.0.0.11:17443 cluster snapshot save "$work/backup.snap"; e=$(now)
echo "backup saved in $(echo "$e - $s" | bc) s: $(stat -c %s "$work/backup.snap") bytes"

# The operator's writes, each timed, until the restore is over.
(
  i=0
  while [ ! -e "$work/stop" ]; do
    i=$((i + 1)); s=$(now)
    as op --controller https://127.0.0.11:17443 gateway add "rt$$-$i" --agency "$agency" >/dev/null 2>>"$work/add-errors" || true
    e=$(now); echo "$(echo "$e - $s" | bc)" >>"$work/adds"
  done
) &
loop=$!
sleep 5
s=$(now); rc=0
as off --controller https://127.0.0.12:17443 cluster snapshot restore "$work/backup.snap" || rc=$?
e=$(now)
sleep 5; touch "$work/stop"; wait "$loop" || true; loop=
echo "restore: exit $rc after $(echo "$e - $s" | bc) s"
sort -n "$work/adds" | awk '{a[NR]=$1} END {printf "registrations: %d, median %.3f s, longest %.3f s\n", NR, a[int((NR+1)/2)], a[NR]}'
for i in 1 2 3; do echo "ctl$i peak RSS: $(awk '/VmHWM/ {print $2, $3}' "/proc/${pids[$((i - 1))]}/status")"; done
grep -h 'stepping down' "$work"/ctl*.log | cut -c1-160 || true
exit "$rc"
