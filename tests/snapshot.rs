//! Control API (pause, resume, info), snapshots and restore, with the ring-3 test guest's
//! memory-writing workload as the witness that the guest cannot tell it was stopped.

use plainvm_tests::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

fn api(cmd: &str, sock: &Path, extra: &[&str]) -> Outcome {
    let mut args = vec![cmd, "--api-sock", sock.to_str().unwrap()];
    args.extend_from_slice(extra);
    plainvm(&args, Duration::from_secs(60))
}

/// A test guest running `plainvm run --api-sock DIR/api.sock ARGS` in a fresh scratch directory.
fn api_vm(name: &str, args: &[&str]) -> (PathBuf, PathBuf, TestVm) {
    let dir = scratch(name);
    let sock = dir.join("api.sock");
    let mut run = vec!["run", "--api-sock", sock.to_str().unwrap()];
    run.extend_from_slice(args);
    let vm = TestVm::start(&run, &dir.join("console"));
    (dir, sock, vm)
}

#[test]
fn pause_stops_the_guest_and_resume_continues() {
    let (_dir, sock, vm) = api_vm("pause", &["--cmdline", "memwrite=16 passes=0"]);
    vm.wait_for("memwrite pass=10 ok", T);
    let o = api("pause", &sock, &[]);
    assert_eq!(o.status, Some(0), "{}", o.dump());
    assert!(o.stdout.contains("\"Paused\""), "{}", o.dump());
    std::thread::sleep(Duration::from_millis(300));
    let before = last_memwrite_pass(&vm.output());
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(
        last_memwrite_pass(&vm.output()),
        before,
        "guest ran while paused"
    );
    let o = api("info", &sock, &[]);
    assert!(o.stdout.contains("\"Paused\""), "{}", o.dump());
    let o = api("resume", &sock, &[]);
    assert!(o.stdout.contains("\"Running\""), "{}", o.dump());
    std::thread::sleep(Duration::from_millis(700));
    assert!(last_memwrite_pass(&vm.output()) > before, "{}", vm.output());
    assert!(!vm.output().contains("CORRUPT"), "{}", vm.output());
}

#[test]
fn snapshot_restores_twice_in_new_processes_with_memory_intact() {
    let dir = scratch("snap");
    let sock = dir.join("api.sock");
    let snap = dir.join("snap");
    let mut vm = TestVm::start(
        &[
            "run",
            "--api-sock",
            sock.to_str().unwrap(),
            "--cpus",
            "2",
            "--cmdline",
            "memwrite=16 passes=400 show-gen",
        ],
        &dir.join("console"),
    );
    vm.wait_for("memwrite pass=10 ok", T);
    // A lower bound of the pass the snapshot catches (the guest runs on until it is paused).
    let at = last_memwrite_pass(&vm.output());
    let o = api("snapshot", &sock, &["--path", snap.to_str().unwrap()]);
    assert_eq!(o.status, Some(0), "{}", o.dump());
    // The source keeps running after the snapshot, then goes away.
    assert_eq!(vm.wait(T), Some(0), "{}", vm.output());
    assert!(vm.output().contains("MEMWRITE-DONE passes=400"));
    assert_eq!(last_generation(&vm.output()), Some(0), "{}", vm.output());
    drop(vm);

    // Sparse memory file: a 128 MiB guest that wrote ~16 MiB.
    let meta = std::fs::metadata(snap.join("memory")).unwrap();
    assert_eq!(meta.len(), 128 << 20);
    let on_disk = std::os::unix::fs::MetadataExt::blocks(&meta) * 512;
    assert!(
        on_disk < 24 << 20,
        "memory file uses {on_disk} bytes on disk"
    );

    for _ in 0..2 {
        let o = plainvm(&["restore", snap.to_str().unwrap()], T);
        assert_eq!(o.status, Some(0), "{}", o.dump());
        // It continues where the snapshot was taken, with every page's contents checked.
        let first = first_memwrite_pass(&o.stdout);
        assert!(
            first >= at,
            "first pass {first} after a snapshot at pass {at} or later: {}",
            o.dump()
        );
        assert!(
            o.stdout.contains("MEMWRITE-DONE passes=400"),
            "{}",
            o.dump()
        );
        assert!(!o.stdout.contains("CORRUPT"), "{}", o.dump());
        assert!(
            !o.stdout.contains("hello from vCPU"),
            "the guest booted again: {}",
            o.dump()
        );
        // The guest learns it was restored through the hypercall device's GENERATION.
        assert_eq!(last_generation(&o.stdout), Some(1), "{}", o.dump());
    }
}

/// Copy a snapshot directory (state and memory files).
fn copy_snapshot(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in ["state", "memory"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
}

fn refused_restore(dir: &Path, needle: &str) {
    let o = plainvm(&["restore", dir.to_str().unwrap()], T);
    assert!(matches!(o.status, Some(s) if s != 0), "{}", o.dump());
    assert!(
        o.stderr.contains(needle),
        "expected '{needle}': {}",
        o.dump()
    );
    assert!(!o.stderr.contains("panicked"), "{}", o.dump());
    assert!(!o.stdout.contains("memwrite"), "a VM ran: {}", o.dump());
}

#[test]
fn corrupt_truncated_and_foreign_snapshots_are_refused() {
    let dir = scratch("refuse");
    let sock = dir.join("api.sock");
    let snap = dir.join("good");
    let _vm = TestVm::start(
        &[
            "run",
            "--api-sock",
            sock.to_str().unwrap(),
            "--cmdline",
            "memwrite=4 passes=0",
        ],
        &dir.join("console"),
    );
    let vm = &_vm;
    vm.wait_for("memwrite pass=3 ok", T);
    let o = api("snapshot", &sock, &["--path", snap.to_str().unwrap()]);
    assert_eq!(o.status, Some(0), "{}", o.dump());
    let state = std::fs::read(snap.join("state")).unwrap();

    let bad = dir.join("truncated");
    copy_snapshot(&snap, &bad);
    std::fs::write(bad.join("state"), &state[..state.len() / 2]).unwrap();
    refused_restore(&bad, "truncated or corrupted");

    let bad = dir.join("flipped");
    copy_snapshot(&snap, &bad);
    let mut s = state.clone();
    let mid = s.len() / 2;
    s[mid] ^= 0x40;
    std::fs::write(bad.join("state"), &s).unwrap();
    refused_restore(&bad, "truncated or corrupted");

    let bad = dir.join("version");
    copy_snapshot(&snap, &bad);
    let mut s = state.clone();
    s[8..12].copy_from_slice(&99u32.to_le_bytes());
    std::fs::write(bad.join("state"), &s).unwrap();
    refused_restore(&bad, "format version 99");

    let bad = dir.join("not-a-snapshot");
    copy_snapshot(&snap, &bad);
    std::fs::write(bad.join("state"), b"hello").unwrap();
    refused_restore(&bad, "not a plainvm snapshot");

    let bad = dir.join("short-memory");
    copy_snapshot(&snap, &bad);
    std::fs::OpenOptions::new()
        .write(true)
        .open(bad.join("memory"))
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    refused_restore(&bad, "truncated");

    refused_restore(&dir.join("missing"), "cannot read state file");

    // A guest that saw a CPU feature this host's KVM does not have.
    let bad = dir.join("cpuid");
    copy_snapshot(&snap, &bad);
    let mut st =
        plainvm::vm::state::VmState::decode(&plainvm::snapshot::load_state(&snap).unwrap())
            .unwrap();
    let kvm = kvm_ioctls::Kvm::new().unwrap();
    let host = plainvm::vcpu::cpuid::supported(&kvm).unwrap();
    // Leaf 0x8000_0001 is in every template's table (the safe one leaves leaf 7 out).
    let ext = host
        .as_slice()
        .iter()
        .find(|e| e.function == 0x8000_0001)
        .map_or(0, |e| e.ecx);
    let absent = (0..32).map(|b| 1u32 << b).find(|b| ext & b == 0).unwrap();
    for e in st.vcpus[0].cpuid.iter_mut() {
        if e.function == 0x8000_0001 {
            e.ecx |= absent;
        }
    }
    // The state file is created afresh (never written through an existing file or link).
    std::fs::remove_file(bad.join("state")).unwrap();
    plainvm::snapshot::state_file::write(&bad.join("state"), &st.encode().unwrap()).unwrap();
    refused_restore(&bad, "CPU features this host lacks");
}

/// Send one raw HTTP request to the API socket; returns (status line, body).
fn raw_http(sock: &Path, req: &str) -> (String, String) {
    let mut s = UnixStream::connect(sock).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

#[test]
fn failed_snapshots_change_nothing_and_bad_requests_get_json_errors() {
    let (dir, sock, vm) = api_vm("fail", &["--cmdline", "memwrite=32 passes=0"]);
    vm.wait_for("memwrite pass=3 ok", T);

    // A full disk: a 4 MiB tmpfs cannot hold 32 MiB of guest memory.
    let full = dir.join("full");
    std::fs::create_dir_all(&full).unwrap();
    let mounted = std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=4m",
            "tmpfs",
            full.to_str().unwrap(),
        ])
        .status()
        .unwrap()
        .success();
    assert!(mounted, "cannot mount a tmpfs (tests run as root)");
    let o = api(
        "snapshot",
        &sock,
        &["--path", full.join("snap").to_str().unwrap()],
    );
    let entries = std::fs::read_dir(&full).unwrap().count();
    let _ = std::process::Command::new("umount").arg(&full).status();
    assert_ne!(o.status, Some(0), "{}", o.dump());
    assert!(o.stderr.contains("No space left"), "{}", o.dump());
    assert_eq!(entries, 0, "a partial snapshot was left behind");

    // An existing directory is not overwritten.
    let o = api("snapshot", &sock, &["--path", dir.to_str().unwrap()]);
    assert_ne!(o.status, Some(0), "{}", o.dump());
    assert!(o.stderr.contains("already exists"), "{}", o.dump());

    // The VM kept running through both.
    let o = api("info", &sock, &[]);
    assert!(o.stdout.contains("\"Running\""), "{}", o.dump());
    let before = last_memwrite_pass(&vm.output());
    std::thread::sleep(Duration::from_millis(500));
    assert!(last_memwrite_pass(&vm.output()) > before, "{}", vm.output());

    let (status, body) = raw_http(
        &sock,
        "PATCH /vm HTTP/1.1\r\nConnection: close\r\nContent-Length: 19\r\n\r\n{\"state\":\"Asleep\"}\n",
    );
    assert!(status.contains("400"), "{status} {body}");
    assert!(body.contains("\"error\""), "{body}");
    let (status, body) = raw_http(&sock, "GET /nothing HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert!(status.contains("404"), "{status} {body}");
    let (status, body) = raw_http(
        &sock,
        "PUT /snapshot/create HTTP/1.1\r\nConnection: close\r\nContent-Length: 5\r\n\r\n{oops",
    );
    assert!(status.contains("400"), "{status} {body}");
    assert!(body.contains("not JSON"), "{body}");
    let o = plainvm(&["info", "--api-sock", "/nonexistent/api.sock"], T);
    assert_ne!(o.status, Some(0));
    assert!(
        o.stderr.contains("cannot reach the VM's API socket"),
        "{}",
        o.dump()
    );
}

#[test]
fn diff_snapshots_hold_only_written_pages_and_restore_through_their_chain() {
    let (dir, sock, vm) = api_vm(
        "diff",
        &[
            "--memory",
            "256M",
            "--cmdline",
            "memwrite=64 passes=0 dirty=32",
        ],
    );
    vm.wait_for("memwrite pass=10 ok", T);
    let snap = |name: &str, diff: bool| {
        let p = dir.join(name);
        let mut args = vec!["--path", p.to_str().unwrap()];
        if diff {
            args.push("--diff");
        }
        let o = api("snapshot", &sock, &args);
        assert_eq!(o.status, Some(0), "{}", o.dump());
        let written: u64 = o
            .stdout
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("\"memory_bytes_written\": ")?
                    .trim_end_matches(',')
                    .parse()
                    .ok()
            })
            .unwrap();
        (p, written)
    };
    let o = api(
        "snapshot",
        &sock,
        &["--diff", "--path", dir.join("early").to_str().unwrap()],
    );
    assert!(o.stderr.contains("needs a full snapshot"), "{}", o.dump());
    let (_full, _) = snap("full", false);
    std::thread::sleep(Duration::from_millis(200));
    let (_d1, w1) = snap("diff1", true);
    // `at` is printed after diff1 and before diff2 is requested, so a guest restored from diff2
    // starts at `at` or later. (Read after diff2, a pass the guest printed once resumed could be
    // newer than diff2's memory.) That diff2 needs diff1 is checked at the end.
    let after_d1 = last_memwrite_pass(&vm.output());
    let start = Instant::now();
    while last_memwrite_pass(&vm.output()) <= after_d1 {
        assert!(start.elapsed() < T, "no progress: {}", vm.output());
        std::thread::sleep(Duration::from_millis(20));
    }
    let at = last_memwrite_pass(&vm.output());
    let (d2, w2) = snap("diff2", true);
    drop(vm);
    // The workload writes 32 pages per pass; page tables and stack add a few.
    for w in [w1, w2] {
        assert!(w <= 64 * 4096, "a diff snapshot wrote {w} bytes");
    }
    let o = plainvm(&["restore", d2.to_str().unwrap()], Duration::from_secs(3));
    assert_eq!(
        o.status,
        None,
        "the restored guest runs until killed: {}",
        o.dump()
    );
    let first = first_memwrite_pass(&o.stdout);
    assert!(
        first >= at,
        "restored at pass {first}, snapshot at {at}: {}",
        o.dump()
    );
    assert!(last_memwrite_pass(&o.stdout) > first + 10, "{}", o.dump());
    assert!(!o.stdout.contains("CORRUPT"), "{}", o.dump());

    // Without its parent, a diff snapshot is refused.
    std::fs::remove_dir_all(dir.join("diff1")).unwrap();
    refused_restore(&d2, "diff1");
}

#[test]
fn info_shows_what_the_guest_reports_through_the_hypercall_device() {
    let (_dir, sock, vm) = api_vm("guestinfo", &["--cmdline", "hypercall-selftest agent"]);
    vm.wait_for("HYPERCALL-SELFTEST", T);
    std::thread::sleep(Duration::from_millis(300));
    let o = api("info", &sock, &[]);
    assert_eq!(o.status, Some(0), "{}", o.dump());
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    let marks = v["guest"]["boot_marks"].as_array().unwrap();
    assert!(!marks.is_empty(), "{}", o.stdout);
    assert_eq!(v["guest"]["generation"], 0, "{}", o.stdout);
    assert_eq!(v["agent"], true, "{}", o.stdout);
}
