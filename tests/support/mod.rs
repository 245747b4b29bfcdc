//! Pieces several test files share: network namespaces, a VM whose console is read live, the
//! host side of vsock, the emulated AMD-V host.

pub mod hw_host;
pub mod live_vm;
pub mod netns;
pub mod vsock;
