# On L1 (tests/hw_host.rs): the project's kernel for hardware hosts (vmlinux-hw, 64-bit user
# space) with a disk root, a tap, vsock, rng and the guest agent: snapshot and restore (twice),
# then live migration to another plainvm process on the same L1 over 127.0.0.1. The guest runs
# the `tick` hook of resources/guest/init: every tick drops the page cache and reads a file back
# from the disk, pings L1 through the tap (a new process each time), appends to /tick-log, syncs.
K=$HW/vmlinux-hw
MAC=02:00:00:00:00:02
# `quiet`: kernel messages (drop_caches) would otherwise cut TICK lines in two.
TICK="$CMDLINE quiet root=/dev/vda rw plainvm.cmd=tick plainvm.agent=on"
# The guests' network: a bridge with L1's address and one tap per plainvm process (a migration's
# source and destination each open their own, as on two hosts).
brctl addbr br0
ip addr add 10.0.2.1/24 dev br0
ip link set br0 up
for t in tap-a tap-b; do
    tunctl -t $t > /dev/null
    brctl addif br0 $t
    ip link set $t up
done

# --- Snapshot of a running guest (paused for it, its disk copied meanwhile), the process killed,
# then two restores from the same snapshot, each onto a fresh copy of the disk as it was.
cp $HW/rootfs.ext4 /tmp/root.ext4
# plainvm.tick-echo=wait: the guest powers off only after L1 talked to it through vsock.
start snap-src 300 plainvm run --kernel $K --cpus 2 --memory 256M \
    --cmdline "$TICK plainvm.ticks=8 plainvm.tick-echo=wait" \
    --disk path=/tmp/root.ext4 --net tap=tap-a,mac=$MAC --vsock cid=3,socket=/tmp/v.sock --rng \
    --api-sock /tmp/snap.sock
if wait_line snap-src "TICK n=2 " 240; then
    run snap-pause 30 plainvm pause --api-sock /tmp/snap.sock
    run snap-create 120 plainvm snapshot --api-sock /tmp/snap.sock --path /tmp/snap
    cp /tmp/root.ext4 /tmp/root-at-snap.ext4
fi
kill -9 $(pidof plainvm)
wait_run snap-src 20
for r in 1 2; do
    cp /tmp/root-at-snap.ext4 /tmp/root.ext4
    start restore-$r 300 plainvm restore /tmp/snap --allow-dir /tmp --allow-tap tap-a
    # The vsock listener from before the snapshot takes a new connection from L1, once the agent
    # has seen the generation bumped and synced the clock: the guest waits for that connection
    # before it powers off, so both are in the log whatever the speed of the host (the last 6
    # ticks take 0.5 s here, the agent looks once a second). A guest that never gets there is
    # stopped rather than left waiting.
    if wait_line restore-$r "time-sync: clock set to" 120; then
        run vsock-$r 90 l1-helper vsock-connect /tmp/v.sock 1234 after-restore-$r 60
    else
        kill -9 $(pidof plainvm)
    fi
    wait_run restore-$r 240
done

# --- Live migration over 127.0.0.1: the destination opens tap-b (--set), the disk image is the
# same file (shared storage), allowed with --allow-dir; --insecure, since both ends are this L1.
# The guest keeps ticking on the destination.
cp $HW/rootfs.ext4 /tmp/mroot.ext4
start mig-src 400 plainvm run --kernel $K --cpus 2 --memory 256M --cmdline "$TICK plainvm.ticks=${MIG_TICKS:-30}" \
    --disk path=/tmp/mroot.ext4 --net tap=tap-a,mac=$MAC --api-sock /tmp/mig.sock
if wait_line mig-src "TICK n=3 " 240; then
    start mig-dst 400 plainvm receive --insecure --listen tcp:127.0.0.1:7000 --allow-dir /tmp \
        --set 'nets=[{"tap":"tap-b"}]'
    wait_line mig-dst "waiting for a migration" 60 &&
        run migrate 180 plainvm migrate --api-sock /tmp/mig.sock --to tcp:127.0.0.1:7000
    wait_run mig-src 60
    wait_run mig-dst 300
else
    wait_run mig-src 10
fi
true
