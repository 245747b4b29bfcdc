//! A vCPU's boot state: CPUID, MSRs as firmware leaves them, FPU, registers, LAPIC.

use super::VcpuError;
use crate::boot::{regs, BootInfo};
use kvm_bindings::{kvm_fpu, kvm_mp_state, kvm_msr_entry, CpuId, Msrs, KVM_MP_STATE_RUNNABLE};
use kvm_ioctls::VcpuFd;

// MSRs set at boot, as real firmware would leave them.
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MISC_ENABLE_FAST_STRING: u64 = 1;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MTRR_ENABLE_WRITEBACK: u64 = (1 << 11) | 6;

// LAPIC local vector table registers and delivery modes.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 4;
const APIC_MODE_EXTINT: u32 = 7;

/// Put vCPU `index` of `count` into its boot state.
pub fn configure(
    fd: &VcpuFd,
    cpuid: &CpuId,
    boot: &BootInfo,
    index: u8,
    count: u8,
) -> Result<(), VcpuError> {
    let err = |what| {
        move |source| VcpuError::Setup {
            index,
            what,
            source,
        }
    };
    fd.set_cpuid2(cpuid).map_err(err("set CPUID"))?;
    let msrs = boot_msrs();
    // Some hosts refuse individual MSRs (nested KVM); what it accepts is enough to boot.
    fd.set_msrs(&msrs).map_err(err("set MSRs"))?;
    fd.set_fpu(&kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    })
    .map_err(err("set FPU state"))?;
    let sregs = fd.get_sregs().map_err(err("read special registers"))?;
    fd.set_sregs(&regs::sregs(boot, sregs))
        .map_err(err("set special registers"))?;
    fd.set_regs(&regs::regs(boot, index, count))
        .map_err(err("set registers"))?;
    let mut lapic = fd.get_lapic().map_err(err("read the LAPIC"))?;
    set_lvt(&mut lapic, APIC_LVT0, APIC_MODE_EXTINT);
    set_lvt(&mut lapic, APIC_LVT1, APIC_MODE_NMI);
    fd.set_lapic(&lapic).map_err(err("set the LAPIC"))?;
    if index > 0 && regs::starts_runnable(boot.entry, index) {
        fd.set_mp_state(kvm_mp_state {
            mp_state: KVM_MP_STATE_RUNNABLE,
        })
        .map_err(err("make it runnable"))?;
    }
    Ok(())
}

fn boot_msrs() -> Msrs {
    let e = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    Msrs::from_entries(&[
        e(MSR_IA32_SYSENTER_CS, 0),
        e(MSR_IA32_SYSENTER_ESP, 0),
        e(MSR_IA32_SYSENTER_EIP, 0),
        e(MSR_STAR, 0),
        e(MSR_CSTAR, 0),
        e(MSR_KERNEL_GS_BASE, 0),
        e(MSR_SYSCALL_MASK, 0),
        e(MSR_LSTAR, 0),
        e(MSR_IA32_TSC, 0),
        e(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        e(MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITEBACK),
    ])
    .expect("a fixed list of 11 MSRs fits in a kvm_msrs")
}

fn set_lvt(lapic: &mut kvm_bindings::kvm_lapic_state, reg: usize, mode: u32) {
    let mut b = [0u8; 4];
    for (d, s) in b.iter_mut().zip(&lapic.regs[reg..reg + 4]) {
        *d = *s as u8;
    }
    let v = (u32::from_le_bytes(b) & !0x700) | (mode << 8);
    for (d, s) in lapic.regs[reg..reg + 4].iter_mut().zip(v.to_le_bytes()) {
        *d = s as _;
    }
}
