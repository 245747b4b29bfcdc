//! The guest's CPUID: KVM's supported set, the topology, the KVM PV leaves, and the templates that
//! hide what an emulating host cannot run.

use crate::config::CpuTemplate;
use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::Kvm;

/// Errors building or checking the CPUID.
#[derive(Debug, thiserror::Error)]
pub enum CpuidError {
    #[error("cannot read KVM's supported CPUID: {0}")]
    Supported(kvm_ioctls::Error),
    #[error("cannot open /dev/kvm to check the snapshot's CPU features: {0}")]
    Kvm(kvm_ioctls::Error),
    #[error("the snapshot's guest uses CPU features this host lacks (CPUID leaf {leaf:#x}.{index} register {reg}: missing bits {missing:#x}); restore it on a host with the same CPU features")]
    Missing {
        leaf: u32,
        index: u32,
        reg: &'static str,
        missing: u32,
    },
}

/// Feature leaves whose bits a restored guest may already rely on.
const FEATURE_LEAVES: [(u32, u32); 4] = [(1, 0), (7, 0), (0x8000_0001, 0), (0xd, 1)];

/// Refuse a guest CPUID (from a snapshot or an incoming migration) with features this host's
/// KVM cannot offer.
pub fn check_cpuid(saved_cpuid: &[kvm_cpuid_entry2]) -> Result<(), CpuidError> {
    let kvm = Kvm::new().map_err(CpuidError::Kvm)?;
    let host = supported(&kvm)?;
    for (leaf, index) in FEATURE_LEAVES {
        let find = |entries: &[kvm_cpuid_entry2]| {
            entries
                .iter()
                .find(|e| e.function == leaf && e.index == index)
                .copied()
        };
        let (Some(saved), Some(have)) = (find(saved_cpuid), find(host.as_slice())) else {
            continue;
        };
        // The hypervisor bit and the per-vCPU topology bits are ours, not the host's.
        let ecx_ours = if leaf == 1 { L1_ECX_HYPERVISOR } else { 0 };
        let edx_ours = if leaf == 1 { L1_EDX_HTT } else { 0 };
        for (reg, s, h, ours) in [
            ("ecx", saved.ecx, have.ecx, ecx_ours),
            ("edx", saved.edx, have.edx, edx_ours),
            ("ebx", saved.ebx, have.ebx, 0),
        ] {
            if leaf == 1 && reg == "ebx" {
                continue; // APIC ID and counts
            }
            let missing = s & !h & !ours;
            if missing != 0 {
                return Err(CpuidError::Missing {
                    leaf,
                    index,
                    reg,
                    missing,
                });
            }
        }
    }
    Ok(())
}

/// The template in force after `auto` is resolved against the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolved {
    Host,
    Safe,
}

/// True when this host's KVM runs guest ring 0 through its instruction emulator (the `kvm_pvm`
/// module, with no VT-x/AMD-V): such hosts need the safe template.
pub fn host_emulates_ring0() -> bool {
    let pvm = std::path::Path::new("/sys/module/kvm_pvm").exists();
    let hw = std::fs::read_to_string("/proc/cpuinfo")
        .map(|c| {
            c.lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
        })
        .unwrap_or(false);
    pvm && !hw
}

/// Resolve `auto` for this host.
pub fn resolve(template: CpuTemplate) -> Resolved {
    match template {
        CpuTemplate::Host => Resolved::Host,
        CpuTemplate::Safe => Resolved::Safe,
        CpuTemplate::Auto if host_emulates_ring0() => Resolved::Safe,
        CpuTemplate::Auto => Resolved::Host,
    }
}

// Feature bits, by leaf and register.
const L1_ECX_FMA: u32 = 1 << 12;
const L1_ECX_CX16: u32 = 1 << 13;
const L1_ECX_PCID: u32 = 1 << 17;
const L1_ECX_MOVBE: u32 = 1 << 22;
const L1_ECX_POPCNT: u32 = 1 << 23;
const L1_ECX_AES: u32 = 1 << 25;
const L1_ECX_XSAVE: u32 = 1 << 26;
const L1_ECX_OSXSAVE: u32 = 1 << 27;
const L1_ECX_AVX: u32 = 1 << 28;
const L1_ECX_F16C: u32 = 1 << 29;
const L1_ECX_RDRAND: u32 = 1 << 30;
const L1_ECX_PCLMUL: u32 = 1 << 1;
const L1_ECX_HYPERVISOR: u32 = 1 << 31;
const L1_EDX_HTT: u32 = 1 << 28;
const L7_EBX_FSGSBASE: u32 = 1;
const L7_EBX_AVX2: u32 = 1 << 5;
const L7_EBX_SMEP: u32 = 1 << 7;
const L7_EBX_INVPCID: u32 = 1 << 10;
const L7_EBX_RDSEED: u32 = 1 << 18;
const L7_EBX_SMAP: u32 = 1 << 20;
/// AVX-512 foundation and friends (16, 17, 21, 26, 27, 28, 30, 31).
const L7_EBX_AVX512: u32 = (1 << 16) | (1 << 17) | (1 << 21) | (0b11_0111 << 26);
const L7_ECX_UMIP: u32 = 1 << 2;
const L7_ECX_PKU: u32 = (1 << 3) | (1 << 4);
const L7_ECX_WAITPKG: u32 = 1 << 5;
const L7_ECX_VECTOR_CRYPTO: u32 = (1 << 8) | (1 << 9) | (1 << 10);
const L7_ECX_LA57: u32 = 1 << 16;
const L7_ECX_RDPID: u32 = 1 << 22;
const LX1_ECX_ABM: u32 = 1 << 5;
const LX1_EDX_RDTSCP: u32 = 1 << 27;
const LX8_EBX_XSAVEERPTR: u32 = 1 << 2;

/// KVM paravirtual features that need no hypercall: offered by the safe template.
const KVM_PV_SAFE: u32 = (1 << 0) | (1 << 1) | (1 << 3) | (1 << 6) | (1 << 24);

/// Build the CPUID for vCPU `index` of `count`.
pub fn for_vcpu(base: &CpuId, template: Resolved, index: u8, count: u8) -> CpuId {
    let mut cpuid = base.clone();
    let width = 8 - (count.max(1) - 1).leading_zeros().min(8); // bits for the core ID
    for e in cpuid.as_mut_slice() {
        topology(e, index, count, width);
        if template == Resolved::Safe {
            safe(e);
        }
    }
    cpuid
}

/// KVM's supported CPUID, read once per VM.
pub fn supported(kvm: &Kvm) -> Result<CpuId, CpuidError> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(CpuidError::Supported)
}

fn topology(e: &mut kvm_cpuid_entry2, index: u8, count: u8, width: u32) {
    let apic = u32::from(index);
    match e.function {
        1 => {
            e.ebx = (apic << 24) | (u32::from(count) << 16) | (8 << 8);
            e.ecx |= L1_ECX_HYPERVISOR;
            if count > 1 {
                e.edx |= L1_EDX_HTT;
            } else {
                e.edx &= !L1_EDX_HTT;
            }
        }
        4 => {
            // One core per vCPU, no SMT: cores per package - 1 in EAX[31:26], no sharing of L1/L2.
            let level = (e.eax >> 5) & 7;
            let sharing = if level >= 3 { u32::from(count) - 1 } else { 0 };
            e.eax = (e.eax & 0x3ff) | (sharing << 14) | ((u32::from(count) - 1) << 26);
        }
        0xb | 0x1f => {
            let (shift, n, level_type) = match e.index {
                0 => (0, 1, 1),
                1 => (width, u32::from(count), 2),
                _ => (0, 0, 0),
            };
            e.eax = shift;
            e.ebx = n;
            e.ecx = (level_type << 8) | e.index;
            e.edx = apic;
        }
        // AMD: core count and APIC ID width, then the extended APIC ID / core / node leaf.
        0x8000_0008 => e.ecx = (e.ecx & !0xf0ff) | (width << 12) | (u32::from(count) - 1),
        0x8000_001e => {
            e.eax = apic;
            e.ebx = apic & 0xff; // core ID; one thread per core
            e.ecx = 0; // node 0, one node per package
        }
        0xa => {
            // No virtual PMU: the guest must not program performance counters.
            (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, 0, 0);
        }
        _ => {}
    }
}

fn safe(e: &mut kvm_cpuid_entry2) {
    match (e.function, e.index) {
        (1, _) => {
            e.ecx &= !(L1_ECX_FMA
                | L1_ECX_CX16
                | L1_ECX_PCID
                | L1_ECX_MOVBE
                | L1_ECX_POPCNT
                | L1_ECX_AES
                | L1_ECX_XSAVE
                | L1_ECX_OSXSAVE
                | L1_ECX_AVX
                | L1_ECX_F16C
                | L1_ECX_RDRAND
                | L1_ECX_PCLMUL);
        }
        (7, 0) => {
            e.ebx &= !(L7_EBX_FSGSBASE
                | L7_EBX_AVX2
                | L7_EBX_SMEP
                | L7_EBX_INVPCID
                | L7_EBX_RDSEED
                | L7_EBX_SMAP
                | L7_EBX_AVX512);
            e.ecx &= !(L7_ECX_UMIP
                | L7_ECX_PKU
                | L7_ECX_WAITPKG
                | L7_ECX_VECTOR_CRYPTO
                | L7_ECX_LA57
                | L7_ECX_RDPID);
            e.edx = 0;
        }
        (7, _) => (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, 0, 0),
        // No XSAVE: its state-component leaf goes too.
        (0xd, _) => (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, 0, 0),
        (0x4000_0001, _) => e.eax &= KVM_PV_SAFE,
        (0x8000_0001, _) => {
            e.ecx &= !LX1_ECX_ABM;
            e.edx &= !LX1_EDX_RDTSCP;
        }
        // Tell an AMD-style guest FXSAVE leaks no error pointers, so it skips the fnclex/fild dance.
        (0x8000_0008, _) => e.ebx |= LX8_EBX_XSAVEERPTR,
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, r: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: r,
            ebx: r,
            ecx: r,
            edx: r,
            ..Default::default()
        }
    }

    #[test]
    fn safe_template_hides_what_the_emulator_cannot_run() {
        let base = CpuId::from_entries(&[
            entry(1, 0, u32::MAX),
            entry(7, 0, u32::MAX),
            entry(0xd, 1, u32::MAX),
        ])
        .unwrap();
        let c = for_vcpu(&base, Resolved::Safe, 1, 2);
        let e = c.as_slice();
        assert_eq!(e[0].ecx & (L1_ECX_CX16 | L1_ECX_XSAVE | L1_ECX_POPCNT), 0);
        assert_eq!(e[0].ebx >> 24, 1, "APIC ID of vCPU 1");
        assert_eq!((e[0].ebx >> 16) & 0xff, 2, "logical processor count");
        assert_eq!(e[1].ebx & (L7_EBX_SMAP | L7_EBX_SMEP), 0);
        assert_eq!(e[1].ecx & L7_ECX_UMIP, 0);
        assert_eq!(e[2].eax, 0, "XSAVEOPT/XSAVEC/XSAVES gone");
        let h = for_vcpu(&base, Resolved::Host, 0, 1);
        assert_ne!(h.as_slice()[0].ecx & L1_ECX_CX16, 0);
    }

    #[test]
    fn amd_leaves_report_one_package() {
        let base =
            CpuId::from_entries(&[entry(0x8000_0008, 0, 0), entry(0x8000_001e, 0, 7)]).unwrap();
        let c = for_vcpu(&base, Resolved::Host, 2, 3);
        let e = c.as_slice();
        assert_eq!(e[0].ecx & 0xff, 2, "3 cores");
        assert_eq!((e[0].ecx >> 12) & 0xf, 2, "APIC ID width");
        assert_eq!((e[1].eax, e[1].ebx, e[1].ecx), (2, 2, 0));
    }

    #[test]
    fn topology_leaf_reports_apic_id_and_core_count() {
        let base = CpuId::from_entries(&[entry(0xb, 0, 0), entry(0xb, 1, 0)]).unwrap();
        let c = for_vcpu(&base, Resolved::Host, 3, 4);
        let e = c.as_slice();
        assert_eq!((e[0].ebx, e[0].edx), (1, 3));
        assert_eq!((e[1].eax, e[1].ebx, e[1].edx), (2, 4, 3));
    }
}
