//! Device models of plainvm: everything a vCPU exit can reach, with no knowledge of KVM.

pub mod bus;
pub mod hypercall;
pub mod legacy;
pub mod log;
pub mod ratelimit;
pub mod socket_file;
pub mod sync;
pub mod thread_start;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};
pub use sync::lock;

/// Guest RAM as every part of plainvm sees it: vm-memory's mmap backend with a dirty bitmap per
/// region, so the pages the VMM itself writes (device DMA, used rings) are recorded the way KVM's
/// dirty log records the guest's own writes (diff snapshots and migration need both).
pub type GuestRam = vm_memory::GuestMemoryMmap<vm_memory::bitmap::AtomicBitmap>;
/// One region of `GuestRam`.
pub type GuestRamRegion = vm_memory::GuestRegionMmap<vm_memory::bitmap::AtomicBitmap>;
