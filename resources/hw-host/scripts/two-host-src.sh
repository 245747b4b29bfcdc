# On the first of two L1 hosts (tests/hw_host.rs), joined by a network only they share
# (192.168.77.0/24 on their eth0). L1's /dev/vda is an image the two QEMUs share (cache=none):
# the L2 guest's root. The guest runs the `tick` hook (disk reads, a ping through the tap and a
# synced append to /tick-log per tick), then migrates to the other L1 and goes on ticking there.
K=$HW/vmlinux-hw
# The same tap on both hosts, with the same address and MAC on the host side: the guest's
# neighbour entry stays right after the move.
tap pvtap0 10.0.2.1/24 02:00:00:00:01:01
n=0
until ping -c 1 -W 1 192.168.77.2 > /dev/null 2>&1; do
    n=$((n + 1))
    [ $n -lt 300 ] || { echo "HWHOST-TIMEOUT the other host"; exit 1; }
done
info peer=up
start src 900 plainvm run --kernel $K --cpus 2 --memory 256M \
    --cmdline "$CMDLINE quiet root=/dev/vda rw plainvm.cmd=tick plainvm.ticks=${TICKS:-25} plainvm.agent=on" \
    --disk path=/dev/vda --net tap=pvtap0,mac=02:00:00:00:00:02 --api-sock /tmp/src.sock
wait_line src "TICK n=3 " 400 || exit 1
# The destination answers READY on port 7001 once `plainvm receive` listens.
n=0
until [ "$(nc 192.168.77.2 7001 < /dev/null 2>/dev/null)" = READY ]; do
    n=$((n + 1))
    [ $n -lt 120 ] || { echo "HWHOST-TIMEOUT the destination"; exit 1; }
    sleep 1
done
echo 6d6967726174696f6e2d746573742d6b65792d666f722d74776f2d686f737473 > /tmp/mig.key
run migrate 300 plainvm migrate --api-sock /tmp/src.sock --key /tmp/mig.key --to tcp:192.168.77.2:7000
wait_run src 60
# Writes the guest made here but had not flushed yet reach the shared image now (see README.md).
sync
info source-synced=yes
