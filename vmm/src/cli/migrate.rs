//! `plainvm migrate` (through the VM's API, with a progress line) and `plainvm receive` (the
//! destination: offer, memory, state, commit, then the VM runs here).

use crate::api::client::call;
use crate::api::types::{MigrateRequest, MigrateResult, OnTimeout, Progress};
use crate::config::admission::Admission;
use crate::config::VmConfig;
use crate::migration::receiver::{Incoming, ReceiveError};
use crate::vm::state::VmState;
use crate::vm::{RestoreMemory, Vm};
use clap::Args;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A line on stdout; a closed stdout (piped into `head`) is not an error of the command.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `plainvm migrate`: options beyond the VM's API socket.
#[derive(Args)]
pub struct MigrateArgs {
    /// Destination: tcp:HOST:PORT where `plainvm receive` listens.
    #[arg(long)]
    pub to: String,
    /// Longest acceptable final pause, in milliseconds.
    #[arg(long, default_value_t = 20)]
    pub downtime_ms: u64,
    /// Give up after this many seconds (see --on-timeout).
    #[arg(long)]
    pub timeout_s: Option<u64>,
    /// At the timeout: cancel (keep running here) or force (switch with a longer pause).
    #[arg(long, value_enum, default_value = "cancel")]
    pub on_timeout: OnTimeoutArg,
    /// Authenticate and encrypt the stream with this 32-byte key (same file on both hosts).
    #[arg(long)]
    pub key: Option<PathBuf>,
}

/// `plainvm receive`.
#[derive(Args)]
pub struct ReceiveArgs {
    /// Where to listen: PORT (on 127.0.0.1), or tcp:ADDR:PORT (e.g. tcp:0.0.0.0:7000 for every
    /// address).
    #[arg(long)]
    pub listen: String,
    /// The incoming VM's name in the registry (default: vm-<pid>); other subcommands find it by
    /// name. Checked before listening, claimed when the VM's configuration arrives.
    #[arg(long)]
    pub name: Option<String>,
    /// Serve the control API on this unix socket once the VM runs.
    #[arg(long)]
    pub api_sock: Option<PathBuf>,
    /// The key the source uses (see `migrate --key`).
    #[arg(long, required_unless_present = "insecure")]
    pub key: Option<PathBuf>,
    /// Accept a VM without a key: anyone who reaches the port can hand this host a VM, and the
    /// stream is neither encrypted nor authenticated. For trusted, isolated networks only.
    #[arg(long, conflicts_with = "key")]
    pub insecure: bool,
    /// Replace a configuration key of the incoming VM, e.g. nets='[{"tap":"tap1"}]' for
    /// another tap name or disks='[...]' for other disk paths here. May be repeated.
    #[arg(long = "set", value_name = "KEY=JSON")]
    pub set: Vec<String>,
    /// The incoming VM may name disk images and vsock sockets under DIR (repeatable); anything
    /// else it names must be given with --set.
    #[arg(long, value_name = "DIR")]
    pub allow_dir: Vec<PathBuf>,
    /// The incoming VM may name tap NAME (repeatable; `tap*` allows a prefix).
    #[arg(long, value_name = "NAME")]
    pub allow_tap: Vec<String>,
    /// Seccomp filters on the VMM's threads: on (the default) or off; the incoming
    /// configuration cannot turn them off. Off is for debugging a filter that stops a
    /// legitimate call only: it removes a layer of protection.
    #[arg(long, value_name = "on|off")]
    pub seccomp: Option<crate::config::Seccomp>,
    #[command(flatten)]
    pub confine: super::run::ConfineArgs,
}

/// `--on-timeout`.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum OnTimeoutArg {
    Cancel,
    Force,
}

/// Start a migration through the VM's API and show its progress until it ends.
pub fn migrate(sock: &Path, args: &MigrateArgs) -> Result<i32, String> {
    // Resolved here: the VMM's API thread is filtered and takes addresses only.
    let to = crate::migration::parse_tcp(&args.to).map_err(|e| e.to_string())?;
    let body = MigrateRequest {
        to: format!("tcp:{to}"),
        downtime_ms: args.downtime_ms,
        timeout_s: args.timeout_s,
        on_timeout: match args.on_timeout {
            OnTimeoutArg::Cancel => OnTimeout::Cancel,
            OnTimeoutArg::Force => OnTimeout::Force,
        },
        key: match &args.key {
            Some(k) => Some(crate::migration::key_to_hex(&crate::migration::read_key(
                k,
            )?)),
            None => None,
        },
    };
    let sock2 = sock.to_path_buf();
    let call_thread = std::thread::spawn(move || {
        call::<_, MigrateResult>(
            &sock2,
            "PUT",
            "/migrate",
            Some(&body),
            Duration::from_secs(24 * 3600),
        )
    });
    let tty = std::io::stderr().is_terminal();
    let start = Instant::now();
    let mut last_line = Instant::now();
    while !call_thread.is_finished() {
        std::thread::sleep(Duration::from_millis(200));
        let Ok(p) = call::<(), Progress>(sock, "GET", "/migrate", None, Duration::from_secs(5))
        else {
            continue;
        };
        let line = progress_line(&p, start.elapsed());
        if tty {
            plainvm_devices::log::raw(&format!("\r\x1b[2K{line}"));
        } else if last_line.elapsed() >= Duration::from_secs(1) {
            plainvm_devices::log::raw(&format!("{line}\n"));
            last_line = Instant::now();
        }
    }
    if tty {
        plainvm_devices::log::raw("\n");
    }
    let r = call_thread
        .join()
        .map_err(|_| "the migration request thread failed".to_string())?
        .map_err(|e| format!("migration failed: {e}"))?;
    out!(
        "migrated: downtime {:.1} ms, total {:.0} ms, {} passes, {:.0} MiB sent at {:.0} MiB/s, throttled up to {}%",
        r.downtime_ms,
        r.total_ms,
        r.passes,
        r.bytes_sent as f64 / 1048576.0,
        r.bandwidth_mib_s,
        r.max_throttle_percent
    );
    let _ = std::io::stdout().flush();
    Ok(0)
}

fn progress_line(p: &Progress, t: Duration) -> String {
    let phase = serde_json::to_value(p.phase).unwrap_or_default();
    format!(
        "[{:5.1}s] {} pass {}: {} pages left, dirty {:.0} MiB/s, link {:.0} MiB/s, est. downtime {:.1} ms, throttle {}%",
        t.as_secs_f64(),
        phase.as_str().unwrap_or("?"),
        p.pass,
        p.pages_left,
        p.dirty_rate_mib_s,
        p.bandwidth_mib_s,
        p.estimated_downtime_ms,
        p.throttle_percent
    )
}

/// Wait for an incoming VM and run it; returns its exit status.
pub fn run_receive(args: ReceiveArgs) -> Result<i32, String> {
    super::run::filters(args.seccomp)?;
    let listen = crate::migration::parse_listen(&args.listen).map_err(|e| e.to_string())?;
    let key = args
        .key
        .as_deref()
        .map(crate::migration::read_key)
        .transpose()?;
    let admission =
        Admission::new(&args.set, &args.allow_dir, &args.allow_tap).map_err(|e| e.to_string())?;
    if let Some(name) = &args.name {
        crate::host::registry::check_free(name).map_err(|e| e.to_string())?;
    }
    let host = args
        .confine
        .settings(args.seccomp.unwrap_or_default(), None, None)?;
    // Before any thread starts, and before the incoming VM's memory exists; what the VM needs
    // shown in the jail is known only once its configuration arrives.
    let mut confined = super::run::confine(&host, args.name.as_deref(), None)?;
    let mut incoming = Incoming::accept(listen, key.as_ref()).map_err(failed)?;
    let taken = take(
        &mut incoming,
        &admission,
        args.name.as_deref(),
        args.api_sock.as_deref(),
    )
    .and_then(|(vm, reg, api)| {
        // Jailed before the commit: a jail that cannot be entered leaves the source running.
        if let (Some(j), Some(dir)) = (confined.jail.as_mut(), super::run::vsock_dir(vm.config())) {
            j.show(dir).map_err(|e| e.to_string())?;
        }
        super::run::enter(&confined, &vm)?;
        Ok((vm, reg, api))
    });
    let (vm, reg, api) = match taken {
        Ok(t) => t,
        Err(e) => {
            incoming.refuse(&e);
            return Err(failed(e));
        }
    };
    filtered(|| incoming.commit())?
        .map_err(|e| format!("the source did not commit ({e}); nothing runs here"))?;
    // Committed: this VM runs here now, whatever happens to the link. Its API socket is bound
    // already; if its thread cannot start, the VM runs without an API rather than not at all.
    let vm = Arc::new(vm);
    if let Some(listener) = api {
        if let Err(e) = crate::api::server::start_on(listener, vm.clone()) {
            plainvm_devices::log_warn!("the VM runs, but without its API: {e}");
        }
    }
    let out = vm.run().map_err(|e| e.to_string())?;
    drop(reg);
    match out.reason {
        crate::host::exit::ExitReason::Crash(msg) => Err(msg),
        r => Ok(r.status()),
    }
}

/// Run `f` (a step that reads the incoming stream) on a thread of its own under the
/// `migration-receive` filter: the main thread is still setting the VM up, unfiltered.
fn filtered<T: Send>(f: impl FnOnce() -> T + Send) -> Result<T, String> {
    use crate::seccomp::{install, ThreadKind};
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("migration-recv".into())
            .spawn_scoped(s, || {
                install(ThreadKind::MigrationReceive).map_err(|e| e.to_string())?;
                Ok(f())
            })
            .map_err(|e| format!("cannot start the thread that reads the migration: {e}"))?
            .join()
            .map_err(|_| "the thread that reads the migration failed".to_string())?
    })
}

fn failed(e: impl std::fmt::Display) -> String {
    format!("incoming migration failed, nothing runs here: {e}")
}

/// What `take` hands on: the VM built, its registry entry, its API socket bound.
type Taken = (
    Vm,
    Option<crate::host::registry::Registration>,
    Option<std::os::unix::net::UnixListener>,
);

/// Everything before the commit: the offer is checked, the name claimed, the API socket bound,
/// memory and state received and the VM built (not started). Any error here leaves the source
/// running.
fn take(
    incoming: &mut Incoming,
    admission: &Admission,
    name: Option<&str>,
    api_sock: Option<&Path>,
) -> Result<Taken, String> {
    let incompatible =
        |e: &dyn std::fmt::Display| ReceiveError::Incompatible(e.to_string()).to_string();
    let hello = filtered(|| incoming.hello())?.map_err(|e| e.to_string())?;
    crate::vcpu::cpuid::check_cpuid(&hello.cpuid).map_err(|e| incompatible(&e))?;
    let cfg: VmConfig = admission
        .admit(hello.config)
        .map_err(|e| incompatible(&e))?;
    cfg.check().map_err(|e| incompatible(&e))?;
    crate::config::check_memory(cfg.memory_bytes).map_err(|e| incompatible(&e))?;
    // Claimed before the commit: a name or socket taken meanwhile refuses the VM, the source
    // runs on.
    let reg = super::run::register(name, api_sock, &cfg)?;
    let api = super::run::api_path(reg.as_ref(), api_sock)
        .map(|p| crate::api::server::bind(&p))
        .transpose()
        .map_err(|e| e.to_string())?;
    let mem = crate::memory::Layout::new(cfg.memory_bytes)
        .create_memory()
        .map_err(|e| incompatible(&e))?;
    let state = filtered(|| incoming.receive_memory(&mem))?.map_err(|e| e.to_string())?;
    let state = VmState::decode(&state).map_err(|e| e.to_string())?;
    let vm = Vm::restore(&cfg, &state, RestoreMemory::Filled(mem)).map_err(|e| e.to_string())?;
    Ok((vm, reg, api))
}
