//! Snapshots and live migration of VMs with virtio devices: the test guest's verifiable disk
//! workload (`blk-loop`) with rng, balloon and vsock attached too (fast), and Linux guests with a
//! disk root, a tap and the guest agent (slow here).

use plainvm_tests::support::netns::{Netns, NetnsPair};
use plainvm_tests::support::vsock::echo_from_guest;
use plainvm_tests::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);
/// Limit for each step of a Linux guest (its kernel is emulated here).
const SLOW: Duration = Duration::from_secs(600);

/// The N of every `blkloop pass=N ok` in `output`, in order.
fn blkloop_passes(output: &str) -> Vec<u64> {
    output
        .lines()
        .filter_map(|l| {
            l.strip_prefix("blkloop pass=")?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// The highest `blkloop pass=N ok` in `output`.
fn last_blkloop_pass(output: &str) -> u64 {
    blkloop_passes(output).into_iter().max().unwrap_or(0)
}

/// A fresh zeroed 1 MiB disk image (what `blk-loop`'s first pass expects).
fn zeroed_disk(path: &Path) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(1 << 20).unwrap();
}

fn api(cmd: &str, sock: &Path, extra: &[&str]) -> Outcome {
    let mut args = vec![cmd, "--api-sock", sock.to_str().unwrap()];
    args.extend_from_slice(extra);
    plainvm(&args, T)
}

/// Pause the VM at `sock`, snapshot it to `snap`, and copy its disk to `disk_copy` while it is
/// paused (a snapshot does not include disk images: their contents must match it on restore).
fn snapshot_paused(sock: &Path, snap: &Path, disk: &Path, disk_copy: &Path) {
    let o = api("pause", sock, &[]);
    assert_eq!(o.status, Some(0), "{}", o.dump());
    let o = api("snapshot", sock, &["--path", snap.to_str().unwrap()]);
    assert_eq!(o.status, Some(0), "{}", o.dump());
    std::fs::copy(disk, disk_copy).unwrap();
}

/// A test guest with a fresh zeroed disk and an API socket, in a new scratch directory.
struct DiskVm {
    dir: PathBuf,
    disk: PathBuf,
    sock: PathBuf,
    vm: TestVm,
}

/// Start `plainvm run` with `cmdline` (a `blk-loop` workload), the disk, the API socket and the
/// `extra` flags; returns once the workload is under way.
fn disk_vm(name: &str, extra: &[&str], cmdline: &str) -> DiskVm {
    let dir = scratch(name);
    let (disk, sock) = (dir.join("disk.img"), dir.join("api.sock"));
    zeroed_disk(&disk);
    let disk_arg = format!("path={}", disk.display());
    let mut args = vec![
        "run",
        "--api-sock",
        sock.to_str().unwrap(),
        "--disk",
        &disk_arg,
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--cmdline", cmdline]);
    let vm = TestVm::start(&args, &dir.join("console"));
    vm.wait_for("blkloop pass=10 ok", T);
    DiskVm {
        dir,
        disk,
        sock,
        vm,
    }
}

#[test]
fn a_vm_with_devices_restores_twice_with_its_disk_workload_intact() {
    let vsock_dir = scratch("devsnap-vsock");
    let vsock = format!("cid=3,socket={}", vsock_dir.join("v.sock").display());
    // rng, balloon and vsock are attached but never set up by this guest: their (unconfigured)
    // state must go through the snapshot as well.
    let DiskVm {
        dir,
        disk,
        sock,
        mut vm,
    } = disk_vm(
        "devsnap",
        &["--rng", "--balloon", "size=16M", "--vsock", &vsock],
        "blk-loop passes=3000 show-gen",
    );
    let (snap, disk_at_snap) = (dir.join("snap"), dir.join("disk-at-snapshot.img"));
    snapshot_paused(&sock, &snap, &disk, &disk_at_snap);
    let at = last_blkloop_pass(&vm.output());
    vm.kill();
    assert!(
        !vm.output().contains("BLKLOOP-DONE"),
        "finished before the snapshot"
    );

    // Round 0 restores onto the original path; round 1 onto another copy, named by `--set`
    // (as on another host).
    let other = dir.join("moved.img");
    let set = format!(r#"disks=[{{"path":"{}"}}]"#, other.display());
    for (round, image, extra) in [(0, &disk, vec![]), (1, &other, vec!["--set", set.as_str()])] {
        std::fs::copy(&disk_at_snap, image).unwrap();
        // The snapshot may use the images here and the vsock socket's directory.
        let mut args = vec![
            "restore",
            snap.to_str().unwrap(),
            "--allow-dir",
            dir.to_str().unwrap(),
            "--allow-dir",
            vsock_dir.to_str().unwrap(),
        ];
        args.extend(extra);
        let o = plainvm(&args, T);
        assert_eq!(o.status, Some(0), "round {round}: {}", o.dump());
        assert!(
            o.stdout.contains("BLKLOOP-DONE passes=3000"),
            "{}",
            o.dump()
        );
        assert!(!o.stdout.contains("BLKLOOP-CORRUPT"), "{}", o.dump());
        assert!(!o.stdout.contains("BLKLOOP-FAIL"), "{}", o.dump());
        assert!(
            !o.stdout.contains("hello from vCPU"),
            "booted again: {}",
            o.dump()
        );
        assert!(
            o.stdout.contains(" gen=1"),
            "GENERATION not bumped: {}",
            o.dump()
        );
        let first = blkloop_passes(&o.stdout).first().copied();
        assert!(
            first.unwrap_or(0) >= at,
            "restored at {first:?}, saved after {at}"
        );
    }
    assert_ne!(
        std::fs::read(&other).unwrap(),
        std::fs::read(&disk_at_snap).unwrap(),
        "the restore with --set did not use the other image"
    );
    // What the guest saw may not change: refused before anything runs.
    let o = plainvm(&["restore", snap.to_str().unwrap(), "--set", "cpus=4"], T);
    assert_eq!(o.status, Some(1), "{}", o.dump());
    assert!(o.stderr.contains("only nets, disks"), "{}", o.dump());

    // The disk really is read after a restore: a disk that moved on since the snapshot (here
    // left by round 0) is caught by the guest's own check.
    let allowed = [
        "restore",
        snap.to_str().unwrap(),
        "--allow-dir",
        dir.to_str().unwrap(),
        "--allow-dir",
        vsock_dir.to_str().unwrap(),
    ];
    let o = plainvm(&allowed, T);
    assert!(o.stdout.contains("BLKLOOP-CORRUPT"), "{}", o.dump());

    // A configuration whose disk no longer matches the saved device is refused: nothing runs.
    std::fs::File::options()
        .write(true)
        .open(&disk)
        .unwrap()
        .set_len(2 << 20)
        .unwrap();
    let o = plainvm(&allowed, T);
    assert_eq!(o.status, Some(1), "{}", o.dump());
    assert!(o.stderr.contains("give the same image"), "{}", o.dump());
    assert!(!o.stdout.contains("blkloop"), "a VM ran: {}", o.dump());
}

#[test]
fn a_diff_snapshot_holds_the_pages_devices_wrote() {
    let DiskVm {
        dir,
        disk,
        sock,
        mut vm,
    } = disk_vm("devdiff", &[], "blk-loop passes=0");
    let disk_at_snap = dir.join("disk-at-snapshot.img");
    let full = dir.join("full");
    let o = api("snapshot", &sock, &["--path", full.to_str().unwrap()]);
    assert_eq!(o.status, Some(0), "{}", o.dump());
    // The workload goes on: the device writes the used ring and status bytes, pages the guest
    // itself only reads. Only the VMM's own dirty bitmap knows them.
    let resumed_at = last_blkloop_pass(&vm.output());
    while last_blkloop_pass(&vm.output()) < resumed_at + 200 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let diff = dir.join("diff");
    let o = api("pause", &sock, &[]);
    assert_eq!(o.status, Some(0), "{}", o.dump());
    let o = api(
        "snapshot",
        &sock,
        &["--diff", "--path", diff.to_str().unwrap()],
    );
    assert_eq!(o.status, Some(0), "{}", o.dump());
    std::fs::copy(&disk, &disk_at_snap).unwrap();
    vm.kill();

    let o = plainvm(
        &[
            "restore",
            diff.to_str().unwrap(),
            "--allow-dir",
            dir.to_str().unwrap(),
        ],
        Duration::from_secs(3),
    );
    assert_eq!(o.status, None, "runs until killed: {}", o.dump());
    assert!(
        last_blkloop_pass(&o.stdout) > resumed_at + 250,
        "the restored guest did not go on: {}",
        o.dump()
    );
    assert!(!o.stdout.contains("BLKLOOP-"), "{}", o.dump());
}

#[test]
fn a_vm_with_a_disk_migrates_and_its_disk_workload_continues() {
    let DiskVm {
        dir,
        sock,
        vm: mut src,
        ..
    } = disk_vm("devmig", &["--rng"], "blk-loop passes=0 show-gen");
    // Same host, same image: the disk is shared storage for both ends.
    let port = 21000 + (std::process::id() % 4000) as u16;
    let to = format!("tcp:127.0.0.1:{port}");
    let dst = TestVm::start(
        &[
            "receive",
            "--listen",
            &to,
            "--insecure",
            "--allow-dir",
            dir.to_str().unwrap(),
        ],
        &dir.join("dst.out"),
    );
    dst.wait_for("waiting for a migration", T);
    let o = plainvm(
        &["migrate", "--api-sock", sock.to_str().unwrap(), "--to", &to],
        Duration::from_secs(120),
    );
    assert_eq!(o.status, Some(0), "{}\n--- dst\n{}", o.dump(), dst.output());
    assert_eq!(src.wait(T), Some(0), "{}", src.output());
    let at = last_blkloop_pass(&src.output());
    let start = std::time::Instant::now();
    while last_blkloop_pass(&dst.output()) < at + 300 {
        assert!(start.elapsed() < T, "destination stalled: {}", dst.output());
        assert!(!dst.output().contains("BLKLOOP-"), "{}", dst.output());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(dst.output().contains(" gen=1"), "{}", dst.output());
    assert!(
        !dst.output().contains("hello from vCPU"),
        "{}",
        dst.output()
    );
}

/// The tap every Linux test here gives its guest (host side 10.0.2.1/24, guest 10.0.2.2).
const TAP: &str = "pvtap0";
const GUEST_MAC: &str = "02:00:00:00:00:02";

/// The `TICK n=N file=F ping=P` lines of a console log, as (N, rest of the line).
fn ticks(log: &str) -> Vec<(u64, String)> {
    log.lines()
        .filter_map(|l| {
            let rest = l.split("TICK n=").nth(1)?;
            let (n, tail) = rest.split_once(' ')?;
            Some((n.parse().ok()?, tail.to_string()))
        })
        .collect()
}

/// What a Linux console must never show.
fn assert_healthy(log: &str) {
    for bad in [
        "Kernel panic",
        "BUG:",
        "Oops",
        "soft lockup",
        "rcu_sched self-detected",
    ] {
        assert!(
            !log.contains(bad),
            "the guest kernel reported '{bad}':\n{log}"
        );
    }
}

#[test]
fn linux_with_disk_net_and_vsock_keeps_working_after_restores() {
    let _serial = linux_lock();
    let a = linux_artifacts();
    let dir = scratch("linux-snap");
    let (root, root_at_snap) = (dir.join("root.ext4"), dir.join("root-at-snapshot.ext4"));
    std::fs::copy(&a.rootfs, &root).unwrap();
    let ns = Netns::new("lsnap");
    ns.add_tap(TAP, "10.0.2.1/24", 1500, None);
    // It boots and takes its snapshot in a jail (tests/jail.rs); the first restore is jailed,
    // the second is not.
    let jail = dir.join("jail");
    // The vsock socket in a directory of its own: a jailed VM sees that directory (read-only).
    let (sock, snap, vsock) = (
        dir.join("api.sock"),
        jail.join("snap"),
        dir.join("vsock/v.sock"),
    );
    std::fs::create_dir(dir.join("vsock")).unwrap();
    let cmdline = format!(
        "{} root=/dev/vda rw plainvm.cmd=tick plainvm.ticks=8 plainvm.tick-echo=wait plainvm.agent=on",
        a.cmdline
    );
    let mut vm = TestVm::live(ns.command(plainvm_bin()).args([
        "run",
        "--jail",
        "64211:64211",
        "--jail-dir",
        jail.to_str().unwrap(),
        "--kernel",
        a.vmlinux.to_str().unwrap(),
        "--cmdline",
        &cmdline,
        "--disk",
        &format!("path={}", root.display()),
        "--net",
        &format!("tap={TAP},mac={GUEST_MAC}"),
        "--vsock",
        &format!("cid=3,socket={}", vsock.display()),
        "--rng",
        "--api-sock",
        sock.to_str().unwrap(),
    ]));
    let line = vm.wait_line("TICK n=2 ", SLOW);
    assert!(line.contains("file=tick-file ping=ok"), "{}", vm.dump());
    let status = std::fs::read_to_string(format!("/proc/{}/status", vm.pid())).unwrap();
    assert!(status.contains("Uid:\t64211\t"), "{status}");
    assert!(status.contains("CapEff:\t0000000000000000"), "{status}");
    snapshot_paused(&sock, &snap, &root, &root_at_snap);
    drop(vm); // killed: the restores run after the original process is gone

    for round in 0..2 {
        std::fs::copy(&root_at_snap, &root).unwrap();
        let jail_r = dir.join("jail-restored");
        let jailed = [
            "--jail",
            "64212:64212",
            "--jail-dir",
            jail_r.to_str().unwrap(),
        ];
        let mut r = TestVm::live(
            ns.command(plainvm_bin())
                .args([
                    "restore",
                    snap.to_str().unwrap(),
                    "--allow-dir",
                    dir.to_str().unwrap(),
                    "--allow-tap",
                    TAP,
                ])
                .args(if round == 0 { &jailed[..] } else { &[][..] }),
        );
        // The agent sees GENERATION bumped and resyncs the clock. The guest powers off only after
        // the vsock exchange below (plainvm.tick-echo=wait), so both lines come before it.
        r.wait_line("generation 0 -> 1", SLOW);
        r.wait_line("time-sync: clock set to", SLOW);
        let uid = std::fs::read_to_string(format!("/proc/{}/status", r.pid())).unwrap();
        let want = if round == 0 { "64212" } else { "0" };
        assert!(
            uid.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some(want)),
            "round {round}: {uid}"
        );
        // The vsock listener from before the snapshot takes a new connection from the host.
        let reply = echo_from_guest(&vsock, 1234, "after-restore", SLOW);
        assert_eq!(reply.as_deref(), Ok("after-restore"), "{}", r.dump());
        r.wait_line("TICK n=8 ", SLOW);
        let (status, log) = r.finish(SLOW);
        assert_eq!(status, Some(0), "round {round}:\n{log}");
        assert!(log.contains("GUEST-POWEROFF"), "{log}");
        assert!(
            !log.contains("GUEST-INIT-REACHED"),
            "the guest booted again:\n{log}"
        );
        assert_healthy(&log);
        // The restore bumped the generation and posted a time sync: the agent syncs once.
        assert_eq!(log.matches("time-sync: clock set to").count(), 1, "{log}");
        // Every tick after the restore read the file back from the disk (page cache dropped)
        // and got an answer through the re-opened tap.
        let after = ticks(&log);
        assert!(after.first().is_some_and(|(n, _)| *n >= 2), "{log}");
        assert!(after.len() >= 5, "{log}");
        for (n, rest) in &after {
            assert_eq!(rest, "file=tick-file ping=ok", "tick {n}:\n{log}");
        }
    }
    // What the guest appended and synced ended up in the image.
    if have("debugfs") {
        let o = Command::new("debugfs")
            .args(["-R", "cat /tick-log", root.to_str().unwrap()])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        let ticks: Vec<&str> = text.lines().collect();
        assert_eq!(ticks, ["1", "2", "3", "4", "5", "6", "7", "8"], "{text}");
    }
}

/// The `seq=N` of every `net-ping: reply` line.
fn ping_replies(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains("net-ping: reply"))
        .filter_map(|l| l.split("seq=").nth(1)?.trim().parse().ok())
        .collect()
}

#[test]
fn linux_keeps_pinging_through_its_tap_across_a_migration() {
    let _serial = linux_lock();
    let a = linux_artifacts();
    let dir = scratch("linux-mig");
    let hosts = NetnsPair::new("lmig");
    // The same tap on both "hosts", with the same address and MAC on the host side: the guest's
    // neighbour entry stays right after the move.
    for ns in [&hosts.a, &hosts.b] {
        ns.add_tap(TAP, "10.0.2.1/24", 1500, Some("02:00:00:00:01:01"));
    }
    let sock = dir.join("src.sock");
    let cmdline = format!("{} plainvm.cmd=ping plainvm.ticks=30", a.cmdline);
    let mut src = TestVm::live(hosts.a.command(plainvm_bin()).args([
        "run",
        "--kernel",
        a.vmlinux.to_str().unwrap(),
        "--initrd",
        a.initramfs.to_str().unwrap(),
        "--cmdline",
        &cmdline,
        "--net",
        &format!("tap={TAP},mac={GUEST_MAC}"),
        "--api-sock",
        sock.to_str().unwrap(),
    ]));
    src.wait_line("reply from 10.0.2.1 seq=3", SLOW);
    let to = format!("tcp:{}:{}", hosts.b_addr, 7000 + std::process::id() % 1000);
    let mut dst = TestVm::live(hosts.b.command(plainvm_bin()).args([
        "receive",
        "--listen",
        &to,
        "--insecure",
        "--allow-tap",
        TAP,
    ]));
    dst.wait_line("plainvm: waiting for a migration", T);
    let o = plainvm(
        &["migrate", "--api-sock", sock.to_str().unwrap(), "--to", &to],
        SLOW,
    );
    assert_eq!(o.status, Some(0), "{}\n--- dst\n{}", o.dump(), dst.dump());
    let (status, src_log) = src.finish(T);
    assert_eq!(status, Some(0), "{src_log}");
    assert!(src_log.contains("migrated to"), "{src_log}");
    let last = ping_replies(&src_log).into_iter().max().unwrap_or(0);
    // The same process goes on at the destination: its sequence numbers continue, and the host
    // there answers through the destination's tap.
    dst.wait_line(&format!("seq={}", last + 3), SLOW);
    let (status, log) = dst.finish(SLOW);
    assert_eq!(status, Some(0), "{log}");
    let after = ping_replies(&log);
    assert!(
        after.iter().all(|&s| s > last),
        "seq went back: {after:?} after {last}"
    );
    assert!(after.len() >= 5, "{log}");
    assert!(log.contains("GUEST-POWEROFF"), "{log}");
    assert_healthy(&log);
    let _ = dir;
}
