#!/usr/bin/env bash
# Stop the daemons start-local-slurm.sh started, by their pid files only (and only when
# the pid still belongs to that daemon; munged only if it started it).
# --keep-munge leaves munged running.
set -uo pipefail
DIR=${QVPO_SLURM_DIR:-/tmp/qvpo-slurm}
stop() { # daemon pidfile
  local pid
  [ -s "$2" ] || return 0
  pid=$(cat "$2")
  if ! kill -0 "$pid" 2>/dev/null; then rm -f "$2"; return 0; fi
  if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" != "$1" ]; then
    echo "[stop-local-slurm] pid $pid in $2 is not $1; leaving it" >&2
    return 1
  fi
  kill -TERM "$pid"
  for _ in $(seq 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  rm -f "$2"
  echo "[stop-local-slurm] stopped $1 ($pid)"
}
status=0
stop slurmd "$DIR/run/slurmd.pid" || status=1
stop slurmctld "$DIR/run/slurmctld.pid" || status=1
if [ "${1:-}" != --keep-munge ] && [ -e "$DIR/run/munged.ours" ]; then
  stop munged /run/munge/munged.pid && rm -f "$DIR/run/munged.ours" || status=1
fi
# Remove the slurm.conf start-local-slurm.sh wrote (its first line says so): with it and no controller, every
# `scontrol` waits about 9 s, and so does every snakemake start here (its slurm executor plugin runs
# `scontrol show config` when loaded); without it they fail at once.
CONF=/etc/slurm/slurm.conf
if [ $status = 0 ] && [ "$(head -n1 "$CONF" 2>/dev/null)" = "# written by scripts/slurm/start-local-slurm.sh" ]; then
  rm -f "$CONF" && echo "[stop-local-slurm] removed $CONF"
fi
exit $status
