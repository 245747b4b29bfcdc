//! virtio-vsock with a host-side unix socket (Firecracker's convention): packet headers,
//! per-connection state, the unix-socket muxer, and the device that ties them to the queues.

pub mod connection;
pub mod device;
pub mod muxer;
pub mod packet;

pub use device::{Vsock, VsockError};
