//! Device models of plainvm: everything a vCPU exit can reach, with no knowledge of KVM.

pub mod bus;
pub mod hypercall;
pub mod i8042;
pub mod post_code;
pub mod serial;
pub mod trigger;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};
