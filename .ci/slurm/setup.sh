#!/usr/bin/env bash
# Install and start a single-node SLURM cluster on localhost, with accounting, for the
# integration tests (tests/slurm/).
#
# Debian's slurm-wlm + munge, and slurmdbd backed by MariaDB: submitit reads job states
# through `sacct`, and without accounting the result of a cancelled job never resolves.
# Container images ship an apt policy-rc.d that forbids starting services, and there is no
# init system, so every daemon is started directly here.
#
# Idempotent: on a machine where the cluster already answers with an idle node, it only
# checks and leaves. Run as root:  bash .ci/slurm/setup.sh
set -euo pipefail

CLUSTER=${SLURM_CI_CLUSTER:-benchcluster}
ACCOUNT=${SLURM_CI_ACCOUNT:-benchmark}
PARTITION=${SLURM_CI_PARTITION:-debug}
DB_PASS=${SLURM_CI_DB_PASS:-slurmdbpass}
MAX_ARRAY=${SLURM_CI_MAX_ARRAY_SIZE:-4}
ETC=/etc/slurm
LOG=/var/log/slurm
STATE=/var/lib/slurm
RUN=/run/slurm

say() { echo "[slurm-setup] $*"; }
die() { echo "[slurm-setup] error: $*" >&2; exit 1; }

# Poll COMMAND until it succeeds, for at most SECONDS; fail with WHAT (and a log) otherwise.
wait_for() {
  local seconds=$1 what=$2 logfile=$3; shift 3
  local t=0
  until "$@" >/dev/null 2>&1; do
    if (( t >= seconds * 2 )); then
      [[ -n $logfile && -f $logfile ]] && tail -n 20 "$logfile" >&2
      die "$what did not come up within ${seconds}s"
    fi
    sleep 0.5; t=$((t + 1))
  done
}

node_idle() { [[ $(sinfo -h -n localhost -o %t 2>/dev/null) =~ ^(idle|mix|alloc) ]]; }
accounting_ok() { sacctmgr -n -P show account "$ACCOUNT" 2>/dev/null | grep -q "^$ACCOUNT|"; }

[[ $(id -u) -eq 0 ]] || die "run as root (it installs packages and starts system daemons)"

# ---------------------------------------------------------------------------------------
# 1. Packages (only when something is missing; apt-get update first, never interactive).
PKGS=(slurm-wlm slurmdbd munge mariadb-server mariadb-client)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if (( ${#missing[@]} )); then
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

# ---------------------------------------------------------------------------------------
# 2. Configuration. The node is this machine, named localhost; its CPUs and memory come from
# `slurmd -C` so the controller never marks it invalid for claiming more than exists.
CPUS=$(nproc)
MEM=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
[[ -n $MEM ]] || die "could not read RealMemory from 'slurmd -C'"

mkdir -p "$ETC" "$LOG" "$STATE/slurmctld" "$STATE/slurmd" "$RUN" /run/munge /var/log/munge /run/mysqld
chown slurm:slurm "$LOG" "$STATE/slurmctld" "$RUN"
chown munge:munge /run/munge /var/log/munge
chown mysql:mysql /run/mysqld

# Write a file only when its content changes; print "changed" then, so callers can reload.
install_conf() {
  local dest=$1 owner=$2 mode=$3 tmp
  tmp=$(mktemp)
  cat >"$tmp"
  if [[ -f $dest ]] && cmp -s "$tmp" "$dest"; then
    rm -f "$tmp"; return 1
  fi
  install -o "$owner" -g "$owner" -m "$mode" "$tmp" "$dest"
  rm -f "$tmp"
}

slurm_conf_changed=0
install_conf "$ETC/slurm.conf" root 644 <<EOF && slurm_conf_changed=1
# Single-node cluster on localhost for CI (written by .ci/slurm/setup.sh).
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups in a container: track processes through /proc, no task affinity plugin.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# A node that restarts (setup run again) comes back on its own instead of staying DOWN.
ReturnToService=2
# Time limits and signals should act within seconds in tests.
KillWait=5
OverTimeLimit=0
InactiveLimit=0
MinJobAge=300
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,sched_min_interval=100000,bf_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# Small on purpose (default 1001): the tests submit a grid one cell larger than this and
# expect the cluster's limit to refuse it before anything is queued.
MaxArraySize=$MAX_ARRAY
# Jobs may be requeued by submitit after the pre-timeout signal. A requeued job waits
# cred_expire seconds before it may start again (120 by default); 10 keeps tests short.
JobRequeue=1
AuthInfo=cred_expire=10
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageEnforce=associations,limits,qos
JobCompType=jobcomp/none
MpiDefault=none
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF

install_conf "$ETC/cgroup.conf" root 644 <<EOF || true
# Not used (proctrack/linuxproc, task/none); present so no plugin probes the host's cgroups.
CgroupPlugin=autodetect
IgnoreSystemd=yes
EOF

dbd_conf_changed=0
install_conf "$ETC/slurmdbd.conf" slurm 600 <<EOF && dbd_conf_changed=1
# Accounting daemon for the CI cluster (written by .ci/slurm/setup.sh).
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF

# Fast path: everything already runs with this configuration.
if (( ! slurm_conf_changed && ! dbd_conf_changed )) && node_idle && accounting_ok; then
  say "cluster '$CLUSTER' already up: $(sinfo -h -o '%P %D %t' | head -n 1)"
  exit 0
fi

# ---------------------------------------------------------------------------------------
# 3. Daemons, in dependency order: munge -> MariaDB -> slurmdbd -> slurmctld -> slurmd.
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  say "starting munged"
  [[ -s /etc/munge/munge.key ]] || { runuser -u munge -- mungekey --create 2>/dev/null || \
      (dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none && \
       chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key); }
  # --force: start even over a stale socket lock left by a munged that died with its container
  runuser -u munge -- /usr/sbin/munged --force
  wait_for 20 munged /var/log/munge/munged.log bash -c 'munge -n | unmunge'
fi

if ! mariadb-admin ping >/dev/null 2>&1; then
  say "starting MariaDB"
  [[ -d /var/lib/mysql/mysql ]] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
  setsid -f /usr/sbin/mariadbd --user=mysql --datadir=/var/lib/mysql \
    --socket=/run/mysqld/mysqld.sock --bind-address=127.0.0.1 \
    --innodb-lock-wait-timeout=900 --log-error=/var/log/mysql-ci.err </dev/null >/dev/null 2>&1
  wait_for 60 MariaDB /var/log/mysql-ci.err mariadb-admin ping
fi
mariadb -u root <<EOF
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
EOF

pid_alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Stop one of the daemons this script started (by its pid file), waiting until it is gone.
stop_daemon() {
  local pidfile=$RUN/$1.pid
  pid_alive "$pidfile" || return 0
  say "restarting $1 (configuration changed)"
  kill "$(cat "$pidfile")"
  for _ in $(seq 80); do pid_alive "$pidfile" || return 0; sleep 0.25; done
  die "$1 (pid $(cat "$pidfile")) did not stop"
}

(( dbd_conf_changed )) && stop_daemon slurmdbd
if ! pid_alive "$RUN/slurmdbd.pid"; then
  say "starting slurmdbd"
  /usr/sbin/slurmdbd
fi
wait_for 60 slurmdbd "$LOG/slurmdbd.log" sacctmgr -n show cluster

# The cluster must exist in the database before slurmctld registers with it.
sacctmgr -n -P show cluster format=cluster | grep -qx "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >/dev/null

# Some settings (AccountingStorageEnforce among them) take effect only at start, so a changed
# slurm.conf restarts both daemons; queued jobs survive in the controller's state files.
if (( slurm_conf_changed )); then
  stop_daemon slurmd
  stop_daemon slurmctld
fi
if ! pid_alive "$RUN/slurmctld.pid"; then
  say "starting slurmctld"
  /usr/sbin/slurmctld
fi
wait_for 60 slurmctld "$LOG/slurmctld.log" scontrol ping

if ! pid_alive "$RUN/slurmd.pid"; then
  say "starting slurmd"
  /usr/sbin/slurmd -N localhost
fi

# Accounts: root's jobs run under $ACCOUNT (associations and QOS are enforced, so an unknown
# account or QOS is refused at submission, as on a production cluster).
accounting_ok || sacctmgr -i add account "$ACCOUNT" cluster="$CLUSTER" description=ci organization=ci >/dev/null
sacctmgr -n -P show assoc where user=root account="$ACCOUNT" format=user | grep -qx root || \
  sacctmgr -i add user root account="$ACCOUNT" cluster="$CLUSTER" >/dev/null
sacctmgr -i modify user root set defaultaccount="$ACCOUNT" >/dev/null 2>&1 || true

# A node left DOWN/DRAIN by an earlier run of this script is brought back.
state=$(sinfo -h -n localhost -o %t 2>/dev/null || true)
if [[ $state =~ ^(down|drain|drng|fail) ]]; then
  scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true
fi
wait_for 60 "node localhost (idle)" "$LOG/slurmd.log" node_idle
say "cluster '$CLUSTER' up: partition $PARTITION, $CPUS CPUs, ${MEM} MB, account $ACCOUNT"
