//! The command line: one subcommand each for running a VM (`run`), restoring it (`run`),
//! controlling one through its API (`control`), managing many (`fleet`) and migrating
//! (`migrate`). `main.rs` only turns the outcome into an exit status.

pub mod control;
pub mod fleet;
pub mod migrate;
pub mod run;
pub mod target;

use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use target::ApiArgs;

#[derive(Parser)]
#[command(
    name = "plainvm",
    version,
    about = "A small virtual machine monitor on Linux KVM"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Boot a VM (the bundled test guest when no --kernel is given) and run it until it stops.
    Run(run::RunArgs),
    /// Start a VM from a snapshot directory (written by `plainvm snapshot`).
    Restore(run::RestoreArgs),
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
        opts: migrate::MigrateArgs,
    },
    /// Wait for a live migration and run the incoming VM.
    Receive(migrate::ReceiveArgs),
    /// Write the bundled test guest ELF to a file (to run it elsewhere, e.g. under QEMU).
    ExportTestguest {
        /// Where to write the ELF.
        #[arg(long)]
        out: PathBuf,
    },
}

/// Run the subcommand `cli` names; Ok is the exit status, Err the one-line error to print.
pub fn dispatch(cli: Cli, start: Instant) -> Result<i32, String> {
    match cli.command {
        Command::Run(args) => run::run(args, start),
        Command::Restore(args) => run::restore(args, start),
        Command::Pause(a) => control::pause(&a),
        Command::Resume(a) => control::resume(&a),
        Command::Info(a) => control::info(&a),
        Command::Ls { json } => {
            let _ = write!(std::io::stdout(), "{}", fleet::ls(json));
            Ok(0)
        }
        Command::Stop { api, timeout_s } => {
            fleet::stop(&api.target(), Duration::from_secs(timeout_s)).map_err(|e| e.to_string())
        }
        Command::Kill(a) => fleet::kill(&a.target()).map_err(|e| e.to_string()),
        Command::Balloon {
            words,
            name_flag,
            api_sock,
        } => {
            let (name, size) = match words.as_slice() {
                [name, size] => (Some(name.as_str()), size.as_str()),
                [size] => (None, size.as_str()),
                _ => return Err("give the balloon size: plainvm balloon [NAME] SIZE".into()),
            };
            let t = target::Target {
                name,
                name_flag: name_flag.as_deref(),
                api_sock: api_sock.as_deref(),
            };
            fleet::balloon(&t, size)
                .map(|v| {
                    control::print_json(&v);
                    0
                })
                .map_err(|e| e.to_string())
        }
        Command::Snapshot { api, path, diff } => control::snapshot(&api, path, diff),
        Command::Migrate { api, opts } => api
            .target()
            .resolve("migrate")
            .map_err(|e| e.to_string())
            .and_then(|r| migrate::migrate(&r.sock, &opts)),
        Command::Receive(args) => migrate::run_receive(args),
        Command::ExportTestguest { out } => std::fs::write(&out, crate::boot::DEFAULT_GUEST)
            .map(|_| 0)
            .map_err(|e| format!("cannot write {}: {e}", out.display())),
    }
}
