#!/usr/bin/env bash
# slurm/start-local-slurm.sh - a real one-node SLURM on this Debian machine, for tests and CI.
#
#   sudo slurm/start-local-slurm.sh         # ~15 s the first time (apt), ~3 s when installed
#   slurm/stop-local-slurm.sh               # stops what this script started
#
# Installs Debian's SLURM 22.05 (munge, slurmctld, slurmd, slurm-client) and, for accounting,
# slurmdbd + MariaDB; writes a one-node config (partition $PARTITION); starts the daemons without
# systemd (containers have none) and waits until the node is idle. Idempotent: a daemon that is
# already up is reused; a config it wrote itself is rewritten only when it changes.
#
# Why each setting (each one a pitfall met on a real run):
#   - accounting (slurmdbd + MariaDB): submitit learns that a job died without a result (killed,
#     cancelled, node failure) only through `sacct`; without it `job.result()` waits forever.
#   - AuthInfo=cred_expire=$CRED_EXPIRE: a requeued job may start again only after the credential
#     of its last run expired: 120 s by default, 10 s here (the requeue test waits for it).
#   - SchedulerParameters sched_interval=1,bf_interval=1: eligible jobs (dependency just met) start
#     within a second instead of idling ~17 s.
#   - DefMemPerCPU: with CR_Core_Memory a job that asks for no memory is given the whole node and
#     every other job waits.
#   - no cgroups (proctrack/linuxproc, task/none): works in unprivileged containers; memory
#     limits are therefore not enforced.
#   - MariaDB without native AIO (container seccomp profiles often block io_uring/libaio).
#
# Exit codes: 0 ready; 77 cannot run here (not root, or apt cannot install the packages):
# callers such as .ci/run treat 77 as "no SLURM, its tests skip"; anything else is a failure.
#
# Environment: WITH_ACCOUNTING=1|0  PARTITION=debug  NODE_CPUS=<all>  NODE_MEM_MB=<95% of RAM>
#              CRED_EXPIRE=10  READY_TIMEOUT=60
set -euo pipefail

WITH_ACCOUNTING=${WITH_ACCOUNTING:-1}
PARTITION=${PARTITION:-debug}
CRED_EXPIRE=${CRED_EXPIRE:-10}
READY_TIMEOUT=${READY_TIMEOUT:-60}
STATE=/run/lsa-local-slurm            # <daemon>.pid of each daemon THIS script started
LOGDIR=/var/log/slurm
SLURM_CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf
TAG="# written by lsa-bench slurm/start-local-slurm.sh"
DB_PASS=${DB_PASS:-lsa-local-slurm}

say() { echo "[start-local-slurm] $*" >&2; }
fail() { say "ERROR: $*"; exit 1; }
cannot() { say "SKIP: $*"; exit 77; }

[ "$(id -u)" = 0 ] || cannot "must run as root (it installs packages and starts daemons)"
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH

# retry <seconds> <what> <command...>: poll until the command succeeds
retry() {
  local limit=$1 what=$2; shift 2
  local until=$((SECONDS + limit))
  while ! "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $until ]; then say "gave up after ${limit}s waiting for $what"; return 1; fi
    sleep 0.5
  done
}

# A daemon counts as ours when $STATE/<name>.pid names a live process whose comm is <name>.
is_ours() {
  local f=$STATE/$1.pid
  [ -f "$f" ] && [ "$(cat "/proc/$(cat "$f")/comm" 2>/dev/null)" = "$1" ] && return 0
  rm -f "$f"; return 1
}
pidfile_alive() { [ -f "$1" ] && [ "$(cat "/proc/$(cat "$1" 2>/dev/null)/comm" 2>/dev/null)" = "$2" ]; }
remember() { mkdir -p "$STATE"; echo "$2" > "$STATE/$1.pid"; say "started $1 (pid $2)"; }

# ------------------------------------------------------------------------------ packages
install_packages() {
  local pkgs=(munge slurmctld slurmd slurm-client) bins=(munged slurmctld slurmd sbatch sacct)
  if [ "$WITH_ACCOUNTING" = 1 ]; then pkgs+=(slurmdbd mariadb-server); bins+=(slurmdbd mariadbd); fi
  local b need=0
  for b in "${bins[@]}"; do command -v "$b" >/dev/null 2>&1 || need=1; done
  [ $need = 1 ] || return 0
  command -v apt-get >/dev/null || cannot "apt-get not found (this script targets Debian 12)"
  say "installing ${pkgs[*]} (apt-get)"
  # policy-rc.d = 101 stops the packages' maintainer scripts from starting daemons themselves
  local policy_added=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; policy_added=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  local ok=1
  apt-get update -qq >/dev/null 2>&1 || say "apt-get update failed; trying the package lists already here"
  apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null || ok=0
  [ $policy_added = 1 ] && rm -f /usr/sbin/policy-rc.d
  [ $ok = 1 ] || cannot "apt-get could not install ${pkgs[*]} (no network or no Debian mirror?)"
}

# ------------------------------------------------------------------------------ files
# put_file <path> <mode>: content from stdin; returns 0 when the file changed. A file we did not
# write ourselves is kept as <path>.orig-<time> before it is replaced.
put_file() {
  local tmp; tmp=$(mktemp)
  cat > "$tmp"
  if [ -f "$1" ] && cmp -s "$tmp" "$1"; then rm -f "$tmp"; return 1; fi
  if [ -f "$1" ] && ! grep -qF "$TAG" "$1"; then cp -a "$1" "$1.orig-$(date +%s)"; say "kept the old $1 as $1.orig-*"; fi
  install -D -m "$2" "$tmp" "$1"; rm -f "$tmp"; return 0
}

# ------------------------------------------------------------------------------ munge
start_munge() {
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0711 /var/lib/munge
  install -d -o munge -g munge -m 0700 /var/log/munge /etc/munge
  [ -s /etc/munge/munge.key ] || { say "creating /etc/munge/munge.key"; mungekey --create --keyfile=/etc/munge/munge.key; }
  chown munge:munge /etc/munge/munge.key; chmod 0600 /etc/munge/munge.key
  munge_works() { munge -n | unmunge; }
  if is_ours munged; then return; fi
  if munge_works >/dev/null 2>&1; then say "munged is already running (not started here): using it"; return; fi
  rm -f /run/munge/munged.pid
  setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged   # forks into the background
  retry 20 munged munge_works || fail "munged did not start; see /var/log/munge/munged.log"
  remember munged "$(cat /run/munge/munged.pid)"
}

# ------------------------------------------------------------------------------ accounting
start_accounting() {
  put_file /etc/mysql/mariadb.conf.d/90-lsa-local-slurm.cnf 0644 <<EOF || true
$TAG
[mysqld]
bind-address=127.0.0.1
skip-name-resolve
innodb_buffer_pool_size=128M
innodb_log_file_size=64M
innodb_lock_wait_timeout=900
innodb_use_native_aio=0
EOF
  install -d -o mysql -g root /run/mysqld
  db_works() { mariadb-admin --connect-timeout=2 ping; }
  if is_ours mariadbd; then :
  elif db_works >/dev/null 2>&1; then say "MariaDB is already running (not started here): using it"
  else
    [ -d /var/lib/mysql/mysql ] || { say "creating the MariaDB data folder"; mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null; }
    rm -f /run/mysqld/mysqld.pid
    install -D -o mysql -m 0640 /dev/null "$LOGDIR/mariadb.err"
    setsid /usr/sbin/mariadbd --user=mysql --pid-file=/run/mysqld/mysqld.pid --log-error="$LOGDIR/mariadb.err" \
      </dev/null >/dev/null 2>&1 &
    retry 60 MariaDB db_works || fail "MariaDB did not start; see $LOGDIR/mariadb.err"
    remember mariadbd "$(cat /run/mysqld/mysqld.pid)"
  fi
  mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
              ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
              GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  put_file "$DBD_CONF" 0600 <<EOF || true
$TAG
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
PidFile=/run/slurmdbd.pid
LogFile=$LOGDIR/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
  dbd_works() { sacctmgr -n -P list cluster; }
  if is_ours slurmdbd; then return; fi
  if pidfile_alive /run/slurmdbd.pid slurmdbd; then say "slurmdbd is already running (not started here)"; return; fi
  /usr/sbin/slurmdbd
  retry 60 slurmdbd dbd_works || fail "slurmdbd did not start; see $LOGDIR/slurmdbd.log"
  remember slurmdbd "$(cat /run/slurmdbd.pid)"
}

# ------------------------------------------------------------------------------ slurm.conf
write_slurm_conf() {   # returns 0 when slurm.conf changed
  local node=$1 cpus=$2 mem=$3 acct
  if [ "$WITH_ACCOUNTING" = 1 ]; then
    acct=$'AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=localhost\nAccountingStoragePort=6819'
  else
    acct="AccountingStorageType=accounting_storage/none"
  fi
  put_file "$SLURM_CONF" 0644 <<EOF
$TAG
ClusterName=lsalocal
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=$CRED_EXPIRE
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
$acct
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$((mem / cpus))
SlurmdParameters=config_overrides
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=300
Waittime=0
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

# stop_ours <name>: SIGTERM a daemon this script started, wait until it is gone
stop_ours() {
  local pid; pid=$(cat "$STATE/$1.pid")
  say "slurm.conf changed: restarting $1 (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  local i; for i in $(seq 1 60); do [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = "$1" ] || break; sleep 0.5; done
  rm -f "$STATE/$1.pid"
}

start_slurm() {
  local changed=$1
  if [ "$changed" = 1 ]; then   # e.g. WITH_ACCOUNTING toggled: restart what we run
    if is_ours slurmd; then stop_ours slurmd; fi
    if is_ours slurmctld; then stop_ours slurmctld; fi
  fi
  ctld_works() { scontrol ping | grep -q 'is UP'; }
  if is_ours slurmctld; then :
  elif pidfile_alive /run/slurmctld.pid slurmctld; then say "slurmctld is already running (not started here)"
  else
    /usr/sbin/slurmctld
    retry 60 slurmctld ctld_works || fail "slurmctld did not start; see $LOGDIR/slurmctld.log"
    remember slurmctld "$(cat /run/slurmctld.pid)"
  fi
  if is_ours slurmd; then :
  elif pidfile_alive /run/slurmd.pid slurmd; then say "slurmd is already running (not started here)"
  else
    /usr/sbin/slurmd
    retry 30 slurmd pidfile_alive /run/slurmd.pid slurmd || fail "slurmd did not start; see $LOGDIR/slurmd.log"
    remember slurmd "$(cat /run/slurmd.pid)"
  fi
}

wait_idle() {
  local node=$1 state until=$((SECONDS + READY_TIMEOUT))
  while :; do
    state=$(sinfo -h -n "$node" -o %T 2>/dev/null | head -1)
    case "$state" in
      idle|mixed|allocated|completing) return 0 ;;
      down*|drain*) say "node $node is $state: resuming it"; scontrol update NodeName="$node" State=RESUME || true ;;
    esac
    [ $SECONDS -lt $until ] || fail "node $node is not idle after ${READY_TIMEOUT}s (state '$state'); see $LOGDIR/slurmd.log"
    sleep 0.5
  done
}

# ------------------------------------------------------------------------------ main
install_packages
NODE=$(hostname -s)
[ -n "$NODE" ] || fail "the host has no name (hostname -s is empty)"
getent hosts "$NODE" >/dev/null || { say "adding $NODE to /etc/hosts"; echo "127.0.0.1 $NODE" >> /etc/hosts; }
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd "$LOGDIR"

start_munge
DETECTED=$(slurmd -C | head -1)           # NodeName=... CPUs=2 ... RealMemory=24105
CPUS=${NODE_CPUS:-$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$DETECTED")}
MEM=${NODE_MEM_MB:-$(( $(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$DETECTED") * 95 / 100 ))}
CONF_CHANGED=0
write_slurm_conf "$NODE" "$CPUS" "$MEM" && CONF_CHANGED=1
[ "$WITH_ACCOUNTING" = 1 ] && start_accounting
start_slurm $CONF_CHANGED
wait_idle "$NODE"
say "ready: node $NODE, $CPUS CPUs, $MEM MB, partition $PARTITION, accounting $([ "$WITH_ACCOUNTING" = 1 ] && echo on || echo off)"
sinfo
