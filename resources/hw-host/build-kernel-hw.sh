#!/bin/bash
# Build $PLAINVM_CACHE/vmlinux-hw: the project's guest kernel for hosts with VT-x/AMD-V (here: the
# emulated AMD-V host of resources/hw-host, see README.md there). Same Debian linux-source-6.1,
# `make tinyconfig` + the same kernel/config-fragment as resources/build-kernel.sh, but none of
# the patches in kernel/patches: those work around this machine's KVM emulating guest ring 0
# (int $0x80 as #UD, fwait, the int3 self-test) and a hardware host needs none of them.
# The fragment itself needs no change: it is a minimal 64-bit virtio-mmio guest; what it adds
# for emulated hosts (IA32_EMULATION for their 32-bit userspace, HZ=100, no legacy ptys, no PTP)
# is harmless with the 64-bit userspace used here. The emulated-host command-line workarounds
# (clearcpuid=, vdso32=0, GLIBC_TUNABLES, rodata=off) are simply not used on hardware hosts.
# Cached like vmlinux: rebuilt only when the fragment, this script or linux-source change
# (hash in $PLAINVM_CACHE/vmlinux-hw.stamp); the source tree $PLAINVM_CACHE/hw-host/linux is
# scratch, unpacked afresh for every rebuild.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"

K=$RESOURCES/kernel
need_pkgs linux-source-6.1 build-essential flex bison bc libelf-dev libssl-dev xz-utils

hash=$( {
    cat "$K/config-fragment" "$0"
    dpkg-query -W -f='${Version}' linux-source-6.1
} | sha256sum | cut -d' ' -f1)
if up_to_date vmlinux-hw "$hash" "$CACHE/vmlinux-hw"; then
    log "up to date: $CACHE/vmlinux-hw"
    exit 0
fi

mkdir -p "$CACHE/hw-host"
src=$CACHE/hw-host/linux
log "unpacking /usr/src/linux-source-6.1.tar.xz into $src"
rm -rf "$src" "$CACHE/hw-host/linux-source-6.1"
tar -C "$CACHE/hw-host" -xf /usr/src/linux-source-6.1.tar.xz
mv "$CACHE/hw-host/linux-source-6.1" "$src"
cd "$src"

make -s tinyconfig
scripts/kconfig/merge_config.sh -m .config "$K/config-fragment"
make -s olddefconfig

# Every line of the fragment must have survived olddefconfig (as in build-kernel.sh).
bad=0
while read -r line; do
    case "$line" in
        CONFIG_*=*)
            grep -qx "$line" .config || { log "config: wanted $line, got: $(grep "^${line%%=*}=" .config || echo unset)"; bad=1; } ;;
        "# CONFIG_"*" is not set")
            name=${line#\# }; name=${name%% *}
            ! grep -q "^$name=" .config || { log "config: wanted $name off, got: $(grep "^$name=" .config)"; bad=1; } ;;
    esac
done < "$K/config-fragment"
[ $bad = 0 ] || die "kernel config does not match kernel/config-fragment"

log "building vmlinux-hw (about 4 minutes on 2 cores)"
nice -n 10 make -j"$(nproc)" vmlinux
cp vmlinux "$CACHE/vmlinux-hw.tmp" && mv "$CACHE/vmlinux-hw.tmp" "$CACHE/vmlinux-hw"
write_stamp vmlinux-hw "$hash"
log "built $CACHE/vmlinux-hw"
