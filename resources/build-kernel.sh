#!/bin/bash
# Build the plainvm Linux guest kernels from Debian's linux-source-6.1:
#   $PLAINVM_CACHE/vmlinux         tinyconfig + kernel/config-fragment + patches (a) int80-from-ud,
#                                  (b) fpu-drop-no-fwait. Used by plainvm (which injects #BP for the
#                                  kernel's int3 self-test) and on ordinary VT-x/AMD-V hosts.
#   $PLAINVM_CACHE/vmlinux-noint3  the same plus (c) skip-int3-selftest, for QEMU/Firecracker
#                                  side-by-side runs (they cannot inject #BP on PVM hosts).
# Why a special kernel at all: see /work/shared/linux-boot.md (PVM hosts emulate guest ring 0).
# Cached: rebuilt only when the fragment, patches, this script or the linux-source
# package version change (hash in $PLAINVM_CACHE/vmlinux.stamp). The source tree in
# $PLAINVM_CACHE/linux is scratch: it is unpacked afresh for every rebuild and ends up with (c) applied.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

K=$RESOURCES/kernel
need_pkgs linux-source-6.1 build-essential flex bison bc libelf-dev libssl-dev xz-utils

hash=$( {
    cat "$K/config-fragment" "$K"/patches/*.patch "$0"
    dpkg-query -W -f='${Version}' linux-source-6.1
} | sha256sum | cut -d' ' -f1)
if up_to_date vmlinux "$hash" "$CACHE/vmlinux" "$CACHE/vmlinux-noint3"; then
    log "up to date: $CACHE/vmlinux $CACHE/vmlinux-noint3"
    exit 0
fi

src=$CACHE/linux
log "unpacking /usr/src/linux-source-6.1.tar.xz into $src"
rm -rf "$src" "$CACHE/linux-source-6.1"
tar -C "$CACHE" -xf /usr/src/linux-source-6.1.tar.xz
mv "$CACHE/linux-source-6.1" "$src"
cd "$src"
patch -p1 --forward < "$K/patches/int80-from-ud.patch"
patch -p1 --forward < "$K/patches/fpu-drop-no-fwait.patch"

make -s tinyconfig
scripts/kconfig/merge_config.sh -m .config "$K/config-fragment"
make -s olddefconfig

# Every line of the fragment must have survived olddefconfig (dependencies can silently drop them).
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

log "building vmlinux (about 4 minutes on 2 cores)"
make -j"$(nproc)" vmlinux
cp vmlinux "$CACHE/vmlinux.tmp" && mv "$CACHE/vmlinux.tmp" "$CACHE/vmlinux"

log "building vmlinux-noint3 (incremental)"
patch -p1 --forward < "$K/patches/skip-int3-selftest.patch"
make -j"$(nproc)" vmlinux
cp vmlinux "$CACHE/vmlinux-noint3.tmp" && mv "$CACHE/vmlinux-noint3.tmp" "$CACHE/vmlinux-noint3"

write_stamp vmlinux "$hash"
log "built $CACHE/vmlinux $CACHE/vmlinux-noint3"
