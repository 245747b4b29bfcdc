//! KVM memory slots for guest RAM, and the dirty-page log (diff snapshots, migration).

use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES};
use kvm_ioctls::VmFd;
use plainvm_devices::GuestRam;
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

/// Errors managing memory slots.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error("guest memory region at {0:#x} has no host mapping")]
    NoMapping(u64),
    #[error("KVM refused to {what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
}

/// The slots of one VM (one per guest RAM region, in address order).
#[derive(Clone, Debug, Default)]
pub struct MemorySlots {
    slots: Vec<kvm_userspace_memory_region>,
}

/// Dirty pages of one slot: bit i of the bitmap = page i of the slot.
pub struct DirtyBitmap {
    pub guest_addr: u64,
    pub bits: Vec<u64>,
}

impl MemorySlots {
    /// Register every region of `mem` with KVM.
    pub fn register(vm: &VmFd, mem: &GuestRam) -> Result<Self, SlotError> {
        let mut slots = Vec::new();
        for (slot, region) in mem.iter().enumerate() {
            let host = mem
                .get_host_address(region.start_addr())
                .map_err(|_| SlotError::NoMapping(region.start_addr().0))?;
            slots.push(kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            });
        }
        let me = Self { slots };
        me.apply(vm)?;
        Ok(me)
    }

    fn apply(&self, vm: &VmFd) -> Result<(), SlotError> {
        for r in &self.slots {
            // SAFETY: each slot describes a live mapping of exactly `memory_size` bytes owned by
            // the VM's guest memory, which outlives the VM (vCPU threads hold clones of it).
            unsafe { vm.set_user_memory_region(*r) }.map_err(|source| SlotError::Kvm {
                what: "register guest memory",
                source,
            })?;
        }
        Ok(())
    }

    /// Turn dirty-page logging on or off for every slot. Turning it on starts a clean log.
    pub fn set_dirty_logging(&mut self, vm: &VmFd, on: bool) -> Result<(), SlotError> {
        for r in &mut self.slots {
            r.flags = if on { KVM_MEM_LOG_DIRTY_PAGES } else { 0 };
        }
        self.apply(vm)
    }

    /// True when dirty-page logging is on.
    pub fn dirty_logging(&self) -> bool {
        self.slots
            .first()
            .is_some_and(|r| r.flags & KVM_MEM_LOG_DIRTY_PAGES != 0)
    }

    /// The pages written since the last call (or since logging was turned on), by the guest (KVM's
    /// log) or by the VMM itself (the bitmap `mem` keeps for device writes); resets both.
    pub fn take_dirty(&self, vm: &VmFd, mem: &GuestRam) -> Result<Vec<DirtyBitmap>, SlotError> {
        self.slots
            .iter()
            .zip(mem.iter())
            .map(|(r, region)| {
                let mut bits =
                    vm.get_dirty_log(r.slot, r.memory_size as usize)
                        .map_err(|source| SlotError::Kvm {
                            what: "read the dirty-page log",
                            source,
                        })?;
                // Both bitmaps have one bit per 4 KiB page of the region, 64 to a word.
                let vmm_writes: &AtomicBitmap = std::ops::Deref::deref(region).bitmap();
                for (b, v) in bits.iter_mut().zip(vmm_writes.get_and_reset()) {
                    *b |= v;
                }
                Ok(DirtyBitmap {
                    guest_addr: r.guest_phys_addr,
                    bits,
                })
            })
            .collect()
    }
}
