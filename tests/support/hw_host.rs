//! The emulated AMD-V test host (resources/hw-host/README.md): a level-1 (L1) Linux under
//! `qemu-system-x86_64 -accel tcg -cpu EPYC,+svm,+npt`, where Debian's stock kernel loads
//! kvm-amd and plainvm runs as on a host with hardware virtualization. A test hands L1 a shell
//! script (resources/hw-host/scripts); L1 runs it and reports on its serial console, which this
//! module reads: `@NAME <line>` for the output of level-2 run NAME, `HWHOST-RUN NAME status=N
//! secs=S` when it ends, `HWHOST-L1-EXIT status=N` at the end (resources/hw-host/l1-init).
//! QEMU is killed when the `L1` is dropped (and when the test's thread ends: PDEATHSIG), so a
//! failing test leaves nothing running; everything the guests use (taps, disks) lives inside L1.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// L1's heartbeat line, every 10 s (resources/hw-host/l1-init); not kept in the log.
const HEARTBEAT: &str = "HWHOST-ALIVE";

/// How long an L1 may print nothing, heartbeat included, before it counts as frozen (the
/// default of `L1Config::silent`). Seen in a suite run: an L1 that started a level-2 boot and
/// then printed nothing for 9 minutes, its watchdog silent too (TCG's nested SVM; QEMU busy on
/// both CPUs).
const SILENT: Duration = Duration::from_secs(120);

/// The cached L1 artifacts (resources/hw-host/build-l1.sh).
pub struct Artifacts {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
}

/// `$PLAINVM_CACHE/hw-host` (default /var/cache/plainvm/hw-host).
pub fn cache_dir() -> PathBuf {
    PathBuf::from(std::env::var_os("PLAINVM_CACHE").unwrap_or_else(|| "/var/cache/plainvm".into()))
        .join("hw-host")
}

/// Find the L1 artifacts; panics with the command that builds them (the tests must not pass by
/// skipping).
pub fn artifacts() -> Artifacts {
    let dir = cache_dir();
    let a = Artifacts {
        kernel: dir.join("vmlinux-l1"),
        initramfs: dir.join("l1.cpio"),
    };
    for p in [&a.kernel, &a.initramfs] {
        assert!(
            p.exists(),
            "{} is missing: build it with resources/build-guest.sh (or resources/hw-host/build-l1.sh)",
            p.display()
        );
    }
    assert!(
        crate::have("qemu-system-x86_64"),
        "qemu-system-x86_64 is missing (Debian qemu-system-x86; .ci/run installs it)"
    );
    a
}

/// The plainvm binary put into L1: `PLAINVM_HW_BIN`, else the one the other tests run
/// (statically linked, so it runs on L1's busybox system as it is).
pub fn plainvm_for_l1() -> PathBuf {
    std::env::var_os("PLAINVM_HW_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(crate::plainvm_bin)
}

/// Serializes L1 boots within a test binary: one TCG host takes both cores of this machine.
pub fn l1_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// One L1 boot: what it runs and how it is wired.
pub struct L1Config {
    /// Used in file names and messages.
    pub name: String,
    /// The body of /hw-run/script.sh (l1-lib.sh's helpers are loaded first).
    pub script: String,
    pub memory_mib: u32,
    pub cpus: u32,
    /// Extra words on L1's kernel command line (e.g. `hwhost.ip=192.168.77.1/24`).
    pub append: String,
    /// Extra QEMU arguments (network, disks).
    pub qemu_args: Vec<String>,
    /// How long L1 may print nothing, heartbeat included, before `finish` stops it as frozen.
    pub silent: Duration,
}

impl L1Config {
    pub fn new(name: &str, script: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            script: script.into(),
            memory_mib: 2048,
            cpus: 2,
            append: String::new(),
            qemu_args: Vec::new(),
            silent: SILENT,
        }
    }
}

/// A newc cpio archive of `entries` (path, mode, contents; `None` = a directory).
pub fn cpio(entries: &[(&str, u32, Option<&[u8]>)]) -> Vec<u8> {
    fn entry(out: &mut Vec<u8>, ino: usize, name: &str, mode: u32, data: &[u8]) {
        let fields = [
            ino as u32,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            0,
            0,
            name.len() as u32 + 1,
            0,
        ];
        out.extend_from_slice(b"070701");
        for f in fields {
            out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
        out.extend_from_slice(data);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    }
    let mut out = Vec::new();
    for (i, (name, mode, data)) in entries.iter().enumerate() {
        match data {
            Some(d) => entry(&mut out, i + 1, name, 0o100000 | mode, d),
            None => entry(&mut out, i + 1, name, 0o040000 | mode, &[]),
        }
    }
    entry(&mut out, 0, "TRAILER!!!", 0, &[]);
    out
}

/// The repository's resources/hw-host directory.
pub fn resources() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../resources/hw-host")
}

/// The initramfs for one boot: the cached l1.cpio followed by a cpio with /init, the helper
/// library, the script and plainvm (the kernel unpacks concatenated archives in order).
fn initramfs_for(cfg: &L1Config, dir: &Path) -> PathBuf {
    let a = artifacts();
    let read = |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let init = read(&resources().join("l1-init"));
    let lib = read(&resources().join("l1-lib.sh"));
    // The debug build carries ~40 MiB of debug info that L1 would unpack under TCG for nothing.
    let bin = plainvm_for_l1();
    let stripped = dir.join("plainvm-stripped");
    let ok = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(&bin)
        .arg(&stripped)
        .status()
        .is_ok_and(|s| s.success());
    let plainvm = read(if ok { &stripped } else { &bin });
    let extra = cpio(&[
        ("init", 0o755, Some(&init)),
        ("hw-run", 0o755, None),
        ("hw-run/lib.sh", 0o644, Some(&lib)),
        ("hw-run/script.sh", 0o644, Some(cfg.script.as_bytes())),
        ("bin/plainvm", 0o755, Some(&plainvm)),
    ]);
    let path = dir.join(format!("l1-{}.cpio", cfg.name));
    std::fs::copy(&a.initramfs, &path).expect("copy l1.cpio");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(&extra).unwrap();
    path
}

/// A running L1 host whose console is read line by line; QEMU is killed on drop.
pub struct L1 {
    pub name: String,
    child: Child,
    lines: Receiver<(f64, String)>,
    log: Vec<(f64, String)>,
    stderr: Option<std::thread::JoinHandle<String>>,
    started: Instant,
    console: std::fs::File,
    silent: Duration,
}

impl L1 {
    /// Boot L1 with `cfg` (files in `dir`); returns at once.
    pub fn boot(cfg: &L1Config, dir: &Path) -> Self {
        let a = artifacts();
        let initrd = initramfs_for(cfg, dir);
        let append = format!(
            "console=ttyS0 panic=-1 no_timer_check loglevel=2 {}",
            cfg.append
        );
        let mut cmd = Command::new("nice");
        cmd.args(["-n", "10", "qemu-system-x86_64"])
            .args(["-accel", "tcg,thread=multi", "-cpu", "EPYC,+svm,+npt"])
            .args(["-smp", &cfg.cpus.to_string()])
            .args(["-m", &format!("{}M", cfg.memory_mib)])
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .args(["-serial", "stdio", "-no-reboot"])
            .arg("-kernel")
            .arg(&a.kernel)
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", &append])
            .args(&cfg.qemu_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: prctl only sets this (forked, not yet exec'd) child's parent-death signal.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let started = Instant::now();
        let mut child = cmd.spawn().expect("start qemu-system-x86_64");
        let out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).split(b'\n') {
                let Ok(line) = line else { break };
                let line = String::from_utf8_lossy(&line)
                    .trim_end_matches('\r')
                    .to_string();
                if tx.send((started.elapsed().as_secs_f64(), line)).is_err() {
                    break;
                }
            }
        });
        // QEMU's own messages (TCG warns about EPYC features it lacks); kept for failures.
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s.lines()
                .filter(|l| !l.contains("TCG doesn't support requested feature"))
                .map(|l| format!("{l}\n"))
                .collect()
        });
        // Appended to: a retried L1 keeps the console of the attempts before it.
        let mut console = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("console-{}.log", cfg.name)))
            .expect("console log file");
        let _ = writeln!(console, "--- L1 {} booted", cfg.name);
        Self {
            name: cfg.name.clone(),
            child,
            lines,
            log: Vec::new(),
            stderr: Some(stderr),
            started,
            console,
            silent: cfg.silent,
        }
    }

    fn take(&mut self, t: f64, line: String) {
        if line == HEARTBEAT {
            return;
        }
        // Shown live with --nocapture, and with a failing test's output otherwise.
        eprintln!("[{} {t:7.2}s] {line}", self.name);
        let _ = writeln!(self.console, "[{t:8.3}] {line}");
        self.log.push((t, line));
    }

    /// Wait for a console line containing `needle`; returns it. Panics with the log after
    /// `limit` (or when L1 ends first).
    pub fn wait_for(&mut self, needle: &str, limit: Duration) -> String {
        let end = Instant::now() + limit;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((t, line)) => {
                    let hit = line.contains(needle);
                    self.take(t, line.clone());
                    if hit {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "{}: no '{needle}' within {limit:?}:\n{}",
                    self.name,
                    self.text()
                ),
            }
        }
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn text(&self) -> String {
        self.log
            .iter()
            .map(|(t, l)| format!("[{t:7.2}] {l}\n"))
            .collect()
    }

    /// Wait (up to `limit`) for L1 to power off; kills QEMU at the limit, as soon as L1's
    /// kernel reports a CPU stuck for a second time (`emulator_lockup`), or when L1 printed
    /// nothing, not even its heartbeat, for `L1Config::silent` (`L1Log::frozen`): such an L1
    /// does not come back, and waiting out the limit costs 15 minutes. The whole console.
    pub fn finish(mut self, limit: Duration) -> L1Log {
        let end = Instant::now() + limit;
        // The CPUs L1's watchdog reported stuck; a CPU reported twice ends the wait.
        let mut stuck: Vec<String> = Vec::new();
        let mut frozen = false;
        loop {
            let now = Instant::now();
            let wait = end.min(now + self.silent).saturating_duration_since(now);
            let (t, line) = match self.lines.recv_timeout(wait) {
                Ok(tl) => tl,
                // The reader ended with QEMU's stdout.
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    frozen = Instant::now() < end;
                    break;
                }
            };
            let cpu = lockup_cpu(&line).map(str::to_string);
            self.take(t, line);
            if let Some(cpu) = cpu {
                if stuck.contains(&cpu) {
                    break;
                }
                stuck.push(cpu);
            }
        }
        let timed_out = Instant::now() >= end;
        if frozen {
            eprintln!(
                "{}: no console line for {:?}: L1 froze",
                self.name, self.silent
            );
        }
        let _ = self.child.kill();
        let qemu_status = self.child.wait().ok().and_then(|s| s.code());
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        L1Log {
            name: self.name.clone(),
            lines: std::mem::take(&mut self.log),
            qemu_status,
            timed_out,
            frozen,
            stderr,
            wall: self.started.elapsed(),
        }
    }
}

impl Drop for L1 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Everything one L1 boot printed, with the wall time (seconds since QEMU started) of each line.
pub struct L1Log {
    pub name: String,
    pub lines: Vec<(f64, String)>,
    pub qemu_status: Option<i32>,
    /// QEMU was still running at the limit of `finish` (and was killed).
    pub timed_out: bool,
    /// L1 printed nothing for `L1Config::silent` (and was killed): frozen whole.
    pub frozen: bool,
    pub stderr: String,
    pub wall: Duration,
}

/// One level-2 run inside L1 (`run`/`start` in l1-lib.sh).
#[derive(Debug)]
pub struct Run {
    pub name: String,
    /// Its output, prefix removed, with the wall time of each line since the run started.
    pub lines: Vec<(f64, String)>,
    /// Exit status (None: still running when L1 ended, or killed by the script's timeout).
    pub status: Option<i32>,
    /// Duration as measured inside L1.
    pub secs: Option<f64>,
}

impl Run {
    pub fn text(&self) -> String {
        self.lines.iter().map(|(_, l)| format!("{l}\n")).collect()
    }

    pub fn contains(&self, s: &str) -> bool {
        self.lines.iter().any(|(_, l)| l.contains(s))
    }

    /// Seconds from the run's start to its first line containing `s`.
    pub fn time_of(&self, s: &str) -> Option<f64> {
        self.lines
            .iter()
            .find(|(_, l)| l.contains(s))
            .map(|(t, _)| *t)
    }
}

impl L1Log {
    /// The whole console, for assertion messages.
    pub fn text(&self) -> String {
        let mut s: String = self
            .lines
            .iter()
            .map(|(t, l)| format!("[{t:7.2}] {l}\n"))
            .collect();
        if !self.stderr.trim().is_empty() {
            s.push_str(&format!("--- qemu stderr\n{}", self.stderr));
        }
        s
    }

    /// The script's exit status (`HWHOST-L1-EXIT status=N`), if L1 got that far.
    pub fn exit_status(&self) -> Option<i32> {
        self.lines.iter().find_map(|(_, l)| {
            l.strip_prefix("HWHOST-L1-EXIT status=")?
                .trim()
                .parse()
                .ok()
        })
    }

    /// Wall time from QEMU's start to L1's user space being up.
    pub fn ready_secs(&self) -> Option<f64> {
        self.time_of_line("HWHOST-L1-READY")
    }

    fn time_of_line(&self, prefix: &str) -> Option<f64> {
        self.lines
            .iter()
            .find(|(_, l)| l.starts_with(prefix))
            .map(|(t, _)| *t)
    }

    /// The value of `HWHOST-INFO KEY=VALUE`.
    pub fn info(&self, key: &str) -> Option<String> {
        let p = format!("HWHOST-INFO {key}=");
        self.lines
            .iter()
            .find_map(|(_, l)| Some(l.strip_prefix(&p)?.trim().to_string()))
    }

    /// When run NAME started (its `HWHOST-RUN-START NAME` line), if it did.
    fn start_time(&self, name: &str) -> Option<f64> {
        let line = format!("HWHOST-RUN-START {name}");
        self.lines
            .iter()
            .find(|(_, l)| l.trim_end() == line)
            .map(|(t, _)| *t)
    }

    fn started(&self, name: &str) -> bool {
        self.start_time(name).is_some()
    }

    /// The last attempt of run NAME: NAME, or NAME.K when l1-lib.sh's `boot` ran it K times.
    fn last_attempt(&self, name: &str) -> String {
        let mut last = name.to_string();
        for k in 2.. {
            let attempt = format!("{name}.{k}");
            if !self.started(&attempt) {
                break;
            }
            last = attempt;
        }
        last
    }

    /// Whether run NAME (an attempt as above) was followed by another attempt.
    fn superseded(&self, attempt: &str) -> bool {
        let (base, k) = attempt
            .rsplit_once('.')
            .and_then(|(base, k)| Some((base, k.parse::<usize>().ok()?)))
            .unwrap_or((attempt, 1));
        self.started(&format!("{base}.{}", k + 1))
    }

    /// Run NAME's output and result (its last attempt, see `last_attempt`). Panics (with the
    /// console) if it never started.
    pub fn run(&self, name: &str) -> Run {
        let name = &self.last_attempt(name);
        let start = self
            .start_time(name)
            .unwrap_or_else(|| panic!("run {name} never started:\n{}", self.text()));
        let prefix = format!("@{name} ");
        let lines = self
            .lines
            .iter()
            .filter_map(|(t, l)| Some((t - start, l.strip_prefix(&prefix)?.to_string())))
            .collect();
        let end = format!("HWHOST-RUN {name} ");
        let result = self.lines.iter().find_map(|(_, l)| l.strip_prefix(&end));
        let field = |k: &str| {
            result.and_then(|r| {
                r.split_whitespace()
                    .find_map(|w| w.strip_prefix(k))
                    .map(str::to_string)
            })
        };
        Run {
            name: name.into(),
            lines,
            status: field("status=").and_then(|s| s.parse().ok()),
            secs: field("secs=").and_then(|s| s.parse().ok()),
        }
    }

    /// Print a summary of the boot's timings (shown with --nocapture and in failures).
    pub fn print_timings(&self, runs: &[&str]) {
        eprintln!(
            "{}: L1 ready after {:.1} s, whole L1 boot {:.1} s",
            self.name,
            self.ready_secs().unwrap_or(f64::NAN),
            self.wall.as_secs_f64()
        );
        for r in runs {
            let run = self.run(r);
            eprintln!(
                "  {r}: status {:?}, {:.1} s",
                run.status,
                run.secs.unwrap_or(f64::NAN)
            );
        }
    }
}

/// True when a level-2 guest died the way TCG's emulation of nested paging sometimes makes it
/// die (resources/hw-host/README.md, "Known limits"): a triple fault that plainvm reports at the
/// reset vector (on AMD, KVM re-initialises the VMCB after a shutdown intercept).
/// A run that l1-lib.sh's `boot` ran again does not count: its last attempt decides.
pub fn emulator_triple_fault(log: &L1Log) -> bool {
    log.lines.iter().any(|(_, l)| {
        let retried = || {
            l.strip_prefix('@')
                .and_then(|rest| rest.split_once(' '))
                .is_some_and(|(run, _)| log.superseded(run))
        };
        l.contains("the guest triple-faulted") && l.contains("near RIP 0xfff0") && !retried()
    })
}

/// A soft-lockup report of L1's own kernel (a level-2 guest's lines start with `@`), whatever
/// task it names: plainvm's in KVM_RUN, or every CPU of L1 frozen ("[swapper/0:0]" and
/// "[kthreadd:2]" for 800 s in one CI run). The CPU it names (`CPU#0`).
fn lockup_cpu(line: &str) -> Option<&str> {
    if line.starts_with('@') {
        return None;
    }
    let rest = line.split_once("watchdog: BUG: soft lockup - ")?.1;
    rest.split_whitespace().next()
}

/// True when L1's own kernel failed: its watchdog found a CPU stuck (`lockup_cpu`; seen with
/// "[plainvm:PID]": nested SVM on TCG looping in L1's KVM with a level-2 guest, L1 stuck for
/// 800 s, and with all of L1 frozen), or L1's kernel crashed (seen once:
/// "BUG: TASK stack guard page was hit" in `error_entry` on plainvm's vcpu0 thread, then
/// "Kernel panic"), or L1 froze whole, its watchdog silent too (`L1Log::frozen`). plainvm is a
/// user process there: it cannot keep L1's kernel from scheduling or overflow its stacks; KVM
/// on TCG's emulated SVM can.
pub fn emulator_lockup(log: &L1Log) -> bool {
    log.frozen
        || log.lines.iter().any(|(_, l)| lockup_cpu(l).is_some())
        || log
            .lines
            .iter()
            .any(|(_, l)| l.contains("stack guard page was hit") && !l.starts_with('@'))
        || log
            .lines
            .iter()
            .any(|(_, l)| l.contains("Kernel panic - not syncing") && !l.starts_with('@'))
}

/// True when a level-2 kernel stalled in early boot, before it started init: no console line
/// for `STALL` and then the run was killed on its time limit (seen once in a suite run here:
/// `setup_percpu` printed half, then nothing for 300 s; the same kernel booted in the other
/// runs of that L1). Like `emulator_triple_fault`, TCG's nested paging; a real hang recurs.
pub fn emulator_stall(log: &L1Log) -> bool {
    const STALL: f64 = 120.0;
    let mut runs: Vec<(&str, f64, bool)> = Vec::new();
    for (t, l) in &log.lines {
        let Some(rest) = l.strip_prefix('@') else {
            continue;
        };
        let Some((name, text)) = rest.split_once(' ') else {
            continue;
        };
        match runs.iter_mut().find(|(n, _, _)| *n == name) {
            Some((_, last, init)) => {
                if !*init && t - *last > STALL {
                    return true;
                }
                *last = *t;
                *init |= text.contains(" as init process");
            }
            None => runs.push((name, *t, text.contains(" as init process"))),
        }
    }
    false
}

/// True when the emulated host, not plainvm, failed this L1 boot in one of the ways above.
pub fn emulator_failure(log: &L1Log) -> bool {
    emulator_triple_fault(log) || emulator_stall(log) || emulator_lockup(log)
}

/// How often an L1 boot is tried when a guest hits `emulator_triple_fault` (about one boot of the
/// project's kernel in 18 does; the virtio test boots eight) or L1 stalls or crashes the ways
/// above. A real triple fault recurs and still fails the test. (Three were not enough once: three
/// L1 boots in a row each hit one of these.)
pub const ATTEMPTS: usize = 5;

/// Boot L1 with `cfg`, wait for it to power off (up to `limit`) and check that it ran the
/// script to the end (the tests check each run's result themselves). Booted again (up to
/// `ATTEMPTS` in all) when a guest hit the emulator's triple fault.
pub fn run_l1(cfg: &L1Config, dir: &Path, limit: Duration) -> L1Log {
    let mut attempt = 1;
    let log = loop {
        let log = L1::boot(cfg, dir).finish(limit);
        if attempt < ATTEMPTS && emulator_failure(&log) {
            eprintln!(
                "{}: a level-2 guest triple-faulted or stalled in early boot, or L1 locked up, \
                 crashed or froze (TCG's nested SVM, see resources/hw-host/README.md); booting \
                 L1 again (attempt {})",
                cfg.name,
                attempt + 1
            );
            attempt += 1;
            continue;
        }
        break log;
    };
    assert!(
        !log.timed_out,
        "{}: L1 still running after {limit:?}:\n{}",
        cfg.name,
        log.text()
    );
    assert!(
        log.exit_status().is_some(),
        "{}: the L1 script did not finish:\n{}",
        cfg.name,
        log.text()
    );
    log
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(lines: &[&str]) -> L1Log {
        L1Log {
            name: "t".into(),
            lines: lines
                .iter()
                .enumerate()
                .map(|(i, l)| (i as f64, l.to_string()))
                .collect(),
            qemu_status: Some(0),
            timed_out: false,
            frozen: false,
            stderr: String::new(),
            wall: Duration::ZERO,
        }
    }

    const TRIPLE: &str = "plainvm: error: vCPU 0: the guest triple-faulted (an exception it could \
                          not handle) near RIP 0xfff0";

    #[test]
    fn a_retried_boot_is_read_from_its_last_attempt() {
        let l = log(&[
            "HWHOST-RUN-START s",
            &format!("@s [    0.1] Linux {TRIPLE}"),
            "HWHOST-RUN s status=1 secs=3",
            "HWHOST-RUN-START s.2",
            "@s.2 GUEST-INIT-REACHED",
            "HWHOST-RUN s.2 status=0 secs=9",
            "HWHOST-L1-EXIT status=0",
        ]);
        let run = l.run("s");
        assert_eq!(run.name, "s.2");
        assert_eq!(run.status, Some(0));
        assert!(run.contains("GUEST-INIT-REACHED") && !run.contains("triple"));
        assert!(!emulator_triple_fault(&l), "the retried attempt decided");
    }

    #[test]
    fn a_frozen_l1_counts_as_a_lockup_but_a_guest_report_does_not() {
        let frozen =
            log(&["[  56.5] watchdog: BUG: soft lockup - CPU#0 stuck for 45s! [swapper/0:0]"]);
        assert!(emulator_lockup(&frozen));
        assert_eq!(
            lockup_cpu("[  84.5] watchdog: BUG: soft lockup - CPU#1 stuck for 70s! [kthreadd:2]"),
            Some("CPU#1")
        );
        let guest =
            log(&["@stock-2cpu [ 30.1] watchdog: BUG: soft lockup - CPU#1 stuck for 26s! [x:1]"]);
        assert!(!emulator_lockup(&guest));
    }

    #[test]
    fn a_triple_fault_in_the_last_attempt_still_counts() {
        let l = log(&[
            "HWHOST-RUN-START s",
            &format!("@s {TRIPLE}"),
            "HWHOST-RUN s status=1 secs=3",
            "HWHOST-RUN-START s.2",
            &format!("@s.2 {TRIPLE}"),
            "HWHOST-RUN s.2 status=1 secs=3",
        ]);
        assert_eq!(l.run("s").status, Some(1));
        assert!(emulator_triple_fault(&l));
        // A run that was never retried is read as before.
        let single = log(&[
            "HWHOST-RUN-START x",
            "@x hi",
            "HWHOST-RUN x status=0 secs=1",
        ]);
        assert_eq!(single.run("x").name, "x");
        assert!(!emulator_triple_fault(&single));
    }
}
