//! The virtio-net feature bits plainvm offers and the device configuration space.

use super::MacAddr;

/// The device has a MAC address in its config space.
pub const F_MAC: u64 = 1 << 5;
/// The config space has a link status field.
pub const F_STATUS: u64 = 1 << 16;
/// `status` value: the link is up.
const LINK_UP: u16 = 1;

/// The features the device offers besides VERSION_1. Checksum and segmentation offloads stay off:
/// every frame crosses the tap complete and checksummed, so nothing the guest claims about
/// offloads reaches the host kernel.
pub const FEATURES: u64 = F_MAC | F_STATUS;

/// The config space layout (`struct virtio_net_config` up to `status`): mac[6], status (le16).
pub fn config_space(mac: MacAddr) -> [u8; 8] {
    let mut c = [0u8; 8];
    c[..6].copy_from_slice(&mac.0);
    c[6..8].copy_from_slice(&LINK_UP.to_le_bytes());
    c
}
