//! Seccomp filters (issue 14): every thread of a running VM is filtered, each kind of thread
//! that makes a forbidden call ends the process with a report naming it and the call (through
//! the hidden `PLAINVM_SECCOMP_SELFTEST`), the guest's disk I/O works filtered, and
//! `--seccomp off` leaves every thread unfiltered and says so in `GET /vm` and `ls`.

use plainvm_tests::*;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);
/// The exit status of a process the filter ended (128 + SIGSYS).
const KILLED_BY_FILTER: i32 = 159;

/// An idle test guest with a disk (so block workers run) and its API on DIR/api.sock.
fn idle_vm(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> (PathBuf, TestVm) {
    let sock = dir.join("api.sock");
    let img = dir.join("disk.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let disk = format!("path={}", img.display());
    let mut args = vec![
        "run",
        "--api-sock",
        sock.to_str().unwrap(),
        "--cpus",
        "2",
        "--cmdline",
        "idle",
        "--disk",
        &disk,
    ];
    args.extend_from_slice(extra);
    let vm = TestVm::start_env(&args, &dir.join("console"), env);
    (sock, vm)
}

fn wait_api(sock: &Path, vm: &mut TestVm) {
    let start = Instant::now();
    while UnixStream::connect(sock).is_err() {
        assert!(start.elapsed() < T, "the API never came up:\n{}", vm.dump());
        assert_eq!(
            vm.wait(Duration::ZERO),
            None,
            "the VM ended:\n{}",
            vm.dump()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Each thread of `pid`: its name and its `Seccomp:` mode (0 none, 2 filter).
fn thread_modes(pid: u32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        out.push((field("Name:"), field("Seccomp:")));
    }
    out.sort();
    out
}

fn info(sock: &Path) -> serde_json::Value {
    let o = plainvm(
        &["info", "--api-sock", sock.to_str().unwrap()],
        Duration::from_secs(10),
    );
    assert_eq!(o.status, Some(0), "{}", o.dump());
    serde_json::from_str(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", o.dump()))
}

#[test]
fn every_thread_of_a_running_vm_is_filtered_and_info_says_so() {
    let dir = scratch("seccomp-on");
    let (sock, mut vm) = idle_vm(&dir, &[], &[]);
    wait_api(&sock, &mut vm);
    let v = info(&sock);
    assert_eq!(v["seccomp"], true, "{v}");
    assert_eq!(v["jailed"], false, "{v}");
    // The API answered, so the api thread and the event loop run; give the vCPUs a moment.
    std::thread::sleep(Duration::from_millis(300));
    let modes = thread_modes(vm.pid());
    for want in ["plainvm", "vcpu0", "vcpu1", "api", "blk-io-0"] {
        assert!(
            modes.iter().any(|(n, _)| n == want),
            "no thread {want}: {modes:?}"
        );
    }
    let unfiltered: Vec<_> = modes.iter().filter(|(_, m)| m != "2").collect();
    assert!(unfiltered.is_empty(), "unfiltered threads: {unfiltered:?}");
    // A pause and a resume from the filtered API thread work, and the VM runs on.
    for state in ["pause", "resume"] {
        let o = plainvm(
            &[state, "--api-sock", sock.to_str().unwrap()],
            Duration::from_secs(10),
        );
        assert_eq!(o.status, Some(0), "{state}: {}\n{}", o.dump(), vm.dump());
    }
    assert_eq!(info(&sock)["state"], "Running");
}

#[test]
fn seccomp_off_leaves_threads_unfiltered_and_says_so() {
    let dir = scratch("seccomp-off");
    let (sock, mut vm) = idle_vm(&dir, &["--seccomp", "off"], &[]);
    wait_api(&sock, &mut vm);
    assert_eq!(info(&sock)["seccomp"], false);
    let modes = thread_modes(vm.pid());
    assert!(modes.iter().all(|(_, m)| m == "0"), "{modes:?}");
}

#[test]
fn ls_shows_whether_each_vm_is_filtered() {
    let dir = scratch("seccomp-ls");
    let name = format!("sc-ls-{}", std::process::id());
    let (sock, mut vm) = idle_vm(&dir, &["--name", &name], &[]);
    // With a name, the socket given still serves the API.
    wait_api(&sock, &mut vm);
    let o = plainvm(&["ls"], Duration::from_secs(20));
    assert_eq!(o.status, Some(0), "{}", o.dump());
    assert!(
        o.stdout.lines().next().unwrap_or("").contains("SECCOMP"),
        "{}",
        o.dump()
    );
    let line = o
        .stdout
        .lines()
        .find(|l| l.starts_with(&name))
        .unwrap_or_else(|| panic!("{name} not listed: {}", o.dump()));
    // SECCOMP, then JAIL ("no": not jailed).
    assert!(line.trim_end().ends_with(" on      no"), "{line}");
    let j = plainvm(&["ls", "--json"], Duration::from_secs(20));
    let rows: serde_json::Value = serde_json::from_str(&j.stdout).unwrap();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name.as_str())
        .unwrap();
    assert_eq!(row["seccomp"], true, "{row}");
    assert_eq!(row["jailed"], false, "{row}");
}

/// Run a VM whose threads of `kind` make a forbidden call right after filtering themselves:
/// the process ends with status 159 and a report naming the kind and the call.
fn selftest_kills(kind: &str) {
    let dir = scratch(&format!("seccomp-selftest-{kind}"));
    let (_sock, vm) = idle_vm(&dir, &[], &[("PLAINVM_SECCOMP_SELFTEST", kind)]);
    let (status, out) = vm.finish(T);
    assert_eq!(status, Some(KILLED_BY_FILTER), "{kind}:\n{out}");
    let want = format!("({kind}) made forbidden system call 101 (ptrace); this is a bug");
    assert!(out.contains("plainvm: seccomp: thread "), "{kind}:\n{out}");
    assert!(out.contains(&want), "{kind}: no '{want}' in:\n{out}");
}

#[test]
fn a_forbidden_call_on_a_vcpu_thread_ends_the_process() {
    selftest_kills("vcpu");
}

#[test]
fn a_forbidden_call_on_the_event_loop_ends_the_process() {
    selftest_kills("event-loop");
}

#[test]
fn a_forbidden_call_on_the_api_thread_ends_the_process() {
    selftest_kills("api");
}

#[test]
fn a_forbidden_call_on_a_block_worker_ends_the_process() {
    selftest_kills("block-io");
}

#[test]
fn a_forbidden_call_on_the_migration_throttle_ends_the_source() {
    let dir = scratch("seccomp-selftest-throttle");
    let port = 30000 + (std::process::id() % 5000) as u16;
    let listen = format!("tcp:127.0.0.1:{port}");
    // The source's disk image is in `dir`: the destination may use it.
    let dst = TestVm::start(
        &[
            "receive",
            "--listen",
            &listen,
            "--insecure",
            "--allow-dir",
            dir.to_str().unwrap(),
        ],
        &dir.join("dst.out"),
    );
    dst.wait_for("waiting for a migration", T);
    let (sock, mut src) = idle_vm(&dir, &[], &[("PLAINVM_SECCOMP_SELFTEST", "throttle")]);
    wait_api(&sock, &mut src);
    let m = plainvm(
        &[
            "migrate",
            "--api-sock",
            sock.to_str().unwrap(),
            "--to",
            &listen,
        ],
        T,
    );
    let (status, out) = src.finish(T);
    assert_eq!(
        status,
        Some(KILLED_BY_FILTER),
        "{out}\n--- migrate\n{}",
        m.dump()
    );
    assert!(
        out.contains("thread throttle (throttle) made forbidden system call 101 (ptrace)"),
        "{out}"
    );
    let (_, dst_out) = dst.finish(T);
    assert!(dst_out.contains("nothing runs here"), "{dst_out}");
}

#[test]
fn the_guest_disk_selftest_passes_filtered() {
    let dir = scratch("seccomp-blk");
    let img = dir.join("rw.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let o = plainvm(
        &[
            "run",
            "--cmdline",
            "blk-selftest",
            "--disk",
            &format!("path={},id=blk-test-0", img.display()),
        ],
        T,
    );
    assert_eq!(o.status, Some(0), "{}", o.dump());
    assert!(o.stdout.contains("BLK-RW-OK disk=0"), "{}", o.dump());
}

#[test]
fn a_bad_setting_is_refused() {
    let o = plainvm(
        &["run", "--cmdline", "exit-now", "--seccomp", "maybe"],
        Duration::from_secs(20),
    );
    assert_eq!(o.status, Some(2), "{}", o.dump());
    assert!(o.stderr.contains("on or off"), "{}", o.dump());
    let o = std::process::Command::new(plainvm_bin())
        .args(["run", "--cmdline", "exit-now"])
        .env("PLAINVM_SECCOMP_SELFTEST", "nobody")
        .output()
        .unwrap();
    assert_ne!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stderr).contains("names no kind of thread"));
}

#[test]
fn a_forbidden_call_while_receiving_a_migration_ends_the_destination_only() {
    let dir = scratch("seccomp-selftest-receive");
    let port = 35000 + (std::process::id() % 5000) as u16;
    let listen = format!("tcp:127.0.0.1:{port}");
    let dst = TestVm::start_env(
        &[
            "receive",
            "--listen",
            &listen,
            "--insecure",
            "--allow-dir",
            dir.to_str().unwrap(),
        ],
        &dir.join("dst.out"),
        &[("PLAINVM_SECCOMP_SELFTEST", "migration-receive")],
    );
    dst.wait_for("waiting for a migration", T);
    let (sock, mut src) = idle_vm(&dir, &[], &[]);
    wait_api(&sock, &mut src);
    let m = plainvm(
        &[
            "migrate",
            "--api-sock",
            sock.to_str().unwrap(),
            "--to",
            &listen,
        ],
        T,
    );
    assert_ne!(m.status, Some(0), "{}", m.dump());
    let (status, out) = dst.finish(T);
    assert_eq!(status, Some(KILLED_BY_FILTER), "{out}");
    assert!(
        out.contains(
            "thread migration-recv (migration-receive) made forbidden system call 101 (ptrace)"
        ),
        "{out}"
    );
    // The source runs on.
    assert_eq!(info(&sock)["state"], "Running");
}

#[test]
fn a_restored_vm_is_filtered_whatever_its_snapshot_says() {
    let dir = scratch("seccomp-restore");
    let (sock, mut vm) = idle_vm(&dir, &["--seccomp", "off"], &[]);
    wait_api(&sock, &mut vm);
    let snap = dir.join("snap");
    let o = plainvm(
        &[
            "snapshot",
            "--api-sock",
            sock.to_str().unwrap(),
            "--path",
            snap.to_str().unwrap(),
        ],
        T,
    );
    assert_eq!(o.status, Some(0), "{}", o.dump());
    drop(vm);
    // The source ran unfiltered; the restored VM is filtered unless its own operator says off.
    let sock2 = dir.join("restored.sock");
    let mut restored = TestVm::start(
        &[
            "restore",
            snap.to_str().unwrap(),
            "--api-sock",
            sock2.to_str().unwrap(),
            "--allow-dir",
            dir.to_str().unwrap(),
        ],
        &dir.join("restored.out"),
    );
    wait_api(&sock2, &mut restored);
    assert_eq!(info(&sock2)["seccomp"], true);
    let modes = thread_modes(restored.pid());
    assert!(modes.iter().all(|(_, m)| m == "2"), "{modes:?}");
}
