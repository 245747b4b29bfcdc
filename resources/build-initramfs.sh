#!/bin/bash
# Build $PLAINVM_CACHE/initramfs.cpio: an UNCOMPRESSED newc cpio with Debian's static i386
# busybox (+ a few applet symlinks, see INITRAMFS_APPLETS in lib.sh), /dev/console, mount
# points, /init (resources/guest/init) and any files in $PLAINVM_GUEST_BIN_DIR under /usr/bin.
# Uncompressed because inflating a gzip initramfs takes ~45 s of emulated ring 0 on PVM hosts;
# i386 because 64-bit `syscall` from guest user mode is unusable there (/work/shared/linux-boot.md).
# Cached: rebuilt only when its inputs change (hash in $PLAINVM_CACHE/initramfs.stamp).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

need_pkgs cpio
fetch_busybox

out=$CACHE/initramfs.cpio
hash=$(guest_inputs_hash)
if up_to_date initramfs "$hash" "$out"; then
    log "up to date: $out"
    exit 0
fi

tree=$CACHE/initramfs-tree
make_guest_tree "$tree" $INITRAMFS_APPLETS
(cd "$tree" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc --owner=0:0 --reproducible) > "$out.tmp"
mv "$out.tmp" "$out"
rm -rf "$tree"
write_stamp initramfs "$hash"
log "built $out"
