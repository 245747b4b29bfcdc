//! Halting this vCPU for good from ring 3 through the halt gate, `int3`.
//!
//! Ring 3 cannot `hlt`. plainvm's ring-3 boot mode (and this guest's own PVH entry, for QEMU and
//! Firecracker) makes the breakpoint vector a DPL-3 gate to ring-0 code that halts with interrupts
//! off, so the vCPU blocks in the hypervisor and costs no host CPU. (The breakpoint vector because
//! on kvm_pvm hosts `int3` is the one software interrupt that reaches the guest's IDT from ring 3.)
//! The gate never returns; the loop only guards against a spurious return.

use core::arch::asm;

/// Halts this vCPU; it never runs again.
pub fn forever() -> ! {
    loop {
        // SAFETY: the gate only halts; it touches no memory this program uses (the interrupt
        // frame goes to the ring-0 stack the boot code set up).
        unsafe { asm!("int3", options(nomem, nostack)) }
    }
}
