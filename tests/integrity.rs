//! Nothing a guest or an operator does may lose or corrupt a VM's state: a restored VM migrated
//! at once, control operations that overlap, a CPU list this host cannot honour, SIGTERM to a
//! paused VM, a log flood into a closed stderr. The ring-3 test guest's memwrite workload is the
//! witness: it checks every page it wrote on its next pass and prints MEMWRITE-CORRUPT if one
//! changed behind its back.

use plainvm_tests::support::proxy::{proxy, Proxy};
use plainvm_tests::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

/// A fresh loopback port per migration in this process.
fn port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    30000 + (std::process::id() % 2000) as u16 * 10 + NEXT.fetch_add(1, Ordering::SeqCst)
}

/// A test guest running the memwrite workload, with an API socket.
fn workload(dir: &Path, name: &str, mem: &str, cmdline: &str) -> (PathBuf, TestVm) {
    let sock = dir.join(format!("{name}.sock"));
    let vm = TestVm::start(
        &[
            "run",
            "--api-sock",
            sock.to_str().unwrap(),
            "--memory",
            mem,
            "--cmdline",
            cmdline,
        ],
        &dir.join(format!("{name}.out")),
    );
    (sock, vm)
}

/// The workload continues in `vm` past pass `after` + 2, with every page intact.
fn assert_continues(vm: &TestVm, after: u64) {
    let start = Instant::now();
    while last_memwrite_pass(&vm.output()) < after + 2 {
        assert!(
            start.elapsed() < T,
            "the workload did not go on: {}",
            vm.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = vm.output();
    assert!(!out.contains("CORRUPT"), "{out}");
}

/// `vm` continues a saved guest: it did not boot it again.
fn assert_not_rebooted(vm: &TestVm) {
    let out = vm.output();
    assert!(
        !out.contains("hello from vCPU"),
        "the guest booted again: {out}"
    );
}

fn receiver(dir: &Path, name: &str, listen: &str, extra: &[&str]) -> TestVm {
    let mut args = vec!["receive", "--listen", listen, "--insecure"];
    args.extend_from_slice(extra);
    let vm = TestVm::start(&args, &dir.join(format!("{name}.out")));
    vm.wait_for("waiting for a migration", T);
    vm
}

#[test]
fn a_restored_vm_migrated_at_once_arrives_with_all_its_memory() {
    let dir = scratch("restore-migrate");
    let (sock, vm) = workload(&dir, "orig", "256M", "memwrite=64 passes=0 delay=4000000");
    vm.wait_for("memwrite pass=2 ok", T);
    let snap = dir.join("snap");
    let o = api(&["snapshot", "--path", snap.to_str().unwrap()], &sock);
    assert_eq!(o.status, Some(0), "{}", o.dump());
    drop(vm);
    let at = last_memwrite_pass(&std::fs::read_to_string(dir.join("orig.out")).unwrap());
    // The snapshot's memory file is no longer in the page cache: the restored guest's memory
    // maps pages that are on disk only.
    std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
    let rsock = dir.join("restored.sock");
    let restored = TestVm::start(
        &[
            "restore",
            snap.to_str().unwrap(),
            "--api-sock",
            rsock.to_str().unwrap(),
        ],
        &dir.join("restored.out"),
    );
    wait_api(&rsock);
    let to = format!("tcp:127.0.0.1:{}", port());
    let dst = receiver(&dir, "dst", &to, &[]);
    let o = api(&["migrate", "--to", &to], &rsock);
    assert_eq!(o.status, Some(0), "{}\n--- dst\n{}", o.dump(), dst.output());
    drop(restored);
    // Every page the workload wrote before the snapshot arrived: its next pass checks them.
    assert_continues(&dst, at);
    assert_not_rebooted(&dst);
}

#[test]
fn a_snapshot_requested_during_a_migration_is_refused_and_both_stay_correct() {
    let dir = scratch("snap-during-mig");
    let (sock, mut src) = workload(&dir, "src", "128M", "memwrite=32 passes=0 delay=20000");
    src.wait_for("memwrite pass=3 ok", T);
    let real = format!("127.0.0.1:{}", port());
    let dst = receiver(&dir, "dst", &format!("tcp:{real}"), &[]);
    // A slow link: the migration takes seconds. Whether throttling alone makes it converge
    // depends on how much CPU the guest gets between holds (it did not on a loaded machine), so
    // it switches over by force after 8 s: what the test needs is a long migration that ends.
    let front = proxy(&real, Proxy::Rate(8_000_000));
    let sock2 = sock.clone();
    let mig = std::thread::spawn(move || {
        api(
            &[
                "migrate",
                "--to",
                &format!("tcp:{front}"),
                "--downtime-ms",
                "500",
                "--timeout-s",
                "8",
                "--on-timeout",
                "force",
            ],
            &sock2,
        )
    });
    // Once the destination has the connection, the migration holds the VM.
    dst.wait_for("migration from", T);
    let snap = dir.join("snap");
    let o = api(&["snapshot", "--path", snap.to_str().unwrap()], &sock);
    assert_ne!(
        o.status,
        Some(0),
        "a snapshot ran during a migration: {}",
        o.dump()
    );
    assert!(
        o.stderr.contains("a migration of this VM is in progress"),
        "{}",
        o.dump()
    );
    assert!(!snap.exists());
    let o = api(&["pause"], &sock);
    assert!(o.stderr.contains("a migration"), "{}", o.dump());
    let o = mig.join().unwrap();
    assert_eq!(o.status, Some(0), "{}\n--- dst\n{}", o.dump(), dst.output());
    assert_eq!(src.wait(T), Some(0), "{}", src.output());
    let at = last_memwrite_pass(&src.output());
    assert_continues(&dst, at);
    assert_not_rebooted(&dst);
}

#[test]
fn overlapping_pause_resume_and_snapshot_requests_give_whole_snapshots() {
    let dir = scratch("overlap");
    let (sock, vm) = workload(&dir, "orig", "128M", "memwrite=16 passes=0 delay=1000");
    vm.wait_for("memwrite pass=3 ok", T);
    let end = Instant::now() + Duration::from_secs(6);
    let mut clients = Vec::new();
    for c in 0..3 {
        let (sock, dir) = (sock.clone(), dir.clone());
        clients.push(std::thread::spawn(move || {
            let mut snaps = Vec::new();
            let mut i = 0;
            while Instant::now() < end {
                let o = match (c, i % 3) {
                    (0, _) => api(&["pause"], &sock),
                    (1, _) => api(&["resume"], &sock),
                    _ => {
                        let snap = dir.join(format!("snap-{i}"));
                        let o = api(&["snapshot", "--path", snap.to_str().unwrap()], &sock);
                        if o.status == Some(0) {
                            snaps.push(snap);
                        }
                        o
                    }
                };
                assert_eq!(o.status, Some(0), "client {c}: {}", o.dump());
                i += 1;
            }
            snaps
        }));
    }
    let snaps: Vec<PathBuf> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    assert!(!snaps.is_empty(), "no snapshot was taken");
    assert_eq!(api(&["resume"], &sock).status, Some(0));
    let at = last_memwrite_pass(&vm.output());
    assert_continues(&vm, at);
    drop(vm);
    // Each snapshot is whole: restored, its workload finds every page as it left it.
    for snap in snaps.iter().rev().take(3) {
        let r = TestVm::start(
            &["restore", snap.to_str().unwrap()],
            &dir.join("restored.out"),
        );
        assert_continues(&r, 0);
        assert_not_rebooted(&r);
    }
}

/// Restore `snap` with `--set args`: refused with `needle`, and nothing ran.
fn refused_restore(snap: &Path, set: &str, needle: &str) {
    let o = plainvm(&["restore", snap.to_str().unwrap(), "--set", set], T);
    assert_eq!(o.status, Some(1), "{}", o.dump());
    assert!(o.stderr.contains(needle), "{}", o.dump());
    assert!(
        !o.stdout.contains("memwrite pass="),
        "the guest ran: {}",
        o.dump()
    );
}

#[test]
fn a_cpu_list_this_host_cannot_honour_is_refused_before_anything_runs() {
    let dir = scratch("affinity");
    let (sock, mut src) = workload(&dir, "src", "128M", "memwrite=16 passes=0 delay=2000");
    src.wait_for("memwrite pass=3 ok", T);
    let snap = dir.join("snap");
    let o = api(&["snapshot", "--path", snap.to_str().unwrap()], &sock);
    assert_eq!(o.status, Some(0), "{}", o.dump());
    // A CPU this host lacks, and one past what a CPU set can hold (was a panic in CPU_SET).
    refused_restore(&snap, "cpu_affinity=[1000]", "may not use");
    refused_restore(&snap, "cpu_affinity=[5000]", "--cpu-affinity");
    // On receive: refused before the commit, so the source runs on.
    let to = format!("tcp:127.0.0.1:{}", port());
    let mut dst = receiver(&dir, "dst", &to, &["--set", "cpu_affinity=[1000]"]);
    let o = api(&["migrate", "--to", &to], &sock);
    assert_ne!(o.status, Some(0), "{}", o.dump());
    assert!(o.stderr.contains("may not use"), "{}", o.dump());
    assert_eq!(dst.wait(T), Some(1), "{}", dst.output());
    let before = last_memwrite_pass(&src.output());
    assert_continues(&src, before);
    assert!(api(&["info"], &sock).stdout.contains("\"Running\""));
    src.kill();
}

#[test]
fn sigterm_ends_a_paused_vm() {
    let dir = scratch("sigterm-paused");
    let (sock, mut vm) = workload(&dir, "vm", "64M", "idle");
    wait_api(&sock);
    assert_eq!(api(&["pause"], &sock).status, Some(0));
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(vm.pid() as i32, libc::SIGTERM) };
    let status = vm.wait(Duration::from_secs(5));
    assert_eq!(
        status,
        Some(1),
        "a paused VM ignored SIGTERM: {}",
        vm.output()
    );
    assert!(
        vm.output().contains("stopped by SIGTERM while paused"),
        "{}",
        vm.output()
    );
}

#[test]
fn a_log_flood_into_a_closed_stderr_does_not_end_the_vm() {
    // stderr is a pipe nobody reads any more: every write fails with EPIPE.
    let mut child = Command::new(plainvm_bin())
        .args(["run", "--cmdline", "hypercall-selftest"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    let mut out = String::new();
    use std::io::Read;
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(out.contains("HC PASS log-flood"), "{out}");
    assert_eq!(status.code(), Some(0), "{status:?}\n{out}");
}

/// Whether a `SPIN <dev>[-queue] published=.. used=N` progress line of `dev` with N > 0 is in
/// `out`.
fn served(out: &str, dev: &str) -> bool {
    let prefix = format!("SPIN {dev}");
    let progress = |l: &&str| l.starts_with(&prefix) && l.contains(" published=");
    out.lines().filter(progress).any(|l| {
        l.split_whitespace()
            .find_map(|w| w.strip_prefix("used="))
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n > 0)
    })
}

/// How long `args` on the API at `sock` took; it must have succeeded.
fn timed(args: &[&str], sock: &Path) -> Duration {
    let t = Instant::now();
    let o = api(args, sock);
    assert_eq!(o.status, Some(0), "{args:?}: {}{}", o.stdout, o.stderr);
    t.elapsed()
}

#[test]
fn a_guest_spinning_on_its_device_queues_cannot_hold_the_vmm() {
    // The guest keeps the rng, balloon (inflate and free-page reporting) and vsock queues full
    // for ever, re-publishing every buffer the moment the device returns it. Without a budget per
    // wake the device loop never comes back: the API, pause, snapshot and stop all hang.
    let dir = scratch("spin-devices");
    let sock = dir.join("vm.sock");
    let vsock = dir.join("v.sock");
    let mut vm = TestVm::start(
        &[
            "run",
            "--api-sock",
            sock.to_str().unwrap(),
            "--memory",
            "128M",
            "--rng",
            "--balloon",
            "free-page-reporting=on",
            "--vsock",
            &format!("cid=3,socket={}", vsock.display()),
            "--cmdline",
            "spin=rng,balloon,vsock",
        ],
        &dir.join("vm.out"),
    );
    for dev in ["rng", "balloon", "vsock"] {
        vm.wait_for(&format!("SPIN {dev} started"), T);
    }
    // Every device is being served (its spinner sees used buffers) before the clock starts.
    let start = Instant::now();
    while !["rng", "balloon", "vsock"]
        .iter()
        .all(|d| served(&vm.output(), d))
    {
        assert!(
            start.elapsed() < T,
            "a device never served: {}",
            vm.output()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_api(&sock);
    // Each operation needs the device loop (pause parks it, snapshot saves the queues): a few
    // seconds on a loaded 2-core host; a held loop means never.
    let bound = Duration::from_secs(10);
    for args in [
        &["info"][..],
        &["pause"],
        &["snapshot", "--path", dir.join("snap").to_str().unwrap()],
        &["resume"],
        &["balloon", "8M"],
        &["info"],
    ] {
        let took = timed(args, &sock);
        assert!(took < bound, "{args:?} took {took:?}: {}", vm.output());
    }
    // The snapshot holds the spinning queues and restores whole.
    let restored_sock = dir.join("restored.sock");
    let mut restored = TestVm::start(
        &[
            "restore",
            dir.join("snap").to_str().unwrap(),
            "--api-sock",
            restored_sock.to_str().unwrap(),
            "--set",
            &format!(
                r#"vsock={{"cid":3,"socket":"{}"}}"#,
                dir.join("r.sock").display()
            ),
        ],
        &dir.join("restored.out"),
    );
    wait_api(&restored_sock);
    assert!(timed(&["info"], &restored_sock) < bound);
    restored.kill();
    // stop: the test guest has no agent, so the grace period runs out and the VM is killed; the
    // device loop must still answer in time for that.
    let t = Instant::now();
    let o = api(&["stop", "--timeout-s", "2"], &sock);
    // 2: stopped by force, as it must be without an agent.
    assert_eq!(o.status, Some(2), "{}{}", o.stdout, o.stderr);
    assert!(
        vm.wait(Duration::from_secs(15)).is_some(),
        "{}",
        vm.output()
    );
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "stop took {:?}",
        t.elapsed()
    );
}

#[test]
fn a_guest_announcing_its_agent_for_ever_cannot_flood_the_host_log() {
    // AGENT_HELLO with a different capability set on every call: the host logs every change.
    let dir = scratch("agent-flood");
    let sock = dir.join("vm.sock");
    let began = Instant::now();
    let mut vm = TestVm::start(
        &[
            "run",
            "--api-sock",
            sock.to_str().unwrap(),
            "--cmdline",
            "agent-flood",
        ],
        &dir.join("vm.out"),
    );
    vm.wait_for("AGENT-FLOOD started", T);
    let start = Instant::now();
    // Run until the guest has made many thousands of calls (at least 5 s).
    let calls = |out: &str| {
        out.lines()
            .filter_map(|l| l.strip_prefix("AGENT-FLOOD calls="))
            .filter_map(|r| r.split_whitespace().next()?.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
    };
    while calls(&vm.output()) < 20_000 || start.elapsed() < Duration::from_secs(5) {
        assert!(
            start.elapsed() < T,
            "the flood never got going: {}",
            vm.output()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let secs = began.elapsed().as_secs() + 1;
    let out = vm.output();
    let logged = out.matches("guest agent announced itself").count() as u64;
    // The log's own bound (devices/src/log.rs): a burst of 200, then 20 per second.
    assert!(
        logged <= 200 + 20 * secs,
        "{logged} agent lines in {secs} s for {} calls",
        calls(&out)
    );
    assert!(logged >= 1, "the agent was never logged: {out}");
    wait_api(&sock);
    // The flood obeys a power-off request (the test guest checks every 64 calls): 0, graceful.
    let o = api(&["stop", "--timeout-s", "10"], &sock);
    assert_eq!(o.status, Some(0), "{}{}", o.stdout, o.stderr);
    assert!(
        vm.wait(Duration::from_secs(20)).is_some(),
        "{}",
        vm.output()
    );
}
