//! A vCPU's complete architectural state, read from KVM and written back (snapshot, migration).

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

/// Errors reading or writing vCPU state.
#[derive(Debug, thiserror::Error)]
pub enum VcpuStateError {
    #[error("cannot {what} of vCPU {index}: {source}")]
    Kvm {
        index: usize,
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error(
        "vCPU {index}: this host refuses MSR {msr:#x} of the saved state (a different CPU or KVM?)"
    )]
    MsrRefused { index: usize, msr: u32 },
    #[error("vCPU {index}: the saved state has {what} KVM cannot hold")]
    TooMany { index: usize, what: &'static str },
}

/// Everything KVM holds for one vCPU. Restored in the order KVM needs (CPUID first, events last).
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    pub cpuid: Vec<kvm_cpuid_entry2>,
    pub mp_state: kvm_mp_state,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub debugregs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    pub msrs: Vec<kvm_msr_entry>,
    pub events: kvm_vcpu_events,
}

impl VcpuState {
    /// Read vCPU `index`'s state. `msr_indices` is KVM's list of saveable MSRs; the ones this
    /// host refuses to read are skipped.
    pub fn save(
        fd: &VcpuFd,
        index: usize,
        cpuid: &CpuId,
        msr_indices: &[u32],
    ) -> Result<Self, VcpuStateError> {
        let e = |what| {
            move |source| VcpuStateError::Kvm {
                index,
                what,
                source,
            }
        };
        Ok(Self {
            cpuid: cpuid.as_slice().to_vec(),
            mp_state: fd.get_mp_state().map_err(e("read the MP state"))?,
            regs: fd.get_regs().map_err(e("read the registers"))?,
            sregs: fd.get_sregs().map_err(e("read the special registers"))?,
            xsave: fd.get_xsave().map_err(e("read the FPU/XSAVE state"))?,
            xcrs: fd.get_xcrs().unwrap_or_default(),
            debugregs: fd.get_debug_regs().map_err(e("read the debug registers"))?,
            lapic: fd.get_lapic().map_err(e("read the LAPIC"))?,
            msrs: read_msrs(fd, index, msr_indices)?,
            events: fd.get_vcpu_events().map_err(e("read pending events"))?,
        })
    }

    /// Write this state into a freshly created vCPU.
    pub fn restore(&self, fd: &VcpuFd, index: usize) -> Result<(), VcpuStateError> {
        let e = |what| {
            move |source| VcpuStateError::Kvm {
                index,
                what,
                source,
            }
        };
        let cpuid = CpuId::from_entries(&self.cpuid).map_err(|_| VcpuStateError::TooMany {
            index,
            what: "more CPUID entries than",
        })?;
        fd.set_cpuid2(&cpuid).map_err(e("set the CPUID"))?;
        fd.set_mp_state(self.mp_state)
            .map_err(e("set the MP state"))?;
        fd.set_regs(&self.regs).map_err(e("set the registers"))?;
        fd.set_sregs(&self.sregs)
            .map_err(e("set the special registers"))?;
        // SAFETY: `xsave` is a kvm_xsave read from KVM for this kind of vCPU; KVM validates it.
        unsafe { fd.set_xsave(&self.xsave) }.map_err(e("set the FPU/XSAVE state"))?;
        if self.xcrs.nr_xcrs > 0 {
            fd.set_xcrs(&self.xcrs).map_err(e("set the XCRs"))?;
        }
        fd.set_debug_regs(&self.debugregs)
            .map_err(e("set the debug registers"))?;
        fd.set_lapic(&self.lapic).map_err(e("set the LAPIC"))?;
        let msrs = Msrs::from_entries(&self.msrs).map_err(|_| VcpuStateError::TooMany {
            index,
            what: "more MSRs than",
        })?;
        let n = fd.set_msrs(&msrs).map_err(e("set the MSRs"))?;
        if n != self.msrs.len() {
            let msr = self.msrs.get(n).map_or(0, |m| m.index);
            return Err(VcpuStateError::MsrRefused { index, msr });
        }
        fd.set_vcpu_events(&self.events)
            .map_err(e("set pending events"))?;
        Ok(())
    }
}

/// Read every MSR in `indices` that this host lets us read (KVM stops at the first refusal).
fn read_msrs(
    fd: &VcpuFd,
    index: usize,
    indices: &[u32],
) -> Result<Vec<kvm_msr_entry>, VcpuStateError> {
    let mut out = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let entries: Vec<kvm_msr_entry> = rest
            .iter()
            .map(|&i| kvm_msr_entry {
                index: i,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| VcpuStateError::TooMany {
            index,
            what: "more MSRs than",
        })?;
        let n = fd
            .get_msrs(&mut msrs)
            .map_err(|source| VcpuStateError::Kvm {
                index,
                what: "read the MSRs",
                source,
            })?;
        out.extend_from_slice(&msrs.as_slice()[..n]);
        // Skip the one KVM refused and go on with the rest.
        rest = &rest[(n + 1).min(rest.len())..];
    }
    Ok(out)
}
