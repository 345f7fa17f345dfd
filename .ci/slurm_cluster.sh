#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine (Debian's slurm-wlm + munge), for the SLURM requeue test
# (tests/test_slurm_cluster.py). Run as root; CI runs it from .ci/run before `make test`.
#
#   .ci/slurm_cluster.sh start    install the packages if missing, write slurm.conf for this host, start
#                                 munged, slurmctld and slurmd, wait until `sinfo` shows the node idle
#                                 (a no-op, in well under a second, when the cluster is already up)
#   .ci/slurm_cluster.sh stop     stop the three daemons (by the pids in their pid files)
#   .ci/slurm_cluster.sh status   print the node state; exit 1 when the cluster is not up
set -euo pipefail

CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
STATE=/var/lib/slurm-lsr
LOGS=/var/log/slurm-lsr
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
MUNGE_PID=/run/munge/munged.pid
WAIT_S=${SLURM_CLUSTER_WAIT_S:-60}

die() { echo "error: $*" >&2; exit 2; }
log() { echo "slurm_cluster: $*" >&2; }

node_state() { timeout 5 sinfo -h -N -o %T 2>/dev/null | head -n1; }

install_packages() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
    && command -v munged >/dev/null && return 0
  [ "$(id -u)" = 0 ] || die "slurm-wlm and munge are not installed; run this script as root to install them"
  log "installing slurmctld slurmd slurm-client munge (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
}

# This host's hardware as slurmd sees it ("NodeName=<host> CPUs=... RealMemory=..."), so the node never
# drains for a configuration that differs from the hardware.
node_line() {
  slurmd -C | head -n1 | sed -E 's/^NodeName=[^ ]+/NodeName='"$(hostname)"' NodeAddr=127.0.0.1/'
}

write_conf() {
  mkdir -p "$CONF_DIR" "$STATE/ctld" "$STATE/d" "$LOGS"
  local wanted
  wanted=$(cat <<EOF
# Written by .ci/slurm_cluster.sh: a single-node cluster for the SLURM requeue test.
ClusterName=lsr
SlurmctldHost=$(hostname)(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobRequeue=1
ReturnToService=2
# SLURM's default is 30 s; a requeued DDP job waits it out before SIGKILL (docs/scale.md)
KillWait=10
MinJobAge=600
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
$(node_line) State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
)
  if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$wanted" ]; then
    printf '%s\n' "$wanted" > "$CONF"
    return 0  # changed: running daemons must restart
  fi
  return 1
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_daemon() {
  local pidfile=$1 pid
  alive "$pidfile" || return 0
  pid=$(cat "$pidfile")
  kill "$pid"
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}

start_munge() {
  alive "$MUNGE_PID" && return 0
  [ -s /etc/munge/munge.key ] || { mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
    || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; }
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  chmod 755 /run/munge
  runuser -u munge -- munged --force
}

wait_idle() {
  local state
  for _ in $(seq $((WAIT_S * 2))); do
    state=$(node_state || true)
    case "$state" in
      idle|mixed|allocated) log "node $(hostname) is $state"; return 0 ;;
      down*|drain*) scontrol update nodename="$(hostname)" state=resume 2>/dev/null || true ;;
    esac
    sleep 0.5
  done
  die "the SLURM node did not become idle within ${WAIT_S}s (state: '${state:-none}'; logs in $LOGS)"
}

start() {
  install_packages
  local changed=0
  write_conf && changed=1
  if [ $changed = 0 ] && alive "$CTLD_PID" && alive "$SLURMD_PID" && alive "$MUNGE_PID"; then
    case "$(node_state || true)" in idle|mixed|allocated) return 0 ;; esac
  fi
  [ $changed = 1 ] && { stop_daemon "$SLURMD_PID"; stop_daemon "$CTLD_PID"; }
  start_munge
  alive "$CTLD_PID" || slurmctld
  alive "$SLURMD_PID" || slurmd
  wait_idle
}

stop() {
  stop_daemon "$SLURMD_PID"
  stop_daemon "$CTLD_PID"
  stop_daemon "$MUNGE_PID"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) state=$(node_state || true); echo "${state:-down}"; [ -n "$state" ] ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
