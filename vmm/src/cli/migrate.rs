//! The `plainvm migrate` and `plainvm receive` subcommands.

use crate::api::client::request;
use crate::config::overrides::Overrides;
use crate::migration::receiver::{receive, ReceiveOptions};
use clap::Args;
use serde_json::{json, Value};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
    #[arg(long, default_value = "cancel")]
    pub on_timeout: String,
    /// Authenticate and encrypt the stream with this 32-byte key (same file on both hosts).
    #[arg(long)]
    pub key: Option<PathBuf>,
}

/// `plainvm receive`.
#[derive(Args)]
pub struct ReceiveArgs {
    /// Where to listen: tcp:ADDR:PORT.
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
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Replace a configuration key of the incoming VM, e.g. nets='[{"tap":"tap1"}]' for
    /// another tap name or disks='[...]' for other disk paths here. May be repeated.
    #[arg(long = "set", value_name = "KEY=JSON")]
    pub set: Vec<String>,
}

fn hex(k: &[u8; 32]) -> String {
    k.iter().map(|b| format!("{b:02x}")).collect()
}

/// Start a migration through the VM's API and show its progress until it ends.
pub fn migrate(sock: &Path, args: &MigrateArgs) -> Result<i32, String> {
    let mut body = json!({
        "to": args.to,
        "downtime_ms": args.downtime_ms,
        "on_timeout": args.on_timeout,
    });
    if let Some(t) = args.timeout_s {
        body["timeout_s"] = json!(t);
    }
    if let Some(k) = &args.key {
        body["key"] = json!(hex(&crate::migration::read_key(k)?));
    }
    let sock2 = sock.to_path_buf();
    let call = std::thread::spawn(move || {
        request(
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
    while !call.is_finished() {
        std::thread::sleep(Duration::from_millis(200));
        let Ok(p) = request(sock, "GET", "/migrate", None, Duration::from_secs(5)) else {
            continue;
        };
        let line = progress_line(&p, start.elapsed());
        if tty {
            eprint!("\r\x1b[2K{line}");
        } else if last_line.elapsed() >= Duration::from_secs(1) {
            eprintln!("{line}");
            last_line = Instant::now();
        }
    }
    if tty {
        eprintln!();
    }
    let r = call
        .join()
        .map_err(|_| "the migration request thread failed".to_string())?
        .map_err(|e| format!("migration failed: {e}"))?;
    println!(
        "migrated: downtime {:.1} ms, total {:.0} ms, {} passes, {:.0} MiB sent at {:.0} MiB/s, throttled up to {}%",
        r["downtime_ms"].as_f64().unwrap_or(0.0),
        r["total_ms"].as_f64().unwrap_or(0.0),
        r["passes"],
        r["bytes_sent"].as_f64().unwrap_or(0.0) / 1048576.0,
        r["bandwidth_mib_s"].as_f64().unwrap_or(0.0),
        r["max_throttle_percent"]
    );
    let _ = std::io::stdout().flush();
    Ok(0)
}

fn progress_line(p: &Value, t: Duration) -> String {
    format!(
        "[{:5.1}s] {} pass {}: {} pages left, dirty {:.0} MiB/s, link {:.0} MiB/s, est. downtime {:.1} ms, throttle {}%",
        t.as_secs_f64(),
        p["phase"].as_str().unwrap_or("?"),
        p["pass"],
        p["pages_left"],
        p["dirty_rate_mib_s"].as_f64().unwrap_or(0.0),
        p["bandwidth_mib_s"].as_f64().unwrap_or(0.0),
        p["estimated_downtime_ms"].as_f64().unwrap_or(0.0),
        p["throttle_percent"]
    )
}

/// Wait for an incoming VM and run it; returns its exit status.
pub fn run_receive(args: ReceiveArgs) -> Result<i32, String> {
    let listen = crate::migration::parse_tcp(&args.listen).map_err(|e| e.to_string())?;
    let key = args
        .key
        .as_deref()
        .map(crate::migration::read_key)
        .transpose()?;
    let overrides = Overrides::parse(&args.set).map_err(|e| e.to_string())?;
    if let Some(name) = &args.name {
        crate::host::registry::check_free(name).map_err(|e| e.to_string())?;
    }
    let out = receive(ReceiveOptions {
        listen,
        key,
        name: args.name,
        api_sock: args.api_sock,
        overrides,
    })
    .map_err(|e| format!("incoming migration failed, nothing runs here: {e}"))?;
    match out.reason {
        crate::host::exit::ExitReason::Crash(msg) => Err(msg),
        r => Ok(r.status()),
    }
}
