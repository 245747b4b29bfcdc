//! Many VMs on one host: names and the registry (`ls`, stale entries), `stop` (graceful through
//! the guest agent, forced without one), `kill`, CPU pinning, untouched guest memory, idle guests
//! that cost no CPU, and KSM merging identical guests. Every test uses its own PLAINVM_RUNTIME_DIR.

use plainvm_tests::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

/// A VM started with the private runtime directory `rt`.
fn start_vm(rt: &Path, args: &[&str], out: PathBuf) -> TestVm {
    TestVm::start_env(args, &out, &[("PLAINVM_RUNTIME_DIR", rt.to_str().unwrap())])
}

/// `plainvm <args>` with the private runtime directory.
fn pv(rt: &Path, args: &[&str]) -> Outcome {
    run_with_timeout(
        Command::new(plainvm_bin())
            .args(args)
            .env("PLAINVM_RUNTIME_DIR", rt),
        Duration::from_secs(90),
    )
}

/// `plainvm ls --json` as (name, row) pairs.
fn ls(rt: &Path) -> Vec<(String, Value)> {
    let o = pv(rt, &["ls", "--json"]);
    assert_eq!(o.status, Some(0), "{}", o.dump());
    let v: Value = serde_json::from_str(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", o.dump()));
    v.as_array()
        .expect("an array")
        .iter()
        .map(|r| (r["name"].as_str().unwrap().to_string(), r.clone()))
        .collect()
}

fn names(rows: &[(String, Value)]) -> Vec<String> {
    rows.iter().map(|(n, _)| n.clone()).collect()
}

/// The VM directories left in the runtime directory.
fn dirs(rt: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(rt)
        .map(|rd| {
            rd.flatten()
                .map(|d| d.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A field of /proc/PID/status in KiB.
fn status_kib(pid: i32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn ls_shows_exactly_the_running_vms_and_cleans_up_after_kill_stop_and_sigkill() {
    let dir = scratch("consol-ls");
    let rt = dir.join("rt");
    let mut vms: Vec<TestVm> = ["c1", "c2", "c3"]
        .iter()
        .map(|n| {
            start_vm(
                &rt,
                &["run", "--name", n, "--cpus", "2", "--cmdline", "idle"],
                dir.join(format!("{n}.out")),
            )
        })
        .collect();
    for vm in &vms {
        vm.wait_for("TESTGUEST-IDLE", T);
    }
    let rows = ls(&rt);
    assert_eq!(names(&rows), ["c1", "c2", "c3"]);
    for ((_, r), vm) in rows.iter().zip(&vms) {
        assert_eq!(r["pid"].as_i64(), Some(i64::from(vm.pid() as i32)), "{r}");
        assert_eq!(r["state"], "Running", "{r}");
        assert_eq!(r["vcpus"], 2, "{r}");
        assert_eq!(r["memory_bytes"], 128u64 << 20, "{r}");
        assert!(r["rss_bytes"].as_u64().unwrap() > 1 << 20, "{r}");
        assert!(r["uptime_s"].as_u64().is_some(), "{r}");
    }
    let table = pv(&rt, &["ls"]);
    assert!(table.stdout.starts_with("NAME"), "{}", table.dump());
    assert_eq!(table.stdout.lines().count(), 4, "{}", table.dump());

    // A name in use is refused; nothing else changes.
    let o = pv(&rt, &["run", "--name", "c1", "--cmdline", "exit-now"]);
    assert_eq!(o.status, Some(1), "{}", o.dump());
    assert!(o.stderr.contains("'c1' is already running"), "{}", o.dump());
    // Every subcommand reaches a VM by name, positional or --name.
    let o = pv(&rt, &["info", "c1"]);
    assert!(o.stdout.contains("\"Running\""), "{}", o.dump());
    let o = pv(&rt, &["pause", "--name", "c3"]);
    assert!(o.stdout.contains("\"Paused\""), "{}", o.dump());
    assert_eq!(ls(&rt)[2].1["state"], "Paused");

    // SIGKILL leaves a stale entry behind: it is not listed and gets removed.
    vms[1].kill();
    assert_eq!(
        dirs(&rt),
        ["c1", "c2", "c3"],
        "the killed VM could not clean up"
    );
    assert_eq!(names(&ls(&rt)), ["c1", "c3"]);
    assert_eq!(dirs(&rt), ["c1", "c3"], "the stale entry was removed");
    // Its name is free again.
    let o = pv(&rt, &["info", "c2"]);
    assert!(
        o.stderr.contains("no running VM is named 'c2'"),
        "{}",
        o.dump()
    );

    // No agent in this guest: stop waits for the timeout, then stops it by force and says so.
    let t0 = Instant::now();
    let o = pv(&rt, &["stop", "c1", "--timeout-s", "1"]);
    assert_eq!(o.status, Some(2), "{}", o.dump());
    assert!(t0.elapsed() >= Duration::from_secs(1));
    assert!(
        o.stdout.contains("c1: forced stop after 1 s"),
        "{}",
        o.dump()
    );
    assert!(o.stdout.contains("no guest agent"), "{}", o.dump());
    assert!(vms[0].wait(T).is_some());

    // kill ends it at once.
    let t0 = Instant::now();
    let o = pv(&rt, &["kill", "c3"]);
    assert_eq!(o.status, Some(0), "{}", o.dump());
    assert!(o.stdout.contains("c3: killed"), "{}", o.dump());
    assert!(vms[2].wait(T).is_some());
    assert!(t0.elapsed() < Duration::from_secs(5));

    assert!(ls(&rt).is_empty());
    assert!(dirs(&rt).is_empty(), "{:?}", dirs(&rt));
}

#[test]
fn stop_is_graceful_through_the_test_guest_agent_and_api_sock_still_works() {
    let dir = scratch("consol-agent");
    let rt = dir.join("rt");
    let sock = dir.join("own.sock");
    let mut vm = start_vm(
        &rt,
        &[
            "run",
            "--name",
            "ag",
            "--api-sock",
            sock.to_str().unwrap(),
            "--cmdline",
            "agent",
        ],
        dir.join("out"),
    );
    vm.wait_for("AGENT-READY", T);
    // Registered under its name, with the socket it was given.
    let rows = ls(&rt);
    assert_eq!(names(&rows), ["ag"]);
    assert_eq!(rows[0].1["api_sock"], sock.to_str().unwrap());
    assert_eq!(rows[0].1["agent"], true);
    let o = pv(&rt, &["info", "--api-sock", sock.to_str().unwrap()]);
    assert!(o.stdout.contains("\"agent\": true"), "{}", o.dump());

    let o = pv(&rt, &["stop", "ag", "--timeout-s", "20"]);
    assert_eq!(o.status, Some(0), "{}", o.dump());
    assert!(o.stdout.contains("ag: stopped gracefully"), "{}", o.dump());
    assert_eq!(vm.wait(T), Some(0), "{}", vm.output());
    assert!(
        vm.output().contains("AGENT-REQUEST id=1 kind=1"),
        "{}",
        vm.output()
    );
    assert!(ls(&rt).is_empty());
    assert!(dirs(&rt).is_empty());
}

#[test]
fn cpu_affinity_pins_each_vcpu_thread_and_bad_lists_are_refused() {
    let dir = scratch("consol-pin");
    let rt = dir.join("rt");
    for (args, msg) in [
        (vec!["--cpu-affinity", "0-"], "invalid --cpu-affinity '0-'"),
        (vec!["--cpu-affinity", "1000"], "may not use"),
        (
            vec!["--cpus", "2", "--cpu-affinity", "0"],
            "lists 1 CPU(s) but the VM has 2 vCPU(s)",
        ),
    ] {
        let mut a = vec!["run", "--cmdline", "exit-now"];
        a.extend(args);
        let o = pv(&rt, &a);
        assert_eq!(o.status, Some(1), "{}", o.dump());
        assert!(o.stderr.contains(msg), "{}", o.dump());
    }
    let o = pv(&rt, &["run", "--memory", "size=64M,merge=perhaps"]);
    assert!(o.stderr.contains("invalid --memory"), "{}", o.dump());

    // Two host CPUs if this process may use them, else the one it has for both threads' list.
    let allowed = plainvm::config::cpu_list::allowed();
    let (list, want) = match allowed.as_slice() {
        [a, b, ..] => (format!("{b},{a}"), [*b, *a]),
        [a] => (format!("{a}"), [*a, *a]),
        [] => panic!("no allowed CPUs"),
    };
    let cpus = if allowed.len() >= 2 { "2" } else { "1" };
    let vm = start_vm(
        &rt,
        &[
            "run",
            "--name",
            "pin",
            "--cpus",
            cpus,
            "--cpu-affinity",
            &list,
            "--cmdline",
            "idle",
        ],
        dir.join("out"),
    );
    vm.wait_for("TESTGUEST-IDLE", T);
    let mut seen = 0;
    for t in std::fs::read_dir(format!("/proc/{}/task", vm.pid() as i32))
        .unwrap()
        .flatten()
    {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let Some(i) = comm
            .trim()
            .strip_prefix("vcpu")
            .and_then(|i| i.parse::<usize>().ok())
        else {
            continue;
        };
        let status = std::fs::read_to_string(t.path().join("status")).unwrap();
        let cpus = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap()
            .trim()
            .to_string();
        assert_eq!(cpus, want[i].to_string(), "vCPU {i}");
        seen += 1;
    }
    assert_eq!(seen.to_string(), cpus);
}

#[test]
fn guest_memory_is_untouched_until_the_guest_uses_it() {
    let dir = scratch("consol-rss");
    let rt = dir.join("rt");
    let idle = start_vm(
        &rt,
        &["run", "--name", "idle", "--cmdline", "idle"],
        dir.join("idle"),
    );
    let filled = start_vm(
        &rt,
        &["run", "--name", "filled", "--cmdline", "fill=64 idle"],
        dir.join("filled"),
    );
    idle.wait_for("TESTGUEST-IDLE", T);
    filled.wait_for("FILL-DONE mib=64", T);
    filled.wait_for("TESTGUEST-IDLE", T);
    // Guest RAM is anonymous memory: a VMM that zeroed or pre-faulted it would hold 128 MiB.
    let idle_anon = status_kib(idle.pid() as i32, "RssAnon:");
    let filled_anon = status_kib(filled.pid() as i32, "RssAnon:");
    assert!(
        idle_anon < 8 << 10,
        "idle 128 MiB guest holds {idle_anon} KiB"
    );
    assert!(
        filled_anon > idle_anon + (60 << 10),
        "the 64 MiB the guest wrote show up: {filled_anon} vs {idle_anon} KiB"
    );
}

/// Host CPU the whole process `pid` used (user + system, all threads) over `span`, as a share
/// of one CPU.
fn cpu_share(pid: i32, span: Duration) -> f64 {
    let ticks = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the VM runs");
        // Fields after the command name (which may hold spaces): state is field 3, utime 14.
        let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
        let f: Vec<u64> = rest
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        f[11] + f[12]
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let (t0, a) = (Instant::now(), ticks());
    std::thread::sleep(span);
    (ticks() - a) as f64 / hz / t0.elapsed().as_secs_f64()
}

/// The most of one host CPU an idle test guest may use (a spinning vCPU uses up to 100%).
const IDLE_CPU_MAX: f64 = 0.05;

fn assert_idle(vm: &TestVm, what: &str) {
    let share = cpu_share(vm.pid() as i32, Duration::from_millis(1500));
    assert!(
        share < IDLE_CPU_MAX,
        "{what}: the idle guest used {:.0}% of a CPU:\n{}",
        share * 100.0,
        vm.output()
    );
}

#[test]
fn idle_test_guests_halt_and_stay_halted_across_pause_snapshot_and_restore() {
    let dir = scratch("consol-halt");
    let rt = dir.join("rt");
    let snap = dir.join("snap");
    // Two vCPUs: vCPU 0 idles, vCPU 1 parks after checking in; both halt through the gate.
    let vm = start_vm(
        &rt,
        &["run", "--name", "h", "--cpus", "2", "--cmdline", "idle"],
        dir.join("h"),
    );
    vm.wait_for("TESTGUEST-IDLE", T);
    assert_idle(&vm, "after boot");

    let o = pv(&rt, &["pause", "h"]);
    assert!(o.stdout.contains("\"Paused\""), "{}", o.dump());
    let o = pv(&rt, &["resume", "h"]);
    assert!(o.stdout.contains("\"Running\""), "{}", o.dump());
    assert_idle(&vm, "after pause and resume");

    let o = pv(&rt, &["snapshot", "h", "--path", snap.to_str().unwrap()]);
    assert_eq!(o.status, Some(0), "{}", o.dump());
    assert_idle(&vm, "after a snapshot");
    let o = pv(&rt, &["kill", "h"]);
    assert_eq!(o.status, Some(0), "{}", o.dump());

    let mut restored = start_vm(
        &rt,
        &["restore", snap.to_str().unwrap(), "--name", "h2"],
        dir.join("h2"),
    );
    let t0 = Instant::now();
    loop {
        let o = pv(&rt, &["info", "h2"]);
        if o.stdout.contains("\"Running\"") {
            break;
        }
        assert!(t0.elapsed() < T, "{}\n{}", o.dump(), restored.output());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_idle(&restored, "after restore");
    let o = pv(&rt, &["pause", "h2"]);
    assert!(o.stdout.contains("\"Paused\""), "{}", o.dump());
    let o = pv(&rt, &["resume", "h2"]);
    assert!(o.stdout.contains("\"Running\""), "{}", o.dump());
    assert_idle(&restored, "restored, after pause and resume");
    assert!(
        !restored.output().contains("hello from vCPU"),
        "the guest booted again: {}",
        restored.output()
    );

    // A halted vCPU does not hold up the end of the VM.
    let t0 = Instant::now();
    let o = pv(&rt, &["kill", "h2"]);
    assert_eq!(o.status, Some(0), "{}", o.dump());
    assert!(restored.wait(T).is_some());
    assert!(t0.elapsed() < Duration::from_secs(5));
}

/// KSM settings, restored when dropped.
struct Ksm {
    saved: Vec<(&'static str, String)>,
}

const KSM: &str = "/sys/kernel/mm/ksm";

impl Ksm {
    fn read(key: &str) -> String {
        std::fs::read_to_string(format!("{KSM}/{key}"))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    fn set(key: &str, v: &str) -> std::io::Result<()> {
        std::fs::write(format!("{KSM}/{key}"), v)
    }

    /// Start KSM scanning fast; None (with the reason) when it cannot be used here.
    fn enable() -> Result<Self, String> {
        if !Path::new(KSM).join("run").exists() {
            return Err(format!("{KSM} is absent (kernel without CONFIG_KSM)"));
        }
        let keys = ["run", "pages_to_scan", "sleep_millisecs"];
        let saved = keys.iter().map(|k| (*k, Self::read(k))).collect();
        let ksm = Ksm { saved };
        for (k, v) in [
            ("pages_to_scan", "20000"),
            ("sleep_millisecs", "10"),
            ("run", "1"),
        ] {
            Self::set(k, v).map_err(|e| format!("cannot write {KSM}/{k}: {e} (not root?)"))?;
        }
        Ok(ksm)
    }
}

impl Drop for Ksm {
    fn drop(&mut self) {
        // `run` last, so the scan rate is back before KSM's state changes.
        for (k, v) in self.saved.iter().rev() {
            let _ = Self::set(k, v);
        }
    }
}

/// Proportional set size of `pid` in KiB (shared pages split among their users).
fn pss_kib(pid: i32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    text.lines()
        .find_map(|l| {
            l.strip_prefix("Pss:")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

#[test]
fn ksm_merges_ten_identical_guests_marked_mergeable() {
    if !Path::new(KSM).join("run").exists() {
        eprintln!("SKIPPED: {KSM} is absent (kernel without CONFIG_KSM): nothing to measure");
        return;
    }
    let dir = scratch("consol-ksm");
    let rt = dir.join("rt");
    const N: usize = 10;
    const FILL_MIB: u64 = 32;
    let vms: Vec<TestVm> = (0..N)
        .map(|i| {
            start_vm(
                &rt,
                &[
                    "run",
                    "--name",
                    &format!("k{i}"),
                    "--memory",
                    "size=128M,merge=on",
                    "--cmdline",
                    &format!("fill={FILL_MIB} idle"),
                ],
                dir.join(format!("k{i}")),
            )
        })
        .collect();
    for vm in &vms {
        vm.wait_for("TESTGUEST-IDLE", Duration::from_secs(60));
    }
    let pss = |vms: &[TestVm]| vms.iter().map(|v| pss_kib(v.pid() as i32)).sum::<u64>();
    let before = pss(&vms);
    let rss_before: u64 = vms
        .iter()
        .map(|v| status_kib(v.pid() as i32, "VmRSS:"))
        .sum();
    // pages_sharing is only brought up to date while ksmd runs (stale counts of exited
    // processes linger while it is stopped), so the test reads it with KSM running only.
    let ksm = match Ksm::enable() {
        Ok(k) => k,
        Err(why) => {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
    // The filled pages of guests 2..N can all merge into guest 1's: (N-1) * FILL_MIB.
    let want_pages = (N as u64 - 1) * (FILL_MIB << 8) * 8 / 10;
    let want_saved_kib = (N as u64 - 1) * (FILL_MIB << 10) * 7 / 10;
    let t0 = Instant::now();
    let (mut sharing, mut after) = (0, before);
    while t0.elapsed() < Duration::from_secs(120) {
        sharing = Ksm::read("pages_sharing").parse::<u64>().unwrap_or(0);
        after = pss(&vms);
        if sharing >= want_pages && before.saturating_sub(after) >= want_saved_kib {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let rss_after: u64 = vms
        .iter()
        .map(|v| status_kib(v.pid() as i32, "VmRSS:"))
        .sum();
    drop(ksm);
    eprintln!(
        "KSM: pages_sharing {sharing} after {:?}; summed PSS {} -> {} MiB; summed VmRSS {} -> {} MiB (RSS counts a merged page in every process that maps it)",
        t0.elapsed(),
        before >> 10,
        after >> 10,
        rss_before >> 10,
        rss_after >> 10
    );
    assert!(
        sharing >= want_pages,
        "KSM shares only {sharing} pages (want {want_pages})"
    );
    // The guests' memory now costs the host ~one copy of the filled region instead of N.
    let saved = before.saturating_sub(after);
    assert!(
        saved >= want_saved_kib,
        "summed PSS dropped by only {} MiB",
        saved >> 10
    );
}
