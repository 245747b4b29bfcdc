# On L1 (tests/hw_host.rs): the project's kernel built for hardware hosts (vmlinux-hw) with the
# 64-bit user space, through the hooks of resources/guest/init: virtio-blk, virtio-net over a
# tap, vsock, balloon and rng, and the guest agent.
K=$HW/vmlinux-hw
MAC=02:00:00:00:00:02

# --- virtio-blk: root on a read-write disk and a read-only second disk (hook `blk`). The hook
# counts its boots in /blk-persist on the root: the second boot must see the first one's write.
cp $HW/rootfs.ext4 /tmp/root.ext4
dd if=$HW/vmlinuz of=/tmp/ro.img bs=1M count=1 2>/dev/null
ro_md5=$(md5sum < /tmp/ro.img)
for i in 1 2; do
    run blk-$i 300 plainvm run --kernel $K --cmdline "$CMDLINE root=/dev/vda rw plainvm.cmd=blk" \
        --disk path=/tmp/root.ext4,id=rootdisk --disk path=/tmp/ro.img,readonly=on,id=scratch-ro
done
[ "$(md5sum < /tmp/ro.img)" = "$ro_md5" ] && info ro-image=unchanged || info ro-image=changed

# --- virtio-net over a tap in L1 (hook `net`): the guest (10.0.2.2) pings L1 (10.0.2.1), L1
# pings the guest, 4 MiB go to the guest's `nc -l` and come back to L1; both md5s are printed.
tap pvtap0 10.0.2.1/24
dd if=/dev/urandom of=/tmp/down bs=1M count=4 2>/dev/null
info down-md5=$(md5sum < /tmp/down | cut -d' ' -f1)
# The receiver of the guest's upload keeps its input open (see l1-helper.c on busybox nc).
(sleep 100000 | nc -l -p 5002 > /tmp/up) &
start net 300 plainvm run --kernel $K --initrd $HW/initramfs.cpio \
    --cmdline "$CMDLINE plainvm.cmd=net" --net tap=pvtap0,mac=$MAC
if wait_line net NET-GUEST-PING-OK 240; then
    ping -c 2 -W 10 10.0.2.2 > /dev/null && info host-ping=ok || info host-ping=fail
    run net-send 120 l1-helper tcp-send 10.0.2.2 5001 /tmp/down 60
fi
wait_run net 240
sleep 1
info up-md5=$(md5sum < /tmp/up | cut -d' ' -f1)
kill $(pidof sleep) 2>/dev/null

# --- vsock both ways, the balloon set at start (the guest prints its MemTotal while the driver
# inflates) and virtio-rng (hook `vsock-balloon`).
start vsock-host 300 l1-helper vsock-serve /tmp/v.sock_5000 280
start vsock-balloon 300 plainvm run --kernel $K --initrd $HW/initramfs.cpio --memory 256M \
    --cmdline "$CMDLINE plainvm.cmd=vsock-balloon" --rng --vsock cid=3,socket=/tmp/v.sock \
    --balloon size=64M
if wait_line vsock-balloon "VSOCK-LISTENING 1234" 240; then
    run vsock-in 90 l1-helper vsock-connect /tmp/v.sock 1234 hello-from-host 60
fi
wait_run vsock-balloon 240
wait_run vsock-host 10

# --- The guest agent and the balloon at run time: `plainvm balloon` raises the target from 16 to
# 64 MiB and is polled until the guest driver reports all of it given back (actual_mib), then
# `plainvm stop` asks the agent to power off cleanly (hook `wait`).
start agent 300 plainvm run --name hw-agent --kernel $K --initrd $HW/initramfs.cpio --memory 256M \
    --balloon size=16M --cmdline "$CMDLINE plainvm.cmd=wait plainvm.agent=on"
if wait_line agent INIT-WAITING 240; then
    run agent-ls 30 plainvm ls
    n=0
    until plainvm balloon hw-agent 64M > /tmp/balloon.json 2>&1 && grep -q '"actual_mib": 64' /tmp/balloon.json; do
        n=$((n + 1))
        [ $n -lt 120 ] || break
        sleep 1
    done
    info balloon-actual-mib=$(sed -n 's/.*"actual_mib": *\([0-9]*\).*/\1/p' /tmp/balloon.json)
    info balloon-wait-s=$n
    run agent-stop 90 plainvm stop hw-agent --timeout-s 60
fi
wait_run agent 120
true
