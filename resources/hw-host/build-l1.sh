#!/bin/bash
# Build the artifacts of the emulated AMD-V test host (resources/hw-host/README.md), all under
# $PLAINVM_CACHE/hw-host (default /var/cache/plainvm/hw-host):
#   vmlinux-l1      Debian's stock kernel (linux-image-amd64), decompressed from its bzImage to
#                   the ELF QEMU boots through PVH: the level-1 (L1) host's kernel. Decompressing
#                   xz under TCG took ~15 s of every L1 boot on a busy machine; the ELF skips it.
#   vmlinuz         the same kernel as Debian ships it (bzImage): the stock level-2 (L2) guest
#   initramfs.cpio  L2 initramfs: Debian's busybox-static for amd64 (64-bit user space, every
#                   applet linked), resources/guest/init, the guest/c helpers built 64-bit
#   rootfs.ext4     the same tree as a 32 MiB ext4 root (boot with root=/dev/vda rw)
#   l1.cpio         the L1 initramfs: busybox (amd64), the kvm-amd/tun/virtio modules with their
#                   dependencies (modprobe), l1-helper, and in /hw the L2 payloads (vmlinuz,
#                   vmlinux-hw, initramfs.cpio, rootfs.ext4). It has no /init and no plainvm: the
#                   harness appends a small cpio with l1-init, l1-lib.sh, the script and the
#                   plainvm binary under test to every boot (tests/support/hw_host.rs).
# Needs $PLAINVM_CACHE/vmlinux-hw (build-kernel-hw.sh). Each output is cached by a hash of its
# inputs (stamps in $PLAINVM_CACHE/hw-host); the two Debian packages are downloaded once.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"

HERE=$RESOURCES/hw-host
HWC=$CACHE/hw-host
mkdir -p "$HWC/deb"
need_pkgs cpio e2fsprogs gcc libc6-dev xz-utils qemu-system-x86
[ -f "$CACHE/vmlinux-hw" ] || die "$CACHE/vmlinux-hw is missing: run resources/hw-host/build-kernel-hw.sh first"

# The modules L1 loads (l1-init), with their dependencies from modules.dep.
L1_MODULES="kvm-amd tun bridge virtio_pci virtio_net virtio_blk"

# download PKG: apt-get download into $HWC/deb (the package lists are refreshed once if needed);
# prints the path of the .deb.
download() {
    (cd "$HWC/deb" && apt-get download "$1" >&2) || { apt-get update >&2 || true; (cd "$HWC/deb" && apt-get download "$1" >&2); } \
        || die "cannot download $1"
    ls -t "$HWC"/deb/"${1%%:*}"_*.deb | head -n1
}

# --- Debian's stock kernel (linux-image-amd64 -> linux-image-<version>-amd64), once.
STOCK=$HWC/stock
if [ ! -f "$STOCK/version" ]; then
    pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
    if [ -z "$pkg" ]; then
        apt-get update || true
        pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
    fi
    [ -n "$pkg" ] || die "cannot resolve linux-image-amd64 to a kernel package"
    log "downloading $pkg"
    deb=$(download "$pkg")
    rm -rf "$STOCK.tmp"
    dpkg-deb -x "$deb" "$STOCK.tmp"
    kver=${pkg#linux-image-}
    [ -f "$STOCK.tmp/boot/vmlinuz-$kver" ] || die "no boot/vmlinuz-$kver in $deb"
    echo "$kver" > "$STOCK.tmp/version"
    rm -rf "$STOCK" && mv "$STOCK.tmp" "$STOCK"
fi
KVER=$(cat "$STOCK/version")

# --- busybox-static for amd64, once (lib.sh's fetch_busybox fetches the i386 one).
BB64=$HWC/busybox-amd64/bin/busybox
if [ ! -x "$BB64" ]; then
    log "downloading busybox-static:amd64"
    deb=$(download busybox-static:amd64)
    rm -rf "$HWC/busybox-amd64.tmp"
    dpkg-deb -x "$deb" "$HWC/busybox-amd64.tmp"
    [ -x "$HWC/busybox-amd64.tmp/bin/busybox" ] || die "no bin/busybox in $deb"
    rm -rf "$HWC/busybox-amd64" && mv "$HWC/busybox-amd64.tmp" "$HWC/busybox-amd64"
fi

# --- 64-bit static helpers: guest/c for L2, l1-helper for L1.
src=$RESOURCES/../guest/c
shopt -s nullglob
hash=$(cat "$0" "$src"/*.c "$src"/*.h "$HERE/l1-helper.c" | sha256sum | cut -d' ' -f1)
if ! up_to_date hw-host/bins "$hash" "$HWC/guest-bin" "$HWC/l1-bin/l1-helper"; then
    rm -rf "$HWC/guest-bin" "$HWC/l1-bin" && mkdir -p "$HWC/guest-bin" "$HWC/l1-bin"
    for c in "$src"/*.c; do
        gcc -static -Os -Wall -Werror -o "$HWC/guest-bin/$(basename "$c" .c)" "$c"
    done
    gcc -static -Os -Wall -Werror -o "$HWC/l1-bin/l1-helper" "$HERE/l1-helper.c"
    strip "$HWC"/guest-bin/* "$HWC"/l1-bin/*
    write_stamp hw-host/bins "$hash"
    log "built $HWC/guest-bin $HWC/l1-bin"
fi

# --- L2 images with the 64-bit user space (make_guest_tree from lib.sh, amd64 busybox).
BUSYBOX=$BB64
PLAINVM_GUEST_BIN_DIR=$HWC/guest-bin
hash=$(guest_inputs_hash)
if ! up_to_date hw-host/images "$hash" "$HWC/initramfs.cpio" "$HWC/rootfs.ext4"; then
    tree=$HWC/l2-tree
    make_guest_tree "$tree"
    (cd "$tree" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc --owner=0:0 --reproducible) > "$HWC/initramfs.cpio.tmp"
    rm -f "$HWC/rootfs.ext4.tmp"
    truncate -s 32M "$HWC/rootfs.ext4.tmp"
    mkfs.ext4 -q -F -L plainvm-root -E root_owner=0:0 -d "$tree" "$HWC/rootfs.ext4.tmp"
    mv "$HWC/initramfs.cpio.tmp" "$HWC/initramfs.cpio"
    mv "$HWC/rootfs.ext4.tmp" "$HWC/rootfs.ext4"
    rm -rf "$tree"
    write_stamp hw-host/images "$hash"
    log "built $HWC/initramfs.cpio $HWC/rootfs.ext4"
fi

# --- The stock kernel twice: as shipped (bzImage, L2) and decompressed (ELF, L1).
hash=$( { cat "$0"; echo "$KVER"; } | sha256sum | cut -d' ' -f1)
if ! up_to_date hw-host/kernels "$hash" "$HWC/vmlinuz" "$HWC/vmlinux-l1"; then
    vmlinuz=$STOCK/boot/vmlinuz-$KVER
    # The bzImage's payload is one xz stream; --single-stream ignores what follows it.
    # (`|| true`: head and xz stop reading early, and pipefail would count the SIGPIPE.)
    off=$( { LC_ALL=C grep -obUaP -m1 '\xfd7zXZ\x00' "$vmlinuz" || true; } | head -n1 | cut -d: -f1)
    [ -n "$off" ] || die "no xz payload in $vmlinuz"
    { tail -c +$((off + 1)) "$vmlinuz" || true; } | xz -dc --single-stream > "$HWC/vmlinux-l1.tmp"
    [ "$(head -c 4 "$HWC/vmlinux-l1.tmp" | od -An -tx1 | tr -d ' ')" = 7f454c46 ] || die "decompressed kernel is not an ELF"
    cp "$vmlinuz" "$HWC/vmlinuz.tmp"
    mv "$HWC/vmlinux-l1.tmp" "$HWC/vmlinux-l1"
    mv "$HWC/vmlinuz.tmp" "$HWC/vmlinuz"
    write_stamp hw-host/kernels "$hash"
    log "built $HWC/vmlinuz $HWC/vmlinux-l1 ($KVER)"
fi

# --- The L1 initramfs.
hash=$( {
    cat "$0"
    echo "$KVER $L1_MODULES"
    sha256sum "$BB64" "$HWC/l1-bin/l1-helper" "$CACHE/vmlinux-hw" "$HWC/vmlinuz" \
        "$HWC/initramfs.cpio" "$HWC/rootfs.ext4"
} | sha256sum | cut -d' ' -f1)
if ! up_to_date hw-host/l1 "$hash" "$HWC/l1.cpio"; then
    tree=$HWC/l1-tree
    rm -rf "$tree"
    mkdir -p "$tree"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,etc,hw,root}
    cp "$BB64" "$tree/bin/busybox"
    "$BB64" --list-full | while read -r applet; do
        [ "$applet" = bin/busybox ] || ln -sf /bin/busybox "$tree/$applet"
    done
    mknod -m 600 "$tree/dev/console" c 5 1
    cp "$HWC/l1-bin/l1-helper" "$tree/usr/bin/"
    # Modules: depmod over the whole package tree once, then copy the closure of L1_MODULES
    # and let depmod write the small tree's modules.dep.
    mods=$STOCK/lib/modules/$KVER
    [ -f "$mods/modules.dep" ] || "$BB64" depmod -b "$STOCK" "$KVER"
    for m in $L1_MODULES; do
        line=$(grep -E "/$m\.ko:" "$mods/modules.dep") || die "module $m not in $KVER"
        for f in ${line%%:*} ${line#*:}; do
            mkdir -p "$tree/lib/modules/$KVER/$(dirname "$f")"
            cp "$mods/$f" "$tree/lib/modules/$KVER/$f"
        done
    done
    "$BB64" depmod -b "$tree" "$KVER"
    cp "$HWC/vmlinuz" "$CACHE/vmlinux-hw" "$HWC/initramfs.cpio" "$HWC/rootfs.ext4" "$tree/hw/"
    (cd "$tree" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc --owner=0:0 --reproducible) > "$HWC/l1.cpio.tmp"
    mv "$HWC/l1.cpio.tmp" "$HWC/l1.cpio"
    rm -rf "$tree"
    write_stamp hw-host/l1 "$hash"
    log "built $HWC/l1.cpio"
fi
# --- QEMU for L1 (benches/hw_host_boot.py appends it to compare plainvm with QEMU microvm at
# level 2): this host's qemu-system-x86_64 with its shared libraries and the microvm firmware.
qemu=$(command -v qemu-system-x86_64)
hash=$( {
    cat "$0"
    sha256sum "$qemu"
    ldd "$qemu" | awk '/\// { print $(NF-1) }' | sort | xargs sha256sum
} | sha256sum | cut -d' ' -f1)
if ! up_to_date hw-host/l1-qemu "$hash" "$HWC/l1-qemu.cpio"; then
    tree=$HWC/l1-qemu-tree
    rm -rf "$tree" && mkdir -p "$tree/usr/bin" "$tree/usr/share/qemu"
    cp "$qemu" "$tree/usr/bin/"
    # Libraries where the dynamic loader looks for them (the loader itself included).
    for lib in $(ldd "$qemu" | awk '/\// { print ($3 ~ /^\//) ? $3 : $1 }'); do
        mkdir -p "$tree$(dirname "$lib")"
        cp -L "$lib" "$tree$lib"
    done
    for f in bios-microvm.bin qboot.rom pvh.bin linuxboot_dma.bin kvmvapic.bin; do
        [ -e "/usr/share/qemu/$f" ] && cp -L "/usr/share/qemu/$f" "$tree/usr/share/qemu/"
    done
    (cd "$tree" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc --owner=0:0 --reproducible) > "$HWC/l1-qemu.cpio.tmp"
    mv "$HWC/l1-qemu.cpio.tmp" "$HWC/l1-qemu.cpio"
    rm -rf "$tree"
    write_stamp hw-host/l1-qemu "$hash"
    log "built $HWC/l1-qemu.cpio"
fi
log "up to date: $HWC (vmlinux-l1 vmlinuz initramfs.cpio rootfs.ext4 l1.cpio l1-qemu.cpio), kernel $KVER"
