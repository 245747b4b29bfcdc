# Source this (`. resources/env.sh`) to get the paths of the guest artifacts that
# resources/build-guest.sh builds, and the default kernel command line.
PLAINVM_CACHE=${PLAINVM_CACHE:-/var/cache/plainvm}
export PLAINVM_VMLINUX=$PLAINVM_CACHE/vmlinux
export PLAINVM_VMLINUX_NOINT3=$PLAINVM_CACHE/vmlinux-noint3
export PLAINVM_INITRAMFS=$PLAINVM_CACHE/initramfs.cpio
export PLAINVM_ROOTFS=$PLAINVM_CACHE/rootfs.ext4
PLAINVM_CMDLINE=$(cat "$(dirname "${BASH_SOURCE[0]}")/cmdline")
export PLAINVM_CMDLINE
