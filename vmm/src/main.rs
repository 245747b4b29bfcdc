//! The `plainvm` command line: parse flags, run the VM, turn the outcome into an exit status.

use clap::{Args, Parser, Subcommand};
use plainvm::api::client::request;
use plainvm::config::{CpuTemplate, FileConfig};
use plainvm::host::exit::ExitReason;
use plainvm::vm::{Restore, RestoreMemory, RunOptions, RunResult};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "plainvm",
    version,
    about = "A small virtual machine monitor on Linux KVM"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a VM (the bundled test guest when no --kernel is given) and run it until it stops.
    Run(RunArgs),
    /// Start a VM from a snapshot directory (written by `plainvm snapshot`).
    Restore(RestoreArgs),
    /// Pause a running VM's vCPUs.
    Pause(ApiArgs),
    /// Resume a paused VM.
    Resume(ApiArgs),
    /// Print a running VM's state and configuration as JSON.
    Info(ApiArgs),
    /// Snapshot a running VM into a new directory (the VM keeps running).
    Snapshot {
        #[command(flatten)]
        api: ApiArgs,
        /// The snapshot directory to create.
        #[arg(long)]
        path: PathBuf,
        /// Only the memory pages written since the last snapshot (restoring it needs that one).
        #[arg(long)]
        diff: bool,
    },
    /// List the running VMs: name, state, vCPUs, memory, host RSS, uptime.
    Ls {
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Power a VM off: gracefully through its guest agent, by force after the timeout.
    /// Exit status 0: graceful; 2: forced.
    Stop {
        #[command(flatten)]
        api: ApiArgs,
        /// Seconds to wait for the guest to power off before stopping it by force.
        #[arg(long, default_value_t = 20)]
        timeout_s: u64,
    },
    /// End a VM at once (SIGKILL of its process when its API does not answer).
    Kill(ApiArgs),
    /// Set a VM's balloon target (the memory the balloon takes from the guest).
    ///
    /// `plainvm balloon NAME SIZE`, or `plainvm balloon --api-sock PATH SIZE`; SIZE as in 64M.
    Balloon {
        /// The VM's name (optional with --name or --api-sock), then SIZE.
        #[arg(num_args = 1..=2, required = true, value_name = "[NAME] SIZE")]
        words: Vec<String>,
        /// The VM's name (instead of the positional NAME).
        #[arg(long = "name", value_name = "NAME")]
        name_flag: Option<String>,
        /// The VM's API socket (instead of its name).
        #[arg(long)]
        api_sock: Option<PathBuf>,
    },
    /// Live-migrate a running VM to `plainvm receive` on another host.
    Migrate {
        #[command(flatten)]
        api: ApiArgs,
        #[command(flatten)]
        opts: plainvm::cli::migrate::MigrateArgs,
    },
    /// Wait for a live migration and run the incoming VM.
    Receive(plainvm::cli::migrate::ReceiveArgs),
    /// Write the bundled test guest ELF to a file (to run it elsewhere, e.g. under QEMU).
    ExportTestguest {
        /// Where to write the ELF.
        #[arg(long)]
        out: PathBuf,
    },
}

/// How a subcommand names its VM: NAME, --name NAME or --api-sock PATH.
#[derive(Args)]
struct ApiArgs {
    /// The VM's name (see `plainvm ls`).
    #[arg(value_name = "NAME")]
    name: Option<String>,
    /// The VM's name, as a flag.
    #[arg(long = "name", value_name = "NAME")]
    name_flag: Option<String>,
    /// The VM's API socket (as given to `run --api-sock`); wins over the name.
    #[arg(long)]
    api_sock: Option<PathBuf>,
}

impl ApiArgs {
    fn target(&self) -> plainvm::cli::fleet::Target<'_> {
        plainvm::cli::fleet::Target {
            name: self.name.as_deref(),
            name_flag: self.name_flag.as_deref(),
            api_sock: self.api_sock.as_deref(),
        }
    }

    /// The API socket of the VM named, or a readable error.
    fn sock(&self, verb: &'static str) -> Result<PathBuf, String> {
        self.target()
            .resolve(verb)
            .map(|r| r.sock)
            .map_err(|e| e.to_string())
    }
}

#[derive(Args)]
struct RestoreArgs {
    /// The snapshot directory.
    dir: PathBuf,
    /// The VM's name in the registry (default: vm-<pid>).
    #[arg(long)]
    name: Option<String>,
    /// Serve the control API on this unix socket.
    #[arg(long)]
    api_sock: Option<PathBuf>,
    /// Read the whole memory file at start instead of mapping it lazily.
    #[arg(long)]
    copy_memory: bool,
    /// Change a host-specific configuration key (nets, disks, vsock, cpu_affinity), e.g.
    /// `--set 'nets=[{"tap":"tap7"}]'`; objects and lists are merged into the saved ones.
    #[arg(long = "set", value_name = "KEY=JSON")]
    set: Vec<String>,
    /// Print timing on exit.
    #[arg(long, short)]
    verbose: bool,
}

#[derive(Args)]
struct RunArgs {
    /// The VM's name in the registry (default: vm-<pid>); other subcommands find it by name.
    #[arg(long)]
    name: Option<String>,
    /// Serve the control API (pause, resume, info, snapshot) on this unix socket instead of
    /// the default one in the VM's runtime directory (the registry entry then points here).
    #[arg(long)]
    api_sock: Option<PathBuf>,
    /// Kernel: vmlinux ELF (PVH or 64-bit entry), bzImage, or a plainvm test guest ELF.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initial ramdisk.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line (default for Linux: "console=ttyS0 reboot=k panic=-1").
    #[arg(long)]
    cmdline: Option<String>,
    /// Number of vCPUs (default 1).
    #[arg(long)]
    cpus: Option<u64>,
    /// Guest memory, e.g. 128M or 2G (a bare number means MiB; default 128M), or
    /// size=SIZE,merge=on to let KSM merge identical guest pages.
    #[arg(long, value_name = "SIZE|size=SIZE,merge=on")]
    memory: Option<String>,
    /// Pin vCPU i to the i-th host CPU of LIST, e.g. 0,1 or 0-3.
    #[arg(long, value_name = "LIST")]
    cpu_affinity: Option<String>,
    /// JSON file with the same keys (kernel, initrd, cmdline, cpus, memory, cpu_template); flags win.
    #[arg(long)]
    config: Option<PathBuf>,
    /// CPUID template: auto (safe on hosts that emulate guest ring 0), host or safe.
    #[arg(long)]
    cpu_template: Option<CpuTemplate>,
    /// Attach a virtio-rng device (entropy from the host's getrandom).
    #[arg(long)]
    rng: bool,
    /// A virtio-net device over host tap NAME (created if missing), e.g. tap=tap0,mac=02:00:00:00:00:01;
    /// may be repeated. Without mac= a locally administered address is generated.
    #[arg(long, value_name = "tap=NAME[,mac=MAC]")]
    net: Vec<String>,
    /// A virtio-blk disk over a raw image file; may be repeated (the first is /dev/vda).
    /// readonly=on makes writes fail; id= is what the guest reads as the disk's serial.
    #[arg(long, value_name = "path=IMG[,readonly=on][,id=NAME]")]
    disk: Vec<String>,
    /// A virtio-vsock device for guest CID N. The host connects to the unix socket PATH and
    /// writes "CONNECT <port>\n" to reach a guest port; guest connections to host port P go
    /// to the unix socket PATH_P.
    #[arg(long, value_name = "cid=N,socket=PATH")]
    vsock: Option<String>,
    /// A virtio-balloon device; size= is the initial target (memory the guest gives back),
    /// free-page-reporting=on lets the guest hand back free memory as well.
    #[arg(long, value_name = "[size=SIZE][,free-page-reporting=on]", num_args = 0..=1, default_missing_value = "")]
    balloon: Option<String>,
    /// Print boot milestones and timing on exit.
    #[arg(long, short)]
    verbose: bool,
}

fn main() -> ExitCode {
    let start = Instant::now();
    plainvm::host::heap::use_one_arena();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args, start),
        Command::Restore(args) => restore(args, start),
        Command::Pause(a) => a
            .sock("pause")
            .and_then(|s| api_call(&s, "PATCH", "/vm", Some(json!({"state": "Paused"})))),
        Command::Resume(a) => a
            .sock("resume")
            .and_then(|s| api_call(&s, "PATCH", "/vm", Some(json!({"state": "Running"})))),
        Command::Info(a) => a
            .sock("info")
            .and_then(|s| api_call(&s, "GET", "/vm", None)),
        Command::Ls { json } => {
            let _ = write!(std::io::stdout(), "{}", plainvm::cli::fleet::ls(json));
            Ok(0)
        }
        Command::Stop { api, timeout_s } => {
            plainvm::cli::fleet::stop(&api.target(), Duration::from_secs(timeout_s))
                .map_err(|e| e.to_string())
        }
        Command::Kill(a) => plainvm::cli::fleet::kill(&a.target()).map_err(|e| e.to_string()),
        Command::Balloon {
            words,
            name_flag,
            api_sock,
        } => {
            let (name, size) = match words.as_slice() {
                [name, size] => (Some(name.as_str()), size),
                [size] => (None, size),
                _ => unreachable!("clap takes one or two words"),
            };
            let t = plainvm::cli::fleet::Target {
                name,
                name_flag: name_flag.as_deref(),
                api_sock: api_sock.as_deref(),
            };
            plainvm::cli::fleet::balloon(&t, size)
                .map(|v| {
                    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                    0
                })
                .map_err(|e| e.to_string())
        }
        Command::Snapshot { api, path, diff } => {
            let path = std::path::absolute(&path).unwrap_or(path);
            let kind = if diff { "Diff" } else { "Full" };
            api.sock("snapshot").and_then(|s| {
                api_call(
                    &s,
                    "PUT",
                    "/snapshot/create",
                    Some(json!({"path": path, "type": kind})),
                )
            })
        }
        Command::Migrate { api, opts } => api
            .sock("migrate")
            .and_then(|sock| plainvm::cli::migrate::migrate(&sock, &opts)),
        Command::Receive(args) => plainvm::cli::migrate::run_receive(args),
        Command::ExportTestguest { out } => std::fs::write(&out, plainvm::boot::DEFAULT_GUEST)
            .map(|_| 0)
            .map_err(|e| format!("cannot write {}: {e}", out.display())),
    };
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(msg) => {
            eprintln!("plainvm: error: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs, start: Instant) -> Result<i32, String> {
    let file = match &args.config {
        Some(p) => FileConfig::load(p).map_err(|e| e.to_string())?,
        None => FileConfig::default(),
    };
    let flags = FileConfig {
        kernel: args.kernel,
        initrd: args.initrd,
        cmdline: args.cmdline,
        cpus: args.cpus,
        memory: args.memory.map(serde_json::Value::String),
        cpu_affinity: args.cpu_affinity,
        cpu_template: args.cpu_template,
        rng: args.rng.then_some(true),
        nets: match args.net.is_empty() {
            true => None,
            false => Some(
                args.net
                    .iter()
                    .map(|s| plainvm::config::net::parse_net(s))
                    .collect::<Result<_, _>>()
                    .map_err(|e| e.to_string())?,
            ),
        },
        disks: match args.disk.is_empty() {
            true => None,
            false => Some(
                args.disk
                    .iter()
                    .map(|s| plainvm::config::disk::parse_disk(s))
                    .collect::<Result<_, _>>()
                    .map_err(|e| e.to_string())?,
            ),
        },
        vsock: args
            .vsock
            .as_deref()
            .map(plainvm::config::vsock::parse_vsock)
            .transpose()
            .map_err(|e| e.to_string())?,
        balloon: args
            .balloon
            .as_deref()
            .map(plainvm::config::balloon::parse_balloon)
            .transpose()
            .map_err(|e| e.to_string())?,
    };
    let cfg = file.merge(flags).validate().map_err(|e| e.to_string())?;
    let reg = register(args.name.as_deref(), args.api_sock.as_deref(), &cfg)?;
    let opts = RunOptions {
        api_sock: reg
            .as_ref()
            .map(|r| r.api_sock().to_path_buf())
            .or(args.api_sock),
        ..Default::default()
    };
    let out = plainvm::vm::run(&cfg, opts).map_err(|e| e.to_string())?;
    drop(reg);
    report(out, args.verbose, start)
}

fn restore(args: RestoreArgs, start: Instant) -> Result<i32, String> {
    let state = plainvm::snapshot::load_state(&args.dir).map_err(|e| e.to_string())?;
    plainvm::vcpu::cpuid::check_restorable(&state).map_err(|e| e.to_string())?;
    let cfg = plainvm::config::overrides::Overrides::parse(&args.set)
        .and_then(|o| o.apply(state.config.clone()))
        .map_err(|e| e.to_string())?;
    let reg = register(args.name.as_deref(), args.api_sock.as_deref(), &cfg)?;
    let opts = RunOptions {
        api_sock: reg
            .as_ref()
            .map(|r| r.api_sock().to_path_buf())
            .or(args.api_sock),
        restore: Some(Restore {
            state,
            memory: RestoreMemory::Snapshot {
                dir: args.dir,
                copy: args.copy_memory,
            },
        }),
        before_start: None,
    };
    let out = plainvm::vm::run(&cfg, opts).map_err(|e| e.to_string())?;
    if args.verbose {
        let us = out.vcpu_start.duration_since(start).as_micros();
        eprintln!(
            "plainvm: restored: vCPUs running {}.{:03} ms after start; ran for {} ms",
            us / 1000,
            us % 1000,
            start.elapsed().as_millis()
        );
    }
    report(out, false, start)
}

/// Register the VM (see `registry::register`).
fn register(
    name: Option<&str>,
    api_sock: Option<&Path>,
    cfg: &plainvm::config::VmConfig,
) -> Result<Option<plainvm::host::registry::Registration>, String> {
    plainvm::host::registry::register(name, api_sock, cfg).map_err(|e| e.to_string())
}

/// One API request; prints the JSON answer.
fn api_call(sock: &Path, method: &str, path: &str, body: Option<Value>) -> Result<i32, String> {
    let v = request(sock, method, path, body.as_ref(), Duration::from_secs(600))
        .map_err(|e| e.to_string())?;
    // A closed stdout (e.g. piped into `head`) is not an error of the call.
    let _ = writeln!(
        std::io::stdout(),
        "{}",
        serde_json::to_string_pretty(&v).unwrap_or_default()
    );
    Ok(0)
}

/// Turn a finished run into an exit status, printing the timing report with `verbose`.
fn report(out: RunResult, verbose: bool, start: Instant) -> Result<i32, String> {
    if verbose {
        if let Some(t) = out.template {
            eprintln!("plainvm: cpu template {t:?}");
        }
        for (code, at) in &out.milestones {
            let us = at.duration_since(start).as_micros();
            eprintln!(
                "plainvm: milestone {code} at {}.{:03} ms",
                us / 1000,
                us % 1000
            );
        }
        for line in
            plainvm::device_manager::hypercall::mark_report(&out.hypercall, start, out.vcpu_start)
        {
            eprintln!("plainvm: {line}");
        }
        let bp = plainvm::vcpu::emulation::BREAKPOINTS_INJECTED
            .load(std::sync::atomic::Ordering::Relaxed);
        eprintln!("plainvm: int3 emulation failures answered with #BP: {bp}");
        eprintln!("plainvm: ran for {} ms", start.elapsed().as_millis());
    }
    match out.reason {
        ExitReason::Crash(msg) => Err(msg),
        ExitReason::Migrated(msg) => {
            eprintln!("plainvm: {msg}");
            Ok(0)
        }
        r => Ok(r.status()),
    }
}
