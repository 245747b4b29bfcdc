//! Pieces several test files share: the test-VM harness, network namespaces, the host side of
//! vsock, the emulated AMD-V host.

pub mod hw_host;
pub mod netns;
pub mod proxy;
pub mod test_vm;
pub mod vsock;
