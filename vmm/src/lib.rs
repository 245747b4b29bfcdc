//! plainvm: a small virtual machine monitor on Linux KVM.

pub mod api;
pub mod boot;
pub mod cli;
pub mod config;
pub mod device_manager;
pub mod host;
pub mod memory;
pub mod migration;
pub mod snapshot;
pub mod vcpu;
pub mod vm;
