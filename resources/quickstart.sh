#!/bin/bash
# First run on a fresh Debian machine (as root): install what is needed, build plainvm and the
# Linux guest (kernel, initramfs; cached under /var/cache/plainvm), then boot the guest. It prints
# a banner from its init and powers off, and plainvm exits with status 0.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
command -v cargo >/dev/null || { echo "quickstart: cargo (Rust) is needed: https://rustup.rs" >&2; exit 1; }
# The emulated AMD-V host's kernels and images are for the tests only.
PLAINVM_HW_HOST=0 "$root/resources/build-guest.sh"
cargo build --release
source "$root/resources/env.sh"
echo "quickstart: booting Linux (about 35 s on hosts that emulate guest ring 0, under 1 s elsewhere)"
exec "$root/target/release/plainvm" run --kernel "$PLAINVM_VMLINUX" --initrd "$PLAINVM_INITRAMFS" \
    --cmdline "$PLAINVM_CMDLINE" --verbose
