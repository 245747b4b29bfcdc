//! A VM: KVM set-up, guest memory, devices on the buses, vCPU threads, and the device event loop.

use crate::api;
use crate::boot;
use crate::config::VmConfig;
use crate::console::{ConsoleIn, ConsoleOut};
use crate::controller::{VcpuHandle, VmController};
use crate::cpuid;
use crate::exit::{ExitReason, ExitSignal, ResetTrigger};
use crate::loop_gate::{GateSubscriber, LoopGate};
use crate::memory::Layout;
use crate::memory_slots::{MemorySlots, SlotError};
use crate::snapshot::{self, SnapshotError};
use crate::vcpu::{self, Vcpu};
use crate::vcpu_control::{install_kick_handler, ControlError, VcpuControl};
use crate::virtio_devices::{AttachError, EventLoop, VirtioSlots};
use crate::vm_state::{VmState, VmStateError};
use event_manager::{EventOps, Events, MutEventSubscriber, SubscriberOps};
use kvm_bindings::CpuId;
use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::Kvm;
use plainvm_devices::i8042::I8042;
use plainvm_devices::post_code::{Milestones, PostCode};
use plainvm_devices::serial::SerialConsole;
use plainvm_devices::trigger::EventFdTrigger;
use plainvm_devices::virtio::net::{tap::TapError, MacAddr, Net, Tap};
use plainvm_devices::virtio::rng::Rng;
use plainvm_devices::Bus;
use plainvm_devices::GuestRam;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Legacy I/O ports and IRQs.
const SERIAL_PORT: u64 = 0x3f8;
const SERIAL_IRQ: u32 = 4;
const I8042_PORT: u64 = 0x60;
const POST_CODE_PORT: u64 = 0x80;
/// Where KVM puts the real-mode TSS it needs on Intel hosts (inside the MMIO gap, unused).
const KVM_TSS_ADDR: usize = 0xfffb_d000;

/// Errors building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot open /dev/kvm: {0} (is KVM available here, and may this user open it?)")]
    Kvm(kvm_ioctls::Error),
    #[error("KVM refused to {what}: {source}")]
    KvmSetup {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("cannot create an eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("cannot set up the device event loop: {0:?}")]
    EventLoop(event_manager::Error),
    #[error(transparent)]
    Memory(#[from] crate::memory::MemoryError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Cpuid(#[from] cpuid::CpuidError),
    #[error(transparent)]
    Vcpu(#[from] vcpu::VcpuError),
    #[error(transparent)]
    Bus(#[from] plainvm_devices::BusError),
    #[error(transparent)]
    Attach(#[from] AttachError),
    #[error("cannot restore the devices: {0}")]
    DeviceRestore(#[from] crate::virtio_devices::DeviceRestoreError),
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error(transparent)]
    Disk(#[from] crate::disks::DiskError),
    #[error(transparent)]
    Vsock(#[from] crate::vsock::VsockAttachError),
    #[error(transparent)]
    Balloon(#[from] crate::balloon::BalloonError),
    #[error(transparent)]
    Hypercall(#[from] crate::hypercall::HypercallError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Slots(#[from] SlotError),
    #[error(transparent)]
    VcpuState(#[from] crate::vcpu_state::VcpuStateError),
    #[error(transparent)]
    VmState(#[from] VmStateError),
    #[error("{0}")]
    NotStarted(String),
    #[error("the snapshot's vCPU state is inconsistent (corrupted?)")]
    BadSnapshot,
    #[error(transparent)]
    Api(#[from] api::server::ApiServerError),
    #[error(transparent)]
    Ksm(#[from] crate::ksm::KsmError),
    #[error(transparent)]
    CpuAffinity(#[from] crate::cpu_affinity::AffinityError),
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::KvmSetup { what, source }
}

/// What the run produced, for the caller to report.
pub struct RunResult {
    pub reason: ExitReason,
    pub milestones: Vec<(u8, std::time::Instant)>,
    /// The CPUID template (None for a restored VM, which keeps its saved CPUID).
    pub template: Option<cpuid::Resolved>,
    /// Boot marks, heartbeat and agent state from the hypercall device.
    pub hypercall: Arc<crate::hypercall::HypercallState>,
    /// When the vCPUs were started.
    pub vcpu_start: std::time::Instant,
}

/// A saved VM to start from instead of booting.
pub struct Restore {
    pub state: VmState,
    pub memory: RestoreMemory,
}

/// Where a restored VM's memory comes from.
pub enum RestoreMemory {
    /// A snapshot directory; `copy` reads it all up front instead of mapping it lazily.
    Snapshot { dir: PathBuf, copy: bool },
    /// Memory already filled in (by an incoming migration).
    Filled(GuestRam),
}

/// How to start the VM beyond its configuration.
#[derive(Default)]
pub struct RunOptions {
    pub restore: Option<Restore>,
    /// Serve the control API on this unix socket.
    pub api_sock: Option<PathBuf>,
    /// Runs after the VM is built and before its vCPUs start; an error means nothing runs
    /// (an incoming migration waits here for the source to commit).
    pub before_start: Option<Box<dyn FnOnce() -> Result<(), String> + Send>>,
}

/// Build the VM described by `cfg` (or restore it), run it until the guest stops, and say why
/// it stopped.
pub fn run(cfg: &VmConfig, opts: RunOptions) -> Result<RunResult, VmError> {
    let started = Instant::now();
    let kvm = Kvm::new().map_err(VmError::Kvm)?;
    let vm = kvm.create_vm().map_err(kvm_err("create a VM"))?;
    let layout = Layout::new(cfg.memory_bytes);
    let restore = opts.restore.as_ref();
    let mem = match restore.map(|r| &r.memory) {
        Some(RestoreMemory::Filled(mem)) => mem.clone(),
        _ => layout.create_memory()?,
    };
    if cfg.memory_merge {
        crate::ksm::mark_mergeable(&mem)?;
    }
    // Memory slots go in before the irqchip: registering them after is ~50x slower on some hosts.
    let slots = MemorySlots::register(&vm, &mem)?;
    if let Some(RestoreMemory::Snapshot { dir, copy }) = restore.map(|r| &r.memory) {
        // After the slots: KVM registers a slot over a file mapping far more slowly.
        snapshot::load_memory(dir, &mem, *copy)?;
    }
    vm.set_tss_address(KVM_TSS_ADDR)
        .map_err(kvm_err("set the TSS address"))?;
    vm.create_irq_chip()
        .map_err(kvm_err("create the in-kernel irqchip"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(kvm_err("create the PIT"))?;

    let mut events = EventLoop::new().map_err(VmError::EventLoop)?;
    let mut mmio = Bus::new();
    let mut virtio = VirtioSlots::default();
    if cfg.rng {
        let rng = Rng::new().map_err(VmError::EventFd)?;
        let evts = rng.queue_evts().map_err(VmError::EventFd)?;
        virtio.attach(&vm, &mem, &mut mmio, &mut events, rng, evts)?;
    }
    for n in &cfg.nets {
        let net = Net::new(Tap::open(&n.tap)?, MacAddr(n.mac)).map_err(VmError::EventFd)?;
        let evts = net.queue_evts().map_err(VmError::EventFd)?;
        virtio.attach(&vm, &mem, &mut mmio, &mut events, net, evts)?;
    }
    crate::disks::attach_all(&cfg.disks, &vm, &mem, &mut mmio, &mut events, &mut virtio)?;
    if let Some(v) = &cfg.vsock {
        crate::vsock::attach(v, &vm, &mem, &mut mmio, &mut events, &mut virtio)?;
    }
    // The handle that changes the balloon's target (crate::balloon::BalloonControl).
    let balloon = match &cfg.balloon {
        Some(b) => Some(crate::balloon::attach(
            b,
            cfg.memory_bytes,
            &vm,
            &mem,
            &mut mmio,
            &mut events,
            &mut virtio,
        )?),
        None => None,
    };

    if let Some(r) = restore {
        virtio.restore(&r.state.devices)?;
    }
    let template = restore.is_none().then(|| cpuid::resolve(cfg.cpu_template));
    let base_cpuid = match restore {
        None => Some(cpuid::supported(&kvm)?),
        Some(_) => None,
    };
    // What the template cannot hide on this host, a Linux guest is told to ignore.
    let clear = match (&base_cpuid, template) {
        (Some(base), Some(t)) if cfg.kernel.is_some() => {
            cpuid::linux_clearcpuid(&kvm, base, t, cfg.cpus)?
        }
        _ => Vec::new(),
    };
    let boot = match restore {
        None => Some(boot::prepare(&mem, &layout, cfg, &virtio.cmdline, &clear)?),
        Some(_) => None,
    };

    let exit = Arc::new(ExitSignal::new().map_err(VmError::EventFd)?);
    let gate = LoopGate::new(exit.clone()).map_err(VmError::EventFd)?;
    events.add_subscriber(Arc::new(Mutex::new(GateSubscriber(gate.clone()))));
    let hypercall = crate::hypercall::attach(&mut mmio, &mem, exit.clone())?;
    if let Some(r) = restore {
        hypercall.continue_from(r.state.hypercall.generation, r.state.hypercall.agent);
    }
    let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(VmError::EventFd)?;
    vm.register_irqfd(&serial_irq, SERIAL_IRQ)
        .map_err(kvm_err("connect the serial interrupt"))?;
    let serial = Arc::new(Mutex::new(SerialConsole::new(
        EventFdTrigger(serial_irq),
        Box::new(ConsoleOut),
        restore.map(|r| &r.state.serial),
    )));
    let milestones: Milestones = Arc::default();
    let mut pio = Bus::new();
    pio.insert(serial.clone(), SERIAL_PORT, 8)?;
    pio.insert(
        Arc::new(Mutex::new(I8042::new(ResetTrigger(exit.clone())))),
        I8042_PORT,
        5,
    )?;
    pio.insert(
        Arc::new(Mutex::new(PostCode::new(milestones.clone()))),
        POST_CODE_PORT,
        1,
    )?;
    install_kick_handler()?;
    let control = Arc::new(VcpuControl::new(usize::from(cfg.cpus), false));
    let mut handles = Vec::with_capacity(usize::from(cfg.cpus));
    let mut vcpus = Vec::with_capacity(usize::from(cfg.cpus));
    for index in 0..cfg.cpus {
        let fd = vm
            .create_vcpu(u64::from(index))
            .map_err(kvm_err("create a vCPU"))?;
        let cpuid = match (&boot, restore) {
            (Some(boot), _) => {
                let (Some(base), Some(template)) = (&base_cpuid, template) else {
                    unreachable!("a booting VM has its CPUID template")
                };
                let cpuid = cpuid::for_vcpu(base, template, index, cfg.cpus);
                vcpu::configure(&fd, &cpuid, boot, index, cfg.cpus)?;
                cpuid
            }
            (None, Some(r)) => {
                let state = r
                    .state
                    .vcpus
                    .get(usize::from(index))
                    .ok_or(VmError::BadSnapshot)?;
                state.restore(&fd, usize::from(index))?;
                CpuId::from_entries(&state.cpuid).map_err(|_| VmError::BadSnapshot)?
            }
            (None, None) => unreachable!("a VM either boots or restores"),
        };
        let fd = Arc::new(Mutex::new(fd));
        handles.push(VcpuHandle {
            fd: fd.clone(),
            cpuid,
        });
        vcpus.push(Vcpu {
            fd,
            index,
            pio: pio.clone(),
            mmio: mmio.clone(),
            mem: mem.clone(),
            exit: exit.clone(),
            control: control.clone(),
        });
    }

    if let Some(r) = restore {
        r.state.kvm.restore(&vm)?;
    }
    let file_backed = matches!(
        restore.map(|r| &r.memory),
        Some(RestoreMemory::Snapshot { copy: false, .. })
    );
    let controller = Arc::new(VmController {
        slots: Mutex::new(slots),
        // Dirty logging starts with the first full snapshot of this process: turning it on here
        // would cost the restore several milliseconds.
        last_snapshot: Mutex::new(None),
        vm: Arc::new(vm),
        mem: mem.clone(),
        file_backed,
        config: cfg.clone(),
        vcpus: handles,
        kvm,
        control: control.clone(),
        serial: serial.clone(),
        started,
        migration: Mutex::new(None),
        pending_exit: Mutex::new(None),
        devices: virtio.transports.clone(),
        gate,
        hypercall: hypercall.clone(),
        exit: exit.clone(),
        balloon,
    });
    if let Some(sock) = &opts.api_sock {
        api::server::start(sock, controller.clone())?;
    }

    let done = Arc::new(AtomicBool::new(false));
    events.add_subscriber(Arc::new(Mutex::new(ExitWatch {
        exit: exit.clone(),
        done: done.clone(),
    })));
    let _raw = if crate::terminal::stdin_is_tty() {
        events.add_subscriber(Arc::new(Mutex::new(ConsoleIn::new(serial.clone()))));
        crate::terminal::enter_raw_mode()
    } else {
        None
    };

    if let Some(gate) = opts.before_start {
        gate().map_err(VmError::NotStarted)?;
    }
    let vcpu_start = crate::hypercall::start(&mut events, hypercall.clone(), exit.clone())?;
    for (i, v) in vcpus.into_iter().enumerate() {
        let thread = v.spawn()?;
        if let Some(&cpu) = cfg.cpu_affinity.get(i) {
            use std::os::unix::thread::JoinHandleExt;
            crate::cpu_affinity::pin(thread.as_pthread_t(), i, cpu)?;
        }
    }
    // Start-up is over: what it allocated and freed need not stay resident for the VM's life.
    crate::heap::release_free_pages();
    while !done.load(Ordering::SeqCst) {
        events.run().map_err(VmError::EventLoop)?;
    }
    control.stop();
    serial.lock().unwrap_or_else(|e| e.into_inner()).flush();
    let milestones = milestones.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok(RunResult {
        reason: exit.reason(),
        milestones,
        template,
        hypercall,
        vcpu_start,
    })
}

/// Ends the event loop when the exit signal fires.
struct ExitWatch {
    exit: Arc<ExitSignal>,
    done: Arc<AtomicBool>,
}

impl MutEventSubscriber for ExitWatch {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(self.exit.eventfd(), EventSet::IN));
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.exit.eventfd().read();
        self.done.store(true, Ordering::SeqCst);
    }
}
