#!/usr/bin/env bash
# A real Slurm cluster on one machine, for testing cxrdist's Slurm paths (submitit, srun+torchrun, requeue).
#
#   bash tests/slurm/local-cluster.sh up     [--nodes N] [--state-dir DIR]
#   bash tests/slurm/local-cluster.sh status [--state-dir DIR]
#   bash tests/slurm/local-cluster.sh down   [--state-dir DIR] [--drain-timeout S]
#
# What runs (no systemd; every daemon is started and stopped by this script through its pid file):
#   munged (private key + socket) -> mariadbd -> slurmdbd -> slurmctld -> N x "slurmd -N nX".
# The N slurmd are Slurm's "multiple slurmd" mode: emulated nodes n1..nN on this host, each on its own port.
# All state (configs, spool, logs, pid files, MariaDB data dir and socket, munge key and socket) lives
# under one directory, default ${CXRDIST_SLURM_DIR:-/tmp/cxrdist-slurm}, so several clusters (e.g. a dev
# one and a test one) can coexist if they use different CXRDIST_SLURM_PORT_BASE values.
#
# Facts this relies on were measured on Debian 12 / Slurm 22.05 (slurm/README.md lists them and the limits).
#
# Environment knobs (all optional):
#   CXRDIST_SLURM_DIR            default state dir (--state-dir wins)
#   CXRDIST_SLURM_PORT_BASE      first of a block of ~100 TCP ports (default 16800)
#   CXRDIST_SLURM_CPUS_PER_NODE  CPUs each emulated node advertises (default: nproc)
#   CXRDIST_SLURM_UP_TIMEOUT     seconds to wait for daemons/nodes on "up" (default 90)
#   CXRDIST_SLURM_DRAIN_TIMEOUT  seconds "down" lets jobs finish before scancel (default 60)
#   CXRDIST_SLURM_NO_INSTALL=1   never call apt-get; fail if packages are missing
#
# Exit codes: 0 ok, 1 failure, 2 bad usage, 3 ("status" only) cluster not (fully) up.
set -euo pipefail

readonly CLUSTER_NAME=cxrdist
# Debian package names. slurmdbd pulls slurm-wlm-mysql-plugin; listed anyway because it is what sacct needs.
readonly PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd slurm-wlm-mysql-plugin mariadb-server)
# Sockets live under the state dir; AF_UNIX paths are limited to 108 bytes and slurmd puts
# "<spool>/nX/nX_<jobid>.<stepid>" sockets there, so keep the state dir path short.
readonly MAX_STATE_DIR_LEN=70

T_START=$EPOCHREALTIME

log() { printf '[local-cluster %6.1fs] %s\n' "$(elapsed)" "$*"; }
warn() { printf '[local-cluster %6.1fs] WARNING: %s\n' "$(elapsed)" "$*" >&2; }
elapsed() { awk -v a="$T_START" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

usage() {
    cat >&2 <<EOF
usage: $(basename "$0") up|down|status [--nodes N] [--state-dir DIR] [--drain-timeout S]

  up       install Slurm/munge/MariaDB (apt, if missing) and start a cluster of N emulated nodes
           (default 2) in DIR; idempotent. Prints the "export SLURM_CONF=..." line to use.
  down     let running jobs finish (up to S seconds, default 60), scancel the rest, stop every
           daemon and check that none survived.
  status   show daemon pids, sinfo and squeue. Exit 3 if the cluster is not fully up.

  DIR defaults to \${CXRDIST_SLURM_DIR:-/tmp/cxrdist-slurm}. Needs root (slurmd launches jobs as any user).
EOF
}

# ---------------------------------------------------------------------------------------------------------------
# paths and small helpers
# ---------------------------------------------------------------------------------------------------------------

set_paths() {
    ETC=$STATE_DIR/etc
    RUN=$STATE_DIR/run
    LOGDIR=$STATE_DIR/log
    SLURM_CONF_FILE=$ETC/slurm.conf
    DBD_CONF_FILE=$ETC/slurmdbd.conf
    MUNGE_KEY=$ETC/munge.key
    MUNGE_SOCKET=$RUN/munge/munge.socket
    DB_DIR=$STATE_DIR/mysql
    DB_SOCKET=$RUN/mysqld.sock
    ENV_FILE=$STATE_DIR/env.sh
    NODES_FILE=$ETC/nodes
}

set_ports() {
    # One contiguous block so a second cluster only needs a different base.
    PORT_MARIADB=$((PORT_BASE + 6))
    PORT_SLURMCTLD=$((PORT_BASE + 17))
    PORT_SLURMD_DEFAULT=$((PORT_BASE + 18))
    PORT_SLURMDBD=$((PORT_BASE + 19))
    PORT_NODE0=$((PORT_BASE + 20))  # node nI listens on PORT_NODE0 + I
}

# Node names of the cluster in the state dir (written by "up"; "down"/"status" must not guess).
node_names() {
    local n
    n=$(cat "$NODES_FILE" 2>/dev/null || echo 0)
    local i
    for ((i = 1; i <= n; i++)); do echo "n$i"; done
}

pid_file_of() {
    case $1 in
        munged) echo "$RUN/munged.pid" ;;
        mariadbd) echo "$RUN/mariadbd.pid" ;;
        slurmdbd) echo "$RUN/slurmdbd.pid" ;;
        slurmctld) echo "$RUN/slurmctld.pid" ;;
        slurmd-*) echo "$RUN/$1.pid" ;;
        *) return 1 ;;
    esac
}

# Prints the pid of daemon $1 if its pid file names a live process with the expected command name.
# Checking the name guards against stale pid files whose pid was reused (e.g. after a reboot).
daemon_pid() {
    local name=$1 file pid comm
    file=$(pid_file_of "$name")
    [[ -s $file ]] || return 1
    pid=$(tr -dc '0-9' <"$file")
    [[ -n $pid ]] || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    [[ $comm == "${name%%-*}" ]] || return 1
    ! is_zombie "$pid" || return 1
    echo "$pid"
}

daemon_names() {
    echo munged mariadbd slurmdbd slurmctld
    local n
    for n in $(node_names); do echo "slurmd-$n"; done
}

# Every process we started carries this variable (and slurmstepd inherits it from slurmd), which lets "down"
# find survivors of *this* cluster without touching other Slurm/MariaDB/munge instances on the machine.
owner_tag() { echo "_CXRDIST_SLURM_OWNER=$STATE_DIR"; }

tagged_pids() {
    local f p
    # One grep over all environ files (-z: NUL-separated entries); unreadable/vanished ones are skipped.
    while read -r f; do
        p=${f#/proc/}
        p=${p%/environ}
        [[ $p == "$$" || $p == "$BASHPID" ]] && continue
        is_zombie "$p" || echo "$p"
    done < <(grep -lzxF -- "$(owner_tag)" /proc/[0-9]*/environ 2>/dev/null || true)
}

describe_pids() {
    local p
    for p in "$@"; do
        printf '  pid %s: %s\n' "$p" "$(tr '\0' ' ' 2>/dev/null <"/proc/$p/cmdline" || echo '(gone)')"
    done
}

# wait_until TIMEOUT_S CMD...: poll CMD every 0.2 s; status 1 on timeout.
wait_until() {
    local timeout=$1
    shift
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

show_log_tails() {
    local f
    for f in "$LOGDIR"/*.log; do
        [[ -s $f ]] || continue
        echo "----- tail of $f -----" >&2
        tail -n 15 "$f" >&2
    done
}

die() {
    echo "[local-cluster] ERROR: $*" >&2
    [[ -d ${LOGDIR:-/nonexistent} ]] && show_log_tails
    echo "[local-cluster] state dir: $STATE_DIR; clean up with: bash $0 down --state-dir $STATE_DIR" >&2
    exit 1
}

# For usage-level problems, where daemon logs would only bury the message.
fail() {
    echo "[local-cluster] ERROR: $*" >&2
    exit 1
}

require_root() {
    [[ $EUID -eq 0 ]] || { echo "[local-cluster] ERROR: must run as root (apt-get, SlurmUser=root, slurmd)" >&2; exit 1; }
}

# ---------------------------------------------------------------------------------------------------------------
# install
# ---------------------------------------------------------------------------------------------------------------

missing_packages() {
    local p
    for p in "${PACKAGES[@]}"; do
        [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) == "install ok installed" ]] || echo "$p"
    done
}

install_packages() {
    local missing
    if ! command -v dpkg-query >/dev/null; then
        for p in slurmctld slurmd sbatch sacct munged slurmdbd mariadbd; do
            command -v "$p" >/dev/null || die "not a Debian system and '$p' is missing; install Slurm 22.05+, munge and MariaDB yourself"
        done
        return 0
    fi
    mapfile -t missing < <(missing_packages)
    ((${#missing[@]} == 0)) && return 0
    [[ ${CXRDIST_SLURM_NO_INSTALL:-0} == 1 ]] && die "missing packages: ${missing[*]} (CXRDIST_SLURM_NO_INSTALL=1)"
    log "installing: ${missing[*]} (apt-get)"
    # Keep the packages' own init/systemd units from starting system-wide daemons during the install: our
    # daemons use private ports/sockets, and a half-configured system slurmctld/munged only adds confusion.
    local made_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        # Removed again below, or by the trap if we are interrupted during the install.
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    local rc=0
    # DPkg::Lock::Timeout: another apt run on the machine should make us wait, not fail.
    {
        apt-get -o DPkg::Lock::Timeout=300 update -qq &&
            DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
                --no-install-recommends "${PACKAGES[@]}"
    } >"/tmp/cxrdist-slurm-apt.$$.log" 2>&1 || rc=$?
    if ((made_policy)); then
        rm -f /usr/sbin/policy-rc.d
        trap - EXIT
    fi
    if ((rc != 0)); then
        tail -n 30 "/tmp/cxrdist-slurm-apt.$$.log" >&2
        die "apt-get failed (rc=$rc); full log: /tmp/cxrdist-slurm-apt.$$.log"
    fi
    rm -f "/tmp/cxrdist-slurm-apt.$$.log"
    log "packages installed"
}

# ---------------------------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------------------------

write_configs() {
    local nodes=$1 cpus mem_total_mb mem_per_node host i
    cpus=${CXRDIST_SLURM_CPUS_PER_NODE:-$(nproc)}
    # Each emulated node sees the whole host; split ~80% of RAM between them so the numbers stay honest.
    # Memory is not a consumable resource here (CR_Core), so this only bounds what --mem may ask for.
    mem_total_mb=$(awk '/^MemTotal:/ { print int($2 / 1024) }' /proc/meminfo)
    mem_per_node=$((mem_total_mb * 8 / 10 / nodes))
    ((mem_per_node >= 500)) || mem_per_node=500
    # Short hostname: slurmctld refuses to start unless SlurmctldHost names this host. The "(127.0.0.1)"
    # address part means nothing has to resolve it; emulated node names (n1, n2, ...) never resolve.
    host=$(hostname -s)

    mkdir -p "$ETC" "$RUN/munge" "$LOGDIR" "$STATE_DIR/state" "$STATE_DIR/tmp"
    chmod 755 "$STATE_DIR" "$RUN" "$RUN/munge"
    for ((i = 1; i <= nodes; i++)); do mkdir -p "$STATE_DIR/spool/n$i"; done
    echo "$nodes" >"$NODES_FILE"

    cat >"$SLURM_CONF_FILE" <<EOF
# Written by tests/slurm/local-cluster.sh; rewritten on every "up". ${nodes} emulated node(s) on $(hostname).
ClusterName=${CLUSTER_NAME}
SlurmctldHost=${host}(127.0.0.1)
SlurmctldPort=${PORT_SLURMCTLD}
SlurmdPort=${PORT_SLURMD_DEFAULT}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# Private munged socket. cred_expire: a requeued job may only start again cred_expire seconds after it
# was requeued (default 120 s); 10 s makes "scontrol requeue" / submitit checkpoint-requeue quick.
AuthInfo=cred_expire=10,socket=${MUNGE_SOCKET}
StateSaveLocation=${STATE_DIR}/state
SlurmdSpoolDir=${STATE_DIR}/spool/%n
SlurmctldPidFile=${RUN}/slurmctld.pid
SlurmdPidFile=${RUN}/slurmd-%n.pid
SlurmctldLogFile=${LOGDIR}/slurmctld.log
SlurmdLogFile=${LOGDIR}/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
TmpFS=${STATE_DIR}/tmp
# The default proctrack/cgroup fails every step without a cgroup.conf ("cgroup namespace 'freezer' not
# mounted"); linuxproc tracks by parent pid and needs nothing. task/none: the emulated nodes share the
# host's cores, so CPU binding per "node" would only pile tasks onto the same cores.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# cons_tres: several jobs can share a node (by cores), as on a real GPU cluster.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# Trust the node lines below rather than the probed hardware: all nodes share one host.
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
# Schedule every 5 s instead of 30-60 s so requeued/pending jobs start quickly.
SchedulerParameters=bf_interval=5,sched_interval=5
# Batch jobs are requeueable by default (scontrol requeue, node failure, submitit's timeout requeue).
JobRequeue=1
# A node that was down or drained because of us comes back as soon as its slurmd registers.
ReturnToService=2
# Short timers: a dead emulated node is noticed in 30 s; SIGKILL follows SIGTERM after 5 s (submitit
# ignores SIGTERM, so a cancelled submitit job otherwise sits in COMPLETING for the default 30 s).
SlurmdTimeout=30
KillWait=5
InactiveLimit=0
MinJobAge=300
MpiDefault=none
MailProg=/bin/true
# Accounting through slurmdbd: sacct is how submitit learns states (CANCELLED, TIMEOUT, requeued ...);
# without it job.state stays UNKNOWN and waiting on a cancelled job hangs forever.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=${PORT_SLURMDBD}
# Not a password: with auth/munge, this names the munged socket used for slurmdbd connections (sacct,
# sacctmgr, slurmctld). Without it they ignore AuthInfo's socket and try /run/munge/munge.socket.2.
AccountingStoragePass=${MUNGE_SOCKET}
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none
EOF
    local nodelist
    for ((i = 1; i <= nodes; i++)); do
        echo "NodeName=n$i NodeHostname=${host} NodeAddr=127.0.0.1 Port=$((PORT_NODE0 + i)) CPUs=${cpus} Boards=1 SocketsPerBoard=1 CoresPerSocket=${cpus} ThreadsPerCore=1 RealMemory=${mem_per_node} State=UNKNOWN" >>"$SLURM_CONF_FILE"
    done
    nodelist=$( ((nodes == 1)) && echo n1 || echo "n[1-$nodes]")
    echo "PartitionName=debug Nodes=${nodelist} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO" >>"$SLURM_CONF_FILE"

    # The DB password is random per state dir (MariaDB listens on 127.0.0.1 only, but other local users exist).
    local db_pass
    db_pass=$(sed -n 's/^StoragePass=//p' "$DBD_CONF_FILE" 2>/dev/null || true)
    [[ -n $db_pass ]] || db_pass=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
    # slurmdbd reads slurmdbd.conf from dirname($SLURM_CONF) and refuses it unless it is mode 600.
    (
        umask 077
        cat >"$DBD_CONF_FILE" <<EOF
# Written by tests/slurm/local-cluster.sh.
AuthType=auth/munge
AuthInfo=socket=${MUNGE_SOCKET}
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=${PORT_SLURMDBD}
SlurmUser=root
PidFile=${RUN}/slurmdbd.pid
LogFile=${LOGDIR}/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=${PORT_MARIADB}
StorageUser=slurm
StoragePass=${db_pass}
StorageLoc=slurm_acct_db
EOF
    )
    DB_PASS=$db_pass

    cat >"$ENV_FILE" <<EOF
# source this file to use the local cluster in $STATE_DIR
export SLURM_CONF=${SLURM_CONF_FILE}
export CXRDIST_SLURM_DIR=${STATE_DIR}
EOF
}

# ---------------------------------------------------------------------------------------------------------------
# daemons
# ---------------------------------------------------------------------------------------------------------------

check_ports_free() {
    local p label
    for label in "mariadb:$PORT_MARIADB" "slurmctld:$PORT_SLURMCTLD" "slurmdbd:$PORT_SLURMDBD"; do
        p=${label#*:}
        ! port_in_use "$p" || fail "port $p (${label%%:*}) is already in use; is another cluster up? set CXRDIST_SLURM_PORT_BASE"
    done
    local i n
    n=$(cat "$NODES_FILE")
    for ((i = 1; i <= n; i++)); do
        p=$((PORT_NODE0 + i))
        ! port_in_use "$p" || fail "port $p (slurmd n$i) is already in use; set CXRDIST_SLURM_PORT_BASE"
    done
}

start_munged() {
    if [[ ! -s $MUNGE_KEY ]]; then
        # Private key: jobs and daemons of this cluster only trust each other, not a system-wide munged.
        (umask 077 && dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none)
    fi
    chmod 600 "$MUNGE_KEY"
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
    # munged daemonizes itself and writes its pid file. --force: without it munged refuses to start when any
    # directory above the key/socket is group- or world-writable without the sticky bit (e.g. a 775 checkout
    # dir); that check protects a site-wide key, not this throwaway one.
    munged --force --socket="$MUNGE_SOCKET" --key-file="$MUNGE_KEY" --pid-file="$RUN/munged.pid" \
        --log-file="$LOGDIR/munged.log" --seed-file="$STATE_DIR/munged.seed" </dev/null >>"$LOGDIR/munged.out" 2>&1 ||
        die "munged failed to start"
    wait_until 20 munge_roundtrip || die "munged does not answer on $MUNGE_SOCKET"
    log "munged up (pid $(daemon_pid munged))"
}

munge_roundtrip() { munge -S "$MUNGE_SOCKET" -n </dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null; }

mariadb_sql() { mariadb --no-defaults -S "$DB_SOCKET" -uroot -e "$1"; }

start_mariadb() {
    local first=0
    if [[ ! -d $DB_DIR/mysql ]]; then
        first=1
        mkdir -p "$DB_DIR"
        # --user=root keeps every file root-owned, so any state dir works (a mysql-owned data dir under
        # e.g. /root would not even be reachable by the mysql user). Root logs in over the socket only.
        mariadb-install-db --no-defaults --user=root --datadir="$DB_DIR" --auth-root-authentication-method=socket \
            --skip-test-db >"$LOGDIR/mariadb-install.log" 2>&1 || die "mariadb-install-db failed (see $LOGDIR/mariadb-install.log)"
    fi
    # mariadbd does not daemonize: setsid + redirections detach it from this script (and from any caller
    # that captures our stdout, e.g. pytest's subprocess.run, which would otherwise block until it exits).
    setsid mariadbd --no-defaults --user=root --datadir="$DB_DIR" --socket="$DB_SOCKET" \
        --pid-file="$RUN/mariadbd.pid" --bind-address=127.0.0.1 --port="$PORT_MARIADB" \
        --log-error="$LOGDIR/mariadb.log" --tmpdir="$STATE_DIR/tmp" --skip-name-resolve \
        --innodb-buffer-pool-size=64M --innodb-lock-wait-timeout=900 \
        </dev/null >>"$LOGDIR/mariadb.out" 2>&1 &
    wait_until "$UP_TIMEOUT" mariadb_sql "SELECT 1" || die "MariaDB did not come up"
    # Idempotent: ALTER keeps the password in sync with slurmdbd.conf when the data dir is reused.
    mariadb_sql "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '${DB_PASS}';
                 ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '${DB_PASS}';
                 GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;" ||
        die "could not create the MariaDB user for slurmdbd"
    log "mariadb up (pid $(daemon_pid mariadbd))$( ((first)) && echo ', new data dir')"
}

start_slurmdbd() {
    slurmdbd </dev/null >>"$LOGDIR/slurmdbd.out" 2>&1 || die "slurmdbd failed to start"
    wait_until "$UP_TIMEOUT" sacctmgr -n -P show cluster || die "slurmdbd does not answer (sacctmgr show cluster)"
    # Register the cluster before slurmctld starts so its first registration finds it, then an account and
    # root's association in it. Each step checks first because "sacctmgr add" of an existing entity fails.
    if [[ -z $(sacctmgr -n -P show cluster where name="$CLUSTER_NAME" format=cluster) ]]; then
        sacctmgr -i add cluster "$CLUSTER_NAME" >/dev/null || die "sacctmgr add cluster failed"
    fi
    if [[ -z $(sacctmgr -n -P show account where name="$CLUSTER_NAME" format=account) ]]; then
        sacctmgr -i add account "$CLUSTER_NAME" Cluster="$CLUSTER_NAME" Description="cxrdist local" \
            Organization=cxrdist >/dev/null || die "sacctmgr add account failed"
    fi
    if [[ -z $(sacctmgr -n -P show assoc where user=root account="$CLUSTER_NAME" cluster="$CLUSTER_NAME" format=user) ]]; then
        sacctmgr -i add user root Account="$CLUSTER_NAME" Cluster="$CLUSTER_NAME" >/dev/null || die "sacctmgr add user failed"
    fi
    log "slurmdbd up (pid $(daemon_pid slurmdbd)), cluster '$CLUSTER_NAME' registered"
}

slurmctld_up() { scontrol ping | grep -q 'is UP'; }

start_slurmctld() {
    slurmctld -f "$SLURM_CONF_FILE" </dev/null >>"$LOGDIR/slurmctld.out" 2>&1 || die "slurmctld failed to start"
    wait_until "$UP_TIMEOUT" slurmctld_up || die "slurmctld does not answer (scontrol ping)"
    log "slurmctld up (pid $(daemon_pid slurmctld))"
}

start_slurmds() {
    local n
    for n in $(node_names); do
        slurmd -f "$SLURM_CONF_FILE" -N "$n" </dev/null >>"$LOGDIR/slurmd-$n.out" 2>&1 || die "slurmd -N $n failed to start"
    done
}

# Node states as "name state" lines; "*" suffix = not responding, "~" etc. = power saving.
node_states() { sinfo -h -N -o '%N %T' 2>/dev/null | sort -u; }

# all_nodes_idle [SINCE_EPOCH]: every node is usable, and (with SINCE) its slurmd registered after SINCE.
# The registration check matters on restart: slurmctld restores the old "idle" states from its state
# files before any slurmd has come back, so sinfo alone would report ready too early.
all_nodes_idle() {
    local since=${1:-} want got n t
    want=$(cat "$NODES_FILE")
    got=$(node_states | awk '$2 == "idle" || $2 == "mixed" || $2 == "allocated"' | wc -l)
    ((got == want)) || return 1
    [[ -n $since ]] || return 0
    for n in $(node_names); do
        t=$(scontrol show node "$n" | sed -n 's/.*SlurmdStartTime=\([^ ]*\).*/\1/p')
        [[ -n $t && $t != None ]] || return 1
        (($(date -d "$t" +%s) >= since)) || return 1
    done
}

# Nodes left "drained" by an unclean stop (e.g. "Kill task failed" when slurmctld went away while a job was
# in KillWait) stay drained across restarts; on our own throwaway cluster, always put them back in service.
resume_drained_nodes() {
    local name state
    while read -r name state; do
        case $state in
            drain* | down)
                log "resuming node $name (was $state: $(sinfo -h -n "$name" -o '%E'))"
                scontrol update nodename="$name" state=resume || true
                ;;
        esac
    done < <(node_states)
}

wait_nodes_idle() {
    local since=${1:-} start=$SECONDS resumed=0
    until all_nodes_idle "$since"; do
        if ((SECONDS - start >= UP_TIMEOUT)); then
            node_states >&2 || true
            die "nodes not idle after ${UP_TIMEOUT}s"
        fi
        # Give slurmd a few seconds to register before deciding a node is stuck in drain/down.
        if ((resumed == 0 && SECONDS - start >= 3)); then
            resume_drained_nodes
            resumed=1
        fi
        sleep 0.3
    done
}

print_env() {
    echo "# cluster '$CLUSTER_NAME' in $STATE_DIR; use it with:"
    echo "export SLURM_CONF=$SLURM_CONF_FILE"
    echo "# (or: source $ENV_FILE)"
}

# ---------------------------------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------------------------------

cmd_up() {
    require_root
    [[ ${#STATE_DIR} -le $MAX_STATE_DIR_LEN ]] ||
        fail "state dir path is ${#STATE_DIR} chars; keep it <= $MAX_STATE_DIR_LEN (unix socket paths are limited to 108 bytes)"
    local alive=() dead=() d
    if [[ -s $NODES_FILE ]]; then
        for d in $(daemon_names); do
            if daemon_pid "$d" >/dev/null; then alive+=("$d"); else dead+=("$d"); fi
        done
    fi
    if ((${#alive[@]} > 0)); then
        local have
        have=$(cat "$NODES_FILE")
        ((${#dead[@]} == 0)) || fail "cluster is partially up (running: ${alive[*]}; not running: ${dead[*]}); run 'down' first"
        if [[ $NODES_GIVEN == 1 && $have != "$NODES" ]]; then
            fail "cluster is already up with $have node(s), not $NODES; run 'down' first to change the size"
        fi
        export SLURM_CONF=$SLURM_CONF_FILE
        wait_nodes_idle
        log "already up: $have node(s), all daemons running"
        print_env
        return 0
    fi

    install_packages
    # Resize/restart: reuse the state dir (job ids, accounting history); only the configs are rewritten.
    write_configs "$NODES"
    check_ports_free
    export SLURM_CONF=$SLURM_CONF_FILE
    export "$(owner_tag)"
    start_munged
    start_mariadb
    start_slurmdbd
    start_slurmctld
    local t_slurmd
    t_slurmd=$(date +%s)
    start_slurmds
    wait_nodes_idle "$t_slurmd"
    log "up: $NODES node(s) idle in partition 'debug'"
    print_env
}

# Stop daemons by their pid files: SIGTERM to all of them at once (the N slurmd shut down in parallel), wait,
# then SIGKILL as a last resort (reported, since it can leave state behind).
stop_daemons() {
    local name pid names=() pids=() i
    for name in "$@"; do
        pid=$(daemon_pid "$name") || continue
        names+=("$name")
        pids+=("$pid")
        kill -TERM "$pid" 2>/dev/null || true
    done
    for i in "${!pids[@]}"; do
        name=${names[$i]}
        pid=${pids[$i]}
        if ! wait_until 30 pid_gone "$pid"; then
            warn "$name (pid $pid) ignored SIGTERM for 30s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            wait_until 5 pid_gone "$pid" || true
        fi
        pid_gone "$pid" && log "stopped $name (pid $pid)"
    done
    return 0
}

# A zombie counts as gone: the daemons are reparented to PID 1, which may reap them only seconds later.
pid_gone() { ! kill -0 "$1" 2>/dev/null || is_zombie "$1"; }
is_zombie() { [[ $(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) == Z ]]; }

job_ids() { squeue -h -o '%i' 2>/dev/null; }
no_jobs() { [[ -z $(job_ids) ]]; }

drain_jobs() {
    daemon_pid slurmctld >/dev/null || return 0
    export SLURM_CONF=$SLURM_CONF_FILE
    # Stopping slurmctld while a job is still running or in KillWait leaves its node drained ("Kill task
    # failed") and stray slurmstepd behind, so first let jobs end, then cancel, and only then stop daemons.
    if ! no_jobs; then
        log "waiting up to ${DRAIN_TIMEOUT}s for $(job_ids | wc -l) job(s) to finish"
        if ! wait_until "$DRAIN_TIMEOUT" no_jobs; then
            local ids
            ids=$(job_ids | tr '\n' ' ')
            log "cancelling job(s): $ids"
            # shellcheck disable=SC2086 # word splitting of the id list is intended
            scancel $ids 2>/dev/null || true
            # KillWait (5 s) + slurmstepd cleanup + a scheduler pass.
            wait_until 45 no_jobs || warn "jobs still listed after scancel: $(job_ids | tr '\n' ' ')"
        fi
    fi
}

cmd_down() {
    require_root
    if [[ ! -d $STATE_DIR ]]; then
        log "no state dir $STATE_DIR; nothing to stop"
        return 0
    fi
    drain_jobs
    local n
    # Order matters: slurmd before slurmctld (so steps report completion), accounting after slurmctld
    # (it flushes job records to slurmdbd), munged last (everyone above authenticates through it).
    local slurmds=()
    for n in $(node_names); do slurmds+=("slurmd-$n"); done
    stop_daemons "${slurmds[@]}"
    stop_daemons slurmctld
    stop_daemons slurmdbd
    stop_daemons mariadbd
    stop_daemons munged

    # Anything still carrying our tag (typically a slurmstepd orphaned by a job that would not die) is a
    # leftover of this cluster: terminate it, then verify.
    local left
    mapfile -t left < <(tagged_pids)
    if ((${#left[@]} > 0)); then
        warn "stray processes of this cluster, terminating:"
        describe_pids "${left[@]}" >&2
        kill -TERM "${left[@]}" 2>/dev/null || true
        sleep 2
        mapfile -t left < <(tagged_pids)
        ((${#left[@]} == 0)) || kill -KILL "${left[@]}" 2>/dev/null || true
        sleep 0.5
    fi
    local survivors=() d
    for d in $(daemon_names); do
        daemon_pid "$d" >/dev/null && survivors+=("$d (pid $(daemon_pid "$d"))")
    done
    mapfile -t left < <(tagged_pids)
    if ((${#survivors[@]} > 0 || ${#left[@]} > 0)); then
        echo "[local-cluster] ERROR: still running after down: ${survivors[*]}" >&2
        ((${#left[@]} == 0)) || describe_pids "${left[@]}" >&2
        exit 1
    fi
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock" "$DB_SOCKET"
    log "down: no daemon of $STATE_DIR is running"
}

cmd_status() {
    if [[ ! -s $NODES_FILE ]]; then
        echo "no cluster in $STATE_DIR"
        return 3
    fi
    local d pid all=1
    for d in $(daemon_names); do
        if pid=$(daemon_pid "$d"); then
            printf '%-12s running  pid %s\n' "$d" "$pid"
        else
            printf '%-12s stopped\n' "$d"
            all=0
        fi
    done
    if daemon_pid slurmctld >/dev/null; then
        export SLURM_CONF=$SLURM_CONF_FILE
        echo
        sinfo || true
        echo
        squeue || true
    fi
    echo
    echo "export SLURM_CONF=$SLURM_CONF_FILE"
    ((all)) || return 3
}

# ---------------------------------------------------------------------------------------------------------------
# argument parsing
# ---------------------------------------------------------------------------------------------------------------

main() {
    (($# >= 1)) || { usage; exit 2; }
    local cmd=$1
    shift
    case $cmd in
        up | down | status) ;;
        -h | --help | help) usage; exit 0 ;;
        *) echo "unknown command: $cmd" >&2; usage; exit 2 ;;
    esac
    STATE_DIR=${CXRDIST_SLURM_DIR:-/tmp/cxrdist-slurm}
    NODES=2
    NODES_GIVEN=0
    DRAIN_TIMEOUT=${CXRDIST_SLURM_DRAIN_TIMEOUT:-60}
    while (($# > 0)); do
        case $1 in
            --nodes) (($# >= 2)) || { usage; exit 2; }; NODES=$2; NODES_GIVEN=1; shift 2 ;;
            --nodes=*) NODES=${1#*=}; NODES_GIVEN=1; shift ;;
            --state-dir) (($# >= 2)) || { usage; exit 2; }; STATE_DIR=$2; shift 2 ;;
            --state-dir=*) STATE_DIR=${1#*=}; shift ;;
            --drain-timeout) (($# >= 2)) || { usage; exit 2; }; DRAIN_TIMEOUT=$2; shift 2 ;;
            --drain-timeout=*) DRAIN_TIMEOUT=${1#*=}; shift ;;
            -h | --help) usage; exit 0 ;;
            *) echo "unknown argument: $1" >&2; usage; exit 2 ;;
        esac
    done
    if ! [[ $NODES =~ ^[0-9]+$ ]] || ((NODES < 1 || NODES > 64)); then
        echo "--nodes must be 1..64" >&2
        usage
        exit 2
    fi
    [[ $DRAIN_TIMEOUT =~ ^[0-9]+$ ]] || { echo "--drain-timeout must be a number of seconds" >&2; usage; exit 2; }
    [[ -n $STATE_DIR ]] || { usage; exit 2; }
    # Absolute path: it is baked into slurm.conf and compared against daemons' environment.
    STATE_DIR=$(realpath -m -- "$STATE_DIR")
    PORT_BASE=${CXRDIST_SLURM_PORT_BASE:-16800}
    if ! [[ $PORT_BASE =~ ^[0-9]+$ ]] || ((PORT_BASE < 1024 || PORT_BASE + 100 > 65535)); then
        echo "CXRDIST_SLURM_PORT_BASE must be 1024..65435" >&2
        exit 2
    fi
    UP_TIMEOUT=${CXRDIST_SLURM_UP_TIMEOUT:-90}
    set_paths
    set_ports
    "cmd_$cmd"
}

main "$@"
