//! The allow-lists, one function per kind of thread: the data of the filters, in one place.
//! Each list is what that thread does once set up, learnt from `strace -f` on real runs
//! (snapshot, restore, migration, balloon, stop, disks, vsock, tap) and from the code.

use super::ioctls;
use super::rules::{with_bits, without_bits, Rules};
use libc::*;
use seccompiler::SeccompCmpOp;

/// What every thread needs, whatever it does: the allocator (brk, mmap and mprotect without
/// PROT_EXEC, madvise to give memory back), locks and sleeps, signals (the vCPU kick, SIGTERM,
/// the SIGSYS report itself), log lines on stderr, getrandom (std's hash maps), thread exit and
/// the panic path (panic = abort: raise SIGABRT), and the set*id calls glibc makes on every
/// thread when the process enters its jail (as the jail's user they can only set the ids the
/// thread already has).
pub fn common() -> Rules {
    Rules::new()
        .allow(&[
            SYS_setgroups,
            SYS_setresgid,
            SYS_setresuid,
            SYS_futex,
            SYS_sched_yield,
            SYS_clock_gettime,
            SYS_clock_nanosleep,
            SYS_nanosleep,
            SYS_restart_syscall,
            SYS_gettid,
            SYS_getpid,
            SYS_brk,
            SYS_munmap,
            SYS_mremap,
            SYS_rt_sigprocmask,
            SYS_rt_sigreturn,
            SYS_sigaltstack,
            SYS_write,
            SYS_writev,
            SYS_close,
            SYS_exit,
            SYS_exit_group,
            SYS_getrandom,
        ])
        .allow_if(SYS_mmap, vec![without_bits(2, PROT_EXEC as u64)])
        .allow_if(SYS_mprotect, vec![without_bits(2, PROT_EXEC as u64)])
        .allow_values(
            SYS_madvise,
            2,
            &[MADV_DONTNEED as u64, MADV_FREE as u64, MADV_DONTDUMP as u64],
        )
        // Closing an OwnedFd in a debug build first checks it is open (F_GETFD): a thread that
        // drops the last handle of a file, socket or eventfd does this.
        .allow_values(SYS_fcntl, 1, &[F_GETFD as u64])
        // abort(): it resets SIGABRT's handler before raising it again.
        .allow_values(SYS_rt_sigaction, 0, &[SIGABRT as u64])
        // raise(SIGABRT) in abort(); the vCPU kick is a real-time signal. Both only at a thread
        // of this process (tgkill's first argument is the process id).
        .allow_if(
            SYS_tgkill,
            vec![
                (0, SeccompCmpOp::Eq, own_pid()),
                (2, SeccompCmpOp::Eq, SIGABRT as u64),
            ],
        )
        .allow_if(
            SYS_tgkill,
            vec![
                (0, SeccompCmpOp::Eq, own_pid()),
                (2, SeccompCmpOp::Ge, vmm_sys_util::signal::SIGRTMIN() as u64),
            ],
        )
}

/// Starting threads (std::thread: clone with CLONE_THREAD, never a new process; the child sets
/// up its robust futex list, rseq and name).
fn spawn_threads() -> Rules {
    Rules::new()
        .allow_if(SYS_clone, vec![with_bits(0, CLONE_THREAD as u64)])
        // Its flags are in memory a filter cannot read: answered ENOSYS by the errno filter
        // (mod.rs), and glibc falls back to clone, which is checked.
        .allow(&[
            SYS_clone3,
            SYS_set_robust_list,
            SYS_rseq,
            SYS_sched_getaffinity,
        ])
        .allow_values(SYS_prctl, 0, &[PR_SET_NAME as u64])
}

/// `kill` at this process only: never at another process (a jailed VM shares its UID with
/// nothing it may signal).
fn signal_self() -> Rules {
    Rules::new().allow_values(SYS_kill, 0, &[own_pid()])
}

/// This process's id (the filters are compiled in the process that installs them).
fn own_pid() -> u64 {
    u64::from(std::process::id())
}

/// Adding a filter on top (a thread started by a filtered one installs its own, narrower one).
fn add_filters() -> Rules {
    Rules::new()
        .allow_values(SYS_prctl, 0, &[PR_SET_NO_NEW_PRIVS as u64])
        .allow_values(SYS_seccomp, 0, &[SECCOMP_SET_MODE_FILTER as u64])
}

/// Files: reading, writing and syncing descriptors opened at setup.
fn file_io() -> Rules {
    Rules::new().allow(&[
        SYS_read,
        SYS_readv,
        SYS_pread64,
        SYS_preadv,
        SYS_preadv2,
        SYS_pwrite64,
        SYS_pwritev,
        SYS_pwritev2,
        SYS_lseek,
        SYS_fsync,
        SYS_fdatasync,
        SYS_fstat,
        SYS_newfstatat,
        SYS_statx,
    ])
}

/// Creating and replacing files and directories by path (snapshots, the registry's entries and
/// sockets under the runtime directory).
fn paths() -> Rules {
    Rules::new().allow(&[
        SYS_openat,
        SYS_mkdir,
        SYS_mkdirat,
        SYS_rename,
        SYS_renameat,
        SYS_renameat2,
        SYS_unlinkat,
        SYS_unlink,
        SYS_rmdir,
        SYS_getdents64,
        SYS_fchmod,
        SYS_ftruncate,
        SYS_fallocate,
        SYS_readlink,
        SYS_getcwd,
    ])
}

/// Stream sockets already connected or listening: send, receive, time-outs, shut down.
fn sockets() -> Rules {
    Rules::new()
        .allow(&[
            SYS_recvfrom,
            SYS_recvmsg,
            SYS_sendto,
            SYS_sendmsg,
            SYS_shutdown,
            SYS_setsockopt,
            SYS_getsockopt,
            SYS_getsockname,
            SYS_getpeername,
            SYS_poll,
            SYS_ppoll,
        ])
        .allow_values(
            SYS_fcntl,
            1,
            &[
                F_GETFL as u64,
                F_SETFL as u64,
                F_GETFD as u64,
                F_SETFD as u64,
                F_DUPFD_CLOEXEC as u64,
            ],
        )
        .allow_values(SYS_ioctl, 1, &ioctls::descriptor_flags())
}

/// A vCPU thread: KVM_RUN and what an exit handler does (devices log, raise interrupts through
/// eventfds, write the console; a device reset closes its connections).
pub fn vcpu() -> Rules {
    common()
        .allow(&[SYS_read, SYS_shutdown])
        .allow_values(SYS_ioctl, 1, &ioctls::vcpu_run())
}

/// The device event loop (the main thread once the VM runs): epoll, the devices' I/O on taps,
/// disks and vsock sockets (new AF_UNIX connections both ways), the balloon giving pages back,
/// the console, and the way out (the registry entry removed, the terminal restored).
pub fn event_loop() -> Rules {
    common()
        .merge(file_io())
        .merge(paths())
        .merge(sockets())
        .allow(&[
            SYS_epoll_wait,
            SYS_epoll_pwait,
            SYS_epoll_ctl,
            // The hypercall watch re-arms its heartbeat timer.
            SYS_timerfd_settime,
            SYS_timerfd_gettime,
            SYS_accept4,
            SYS_connect,
            SYS_mincore,
            // The net device's transmit ring, made before the filter and restricted to writev
            // on the tap (devices/src/virtio/net/tx_ring.rs): only entering it. Making or
            // changing a ring stays ENOSYS (`enosys`).
            SYS_io_uring_enter,
        ])
        .merge(signal_self())
        .allow_values(SYS_socket, 0, &[AF_UNIX as u64])
        .allow_values(SYS_madvise, 2, &[MADV_REMOVE as u64, MADV_MERGEABLE as u64])
        .allow_values(SYS_ioctl, 1, &ioctls::terminal())
}

/// The API thread and its request threads (they inherit its filter): connections on the unix
/// socket, snapshots (files and directories created, synced, renamed), pausing and saving the
/// VM (the KVM getters), dirty logging, and the migration sender (a TCP connection, a throttle
/// thread).
pub fn api() -> Rules {
    common()
        .merge(spawn_threads())
        .merge(add_filters())
        .merge(file_io())
        .merge(paths())
        .merge(sockets())
        .merge(signal_self())
        .allow(&[SYS_accept4, SYS_connect, SYS_mincore])
        .allow_values(
            SYS_socket,
            0,
            &[AF_UNIX as u64, AF_INET as u64, AF_INET6 as u64],
        )
        .allow_values(SYS_ioctl, 1, &ioctls::save_state())
}

/// A block device's I/O worker: positioned reads and writes on the image, flushes, and the
/// eventfd that reports them done.
pub fn block_io() -> Rules {
    common().allow(&[
        SYS_preadv,
        SYS_pwritev,
        SYS_preadv2,
        SYS_pwritev2,
        SYS_pread64,
        SYS_pwrite64,
        SYS_fdatasync,
        SYS_fsync,
    ])
}

/// The migration throttle: it sleeps, and holds and releases the vCPUs (a kick each).
pub fn throttle() -> Rules {
    common()
}

/// `receive` reading the incoming stream into fresh guest memory: the connection accepted at
/// setup (reads, writes, time-outs), nothing else. The stream is the most hostile input plainvm
/// takes before the VM runs.
pub fn migration_receive() -> Rules {
    common().merge(sockets()).allow(&[SYS_read])
}

/// System calls every thread gets as ENOSYS instead of running them (through a second filter,
/// whose ERRNO answer wins over the first one's ALLOW): io_uring, and clone3.
pub fn enosys(kind: super::ThreadKind) -> Rules {
    let rules = Rules::new().allow(&[SYS_io_uring_setup, SYS_io_uring_register, SYS_clone3]);
    // The event loop enters the transmit ring it made before its filter; nobody else may.
    if kind == super::ThreadKind::EventLoop {
        rules
    } else {
        rules.allow(&[SYS_io_uring_enter])
    }
}
