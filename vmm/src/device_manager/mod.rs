//! Putting devices on the buses and the event loop: virtio windows and IRQs, disks, vsock,
//! balloon, the hypercall device's host side, and the gate that parks the loop.

pub mod balloon;
pub mod disk;
pub mod hypercall;
pub mod loop_gate;
pub mod virtio;
pub mod vsock;
