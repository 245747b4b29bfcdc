//! plainvm: a small virtual machine monitor on Linux KVM.

pub mod api;
pub mod boot;
pub mod config;
pub mod console;
pub mod controller;
pub mod cpuid;
pub mod disks;
pub mod emulation;
pub mod exit;
pub mod hypercall;
pub mod memory;
pub mod memory_slots;
pub mod snapshot;
pub mod terminal;
pub mod vcpu;
pub mod vcpu_control;
pub mod vcpu_state;
pub mod virtio_devices;
pub mod vm;
pub mod vm_state;
