#!/bin/bash
# Build the small static 32-bit guest helpers in guest/c/*.c (one program per file, named after
# it) into $PLAINVM_CACHE/guest-bin, which build-guest.sh puts into /usr/bin of the initramfs and
# the rootfs. 32-bit C because Linux guests on PVM hosts run a 32-bit userspace and the Rust
# toolchain here only targets x86_64 (/work/shared/linux-boot.md). Cached by a hash of the sources.
# -mno-80387 everywhere: on kvm_pvm hosts 32-bit guest user code runs in KVM's instruction
# emulator, which has no x87 (an `fldz` is SIGILL), so the compiler must not emit any; a helper
# that uses floating point then fails to link instead of dying in the guest (resources/README.md).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

src=$RESOURCES/../guest/c
out=$CACHE/guest-bin
shopt -s nullglob
files=("$src"/*.c "$src"/*.h "$src"/tests/*.c)
hash=$( (cat "$0" "${files[@]}" /dev/null) | sha256sum | cut -d' ' -f1)
if up_to_date guest-bin "$hash" "$out"; then
    log "up to date: $out"
    exit 0
fi
need_pkgs gcc gcc-multilib
rm -rf "$out.tmp" && mkdir -p "$out.tmp"
# The helpers' unit tests (guest/c/tests/NAME.c, each a program that includes the helper it
# tests) run here on the build host, which runs i386 binaries (IA32 emulation); a failure stops
# the build, so no image ever gets a helper whose test fails.
tests=$(mktemp -d)
trap 'rm -rf "$tests"' EXIT
for t in "$src"/tests/*.c; do
    name=$(basename "$t" .c)
    gcc -m32 -mno-80387 -Os -Wall -Werror -o "$tests/$name" "$t"
    "$tests/$name" || die "guest helper test $name failed"
done
for c in "$src"/*.c; do
    name=$(basename "$c" .c)
    gcc -m32 -static -mno-80387 -Os -Wall -Werror -o "$out.tmp/$name" "$c"
    strip "$out.tmp/$name"
done
rm -rf "$out" && mv "$out.tmp" "$out"
write_stamp guest-bin "$hash"
log "built $out"
