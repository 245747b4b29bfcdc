//! Pieces several test files share: the test-VM harness, network namespaces, the host side of
//! vsock.

pub mod netns;
pub mod proxy;
pub mod test_vm;
pub mod vsock;
