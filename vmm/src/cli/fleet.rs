//! The operator's subcommands over many VMs: `ls`, `stop`, `kill` and `balloon`, built on the
//! registry (names) and the control API.

use super::target::{Resolved, Target};
use crate::api::client::{call, request, ClientError};
use crate::api::types::{Action, ActionRequest, BalloonChange, VmInfo};
use crate::host::registry::{self, Entry};
use serde::Serialize;
use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A line on stdout; a closed stdout (piped into `head`) is not an error of the command.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// Exit status of `stop` when the guest did not power off in time and was stopped by force.
pub const STOP_FORCED: i32 = 2;
/// How long `ls` waits for one VM's API (a busy host answers slowly).
const LS_TIMEOUT: Duration = Duration::from_secs(10);
/// How many VMs `ls` asks at the same time.
const LS_PARALLEL: usize = 64;

/// Errors of the operator commands.
#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    #[error(transparent)]
    Registry(#[from] registry::RegistryError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Target(#[from] super::target::TargetError),
    #[error("cannot tell which process serves {0}: its API does not answer and no registry entry names it")]
    NoPid(PathBuf),
    #[error("process {pid} did not end after SIGKILL within {secs} s")]
    Unkillable { pid: i32, secs: u64 },
    #[error(transparent)]
    Size(#[from] crate::config::size::SizeError),
}

/// One line of `ls`.
#[derive(Serialize)]
pub struct VmRow {
    pub name: String,
    pub pid: i32,
    /// Running or Paused from the API; Starting while the API is not up yet (first seconds);
    /// Unresponsive when the process lives but its API does not answer.
    pub state: String,
    pub vcpus: u8,
    pub memory_bytes: u64,
    /// Resident memory of the VMM process (guest RAM it touched included).
    pub rss_bytes: u64,
    pub uptime_s: u64,
    pub api_sock: PathBuf,
    /// A guest agent obeys power requests (`stop` is graceful).
    pub agent: bool,
    /// Its threads run under seccomp filters (None: its API did not answer).
    pub seccomp: Option<bool>,
    /// It runs in its jail (None: its API did not answer).
    pub jailed: Option<bool>,
    /// The jail's user, group and directory, when jailed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jail: Option<crate::host::jail::JailInfo>,
}

/// VmRSS of `pid` from /proc/PID/status, in bytes.
pub fn rss_bytes(pid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib << 10)
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The live VMs with their state (stale entries are removed on the way).
pub fn rows() -> Vec<VmRow> {
    let entries = registry::list();
    let mut out = Vec::with_capacity(entries.len());
    // Ask many VMs at once: on a loaded host each answer waits for its API thread to be
    // scheduled, and one by one that adds up.
    for chunk in entries.chunks(LS_PARALLEL) {
        std::thread::scope(|s| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|e| s.spawn(move || row(e.clone())))
                .collect();
            out.extend(handles.into_iter().filter_map(|h| h.join().ok().flatten()));
        });
    }
    out
}

/// One VM's row (None: it ended meanwhile).
fn row(e: Entry) -> Option<VmRow> {
    let uptime_s = now_unix().saturating_sub(e.started_unix);
    let (state, agent, seccomp, jail) =
        match call::<(), VmInfo>(&e.api_sock, "GET", "/vm", None, LS_TIMEOUT) {
            Ok(v) => (
                format!("{:?}", v.state),
                v.agent,
                Some(v.seccomp),
                Some(v.jail),
            ),
            Err(_) if uptime_s < 10 => ("Starting".to_string(), false, None, None),
            Err(_) => ("Unresponsive".to_string(), false, None, None),
        };
    // It may have ended while we asked.
    if !e.is_live() {
        registry::remove_stale(&e.name);
        return None;
    }
    Some(VmRow {
        rss_bytes: rss_bytes(e.pid).unwrap_or(0),
        name: e.name,
        pid: e.pid,
        state,
        vcpus: e.config.cpus,
        memory_bytes: e.config.memory_bytes,
        uptime_s,
        api_sock: e.api_sock,
        agent,
        seccomp,
        jailed: jail.as_ref().map(Option::is_some),
        jail: jail.flatten(),
    })
}

fn mib(bytes: u64) -> String {
    format!("{:.1}M", bytes as f64 / f64::from(1 << 20))
}

fn duration(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// `plainvm ls [--json]`: the text table or a JSON array.
pub fn ls(as_json: bool) -> String {
    let rows = rows();
    if as_json {
        return serde_json::to_string_pretty(&rows).unwrap_or_default();
    }
    let mut out = format!(
        "{:<24} {:>8} {:<12} {:>5} {:>9} {:>9} {:>8} {:<7} {:<11}\n",
        "NAME", "PID", "STATE", "VCPUS", "MEMORY", "RSS", "UPTIME", "SECCOMP", "JAIL"
    );
    for r in &rows {
        let seccomp = match r.seccomp {
            Some(true) => "on",
            Some(false) => "off",
            None => "-",
        };
        let jail = match (&r.jail, r.jailed) {
            (Some(j), _) => format!("{}:{}", j.uid, j.gid),
            (None, Some(false)) => "no".to_string(),
            (None, _) => "-".to_string(),
        };
        out.push_str(&format!(
            "{:<24} {:>8} {:<12} {:>5} {:>9} {:>9} {:>8} {:<7} {:<11}\n",
            r.name,
            r.pid,
            r.state,
            r.vcpus,
            mib(r.memory_bytes),
            mib(r.rss_bytes),
            duration(r.uptime_s),
            seccomp,
            jail
        ));
    }
    out
}

/// The process behind a resolved VM and its start time (from the entry, else from GET /vm).
fn process_of(t: &Resolved) -> Result<(i32, u64), ManageError> {
    if let Some(e) = &t.entry {
        return Ok((e.pid, e.proc_start));
    }
    let v: VmInfo = call::<(), _>(&t.sock, "GET", "/vm", None, LS_TIMEOUT)?;
    let pid = i32::try_from(v.pid).map_err(|_| ManageError::NoPid(t.sock.clone()))?;
    let start = registry::proc_start_time(pid).ok_or_else(|| ManageError::NoPid(t.sock.clone()))?;
    Ok((pid, start))
}

/// Wait until the process ends; true if it did within `limit`.
fn wait_gone(pid: i32, start: u64, limit: Duration) -> bool {
    let t0 = Instant::now();
    while registry::process_alive(pid, start) {
        if t0.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// End the VM now: the API's kill action, then SIGKILL if it is still there after a moment.
/// Returns how it ended.
fn force(t: &Resolved, pid: i32, start: u64) -> Result<&'static str, ManageError> {
    let asked = request(
        &t.sock,
        "PUT",
        "/actions",
        Some(&ActionRequest {
            action: Action::Kill,
        }),
        Duration::from_secs(1),
    )
    .is_ok();
    if asked && wait_gone(pid, start, Duration::from_secs(2)) {
        return Ok("through its API");
    }
    if registry::process_alive(pid, start) {
        // SAFETY: kill(2) has no memory-safety preconditions; pid and start time were checked
        // just above, so this is the VMM process we mean.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        if !wait_gone(pid, start, Duration::from_secs(5)) {
            return Err(ManageError::Unkillable { pid, secs: 5 });
        }
    }
    if let Some(e) = &t.entry {
        registry::remove_stale(&e.name);
    }
    Ok("with SIGKILL")
}

/// `plainvm kill`: end the VM at once. Prints what happened.
pub fn kill(t: &Target) -> Result<i32, ManageError> {
    let r = t.resolve("kill")?;
    let (pid, start) = process_of(&r)?;
    let how = force(&r, pid, start)?;
    out!("{}: killed {how}", r.label);
    Ok(0)
}

/// `plainvm stop`: ask the guest agent to power off; after `timeout` (or at once when no agent
/// ever answers within it) stop the VM by force. Exit status 0: graceful, `STOP_FORCED`: forced.
pub fn stop(t: &Target, timeout: Duration) -> Result<i32, ManageError> {
    let r = t.resolve("stop")?;
    let (pid, start) = process_of(&r)?;
    let deadline = Instant::now() + timeout;
    let mut posted = false;
    let mut last_error = String::from("no guest agent announced itself");
    loop {
        if !registry::process_alive(pid, start) {
            let how = match posted {
                true => "stopped gracefully: the guest agent powered it off",
                false => "ended by itself before a power-off request reached it",
            };
            out!("{}: {how}", r.label);
            if let Some(e) = &r.entry {
                registry::remove_stale(&e.name);
            }
            return Ok(0);
        }
        if !posted {
            match request(
                &r.sock,
                "PUT",
                "/actions",
                Some(&ActionRequest {
                    action: Action::Stop,
                }),
                Duration::from_secs(2),
            ) {
                Ok(_) => {
                    posted = true;
                    plainvm_devices::log_line!("{}: asked the guest agent to power off", r.label);
                }
                // 409: no agent (yet: a booting guest may still start one). Keep asking.
                Err(ClientError::Api { message, .. }) => last_error = message,
                Err(e) => last_error = e.to_string(),
            }
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let why = match posted {
        true => "the guest agent did not power off".to_string(),
        false => last_error,
    };
    let how = force(&r, pid, start)?;
    out!(
        "{}: forced stop after {} s ({why}); killed {how}",
        r.label,
        timeout.as_secs()
    );
    Ok(STOP_FORCED)
}

/// `plainvm balloon NAME SIZE`: set the balloon to take SIZE from the guest.
pub fn balloon(t: &Target, size: &str) -> Result<Value, ManageError> {
    let r = t.resolve("balloon")?;
    let bytes = crate::config::parse_size(size)?;
    Ok(request(
        &r.sock,
        "PATCH",
        "/balloon",
        Some(&BalloonChange {
            amount_mib: bytes >> 20,
        }),
        Duration::from_secs(10),
    )?)
}
