//! The virtio-net feature bits plainvm offers and the device configuration space.

use super::MacAddr;

/// The device reports the link MTU in its config space.
pub const F_MTU: u64 = 1 << 3;
/// The device has a MAC address in its config space.
pub const F_MAC: u64 = 1 << 5;
/// The config space has a link status field.
pub const F_STATUS: u64 = 1 << 16;
/// `status` value: the link is up.
const LINK_UP: u16 = 1;

/// The features the device offers besides VERSION_1. Checksum and segmentation offloads stay off:
/// every frame crosses the tap complete and checksummed, so nothing the guest claims about
/// offloads reaches the host kernel. The MTU is the tap's, so both ends of the link agree (a
/// larger one lets Linux guests use big receive buffers and far fewer packets).
pub const FEATURES: u64 = F_MTU | F_MAC | F_STATUS;

/// The config space layout (`struct virtio_net_config` up to `mtu`): mac[6], status (le16),
/// max_virtqueue_pairs (le16, 1), mtu (le16).
pub fn config_space(mac: MacAddr, mtu: u16) -> [u8; 12] {
    let mut c = [0u8; 12];
    c[..6].copy_from_slice(&mac.0);
    c[6..8].copy_from_slice(&LINK_UP.to_le_bytes());
    c[8..10].copy_from_slice(&1u16.to_le_bytes());
    c[10..12].copy_from_slice(&mtu.to_le_bytes());
    c
}
