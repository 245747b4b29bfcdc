# Helpers for the scripts run on the level-1 host (sourced by /init before /hw-run/script.sh;
# see l1-init). The artifacts are in /hw (build-l1.sh); /tmp is a tmpfs and the working directory.
# Every run's output reaches the console as "@NAME <line>" (so the harness can tell runs apart)
# and is kept in /tmp/out.NAME; its end is "HWHOST-RUN NAME status=N secs=S".
HW=/hw
# The stock kernel's command line and the project's kernel's (no emulated-host workarounds).
CMDLINE="console=ttyS0 reboot=k panic=-1"

now() { read -r t _ < /proc/uptime; echo "$t"; }
# elapsed T0: seconds since uptime T0, two decimals.
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
info() { echo "HWHOST-INFO $*"; }
# prefix NAME: copy stdin to the console, each line as "@NAME line", at once.
prefix() { awk -v p="@$1 " '{ print p $0; fflush() }'; }

# run NAME SECS CMD...: run CMD in the foreground (killed after SECS), output as above.
run() {
    local name=$1 secs=$2 t0
    shift 2
    t0=$(now)
    echo "HWHOST-RUN-START $name"
    { timeout -s KILL "$secs" "$@" 2>&1; echo $? > "/tmp/rc.$name"; } \
        | tee "/tmp/out.$name" | prefix "$name"
    echo "HWHOST-RUN $name status=$(cat "/tmp/rc.$name") secs=$(elapsed "$t0")"
    return "$(cat "/tmp/rc.$name")"
}

# boot NAME SECS CMD...: `run` a level-2 boot, again (up to 4 times in all) when the guest died
# of TCG's nested-SVM triple fault (plainvm: "triple-faulted ... near RIP 0xfff0", see
# resources/hw-host/README.md). Attempt K > 1 is run NAME.K; the harness reads the last one. Only
# for boots that change nothing outside the guest (a retried boot must start from the same state).
boot() {
    local name=$1 secs=$2 k=1 attempt rc
    shift 2
    while :; do
        attempt=$name
        [ $k -eq 1 ] || attempt=$name.$k
        run "$attempt" "$secs" "$@"
        rc=$?
        grep -q 'triple-faulted.*near RIP 0xfff0' "/tmp/out.$attempt" && [ $k -lt 4 ] || return $rc
        k=$((k + 1))
    done
}

# start NAME SECS CMD...: the same in the background; finish it with wait_run.
start() {
    local name=$1 secs=$2
    shift 2
    rm -f "/tmp/rc.$name" "/tmp/done.$name"
    : > "/tmp/out.$name"
    now > "/tmp/t0.$name"
    echo "HWHOST-RUN-START $name"
    ( { timeout -s KILL "$secs" "$@" 2>&1; echo $? > "/tmp/rc.$name"; } \
        | tee "/tmp/out.$name" | prefix "$name"; : > "/tmp/done.$name" ) &
}

# wait_run NAME SECS: wait for a started run to end; prints its HWHOST-RUN line, returns its status.
wait_run() {
    local name=$1 n=$(($2 * 10))
    while [ ! -s "/tmp/rc.$name" ] && [ $n -gt 0 ]; do
        sleep 0.1
        n=$((n - 1))
    done
    # The run's last lines still go through tee and the prefixing: wait (up to 10 s) for that
    # pipeline to end, as it does once the run has; with a fixed short sleep they were lost when
    # the script ended and L1 powered off under load ("GU" instead of GUEST-INIT-REACHED).
    local m=100
    while [ -s "/tmp/rc.$name" ] && [ ! -e "/tmp/done.$name" ] && [ $m -gt 0 ]; do
        sleep 0.1
        m=$((m - 1))
    done
    if [ ! -s "/tmp/rc.$name" ]; then
        echo "HWHOST-RUN $name status=timeout secs=$(elapsed "$(cat "/tmp/t0.$name")")"
        return 124
    fi
    echo "HWHOST-RUN $name status=$(cat "/tmp/rc.$name") secs=$(elapsed "$(cat "/tmp/t0.$name")")"
    return "$(cat "/tmp/rc.$name")"
}

# wait_line NAME TEXT SECS: wait until run NAME has printed TEXT (fixed string); 1 on timeout,
# or at once when the run ended without it (a guest that died cannot print it any more).
wait_line() {
    local n=$(($3 * 10))
    while ! grep -qF -- "$2" "/tmp/out.$1" 2>/dev/null; do
        [ $n -gt 0 ] || { echo "HWHOST-TIMEOUT waiting for '$2' in $1"; return 1; }
        if [ -s "/tmp/rc.$1" ] && [ -e "/tmp/done.$1" ] && ! grep -qF -- "$2" "/tmp/out.$1"; then
            echo "HWHOST-ENDED without '$2': $1"
            return 1
        fi
        sleep 0.1
        n=$((n - 1))
    done
}

# tap NAME CIDR [MAC]: a persistent tap for a guest, host side CIDR, up.
tap() {
    tunctl -t "$1" > /dev/null || return 1
    [ -z "${3:-}" ] || ip link set "$1" address "$3"
    ip addr add "$2" dev "$1"
    ip link set "$1" up
}

# L2 guests on the project's kernel: vmlinux-hw with the 64-bit initramfs or ext4 root.
own_kernel() { echo "$HW/vmlinux-hw"; }
