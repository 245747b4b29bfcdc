//! The whole VM's saved state: configuration, VM-wide KVM state (clock, irqchip, PIT), devices and
//! vCPUs. One type serves snapshot, restore and migration.

use crate::config::VmConfig;
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
}

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

/// What the hypercall device must carry over: the generation (bumped on every restore and
/// migration) and whether a guest agent announced itself.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct HypercallSaved {
    pub generation: u64,
    pub agent: Option<u32>,
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
