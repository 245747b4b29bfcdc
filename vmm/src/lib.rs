//! plainvm: a small virtual machine monitor on Linux KVM.

pub mod boot;
pub mod config;
pub mod console;
pub mod cpuid;
pub mod emulation;
pub mod exit;
pub mod memory;
pub mod terminal;
pub mod vcpu;
pub mod vcpu_control;
pub mod virtio_devices;
pub mod vm;
