#!/bin/bash
# The one entry point (README, CI): build every Linux guest artifact plainvm's tests use,
# each step cached (a run with nothing changed takes about a second), then print the paths.
# Environment: PLAINVM_CACHE (default /var/cache/plainvm), PLAINVM_GUEST_BIN_DIR (optional).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
"$here/build-kernel.sh"
# Our own guest helpers (guest/c) go into /usr/bin of both images.
"$here/build-guest-bins.sh"
export PLAINVM_GUEST_BIN_DIR=${PLAINVM_GUEST_BIN_DIR:-${PLAINVM_CACHE:-/var/cache/plainvm}/guest-bin}
"$here/build-initramfs.sh"
"$here/build-rootfs.sh"
# The emulated AMD-V test host (resources/hw-host): the kernel flavour for hardware hosts, then
# the level-1 host's kernel, initramfs and the 64-bit guest images. Only the tests need them:
# PLAINVM_HW_HOST=0 (the quickstart) skips them.
if [ "${PLAINVM_HW_HOST:-1}" != 0 ]; then
    "$here/hw-host/build-kernel-hw.sh"
    "$here/hw-host/build-l1.sh"
fi
source "$here/env.sh"
echo "PLAINVM_VMLINUX=$PLAINVM_VMLINUX"
echo "PLAINVM_VMLINUX_NOINT3=$PLAINVM_VMLINUX_NOINT3"
echo "PLAINVM_INITRAMFS=$PLAINVM_INITRAMFS"
echo "PLAINVM_ROOTFS=$PLAINVM_ROOTFS"
echo "hardware-host kernel: $PLAINVM_CACHE/vmlinux-hw; emulated AMD-V host: $PLAINVM_CACHE/hw-host"
