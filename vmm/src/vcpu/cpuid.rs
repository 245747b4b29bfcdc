//! The guest's CPUID: KVM's supported set, the topology, the KVM PV leaves, and the templates that
//! hide what an emulating host cannot run.
//!
//! Some hosts do not take the table as given. This machine's `kvm_pvm` rewrites it inside
//! KVM_SET_CPUID2 (KVM_GET_CPUID2 reads back the rewrite, and the guest's CPUID answers from it):
//! leaf 1 ECX gets the host's bits for every feature outside KVM_GET_SUPPORTED_CPUID (XSAVE,
//! POPCNT, AVX, ...), a leaf 7 entry gets the host's leaf 7, and leaf 0xd entries are put back
//! with the host's values even when left out. So the safe template also leaves leaf 7 out (an
//! absent leaf reads as zeros) and caps the highest basic leaf below 0xd (a guest that sees no
//! XSAVE leaf drops XSAVE itself: Linux's `filter_cpuid_features`), and [`forced_features`]
//! names what still gets through, for the Linux command line's `clearcpuid=`.

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
    #[error("cannot check which CPU features this host's KVM keeps from the template (scratch VM: {what}): {source}")]
    Probe {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
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
const L7_EBX_SMEP: u32 = 1 << 7;
const L7_EBX_SMAP: u32 = 1 << 20;
const L7_ECX_UMIP: u32 = 1 << 2;
const LX1_ECX_ABM: u32 = 1 << 5;
const LX1_EDX_RDTSCP: u32 = 1 << 27;
const LX8_EBX_XSAVEERPTR: u32 = 1 << 2;

/// The highest basic leaf the safe template offers: below the XSAVE leaf 0xd, so a guest drops
/// XSAVE even where the host forces its bit into leaf 1.
const SAFE_MAX_BASIC_LEAF: u32 = 0xc;
/// The XSAVE state leaf, the first one above [`SAFE_MAX_BASIC_LEAF`].
const XSAVE_LEAF: u32 = 0xd;

/// Features the safe template hides because the emulator cannot run their instructions, by their
/// Linux `clearcpuid=` name: (name, leaf, register (0 EAX .. 3 EDX), bit).
const MUST_HIDE: [(&str, u32, usize, u32); 6] = [
    ("cx16", 1, 2, L1_ECX_CX16),
    ("popcnt", 1, 2, L1_ECX_POPCNT),
    ("xsave", 1, 2, L1_ECX_XSAVE),
    ("smep", 7, 1, L7_EBX_SMEP),
    ("smap", 7, 1, L7_EBX_SMAP),
    ("umip", 7, 2, L7_ECX_UMIP),
];

/// KVM paravirtual features that need no hypercall: offered by the safe template.
const KVM_PV_SAFE: u32 = (1 << 0) | (1 << 1) | (1 << 3) | (1 << 6) | (1 << 24);

/// Build the CPUID for vCPU `index` of `count`.
pub fn for_vcpu(base: &CpuId, template: Resolved, index: u8, count: u8) -> CpuId {
    let width = 8 - (count.max(1) - 1).leading_zeros().min(8); // bits for the core ID
    let mut entries = base.as_slice().to_vec();
    if template == Resolved::Safe {
        // Leaf 7 goes whole: a host may answer any leaf 7 entry with its own bits.
        entries.retain(|e| e.function != 7);
    }
    for e in &mut entries {
        topology(e, index, count, width);
        if template == Resolved::Safe {
            safe(e);
        }
    }
    CpuId::from_entries(&entries).expect("no more entries than KVM's supported CPUID had")
}

/// The `clearcpuid=` features a Linux guest given `table` still sees although the safe template
/// hides them. `table` is what the host's KVM made of the template (read back with
/// KVM_GET_CPUID2): Linux reads no leaf above the highest basic leaf and drops XSAVE when there
/// is no leaf 0xd.
pub fn forced_features(table: &[kvm_cpuid_entry2]) -> Vec<&'static str> {
    let find = |leaf: u32| table.iter().find(|e| e.function == leaf && e.index == 0);
    let max_basic = find(0).map_or(0, |e| e.eax);
    MUST_HIDE
        .iter()
        .filter(|(name, leaf, reg, bit)| {
            let readable = *leaf <= max_basic && (*name != "xsave" || max_basic >= XSAVE_LEAF);
            let regs = find(*leaf).map(|e| [e.eax, e.ebx, e.ecx, e.edx]);
            readable && regs.is_some_and(|r| r[*reg] & bit != 0)
        })
        .map(|(name, ..)| *name)
        .collect()
}

/// The `clearcpuid=` features a Linux guest of `count` vCPUs needs on this host under `template`:
/// with the safe template, what the host's KVM puts back into its table (none where the table
/// is taken as given); nothing with the host template, which hides nothing.
pub fn linux_clearcpuid(
    kvm: &Kvm,
    base: &CpuId,
    template: Resolved,
    count: u8,
) -> Result<Vec<&'static str>, CpuidError> {
    if template != Resolved::Safe {
        return Ok(Vec::new());
    }
    let kept = as_host_keeps(kvm, &for_vcpu(base, template, 0, count))?;
    Ok(forced_features(kept.as_slice()))
}

/// Set `cpuid` on a vCPU of a scratch VM and read back what this host's KVM keeps of it.
pub fn as_host_keeps(kvm: &Kvm, cpuid: &CpuId) -> Result<CpuId, CpuidError> {
    let probe = |what| move |source| CpuidError::Probe { what, source };
    let vm = kvm.create_vm().map_err(probe("create a VM"))?;
    let vcpu = vm.create_vcpu(0).map_err(probe("create a vCPU"))?;
    vcpu.set_cpuid2(cpuid).map_err(probe("set CPUID"))?;
    vcpu.get_cpuid2(KVM_MAX_CPUID_ENTRIES)
        .map_err(probe("read CPUID back"))
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
        (0, _) => e.eax = e.eax.min(SAFE_MAX_BASIC_LEAF),
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
        // No XSAVE: its state-component leaf goes too (above the highest basic leaf anyway).
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
            entry(0, 0, 0x1f),
            entry(1, 0, u32::MAX),
            entry(7, 0, u32::MAX),
            entry(7, 1, u32::MAX),
            entry(0xd, 1, u32::MAX),
        ])
        .unwrap();
        let c = for_vcpu(&base, Resolved::Safe, 1, 2);
        let e = c.as_slice();
        assert_eq!(e.len(), 3, "leaf 7 left out: {e:?}");
        assert_eq!(
            e[0].eax, SAFE_MAX_BASIC_LEAF,
            "no basic leaf from 0xd (XSAVE) up"
        );
        assert_eq!(e[1].ecx & (L1_ECX_CX16 | L1_ECX_XSAVE | L1_ECX_POPCNT), 0);
        assert_eq!(e[1].ebx >> 24, 1, "APIC ID of vCPU 1");
        assert_eq!((e[1].ebx >> 16) & 0xff, 2, "logical processor count");
        assert_eq!(
            (e[2].function, e[2].eax),
            (0xd, 0),
            "XSAVEOPT/XSAVEC/XSAVES gone"
        );
        assert!(forced_features(e).is_empty(), "a host that keeps the table");
        let h = for_vcpu(&base, Resolved::Host, 0, 1);
        assert_eq!(h.as_slice().len(), 5);
        assert_eq!(h.as_slice()[0].eax, 0x1f);
        assert_ne!(h.as_slice()[1].ecx & L1_ECX_CX16, 0);
    }

    /// What this machine's `kvm_pvm` does in KVM_SET_CPUID2 (measured, see the module doc):
    /// host bits outside KVM's supported set into leaf 1 ECX, the host's leaf 7 into a leaf 7
    /// entry, the host's leaf 0xd entries added.
    fn pvm_rewrite(table: &CpuId, host: &[kvm_cpuid_entry2]) -> Vec<kvm_cpuid_entry2> {
        let supported_l1_ecx = 0x8120_2000; // hypervisor, x2APIC, CX16
        let host_of = |f: u32, i: u32| {
            *host
                .iter()
                .find(|h| (h.function, h.index) == (f, i))
                .unwrap()
        };
        let mut out: Vec<_> = table.as_slice().to_vec();
        for e in &mut out {
            match e.function {
                1 => e.ecx |= host_of(1, 0).ecx & !supported_l1_ecx,
                7 => *e = host_of(7, e.index),
                _ => {}
            }
        }
        out.retain(|e| e.function != 0xd);
        out.extend(host.iter().filter(|h| h.function == 0xd));
        out
    }

    #[test]
    fn on_a_rewriting_host_only_popcnt_is_left_for_the_command_line() {
        // This machine's host CPUID (AMD EPYC) and KVM's supported CPUID.
        let host = [
            kvm_cpuid_entry2 {
                function: 1,
                ecx: 0xf7f8_3203,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 7,
                ebx: 0x219c_03ab,
                ecx: 0x604,
                edx: 0x10,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xd,
                eax: 7,
                ebx: 0x240,
                ecx: 0x340,
                ..Default::default()
            },
        ];
        let base = CpuId::from_entries(&[
            entry(0, 0, 0xd),
            kvm_cpuid_entry2 {
                function: 1,
                ecx: 0x8120_2000,
                edx: 0x078b_fbff,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 7,
                ebx: 0x0180_0002,
                ecx: 4,
                ..Default::default()
            },
            entry(0xd, 0, 0),
        ])
        .unwrap();
        let host_template = pvm_rewrite(&for_vcpu(&base, Resolved::Host, 0, 1), &host);
        assert_eq!(
            forced_features(&host_template),
            ["cx16", "popcnt", "xsave", "smep", "smap", "umip"].to_vec(),
            "the host template hides nothing"
        );
        let safe = pvm_rewrite(&for_vcpu(&base, Resolved::Safe, 0, 2), &host);
        assert_eq!(forced_features(&safe), ["popcnt"].to_vec());
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
