#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine for the workflow's SLURM test
# (tests/test_slurm.py): munged + slurmctld + slurmd, loopback only, no accounting
# daemon (so `sacct` fails: the slurm-local profile polls with squeue).
# Debian/Ubuntu, as root, no systemd needed. Installs slurm-wlm and munge when missing.
# Idempotent: daemons already running are left running. Stop with stop-local-slurm.sh.
#   QVPO_SLURM_DIR   state, spool, logs and pid files (default /tmp/qvpo-slurm)
#   QVPO_SLURM_CPUS  CPUs of the node (default: nproc)
set -euo pipefail

DIR=${QVPO_SLURM_DIR:-/tmp/qvpo-slurm}
CPUS=${QVPO_SLURM_CPUS:-$(nproc)}
CONF=/etc/slurm/slurm.conf
say() { echo "[start-local-slurm] $*"; }
fail() {
  echo "[start-local-slurm] error: $*" >&2
  for log in "$DIR"/log/*.log /var/log/munge/munged.log; do
    [ -s "$log" ] && { echo "--- last lines of $log" >&2; tail -n 10 "$log" >&2; }
  done
  exit 1
}
running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
retry() { # attempts command... : retry every 0.25 s
  local n=$1; shift
  for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
  return 1
}

[ "$(id -u)" = 0 ] || fail "run as root (it writes $CONF and starts daemons)"

missing=()
for pair in slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client munged:munge; do
  command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  mkdir -p "$DIR/log"
  # the packages' postinst scripts cannot start services without an init system; we start them below
  install_pkgs() { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"; }
  { install_pkgs || { apt-get update -q && install_pkgs; }; } >"$DIR/log/apt.log" 2>&1 \
    || fail "apt-get install ${missing[*]} failed (see $DIR/log/apt.log)"
fi

mkdir -p "$DIR"/{state,spool,log,run} /etc/slurm
node=$(hostname -s)
detected_mb=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
[ -n "$detected_mb" ] || fail "'slurmd -C' did not report the node's memory"
mem_mb=$(( detected_mb < 4000 ? detected_mb : 4000 ))
conf=$(mktemp)
# Facts behind these lines (each cost time to find):
#  - no accounting storage: `sacct` fails, so the profile polls with squeue;
#  - MinJobAge above the executor plugin's longest polling interval (180 s), or finished
#    jobs vanish from squeue before the plugin sees them end;
#  - DefMemPerCPU: without it a job that asks no memory gets the whole node;
#  - linuxproc/none: cgroups inside a container are not usable;
#  - NodeName must be `hostname -s`; everything on 127.0.0.1.
cat >"$conf" <<CONF
# written by scripts/slurm/start-local-slurm.sh
ClusterName=qvpo-local
SlurmctldHost=${node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
ReturnToService=2
MinJobAge=600
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
NodeName=$node NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
if ! cmp -s "$conf" "$CONF"; then
  if running "$DIR/run/slurmctld.pid" || running "$DIR/run/slurmd.pid"; then
    say "slurm.conf changed: restarting the slurm daemons"
    "$(dirname "$0")/stop-local-slurm.sh" --keep-munge
  fi
  install -m 0644 "$conf" "$CONF"
fi
rm -f "$conf"

[ -s /etc/munge/munge.key ] || { mkdir -p /etc/munge; dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; }
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge
chmod 0700 /etc/munge; chmod 0400 /etc/munge/munge.key
munge_works() { munge -n | unmunge; }
if ! munge_works >/dev/null 2>&1; then
  say "starting munged"
  runuser -u munge -- /usr/sbin/munged || fail "munged did not start"
  touch "$DIR/run/munged.ours"   # so stop-local-slurm.sh stops only a munged we started
  retry 20 munge_works || fail "munge credentials do not round-trip"
fi

running "$DIR/run/slurmctld.pid" || { say "starting slurmctld"; slurmctld || fail "slurmctld did not start"; }
retry 40 bash -c 'scontrol ping | grep -q UP' || fail "slurmctld does not answer 'scontrol ping'"
running "$DIR/run/slurmd.pid" || { say "starting slurmd"; slurmd -N "$node" || fail "slurmd did not start"; }

state=
for _ in $(seq 60); do
  state=$(sinfo -h -n "$node" -o %T | head -n1)
  case $state in
    idle|mixed|allocated|completing) break ;;
    down*|drain*|fail*) scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1 || true ;;
  esac
  sleep 0.5
done
case $state in idle|mixed|allocated|completing) ;; *) fail "node $node is '$state', not idle" ;; esac

out=$(timeout 60 srun -N1 -n1 -t 1 hostname 2>&1) || fail "srun hostname failed: $out"
say "ready: node $node ($CPUS CPUs, $mem_mb MB), srun ran on $out; logs in $DIR/log"
