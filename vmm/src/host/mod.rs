//! The VMM process on its host: the registry of named VMs, the console and terminal, the heap,
//! the jail and the cgroup, and why the process ends.

pub mod cgroup;
pub mod console;
pub mod exit;
pub mod heap;
pub mod jail;
pub mod registry;
pub mod terminal;
