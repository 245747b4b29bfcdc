//! The whole VM's saved state: configuration, VM-wide KVM state (clock, irqchip, PIT), devices and
//! vCPUs. One type serves snapshot, restore and migration.

use crate::config::VmConfig;
pub use crate::device_manager::hypercall::HypercallSaved;
use crate::vcpu::state::VcpuState;
use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;
use plainvm_devices::legacy::serial::SerialSnapshot;
use plainvm_devices::virtio::VirtioState;
use serde::{Deserialize, Serialize};

/// Errors reading or writing VM-wide state.
#[derive(Debug, thiserror::Error)]
pub enum VmStateError {
    #[error("cannot {what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("cannot encode the VM state: {0}")]
    Encode(bincode::Error),
    #[error("the saved VM state is corrupted: cannot decode it: {0}")]
    Decode(bincode::Error),
}

/// Largest encoded VM state decoded (vCPU state is a few KiB each).
pub const MAX_ENCODED: u64 = 16 << 20;

/// VM-wide KVM state.
#[derive(Clone, Serialize, Deserialize)]
pub struct KvmVmState {
    pub clock: kvm_clock_data,
    /// PIC master, PIC slave, IOAPIC.
    pub irqchips: Vec<kvm_irqchip>,
    pub pit: kvm_pit_state2,
}

/// Everything needed to rebuild a running VM, except guest memory.
#[derive(Serialize, Deserialize)]
pub struct VmState {
    #[serde(with = "crate::config::as_json")]
    pub config: VmConfig,
    pub kvm: KvmVmState,
    pub serial: SerialSnapshot,
    pub hypercall: HypercallSaved,
    /// The virtio devices, in the order they are attached (see `vm::run`).
    pub devices: Vec<VirtioState>,
    pub vcpus: Vec<VcpuState>,
}

impl VmState {
    /// The state as bytes (for the snapshot's state file and the migration's State frame).
    pub fn encode(&self) -> Result<Vec<u8>, VmStateError> {
        bincode::serialize(self).map_err(VmStateError::Encode)
    }

    /// Read back what `encode` wrote; garbage is an error, never a panic or a huge allocation.
    pub fn decode(bytes: &[u8]) -> Result<Self, VmStateError> {
        use bincode::Options;
        bincode::options()
            .with_fixint_encoding()
            .allow_trailing_bytes()
            .with_limit(MAX_ENCODED)
            .deserialize(bytes)
            .map_err(VmStateError::Decode)
    }
}

const CHIPS: [u32; 3] = [
    KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
    KVM_IRQCHIP_IOAPIC,
];

impl KvmVmState {
    /// Read the VM-wide state (vCPUs must be paused).
    pub fn save(vm: &VmFd) -> Result<Self, VmStateError> {
        let e = |what| move |source| VmStateError::Kvm { what, source };
        let mut irqchips = Vec::new();
        for id in CHIPS {
            let mut chip = kvm_irqchip {
                chip_id: id,
                ..Default::default()
            };
            vm.get_irqchip(&mut chip).map_err(e("read the irqchip"))?;
            irqchips.push(chip);
        }
        Ok(Self {
            clock: vm.get_clock().map_err(e("read the KVM clock"))?,
            irqchips,
            pit: vm.get_pit2().map_err(e("read the PIT"))?,
        })
    }

    /// Write it into a new VM (after its irqchip and PIT exist).
    pub fn restore(&self, vm: &VmFd) -> Result<(), VmStateError> {
        let e = |what| move |source| VmStateError::Kvm { what, source };
        for chip in &self.irqchips {
            vm.set_irqchip(chip).map_err(e("set the irqchip"))?;
        }
        vm.set_pit2(&self.pit).map_err(e("set the PIT"))?;
        // Continue kvmclock where it stopped (only the value: KVM takes no flags on input but
        // KVM_CLOCK_REALTIME/HOST_TSC, which would make the guest see the pause as a time jump).
        let clock = kvm_clock_data {
            clock: self.clock.clock,
            ..Default::default()
        };
        vm.set_clock(&clock).map_err(e("set the KVM clock"))?;
        Ok(())
    }
}
