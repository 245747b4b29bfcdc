//! virtio-net over a host tap device: the tap, the MAC address, the config space, the device,
//! batched transmit.

pub mod config;
pub mod device;
pub mod mac;
pub mod tap;
#[cfg(test)]
mod tests;
pub mod tx_ring;

pub use device::Net;
pub use mac::MacAddr;
pub use tap::Tap;

/// Size of the `virtio_net_hdr` that precedes every frame (virtio 1.x: `num_buffers` included).
pub const HDR_LEN: usize = 12;
/// Largest Ethernet frame the device moves (no TSO/GSO is negotiated): a 64 KiB IP packet with its
/// Ethernet and VLAN headers. Tap MTUs are far smaller; anything larger is dropped.
pub const MAX_FRAME: usize = 65536 + 18;
/// Largest header-plus-frame buffer.
pub const MAX_BUFFER: usize = HDR_LEN + MAX_FRAME;
