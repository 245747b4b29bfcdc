# On L1 (tests/hw_host.rs): Debian's stock kernel as Debian ships it (bzImage) with the 64-bit
# busybox initramfs, on 2 and 4 vCPUs. The kernel reports the CPUs it brought up; the 2-vCPU guest
# ends with `reboot -f` (reboot=k: the i8042 reset, plainvm exits 0), the 4-vCPU one powers off
# through the hypercall device with a status (plainvm.exitcode=7: plainvm exits 7).
# STOCK_EXTRA is set by the test (extra command-line words). `boot` runs a boot again when TCG's
# nested SVM triple-faulted it (l1-lib.sh).
boot stock-2cpu ${STOCK_TIMEOUT:-240} plainvm run --kernel $HW/vmlinuz --initrd $HW/initramfs.cpio \
    --cpus 2 --memory 256M --cmdline "$CMDLINE $STOCK_EXTRA"
boot stock-4cpu ${STOCK_TIMEOUT:-240} plainvm run --kernel $HW/vmlinuz --initrd $HW/initramfs.cpio \
    --cpus 4 --memory 256M --cmdline "$CMDLINE $STOCK_EXTRA plainvm.exitcode=7"
true
