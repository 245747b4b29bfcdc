//! Building a VM, by booting a kernel or restoring saved state. Both share the steps: the KVM VM
//! with memory, irqchip and PIT; the devices; the vCPUs. Only how memory is filled and how each
//! vCPU gets its first state differ.

use super::state::VmState;
use super::{Startup, VcpuHandle, Vm, VmError};
use crate::boot;
use crate::config::VmConfig;
use crate::device_manager::{self, Devices, SavedDevices};
use crate::host::exit::ExitSignal;
use crate::memory::slots::MemorySlots;
use crate::memory::Layout;
use crate::snapshot;
use crate::vcpu::control::{install_kick_handler, VcpuControl};
use crate::vcpu::cpuid::{self, Resolved};
use crate::vcpu::{setup, Vcpu};
use kvm_bindings::{kvm_pit_config, CpuId, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use plainvm_devices::GuestRam;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Where KVM puts the real-mode TSS it needs on Intel hosts (inside the MMIO gap, unused).
const KVM_TSS_ADDR: usize = 0xfffb_d000;

/// Where a restored VM's memory comes from.
pub enum RestoreMemory {
    /// A snapshot directory; `copy` reads it all up front instead of mapping it lazily; `roots`
    /// are where its parents may lie besides the directory that holds it (`--allow-dir`).
    Snapshot {
        dir: PathBuf,
        copy: bool,
        roots: Vec<PathBuf>,
    },
    /// Memory already filled in (by an incoming migration).
    Filled(GuestRam),
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::KvmSetup { what, source }
}

/// The KVM VM with its memory, irqchip and PIT.
struct KvmVm {
    kvm: Kvm,
    fd: VmFd,
    mem: GuestRam,
    slots: MemorySlots,
}

impl KvmVm {
    /// Create the VM with `cfg`'s memory: fresh, or `from` a snapshot or a migration.
    fn create(cfg: &VmConfig, from: Option<&RestoreMemory>) -> Result<Self, VmError> {
        let kvm = Kvm::new().map_err(VmError::Kvm)?;
        let fd = kvm.create_vm().map_err(kvm_err("create a VM"))?;
        let mem = match from {
            Some(RestoreMemory::Filled(mem)) => mem.clone(),
            _ => Layout::new(cfg.memory_bytes).create_memory()?,
        };
        if cfg.memory_merge {
            crate::memory::ksm::mark_mergeable(&mem)?;
        }
        // Memory slots go in before the irqchip: registering them after is ~50x slower on some
        // hosts.
        let slots = MemorySlots::register(&fd, &mem)?;
        if let Some(RestoreMemory::Snapshot { dir, copy, roots }) = from {
            // After the slots: KVM registers a slot over a file mapping far more slowly.
            snapshot::load_memory(dir, roots, &mem, *copy)?;
        }
        fd.set_tss_address(KVM_TSS_ADDR)
            .map_err(kvm_err("set the TSS address"))?;
        fd.create_irq_chip()
            .map_err(kvm_err("create the in-kernel irqchip"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(kvm_err("create the PIT"))?;
        Ok(Self {
            kvm,
            fd,
            mem,
            slots,
        })
    }
}

impl Vm {
    /// Build a VM that boots `cfg`'s kernel (or the bundled test guest).
    pub fn boot(cfg: &VmConfig) -> Result<Vm, VmError> {
        let started = Instant::now();
        cfg.check()?;
        let k = KvmVm::create(cfg, None)?;
        let exit = Arc::new(ExitSignal::new().map_err(VmError::EventFd)?);
        let devices = device_manager::create(&k.fd, &k.mem, cfg, exit.clone(), None)?;
        let template = cpuid::resolve(cfg.cpu_template);
        let base = cpuid::supported(&k.kvm)?;
        // What the template cannot hide on this host, a Linux guest is told to ignore.
        let clear = match cfg.kernel {
            Some(_) => cpuid::linux_clearcpuid(&k.kvm, &base, template, cfg.cpus)?,
            None => Vec::new(),
        };
        let boot = boot::prepare(
            &k.mem,
            &Layout::new(cfg.memory_bytes),
            cfg,
            &devices.cmdline,
            &clear,
        )?;
        let init = |fd: &VcpuFd, index: u8| -> Result<CpuId, VmError> {
            let cpuid = cpuid::for_vcpu(&base, template, index, cfg.cpus);
            setup::configure(fd, &cpuid, &boot, index, cfg.cpus)?;
            Ok(cpuid)
        };
        let parts = Parts {
            cfg,
            started,
            file_backed: false,
            template: Some(template),
        };
        assemble(k, devices, exit, parts, init)
    }

    /// Build a VM that continues from `state`, with its memory from `memory`. `cfg` is the saved
    /// configuration with the host resources this host gives it.
    pub fn restore(cfg: &VmConfig, state: &VmState, memory: RestoreMemory) -> Result<Vm, VmError> {
        let started = Instant::now();
        // A saved configuration is checked like a command line before anything is built.
        cfg.check()?;
        if let Some(first) = state.vcpus.first() {
            cpuid::check_cpuid(&first.cpuid)?;
        }
        if state.vcpus.len() != usize::from(cfg.cpus) {
            return Err(VmError::BadSnapshot {
                saved: state.vcpus.len(),
                cpus: cfg.cpus,
            });
        }
        let k = KvmVm::create(cfg, Some(&memory))?;
        let exit = Arc::new(ExitSignal::new().map_err(VmError::EventFd)?);
        let saved = SavedDevices {
            virtio: &state.devices,
            serial: &state.serial,
            hypercall: state.hypercall,
        };
        let devices = device_manager::create(&k.fd, &k.mem, cfg, exit.clone(), Some(saved))?;
        let init = |fd: &VcpuFd, index: u8| -> Result<CpuId, VmError> {
            let saved = &state.vcpus[usize::from(index)];
            saved.restore(fd, usize::from(index))?;
            CpuId::from_entries(&saved.cpuid).map_err(|_| VmError::BadSnapshot {
                saved: state.vcpus.len(),
                cpus: cfg.cpus,
            })
        };
        let parts = Parts {
            cfg,
            started,
            file_backed: matches!(memory, RestoreMemory::Snapshot { copy: false, .. }),
            template: None,
        };
        let vm = assemble(k, devices, exit, parts, init)?;
        // After the vCPUs exist (their LAPICs are part of what the irqchip state refers to).
        state.kvm.restore(&vm.fd)?;
        Ok(vm)
    }
}

/// What differs between a booting and a restored VM beyond the vCPU state.
struct Parts<'a> {
    cfg: &'a VmConfig,
    started: Instant,
    file_backed: bool,
    template: Option<Resolved>,
}

/// Create the vCPUs (each set up by `init`, which returns its CPUID) and put the VM together.
fn assemble(
    k: KvmVm,
    devices: Devices,
    exit: Arc<ExitSignal>,
    parts: Parts<'_>,
    init: impl Fn(&VcpuFd, u8) -> Result<CpuId, VmError>,
) -> Result<Vm, VmError> {
    let cfg = parts.cfg;
    install_kick_handler()?;
    let control = Arc::new(VcpuControl::new(usize::from(cfg.cpus)));
    let mut handles = Vec::with_capacity(usize::from(cfg.cpus));
    let mut vcpus = Vec::with_capacity(usize::from(cfg.cpus));
    for index in 0..cfg.cpus {
        let fd =
            k.fd.create_vcpu(u64::from(index))
                .map_err(kvm_err("create a vCPU"))?;
        let cpuid = init(&fd, index)?;
        let fd = Arc::new(Mutex::new(fd));
        handles.push(VcpuHandle {
            fd: fd.clone(),
            cpuid,
        });
        vcpus.push(Vcpu {
            fd,
            index,
            pio: devices.pio.clone(),
            mmio: devices.mmio.clone(),
            mem: k.mem.clone(),
            exit: exit.clone(),
            control: control.clone(),
        });
    }
    Ok(Vm {
        kvm: k.kvm,
        fd: k.fd,
        config: cfg.clone(),
        mem: k.mem,
        file_backed: parts.file_backed,
        slots: Mutex::new(k.slots),
        // Dirty logging starts with the first full snapshot of this process: turning it on here
        // would cost a restore several milliseconds.
        last_snapshot: Mutex::new(None),
        vcpus: handles,
        control,
        transports: devices.transports,
        gate: devices.gate,
        hypercall: devices.hypercall,
        serial: devices.serial,
        milestones: devices.milestones,
        balloon: devices.balloon,
        exit,
        started: parts.started,
        template: parts.template,
        migration: Mutex::new(None),
        pending_exit: Mutex::new(None),
        startup: Mutex::new(Some(Startup {
            events: devices.events,
            vcpus,
        })),
        op: Mutex::new(None),
        op_done: std::sync::Condvar::new(),
        jail: std::sync::OnceLock::new(),
        cgroup: std::sync::OnceLock::new(),
    })
}
