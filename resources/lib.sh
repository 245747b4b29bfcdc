# Helpers shared by resources/build-*.sh (sourced, not run).
# Kept here so the kernel, initramfs and rootfs scripts cache and install things the same way.

RESOURCES=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${PLAINVM_CACHE:-/var/cache/plainvm}
mkdir -p "$CACHE"
# One build at a time per cache (the machine is shared; CI and developers may overlap).
exec 9>"$CACHE/.lock"
flock 9

log() { echo "[$(basename "$0")] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# need_pkgs PKG...: apt-get install the packages that are not installed yet.
need_pkgs() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null | grep -q '^ii' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing: ${missing[*]}"
    apt-get update || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
}

# up_to_date NAME HASH OUTPUT...: true if NAME.stamp holds HASH and all outputs exist.
up_to_date() {
    local stamp=$CACHE/$1.stamp hash=$2 f
    shift 2
    [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$hash" ] || return 1
    for f in "$@"; do [ -e "$f" ] || return 1; done
}
write_stamp() { echo "$2" > "$CACHE/$1.stamp"; }

# fetch_busybox: Debian's busybox-static for i386, extracted once into $CACHE/busybox-i386.
# i386 because guest user space must be 32-bit on PVM hosts (see /work/shared/linux-boot.md).
BUSYBOX=$CACHE/busybox-i386/bin/busybox
fetch_busybox() {
    [ -x "$BUSYBOX" ] && return 0
    local added=0 deb
    if ! dpkg --print-foreign-architectures | grep -qx i386; then
        dpkg --add-architecture i386
        added=1
    fi
    mkdir -p "$CACHE/deb"
    # `apt-get update` may exit 100 here because one i386 index fails; the download still works.
    apt-get update || true
    (cd "$CACHE/deb" && apt-get download busybox-static:i386) || true
    [ $added = 1 ] && dpkg --remove-architecture i386
    deb=$(ls -t "$CACHE"/deb/busybox-static_*_i386.deb 2>/dev/null | head -n1)
    [ -n "$deb" ] || die "could not download busybox-static:i386"
    rm -rf "$CACHE/busybox-i386.tmp"
    dpkg-deb -x "$deb" "$CACHE/busybox-i386.tmp"
    [ -x "$CACHE/busybox-i386.tmp/bin/busybox" ] || die "no bin/busybox in $deb"
    rm -rf "$CACHE/busybox-i386"
    mv "$CACHE/busybox-i386.tmp" "$CACHE/busybox-i386"
}

# guest_bin_files: the optional extra guest binaries ($PLAINVM_GUEST_BIN_DIR), one per line.
guest_bin_files() {
    [ -n "${PLAINVM_GUEST_BIN_DIR:-}" ] || return 0
    [ -d "$PLAINVM_GUEST_BIN_DIR" ] || die "PLAINVM_GUEST_BIN_DIR=$PLAINVM_GUEST_BIN_DIR is not a directory"
    find "$PLAINVM_GUEST_BIN_DIR" -maxdepth 1 \( -type f -o -type l \) | sort
}

# guest_inputs_hash: hash of everything that goes into the guest file tree.
guest_inputs_hash() {
    {
        cat "$RESOURCES/lib.sh" "$RESOURCES/guest/init" "$RESOURCES/guest/fstab" "$0"
        sha256sum "$BUSYBOX"
        guest_bin_files | while read -r f; do sha256sum "$f"; done
    } | sha256sum | cut -d' ' -f1
}

# Applets that get a symlink in the initramfs. Each cpio entry costs ~35 ms of emulated ring 0
# to unpack on PVM hosts (all ~280 applet links: +10 s of boot), so the initramfs links only
# these; the shell still runs every other applet by name (busybox "standalone" shell, needs
# /proc), and programs can exec `busybox <applet>`. The ext4 root links all applets.
INITRAMFS_APPLETS="sh mount reboot setsid cat echo ls sleep dmesg devmem nc md5sum dd ping ip"

# make_guest_tree DIR [APPLET...]: busybox + applet symlinks (all, or only the named ones),
# /dev/console, mount points, /init and /sbin/init (both resources/guest/init), /etc/fstab,
# and the files of $PLAINVM_GUEST_BIN_DIR in /usr/bin.
make_guest_tree() {
    local root=$1 applet f
    shift
    rm -rf "$root"
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,dev,proc,sys,tmp,root,mnt,run}
    chmod 1777 "$root/tmp"
    cp "$BUSYBOX" "$root/bin/busybox"
    # The i386 busybox runs on the x86_64 build host (IA32 emulation) and lists its applets.
    "$root/bin/busybox" --list-full > "$CACHE/busybox-applets.txt" \
        || die "cannot run the i386 busybox on this host (needs IA32 emulation)"
    while read -r applet; do
        if [ $# -eq 0 ] || [[ " $* " == *" $(basename "$applet") "* ]]; then
            [ "$applet" = bin/busybox ] || ln -sf /bin/busybox "$root/$applet"
        fi
    done < "$CACHE/busybox-applets.txt"
    # The kernel opens /dev/console for init before anything mounts devtmpfs.
    mknod -m 600 "$root/dev/console" c 5 1
    install -m 755 "$RESOURCES/guest/init" "$root/init"
    rm -f "$root/sbin/init"
    install -m 755 "$RESOURCES/guest/init" "$root/sbin/init"
    install -m 644 "$RESOURCES/guest/fstab" "$root/etc/fstab"
    guest_bin_files | while read -r f; do cp -L "$f" "$root/usr/bin/"; done
}
