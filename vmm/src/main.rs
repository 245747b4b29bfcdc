//! The `plainvm` command line: parse flags, run the VM, turn the outcome into an exit status.

use clap::{Args, Parser, Subcommand};
use plainvm::api::client::request;
use plainvm::config::{CpuTemplate, FileConfig};
use plainvm::exit::ExitReason;
use plainvm::vm::{Restore, RunOptions, RunResult};
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
    /// Write the bundled test guest ELF to a file (to run it elsewhere, e.g. under QEMU).
    ExportTestguest {
        /// Where to write the ELF.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args)]
struct ApiArgs {
    /// The VM's API socket (as given to `run --api-sock`).
    #[arg(long)]
    api_sock: PathBuf,
}

#[derive(Args)]
struct RestoreArgs {
    /// The snapshot directory.
    dir: PathBuf,
    /// Serve the control API on this unix socket.
    #[arg(long)]
    api_sock: Option<PathBuf>,
    /// Read the whole memory file at start instead of mapping it lazily.
    #[arg(long)]
    copy_memory: bool,
    /// Print timing on exit.
    #[arg(long, short)]
    verbose: bool,
}

#[derive(Args)]
struct RunArgs {
    /// Serve the control API (pause, resume, info, snapshot) on this unix socket.
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
    /// Guest memory, e.g. 128M or 2G; a bare number means MiB (default 128M).
    #[arg(long)]
    memory: Option<String>,
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
    /// Print boot milestones and timing on exit.
    #[arg(long, short)]
    verbose: bool,
}

fn main() -> ExitCode {
    let start = Instant::now();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args, start),
        Command::Restore(args) => restore(args, start),
        Command::Pause(a) => api_call(
            &a.api_sock,
            "PATCH",
            "/vm",
            Some(json!({"state": "Paused"})),
        ),
        Command::Resume(a) => api_call(
            &a.api_sock,
            "PATCH",
            "/vm",
            Some(json!({"state": "Running"})),
        ),
        Command::Info(a) => api_call(&a.api_sock, "GET", "/vm", None),
        Command::Snapshot { api, path, diff } => {
            let path = std::path::absolute(&path).unwrap_or(path);
            let kind = if diff { "Diff" } else { "Full" };
            api_call(
                &api.api_sock,
                "PUT",
                "/snapshot/create",
                Some(json!({"path": path, "type": kind})),
            )
        }
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
        cpu_template: args.cpu_template,
        rng: args.rng.then_some(true),
        nets: match args.net.is_empty() {
            true => None,
            false => Some(
                args.net
                    .iter()
                    .map(|s| plainvm::config::parse_net(s))
                    .collect::<Result<_, _>>()
                    .map_err(|e| e.to_string())?,
            ),
        },
        disks: match args.disk.is_empty() {
            true => None,
            false => Some(
                args.disk
                    .iter()
                    .map(|s| plainvm::disks::parse_disk(s))
                    .collect::<Result<_, _>>()
                    .map_err(|e| e.to_string())?,
            ),
        },
    };
    let cfg = file.merge(flags).validate().map_err(|e| e.to_string())?;
    let opts = RunOptions {
        api_sock: args.api_sock,
        ..Default::default()
    };
    let out = plainvm::vm::run(&cfg, opts).map_err(|e| e.to_string())?;
    report(out, args.verbose, start)
}

fn restore(args: RestoreArgs, start: Instant) -> Result<i32, String> {
    let state = plainvm::snapshot::load_state(&args.dir).map_err(|e| e.to_string())?;
    plainvm::cpuid::check_restorable(&state).map_err(|e| e.to_string())?;
    let cfg = state.config.clone();
    let opts = RunOptions {
        api_sock: args.api_sock,
        restore: Some(Restore {
            dir: args.dir,
            state,
            copy_memory: args.copy_memory,
        }),
    };
    let out = plainvm::vm::run(&cfg, opts).map_err(|e| e.to_string())?;
    if args.verbose {
        eprintln!(
            "plainvm: restored; ran for {} ms",
            start.elapsed().as_millis()
        );
    }
    report(out, false, start)
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
        eprintln!("plainvm: cpu template {:?}", out.template);
        for (code, at) in &out.milestones {
            let us = at.duration_since(start).as_micros();
            eprintln!(
                "plainvm: milestone {code} at {}.{:03} ms",
                us / 1000,
                us % 1000
            );
        }
        for line in plainvm::hypercall::mark_report(&out.hypercall, start, out.vcpu_start) {
            eprintln!("plainvm: {line}");
        }
        let bp =
            plainvm::emulation::BREAKPOINTS_INJECTED.load(std::sync::atomic::Ordering::Relaxed);
        eprintln!("plainvm: int3 emulation failures answered with #BP: {bp}");
        eprintln!("plainvm: ran for {} ms", start.elapsed().as_millis());
    }
    match out.reason {
        ExitReason::Crash(msg) => Err(msg),
        r => Ok(r.status()),
    }
}
