#!/bin/bash
# Build $PLAINVM_CACHE/rootfs.ext4: a 64 MiB ext4 root filesystem with the same busybox tree as
# the initramfs; /sbin/init is resources/guest/init (it remounts / read-write if needed).
# Made with `mkfs.ext4 -d` from a staging directory: no loop mounts.
# Boot with `root=/dev/vda rw` (or ro) and no initrd.
# Cached: rebuilt only when its inputs change (hash in $PLAINVM_CACHE/rootfs.stamp).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

need_pkgs e2fsprogs
fetch_busybox

out=$CACHE/rootfs.ext4
hash=$(guest_inputs_hash)
if up_to_date rootfs "$hash" "$out"; then
    log "up to date: $out"
    exit 0
fi

tree=$CACHE/rootfs-tree
make_guest_tree "$tree"
rm -f "$out.tmp"
truncate -s 64M "$out.tmp"
mkfs.ext4 -q -F -L plainvm-root -E root_owner=0:0 -d "$tree" "$out.tmp"
mv "$out.tmp" "$out"
rm -rf "$tree"
write_stamp rootfs "$hash"
log "built $out"
