#!/bin/bash
# A real Pacemaker + Corosync cluster on one machine, for tests and demos: every node is a set
# of namespaces (mount, UTS, IPC, network, PID) with its own /run, /dev/shm, /var/log,
# /var/lib/pacemaker, /etc/corosync and /etc/ssh, joined to the others by a veth into a bridge
# in a switch namespace; corosync (knet, encrypted) and pacemaker run in each, and sshd (root
# logs in with a key made here, for the agent's live migration). The rest of the file system,
# /tmp included, is shared: storage every node sees. Nothing is reachable from outside.
#
#   NSC_BASE=/tmp/c ns-cluster.sh up          # nodes node-a, node-b (NSC_NODES to change)
#   NSC_BASE=/tmp/c ns-cluster.sh exec node-a crm_mon -1
#   NSC_BASE=/tmp/c ns-cluster.sh crash node-b   # kill the node (all its processes)
#   NSC_BASE=/tmp/c ns-cluster.sh boot node-b    # boot it again (it rejoins)
#   NSC_BASE=/tmp/c ns-cluster.sh down           # kill every node, remove the switch and NSC_BASE
#
# Steps `up` runs, for callers that start the node processes themselves (tests):
#   prepare                  keys and configuration under NSC_BASE, the switch namespace
#   node-init NAME           the node's PID 1 (run it as: unshare --mount --uts --ipc --net
#                            --pid --fork --mount-proc ns-cluster.sh node-init NAME)
#   boot NAME [UNSHARE_PID]  wire the node and start sshd, corosync and pacemaker in it (without
#                            UNSHARE_PID it starts the node's namespaces itself first)
#   settle                   wait until every node is online and a DC is elected
# Node i (from 1) has address 10.99.0.i on its eth0. Needs root, veth and bridge support.
set -euo pipefail

BASE=${NSC_BASE:-/tmp/plainvm-cluster}
NODES=${NSC_NODES:-node-a node-b}
SELF=$(readlink -f "$0")
SW="nsc$(printf '%s' "$BASE" | cksum | cut -d' ' -f1)"

die() {
    echo "ns-cluster: $*" >&2
    exit 1
}

# Index (1-based) of node NAME.
index() {
    local i=1 n
    for n in $NODES; do
        [ "$n" = "$1" ] && echo "$i" && return 0
        i=$((i + 1))
    done
    die "unknown node $1 (nodes: $NODES)"
}

addr() { echo "10.99.0.$(index "$1")"; }

# Host PID of node NAME's init.
pid_of() {
    local p
    p=$(cat "$BASE/$1/pid" 2>/dev/null) || die "node $1 is not running"
    [ -d "/proc/$p" ] || die "node $1 is not running"
    echo "$p"
}

in_node() {
    local n=$1
    shift
    nsenter -t "$(pid_of "$n")" -a "$@"
}

# The daemons of a node get the environment a service manager would give them, not the caller's.
CLEAN_ENV=(env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8)

# Node-local copies of what the packages keep in /etc, /var/lib and /var/log.
prepare() {
    command -v corosync >/dev/null || die "corosync is not installed"
    command -v pacemakerd >/dev/null || die "pacemaker is not installed"
    command -v sshd >/dev/null || [ -x /usr/sbin/sshd ] || die "openssh-server is not installed"
    mkdir -p "$BASE"
    local n i=1 nodelist="" hosts="127.0.0.1 localhost"
    for n in $NODES; do
        nodelist+="    node {
        ring0_addr: 10.99.0.$i
        name: $n
        nodeid: $i
    }
"
        hosts+="
10.99.0.$i $n"
        i=$((i + 1))
    done
    [ -f "$BASE/authkey" ] || corosync-keygen -l -k "$BASE/authkey" >/dev/null 2>&1
    # One ssh key for root on every node, and one host key every node trusts.
    [ -f "$BASE/ssh/id_cluster" ] || {
        mkdir -p "$BASE/ssh"
        ssh-keygen -q -t ed25519 -N '' -C "root@ns-cluster" -f "$BASE/ssh/id_cluster"
        ssh-keygen -q -t ed25519 -N '' -C "ns-cluster host" -f "$BASE/ssh/ssh_host_ed25519_key"
    }
    for n in $NODES; do
        local d="$BASE/$n"
        [ -d "$d/var-lib-pacemaker" ] && continue
        mkdir -p "$d"/{etc-corosync,var-lib-corosync,var-log,etc-ssh}
        install -m 400 "$BASE/authkey" "$d/etc-corosync/authkey"
        cat >"$d/etc-corosync/corosync.conf" <<EOF
totem {
    version: 2
    cluster_name: plainvm-test
    transport: knet
    token: 2000
    crypto_cipher: aes256
    crypto_hash: sha256
    crypto_model: openssl
}
nodelist {
$nodelist}
quorum {
    provider: corosync_votequorum
    two_node: $([ "$(echo "$NODES" | wc -w)" = 2 ] && echo 1 || echo 0)
}
logging {
    to_logfile: yes
    logfile: /var/log/corosync/corosync.log
    to_syslog: no
    to_stderr: no
    timestamp: on
}
EOF
        cp -a /var/lib/pacemaker "$d/var-lib-pacemaker"
        rm -rf "$d/var-lib-pacemaker/cib/"* "$d/var-lib-pacemaker/pengine/"*
        # A first CIB: without it the DC election waits the default dc-deadtime (20 s).
        cat >"$d/var-lib-pacemaker/cib/cib.xml" <<EOF
<cib crm_feature_set="3.0.14" validate-with="pacemaker-3.0" epoch="1" num_updates="0" admin_epoch="0">
  <configuration>
    <crm_config>
      <cluster_property_set id="cib-bootstrap-options">
        <nvpair id="cib-bootstrap-options-dc-deadtime" name="dc-deadtime" value="${NSC_DC_DEADTIME:-3s}"/>
        <nvpair id="cib-bootstrap-options-stonith-enabled" name="stonith-enabled" value="false"/>
      </cluster_property_set>
    </crm_config>
    <nodes/>
    <resources/>
    <constraints/>
  </configuration>
  <status/>
</cib>
EOF
        chown hacluster:haclient "$d/var-lib-pacemaker/cib/cib.xml"
        chmod 600 "$d/var-lib-pacemaker/cib/cib.xml"
        install -d -o hacluster -g haclient -m 770 "$d/var-log/pacemaker"
        install -d -o hacluster -g haclient -m 775 "$d/var-log/crmsh"
        install -d -m 755 "$d/var-log/corosync"
        printf '%s\n' "$hosts" >"$d/hosts"
        echo "$n" >"$d/hostname"
        # sshd and ssh of the node: its own /etc/ssh.
        install -m 600 "$BASE/ssh/ssh_host_ed25519_key" "$d/etc-ssh/ssh_host_ed25519_key"
        install -m 644 "$BASE/ssh/ssh_host_ed25519_key.pub" "$d/etc-ssh/ssh_host_ed25519_key.pub"
        install -m 600 "$BASE/ssh/id_cluster" "$d/etc-ssh/id_cluster"
        install -m 600 "$BASE/ssh/id_cluster.pub" "$d/etc-ssh/authorized_keys"
        echo "10.99.0.* $(cut -d' ' -f1,2 "$BASE/ssh/ssh_host_ed25519_key.pub")" >"$d/etc-ssh/ssh_known_hosts"
        cat >"$d/etc-ssh/sshd_config" <<EOF
ListenAddress $(addr "$n")
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
AuthorizedKeysFile /etc/ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PidFile /run/sshd.pid
EOF
        cat >"$d/etc-ssh/ssh_config" <<EOF
Host *
    IdentityFile /etc/ssh/id_cluster
    GlobalKnownHostsFile /etc/ssh/ssh_known_hosts
    UserKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    BatchMode yes
    LogLevel ERROR
EOF
    done
    if ! ip netns list | grep -qw "$SW"; then
        ip netns add "$SW"
        ip -n "$SW" link add br0 type bridge
        ip -n "$SW" link set br0 up
    fi
}

# PID 1 of a node: private mounts, then reap children until killed.
node_init() {
    local n=$1 d="$BASE/$1"
    mount --make-rprivate /
    hostname "$n"
    mount -t tmpfs -o mode=755 tmpfs /run
    mount -t tmpfs -o mode=1777 tmpfs /dev/shm
    mkdir -p /run/lock /run/sshd /run/resource-agents
    mount --bind "$d/etc-corosync" /etc/corosync
    mount --bind "$d/var-lib-corosync" /var/lib/corosync
    mount --bind "$d/var-lib-pacemaker" /var/lib/pacemaker
    mount --bind "$d/var-log" /var/log
    mount --bind "$d/etc-ssh" /etc/ssh
    mount --bind "$d/hosts" /etc/hosts
    mount --bind "$d/hostname" /etc/hostname
    ip link set lo up
    touch "$d/ready"
    trap 'exit 0' TERM
    # As PID 1, bash reaps every orphan (daemons, VMs whose agent exited).
    while :; do
        sleep 3600 &
        wait $! || true
    done
}

boot() {
    local n=$1 unshare_pid=${2:-} d="$BASE/$1" p i
    rm -f "$d/ready" "$d/pid"
    if [ -z "$unshare_pid" ]; then
        setsid unshare --mount --uts --ipc --net --pid --fork --mount-proc \
            "$SELF" node-init "$n" </dev/null >"$d/init.out" 2>&1 &
        unshare_pid=$!
    fi
    for i in $(seq 100); do
        [ -f "$d/ready" ] && break
        sleep 0.05
    done
    [ -f "$d/ready" ] || die "node $n did not start: $(cat "$d/init.out" 2>/dev/null)"
    p=$(tr -d " " <"/proc/$unshare_pid/task/$unshare_pid/children")
    [ -n "$p" ] || die "no init process under $unshare_pid"
    echo "$p" >"$d/pid"
    local veth
    veth="v$(index "$n")-$(printf '%s' "$BASE" | cksum | cut -c1-8)"
    ip -n "$SW" link del "$veth" 2>/dev/null || true
    ip -n "$SW" link add "$veth" type veth peer name eth0 netns "$p"
    ip -n "$SW" link set "$veth" master br0 up
    nsenter -t "$p" -n ip addr add "$(addr "$n")/24" dev eth0
    nsenter -t "$p" -n ip link set eth0 up
    in_node "$n" "${CLEAN_ENV[@]}" /usr/sbin/sshd
    in_node "$n" "${CLEAN_ENV[@]}" corosync
    for i in $(seq 100); do
        in_node "$n" corosync-cfgtool -s >/dev/null 2>&1 && break
        sleep 0.1
    done
    in_node "$n" "${CLEAN_ENV[@]}" bash -c 'nohup pacemakerd </dev/null >/var/log/pacemaker/pacemakerd.out 2>&1 &'
}

# Wait until every running node is online in crm_mon and a DC is elected (up to $1 s).
settle() {
    local limit=${1:-90} first="" n out t0=$SECONDS
    for n in $NODES; do
        [ -z "$first" ] && [ -f "$BASE/$n/pid" ] && [ -d "/proc/$(cat "$BASE/$n/pid")" ] && first=$n
    done
    [ -n "$first" ] || die "no node is running"
    while :; do
        out=$(in_node "$first" crm_mon -1 2>/dev/null || true)
        if echo "$out" | grep -q "Current DC: node" && echo "$out" | grep -q "partition with quorum"; then
            local all=1
            for n in $NODES; do
                [ -f "$BASE/$n/pid" ] && [ -d "/proc/$(cat "$BASE/$n/pid")" ] || continue
                echo "$out" | grep -E "Online: \[.* $n( |\])" >/dev/null || all=0
            done
            [ $all = 1 ] && return 0
        fi
        [ $((SECONDS - t0)) -ge "$limit" ] && die "cluster did not settle in $limit s: $out"
        sleep 0.5
    done
}

down() {
    local n p
    for n in $NODES; do
        p=$(cat "$BASE/$n/pid" 2>/dev/null) || continue
        # Only ever signal the node's own init.
        if tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q "node-init $n"; then
            kill -KILL "$p" 2>/dev/null || true
        fi
    done
    for n in $NODES; do
        p=$(cat "$BASE/$n/pid" 2>/dev/null) || continue
        for _ in $(seq 100); do
            [ -d "/proc/$p" ] || break
            sleep 0.05
        done
    done
    ip netns del "$SW" 2>/dev/null || true
    rm -rf "$BASE"
}

cmd=${1:-}
[ -n "$cmd" ] && shift
case "$cmd" in
    prepare) prepare ;;
    node-init) node_init "$1" ;;
    boot) boot "$@" ;;
    settle) settle "$@" ;;
    up)
        prepare
        for n in $NODES; do boot "$n"; done
        settle 120
        ;;
    pid) pid_of "$1" ;;
    addr) addr "$1" ;;
    exec)
        n=$1
        shift
        in_node "$n" "$@"
        ;;
    crash)
        p=$(pid_of "$1")
        kill -KILL "$p"
        while [ -d "/proc/$p" ]; do sleep 0.05; done
        rm -f "$BASE/$1/pid"
        ;;
    down) down ;;
    *)
        sed -n '2,26p' "$SELF" >&2
        exit 2
        ;;
esac
