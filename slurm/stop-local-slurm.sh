#!/usr/bin/env bash
# slurm/stop-local-slurm.sh - stop the daemons slurm/start-local-slurm.sh started (and only those:
# their pids are in /run/lsa-local-slurm/<name>.pid), newest first. Queued and running jobs are
# cancelled first unless KEEP_JOBS=1. Packages and config files stay; starting again takes ~3 s.
set -uo pipefail
STATE=/run/lsa-local-slurm
say() { echo "[stop-local-slurm] $*" >&2; }
[ "$(id -u)" = 0 ] || { say "must run as root"; exit 1; }
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH

alive() { [ "$(cat /proc/"$1"/comm 2>/dev/null)" = "$2" ]; }

if [ "${KEEP_JOBS:-0}" != 1 ] && [ -f $STATE/slurmctld.pid ] && alive "$(cat $STATE/slurmctld.pid)" slurmctld; then
  jobs=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
  if [ -n "${jobs// /}" ]; then
    say "cancelling jobs $jobs"
    # shellcheck disable=SC2086
    scancel $jobs 2>/dev/null || true
    for _ in $(seq 1 20); do [ -z "$(squeue -h -t R,CG -o %A 2>/dev/null)" ] && break; sleep 0.5; done
  fi
fi

for name in slurmd slurmctld slurmdbd mariadbd munged; do
  f=$STATE/$name.pid
  [ -f "$f" ] || continue
  pid=$(cat "$f")
  if [ -n "$pid" ] && alive "$pid" "$name"; then
    say "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do alive "$pid" "$name" || break; sleep 0.5; done
    if alive "$pid" "$name"; then say "$name still running after 30 s: SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; fi
  else
    say "$name (pid ${pid:-?}) is not running; forgetting it"
  fi
  rm -f "$f"
done
rmdir $STATE 2>/dev/null || true
say "stopped"
