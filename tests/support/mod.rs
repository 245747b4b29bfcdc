//! Pieces several test files share: network namespaces, a VM whose console is read live, the
//! host side of vsock.

pub mod live_vm;
pub mod netns;
pub mod vsock;
