//! The `plainvm` command line: parse flags, run the VM, turn the outcome into an exit status.

use clap::{Args, Parser, Subcommand};
use plainvm::config::{CpuTemplate, FileConfig};
use plainvm::exit::ExitReason;
use std::path::PathBuf;
use std::process::ExitCode;
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
    /// Write the bundled test guest ELF to a file (to run it elsewhere, e.g. under QEMU).
    ExportTestguest {
        /// Where to write the ELF.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args)]
struct RunArgs {
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
    /// Print boot milestones and timing on exit.
    #[arg(long, short)]
    verbose: bool,
}

fn main() -> ExitCode {
    let start = Instant::now();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args, start),
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
    };
    let cfg = file.merge(flags).validate().map_err(|e| e.to_string())?;
    let out = plainvm::vm::run(&cfg).map_err(|e| e.to_string())?;
    if args.verbose {
        eprintln!("plainvm: cpu template {:?}", out.template);
        for (code, at) in &out.milestones {
            let us = at.duration_since(start).as_micros();
            eprintln!(
                "plainvm: milestone {code} at {}.{:03} ms",
                us / 1000,
                us % 1000
            );
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
