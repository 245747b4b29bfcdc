//! Per-thread seccomp filters: each kind of thread installs its own allow-list once its setup is
//! done (files opened, KVM descriptors made), and a forbidden system call ends the process with
//! a report naming the thread and the call (`sigsys`). On by default; `--seccomp off` (for
//! debugging only) leaves every thread unfiltered. docs/security.md describes the lists.

pub mod ioctls;
pub mod lists;
mod names;
pub mod rules;
pub mod sigsys;

use plainvm_devices::thread_start::{self, DeviceThread};
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
use std::sync::OnceLock;

/// The environment variable of the filters' self-test: naming a kind of thread makes each
/// thread of that kind make a forbidden system call right after installing its filter. Tests
/// use it to see that every kind of thread is filtered and its violations reported.
pub const SELFTEST_ENV: &str = "PLAINVM_SECCOMP_SELFTEST";

/// Errors making or installing the filters.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("the seccomp list of {kind} threads is wrong: {source}")]
    Rules {
        kind: &'static str,
        source: rules::RuleError,
    },
    #[error("cannot compile the seccomp filter of {kind} threads: {source} (a bug in vmm/src/seccomp; run with --seccomp off meanwhile)")]
    Compile {
        kind: &'static str,
        source: seccompiler::Error,
    },
    #[error("cannot install the seccomp filter of a {kind} thread: {source} (does this kernel have CONFIG_SECCOMP_FILTER? run with --seccomp off to go without)")]
    Install {
        kind: &'static str,
        source: seccompiler::Error,
    },
    #[error(transparent)]
    Sigsys(#[from] sigsys::SigsysError),
    #[error("{SELFTEST_ENV}={0} names no kind of thread: use vcpu, event-loop, api, block-io, throttle or migration-receive")]
    BadSelftest(String),
}

/// The kinds of threads, each with its own list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// `vcpu<N>`: KVM_RUN and the exits' device emulation.
    Vcpu,
    /// The main thread once the VM runs: the device event loop.
    EventLoop,
    /// `api` and the `api-request` threads it starts (snapshot, migration sender, pause).
    Api,
    /// `blk-io-<N>`: a disk's I/O workers.
    BlockIo,
    /// `throttle`: a migration's auto-converge.
    Throttle,
    /// `migration-recv`: `receive` reading the incoming stream (handshake, memory, commit).
    MigrationReceive,
}

impl ThreadKind {
    /// Every kind.
    pub const ALL: [ThreadKind; 6] = [
        Self::Vcpu,
        Self::EventLoop,
        Self::Api,
        Self::BlockIo,
        Self::Throttle,
        Self::MigrationReceive,
    ];

    /// The kind's name in reports and in `PLAINVM_SECCOMP_SELFTEST`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Vcpu => "vcpu",
            Self::EventLoop => "event-loop",
            Self::Api => "api",
            Self::BlockIo => "block-io",
            Self::Throttle => "throttle",
            Self::MigrationReceive => "migration-receive",
        }
    }

    /// The kind called `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The kind's allow-list.
    pub fn rules(self) -> rules::Rules {
        match self {
            Self::Vcpu => lists::vcpu(),
            Self::EventLoop => lists::event_loop(),
            Self::Api => lists::api(),
            Self::BlockIo => lists::block_io(),
            Self::Throttle => lists::throttle(),
            Self::MigrationReceive => lists::migration_receive(),
        }
    }
}

/// Compile `kind`'s filter: its list allowed, anything else TRAP (SIGSYS, reported).
pub fn filter(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    compile(
        kind.name(),
        kind.rules(),
        SeccompAction::Trap,
        SeccompAction::Allow,
    )
}

/// The second filter of every thread: the calls of `lists::enosys` fail with ENOSYS, anything
/// else goes on to the thread's own filter.
pub fn enosys_filter(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    compile(
        kind.name(),
        lists::enosys(kind),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
    )
}

fn compile(
    kind: &'static str,
    list: rules::Rules,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, SeccompError> {
    let map = list
        .build()
        .map_err(|source| SeccompError::Rules { kind, source })?;
    let compile = |source: seccompiler::BackendError| SeccompError::Compile {
        kind,
        source: source.into(),
    };
    let f = SeccompFilter::new(map, mismatch, matched, TargetArch::x86_64).map_err(compile)?;
    f.try_into().map_err(compile)
}

/// The compiled filters of a process that runs with them.
struct Filters {
    /// Each kind's filter and its ENOSYS filter.
    programs: Vec<(ThreadKind, BpfProgram, BpfProgram)>,
    selftest: Option<ThreadKind>,
}

/// None: filters off. Unset (a library user, a unit test): off as well.
static FILTERS: OnceLock<Option<Filters>> = OnceLock::new();

/// Decide once per process whether threads filter themselves. With `on`, every filter is
/// compiled now (a mistake shows before the VM starts), the SIGSYS report is installed and the
/// device threads' hook set.
pub fn configure(on: bool) -> Result<(), SeccompError> {
    if !on {
        let _ = FILTERS.set(None);
        return Ok(());
    }
    let selftest = match std::env::var(SELFTEST_ENV) {
        Ok(name) if !name.is_empty() => {
            Some(ThreadKind::from_name(&name).ok_or(SeccompError::BadSelftest(name))?)
        }
        _ => None,
    };
    let programs = ThreadKind::ALL
        .into_iter()
        .map(|k| Ok((k, filter(k)?, enosys_filter(k)?)))
        .collect::<Result<Vec<_>, SeccompError>>()?;
    let filters = Filters { programs, selftest };
    sigsys::install_handler()?;
    let _ = FILTERS.set(Some(filters));
    thread_start::set_hook(device_thread_started);
    Ok(())
}

/// Whether this process's threads are filtered.
pub fn enabled() -> bool {
    matches!(FILTERS.get(), Some(Some(_)))
}

/// Install `kind`'s filter on the calling thread (nothing when filters are off). Call it once
/// the thread's setup is done: from here on it can make only the calls of its list.
pub fn install(kind: ThreadKind) -> Result<(), SeccompError> {
    let Some(Some(f)) = FILTERS.get() else {
        return Ok(());
    };
    let Some((_, program, enosys)) = f.programs.iter().find(|(k, _, _)| *k == kind) else {
        return Ok(());
    };
    let err = |source| SeccompError::Install {
        kind: kind.name(),
        source,
    };
    sigsys::remember_thread(kind.name());
    seccompiler::apply_filter(enosys).map_err(err)?;
    seccompiler::apply_filter(program).map_err(err)?;
    if f.selftest == Some(kind) {
        // SAFETY: ptrace with an invalid request touches no memory; the filter stops it before
        // the kernel sees it (that is the test).
        unsafe { libc::syscall(libc::SYS_ptrace, -1 as libc::c_long, 0, 0, 0) };
    }
    Ok(())
}

/// For a thread that runs under a filter it inherited (an `api-request` thread, started by the
/// filtered `api` thread): record its name and kind for the report of a forbidden call.
pub fn inherited(kind: ThreadKind) {
    if enabled() {
        sigsys::remember_thread(kind.name());
    }
}

/// `install` for a thread that has nobody to report to: a filter that cannot be installed ends
/// the process (running on unfiltered would silently drop the protection).
pub fn install_or_exit(kind: ThreadKind) {
    if let Err(e) = install(kind) {
        plainvm_devices::log_line!("plainvm: {e}");
        std::process::exit(1);
    }
}

fn device_thread_started(kind: DeviceThread) {
    match kind {
        DeviceThread::BlockIo => install_or_exit(ThreadKind::BlockIo),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_filter_compiles() {
        for kind in ThreadKind::ALL {
            let p = filter(kind).unwrap_or_else(|e| panic!("{}: {e}", kind.name()));
            assert!(!p.is_empty(), "{}", kind.name());
            assert_eq!(ThreadKind::from_name(kind.name()), Some(kind));
            assert!(!enosys_filter(kind).unwrap().is_empty());
        }
        // Only the event loop may enter an io_uring (its restricted transmit ring).
        for kind in ThreadKind::ALL {
            let answered = lists::enosys(kind).contains(libc::SYS_io_uring_enter);
            assert_eq!(answered, kind != ThreadKind::EventLoop, "{}", kind.name());
            assert!(lists::enosys(kind).contains(libc::SYS_io_uring_setup));
        }
    }

    #[test]
    fn no_list_allows_what_a_vmm_never_needs() {
        for kind in ThreadKind::ALL {
            let r = kind.rules();
            for nr in [
                libc::SYS_execve,
                libc::SYS_execveat,
                libc::SYS_fork,
                libc::SYS_vfork,
                libc::SYS_ptrace,
                libc::SYS_process_vm_writev,
                libc::SYS_init_module,
                libc::SYS_mount,
                libc::SYS_setuid,
                libc::SYS_bpf,
            ] {
                assert!(
                    !r.contains(nr),
                    "{} allows {}",
                    kind.name(),
                    names::NAMES[nr as usize]
                );
            }
        }
    }

    #[test]
    fn every_thread_that_starts_threads_may_add_filters() {
        // A thread started by a filtered one (the throttle, by an API request) installs its own
        // filter on top: its parent's list must allow seccomp(2).
        for kind in ThreadKind::ALL {
            let r = kind.rules();
            if r.contains(libc::SYS_clone) {
                assert!(r.contains(libc::SYS_seccomp), "{}", kind.name());
            }
        }
    }
}
