//! A vCPU: its initial state (CPUID, registers, MSRs, FPU, LAPIC) and the thread that runs it.

pub mod affinity;
pub mod control;
pub mod cpuid;
pub mod emulation;
pub mod state;

use crate::boot::{regs, BootInfo};
use crate::host::exit::{ExitReason, ExitSignal};
use crate::vcpu::control::{set_thread_kvm_run, VcpuControl};
use kvm_bindings::{kvm_fpu, kvm_mp_state, kvm_msr_entry, CpuId, Msrs, KVM_MP_STATE_RUNNABLE};
use kvm_ioctls::{VcpuExit, VcpuFd};
use plainvm_devices::Bus;
use plainvm_devices::GuestRam;
use std::sync::{Arc, Mutex, MutexGuard};

/// Errors setting up a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("vCPU {index}: cannot {what}: {source}")]
    Setup {
        index: u8,
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("cannot start the thread for vCPU {0}: {1}")]
    Spawn(u8, std::io::Error),
}

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

/// What a vCPU thread needs to run. The fd is shared so the VMM can read and set its state
/// while the vCPU is parked (outside KVM_RUN).
pub struct Vcpu {
    pub fd: Arc<Mutex<VcpuFd>>,
    pub index: u8,
    pub pio: Bus,
    pub mmio: Bus,
    pub mem: GuestRam,
    pub exit: Arc<ExitSignal>,
    pub control: Arc<VcpuControl>,
}

impl Vcpu {
    /// Run the vCPU on its own thread until the guest stops it or fails.
    pub fn spawn(self) -> Result<std::thread::JoinHandle<()>, VcpuError> {
        let index = self.index;
        std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || self.run())
            .map_err(|e| VcpuError::Spawn(index, e))
    }

    fn run(self) {
        self.control.register_thread();
        set_thread_kvm_run(lock(&self.fd).get_kvm_run());
        // Park between runs when paused; stop when another vCPU or a device ended the VM.
        while self.control.checkpoint() && !self.exit.is_requested() {
            let mut fd = lock(&self.fd);
            if let Some(r) = self.run_once(&mut fd) {
                self.exit.request(r);
                self.control.stop();
                return;
            }
        }
    }

    /// One KVM_RUN and its exit. `Some` ends the vCPU.
    fn run_once(&self, fd: &mut VcpuFd) -> Option<ExitReason> {
        let crash = |m: String| Some(ExitReason::Crash(format!("vCPU {}: {m}", self.index)));
        match fd.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                self.pio.write(u64::from(port), data);
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                self.pio.read(u64::from(port), data);
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                self.mmio.read(addr, data);
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                self.mmio.write(addr, data);
            }
            Ok(VcpuExit::SystemEvent(..)) | Ok(VcpuExit::Hlt) => return Some(ExitReason::PowerOff),
            Ok(VcpuExit::Shutdown) => {
                let rip = fd.get_regs().map(|r| r.rip).unwrap_or(0);
                return crash(format!(
                    "the guest triple-faulted (an exception it could not handle) near RIP {rip:#x}"
                ));
            }
            Ok(VcpuExit::InternalError) => {
                let index = self.index;
                return emulation::handle_internal_error(fd, &self.mem)
                    .err()
                    .map(|m| ExitReason::Crash(format!("vCPU {index}: {m}")));
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                return crash(format!(
                    "KVM could not enter the guest (hardware reason {reason:#x} on host CPU {cpu})"
                ))
            }
            Ok(VcpuExit::Intr) => {}
            Ok(other) => return crash(format!("unexpected KVM exit {other:?}")),
            // Kicked (pause or stop): clear the kick so the next KVM_RUN really runs.
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                fd.set_kvm_immediate_exit(0);
            }
            Err(e) => return crash(format!("KVM_RUN failed: {e}")),
        }
        None
    }
}

/// Lock a vCPU fd (a panic elsewhere must not wedge it: panics abort the process anyway).
pub fn lock(fd: &Mutex<VcpuFd>) -> MutexGuard<'_, VcpuFd> {
    fd.lock().unwrap_or_else(|e| e.into_inner())
}
