#!/usr/bin/env bash
# Brings up a single-node SLURM cluster on this machine (Debian's slurm-wlm + munge), for CI and
# for trying the SLURM path locally. Needs root. Idempotent: re-running installs nothing twice,
# keeps a running munged/slurmctld/slurmd and waits until the node is idle.
#
#   sudo launch/slurm/local_cluster.sh          # then: sinfo; sbatch ...; squeue
#
# The steps are the ones checked on the project's CI machine (docs/launch.md, "SLURM in CI"):
# no cgroups, no systemd: proctrack/linuxproc, task/none, cons_tres with CR_CPU.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
  echo "local_cluster.sh: must run as root" >&2
  exit 1
fi

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq slurm-wlm munge >/dev/null
fi

CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 3 / 4 ))
HOST=localhost

# munge: the key is created by the package; munged refuses to run as root.
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
fi
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.2; done
fi

mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
chown slurm:slurm /var/spool/slurmctld /var/log/slurm
CONF=/etc/slurm/slurm.conf
NEW=$(mktemp)
cat > "$NEW" <<CONF
# Written by avemo launch/slurm/local_cluster.sh: one node, no cgroups, no systemd.
ClusterName=local
SlurmctldHost=${HOST}
SlurmUser=slurm
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ReturnToService=2
MpiDefault=none
KillWait=30
SchedulerParameters=batch_sched_delay=0
NodeName=${HOST} CPUs=${CPUS} RealMemory=${MEM_MB} State=UNKNOWN
PartitionName=debug Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
running() {  # the daemon whose pid file is $1 is alive
  [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}
if ! cmp -s "$NEW" "$CONF"; then
  mv "$NEW" "$CONF"
  chmod 644 "$CONF"
  # A changed configuration: restart the daemons this script started before (by their pid).
  for pidfile in /run/slurmd.pid /run/slurmctld.pid; do
    if running "$pidfile"; then kill "$(cat "$pidfile")"; sleep 1; fi
  done
else
  rm -f "$NEW"
fi

running /run/slurmctld.pid || /usr/sbin/slurmctld
for _ in $(seq 50); do scontrol ping >/dev/null 2>&1 && break; sleep 0.2; done
running /run/slurmd.pid || /usr/sbin/slurmd

for _ in $(seq 60); do
  state=$(sinfo -h -N -o %t 2>/dev/null | head -n1)
  case "$state" in
    idle|mix|alloc) echo "local_cluster.sh: node ${HOST} is ${state}"; exit 0 ;;
    down*|drain*) scontrol update NodeName=${HOST} State=RESUME >/dev/null 2>&1 || true ;;
  esac
  sleep 1
done
echo "local_cluster.sh: the node did not become idle; see /var/log/slurm/" >&2
sinfo >&2 || true
exit 1
