//! The vCPU thread: it runs KVM_RUN, hands each exit to `exits::dispatch`, and parks between
//! runs while the VM is paused.

pub mod affinity;
pub mod control;
pub mod cpuid;
pub mod emulation;
pub mod exits;
pub mod setup;
pub mod state;

use crate::host::exit::{ExitReason, ExitSignal};
use control::{set_thread_kvm_run, VcpuControl};
use exits::Emulation;
use kvm_ioctls::VcpuFd;
use plainvm_devices::lock;
use plainvm_devices::Bus;
use plainvm_devices::GuestRam;
use std::sync::{Arc, Mutex};

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
        // Set up: from here on only the calls of the vCPU list.
        if let Err(e) = crate::seccomp::install(crate::seccomp::ThreadKind::Vcpu) {
            self.exit
                .request(ExitReason::Crash(format!("vCPU {}: {e}", self.index)));
            self.control.stop();
            return;
        }
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
        let result = fd.run();
        match exits::dispatch(result, &self.pio, &self.mmio) {
            Emulation::Continue => None,
            Emulation::Kicked => {
                // Kicked (pause or stop): clear the kick so the next KVM_RUN really runs.
                fd.set_kvm_immediate_exit(0);
                None
            }
            Emulation::Stop(reason) => Some(reason),
            Emulation::Crash(msg) => crash(msg),
            Emulation::Shutdown => {
                let rip = fd.get_regs().map(|r| r.rip).unwrap_or(0);
                crash(format!(
                    "the guest triple-faulted (an exception it could not handle) near RIP {rip:#x}"
                ))
            }
            Emulation::InternalError => emulation::handle_internal_error(fd, &self.mem)
                .err()
                .and_then(crash),
        }
    }
}
