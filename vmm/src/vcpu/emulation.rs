//! KVM emulation failures: inject #BP for an `int3` the emulator cannot run, report the rest.

use kvm_bindings::{
    KVM_INTERNAL_ERROR_EMULATION, KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES,
};
use kvm_ioctls::VcpuFd;
use plainvm_devices::GuestRam;
use std::sync::atomic::{AtomicU64, Ordering};
use vm_memory::{Bytes, GuestAddress};

/// How many `int3` emulation failures were answered by injecting #BP (reported with --verbose).
pub static BREAKPOINTS_INJECTED: AtomicU64 = AtomicU64::new(0);

/// The #BP exception vector.
const BP_VECTOR: u8 = 3;

/// Handle a `KVM_EXIT_INTERNAL_ERROR`. Ok means the guest can go on; Err carries the report.
pub fn handle_internal_error(vcpu: &mut VcpuFd, mem: &GuestRam) -> Result<(), String> {
    let run = vcpu.get_kvm_run();
    // SAFETY: the last exit was KVM_EXIT_INTERNAL_ERROR, so `internal` is the union's live member,
    // and it is plain integers.
    let internal = unsafe { run.__bindgen_anon_1.internal };
    let regs = vcpu
        .get_regs()
        .map_err(|e| format!("KVM internal error, and reading registers failed: {e}"))?;
    let sregs = vcpu
        .get_sregs()
        .map_err(|e| format!("KVM internal error, and reading registers failed: {e}"))?;
    let (suberror, ndata) = (internal.suberror, internal.ndata as usize);
    let mut insn = Vec::new();
    if suberror == KVM_INTERNAL_ERROR_EMULATION
        && ndata >= 3
        && internal.data[0] & u64::from(KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES) != 0
    {
        let raw: Vec<u8> = internal.data[1..3]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        let len = usize::from(raw[0]).min(15);
        insn.extend_from_slice(&raw[1..1 + len]);
    }
    if insn.is_empty() {
        insn = read_at_rip(vcpu, mem, sregs.cs.base.wrapping_add(regs.rip));
    }
    if suberror == KVM_INTERNAL_ERROR_EMULATION && insn.first() == Some(&0xcc) {
        return inject_breakpoint(vcpu, regs);
    }
    let bytes: Vec<String> = insn.iter().map(|b| format!("{b:02x}")).collect();
    Err(format!(
        "KVM internal error (suberror {suberror}{}) at RIP {:#x} (CS {:#x}, CPL {}), instruction bytes [{}]. \
         The guest ran an instruction this host's KVM cannot execute; on hosts that emulate guest \
         ring 0, boot with --cpu-template safe and a kernel that does not use it",
        if suberror == KVM_INTERNAL_ERROR_EMULATION { ": emulation failure" } else { "" },
        regs.rip,
        sregs.cs.selector,
        sregs.cs.dpl,
        bytes.join(" ")
    ))
}

/// Read up to 15 bytes at linear address `linear`, through the guest's page tables.
fn read_at_rip(vcpu: &VcpuFd, mem: &GuestRam, linear: u64) -> Vec<u8> {
    let phys = match vcpu.translate_gva(linear) {
        Ok(t) if t.valid != 0 => t.physical_address,
        _ => return Vec::new(),
    };
    let mut buf = vec![0u8; 15];
    // Stop at the page end: the next page may not be mapped.
    let n = (0x1000 - (phys & 0xfff)).min(15) as usize;
    match mem.read_slice(&mut buf[..n], GuestAddress(phys)) {
        Ok(()) => {
            buf.truncate(n);
            buf
        }
        Err(_) => Vec::new(),
    }
}

/// Do what `int3` does: step over it and raise #BP (a trap, so the pushed RIP is the next one).
fn inject_breakpoint(vcpu: &mut VcpuFd, mut regs: kvm_bindings::kvm_regs) -> Result<(), String> {
    let mut events = vcpu
        .get_vcpu_events()
        .map_err(|e| format!("cannot read vCPU events to inject #BP: {e}"))?;
    regs.rip = regs.rip.wrapping_add(1);
    events.exception.injected = 1;
    events.exception.nr = BP_VECTOR;
    events.exception.has_error_code = 0;
    events.exception.error_code = 0;
    events.exception.pending = 0;
    vcpu.set_regs(&regs)
        .and_then(|_| vcpu.set_vcpu_events(&events))
        .map_err(|e| format!("cannot inject #BP for int3: {e}"))?;
    BREAKPOINTS_INJECTED.fetch_add(1, Ordering::Relaxed);
    Ok(())
}
