//! What arrives from outside the operator's command line cannot reach the host: a snapshot
//! directory or a migration stream that names host files, a recorded migration replayed, a
//! diff snapshot chain that loops, state files that are not files; and what plainvm writes is
//! the owner's only (snapshot files 0600, sockets 0600).

use plainvm::snapshot::state_file;
use plainvm::vm::state::VmState;
use plainvm_tests::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

fn port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    40000 + (std::process::id() % 2000) as u16 * 10 + NEXT.fetch_add(1, Ordering::SeqCst)
}

/// A file that must stay as it is: (path, contents).
fn precious(dir: &Path, name: &str) -> (PathBuf, Vec<u8>) {
    let p = dir.join(name);
    let data = format!("precious {name}: must not be opened, changed or deleted\n").into_bytes();
    std::fs::write(&p, &data).unwrap();
    (p, data)
}

fn assert_untouched(f: &(PathBuf, Vec<u8>)) {
    assert_eq!(
        std::fs::read(&f.0).ok().as_deref(),
        Some(f.1.as_slice()),
        "{} was changed or deleted",
        f.0.display()
    );
}

/// An idle test guest with a disk in `dir/images` and a vsock socket there; snapshotted into
/// `dir/snap` while paused. Returns the snapshot.
fn snapshot_with_devices(dir: &Path) -> PathBuf {
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let img = images.join("disk.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let sock = dir.join("api.sock");
    let vm = TestVm::start(
        &[
            "run",
            "--api-sock",
            sock.to_str().unwrap(),
            "--cmdline",
            "idle",
            "--disk",
            &format!("path={}", img.display()),
            "--vsock",
            &format!("cid=3,socket={}", images.join("v.sock").display()),
        ],
        &dir.join("vm.out"),
    );
    wait_api(&sock);
    assert_eq!(api(&["pause"], &sock).status, Some(0));
    let snap = dir.join("snap");
    let o = api(&["snapshot", "--path", snap.to_str().unwrap()], &sock);
    assert_eq!(o.status, Some(0), "{}", o.dump());
    drop(vm);
    snap
}

/// Rewrite the snapshot's saved configuration (a CRC-valid state file, as an attacker can make).
fn rewrite_config(snap: &Path, change: impl FnOnce(&mut VmState)) {
    let bytes = plainvm::snapshot::load_state(snap).unwrap();
    let mut st = VmState::decode(&bytes).unwrap();
    change(&mut st);
    let path = snap.join("state");
    std::fs::remove_file(&path).unwrap();
    state_file::write(&path, &st.encode().unwrap()).unwrap();
}

#[test]
fn a_snapshot_naming_host_files_is_refused_and_the_files_stay() {
    let dir = scratch("hostile-snap");
    let snap = snapshot_with_devices(&dir);
    let disk = precious(&dir, "shadow");
    let sockfile = precious(&dir, "not-a-socket");
    rewrite_config(&snap, |st| {
        st.config.disks[0].path = disk.0.clone();
        if let Some(v) = st.config.vsock.as_mut() {
            v.socket = sockfile.0.clone();
        }
    });
    // The operator allows the images directory only: the snapshot names files outside it.
    let images = dir.join("images");
    for extra in [vec![], vec!["--allow-dir", images.to_str().unwrap()]] {
        let mut args = vec!["restore", snap.to_str().unwrap()];
        args.extend(extra);
        let o = plainvm(&args, T);
        assert_eq!(o.status, Some(1), "{}", o.dump());
        assert!(o.stderr.contains("did not allow"), "{}", o.dump());
        assert_untouched(&disk);
        assert_untouched(&sockfile);
    }
    // Even allowed (the operator's own directory), a regular file is never taken for a stale
    // socket and deleted.
    rewrite_config(&snap, |st| {
        st.config.disks[0].path = images.join("disk.img");
    });
    let o = plainvm(
        &[
            "restore",
            snap.to_str().unwrap(),
            "--allow-dir",
            images.to_str().unwrap(),
            "--allow-dir",
            dir.to_str().unwrap(),
        ],
        T,
    );
    assert_eq!(o.status, Some(1), "{}", o.dump());
    assert!(o.stderr.contains("not a socket"), "{}", o.dump());
    assert_untouched(&sockfile);
}

#[test]
fn a_stream_naming_a_host_file_is_refused_before_the_commit_and_the_source_runs_on() {
    let dir = scratch("hostile-stream");
    let disk = precious(&dir, "disk-named-by-the-source");
    let sock = dir.join("src.sock");
    let src = TestVm::start(
        &[
            "run",
            "--api-sock",
            sock.to_str().unwrap(),
            "--cmdline",
            "memwrite=8 passes=0 delay=2000",
            "--disk",
            &format!("path={}", disk.0.display()),
        ],
        &dir.join("src.out"),
    );
    src.wait_for("memwrite pass=2 ok", T);
    let to = format!("tcp:127.0.0.1:{}", port());
    let mut dst = TestVm::start(
        &["receive", "--listen", &to, "--insecure"],
        &dir.join("dst.out"),
    );
    dst.wait_for("waiting for a migration", T);
    let o = api(&["migrate", "--to", &to], &sock);
    assert_ne!(o.status, Some(0), "{}", o.dump());
    assert!(o.stderr.contains("did not allow"), "{}", o.dump());
    assert_eq!(dst.wait(T), Some(1), "{}", dst.output());
    assert!(
        !dst.output().contains("memwrite"),
        "a VM ran: {}",
        dst.output()
    );
    assert_untouched(&disk);
    let before = last_memwrite_pass(&src.output());
    let start = Instant::now();
    while last_memwrite_pass(&src.output()) < before + 2 {
        assert!(start.elapsed() < T, "the source stopped: {}", src.output());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(api(&["info"], &sock).stdout.contains("\"Running\""));
}

/// A one-connection proxy that records what the source sends.
fn recording_proxy(real: String, record: Arc<Mutex<Vec<u8>>>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let front = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let (mut a, _) = l.accept().unwrap();
        let mut b = TcpStream::connect(&real).unwrap();
        let (mut a2, mut b2) = (a.try_clone().unwrap(), b.try_clone().unwrap());
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut b2, &mut a2);
        });
        let mut buf = [0u8; 65536];
        loop {
            let n = match a.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            record.lock().unwrap().extend_from_slice(&buf[..n]);
            if b.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = b.shutdown(std::net::Shutdown::Both);
    });
    front
}

#[test]
fn a_recorded_keyed_migration_replayed_to_a_receiver_is_refused() {
    let dir = scratch("replay");
    let key = dir.join("key");
    std::fs::write(&key, [0x5au8; 32]).unwrap();
    let sock = dir.join("src.sock");
    let mut src = TestVm::start(
        &[
            "run",
            "--api-sock",
            sock.to_str().unwrap(),
            "--memory",
            "64M",
            "--cmdline",
            "memwrite=8 passes=0 delay=2000",
        ],
        &dir.join("src.out"),
    );
    src.wait_for("memwrite pass=2 ok", T);
    let real = format!("127.0.0.1:{}", port());
    let keyarg = key.to_str().unwrap();
    let dst = TestVm::start(
        &[
            "receive",
            "--listen",
            &format!("tcp:{real}"),
            "--key",
            keyarg,
        ],
        &dir.join("dst.out"),
    );
    dst.wait_for("waiting for a migration", T);
    let record = Arc::new(Mutex::new(Vec::new()));
    let front = recording_proxy(real, record.clone());
    let o = api(
        &["migrate", "--to", &format!("tcp:{front}"), "--key", keyarg],
        &sock,
    );
    assert_eq!(o.status, Some(0), "{}\n--- dst\n{}", o.dump(), dst.output());
    assert_eq!(src.wait(T), Some(0));
    drop(dst);

    // The whole recorded session, played to a new receiver with the same key.
    let replay_to = format!("127.0.0.1:{}", port());
    let mut victim = TestVm::start(
        &[
            "receive",
            "--listen",
            &format!("tcp:{replay_to}"),
            "--key",
            keyarg,
        ],
        &dir.join("victim.out"),
    );
    victim.wait_for("waiting for a migration", T);
    let recorded = record.lock().unwrap().clone();
    assert!(recorded.len() > 1 << 20, "too little was recorded");
    let mut c = TcpStream::connect(&replay_to).unwrap();
    let _ = c.write_all(&recorded);
    let status = victim.wait(T);
    assert_eq!(status, Some(1), "{}", victim.output());
    assert!(
        victim.output().contains("failed authentication"),
        "{}",
        victim.output()
    );
    assert!(
        !victim.output().contains("memwrite"),
        "the replay ran: {}",
        victim.output()
    );
}

/// Restore `snap`: refused with `needle` within a second.
fn refused_fast(snap: &Path, needle: &str) {
    let o = plainvm(
        &["restore", snap.to_str().unwrap()],
        Duration::from_secs(20),
    );
    assert_eq!(o.status, Some(1), "{}", o.dump());
    assert!(o.stderr.contains(needle), "{}", o.dump());
    assert!(o.elapsed < Duration::from_secs(1), "took {:?}", o.elapsed);
}

/// A snapshot of the idle test guest.
fn idle_snapshot(dir: &Path, name: &str) -> PathBuf {
    let sock = dir.join(format!("{name}.sock"));
    let vm = TestVm::start(
        &[
            "run",
            "--api-sock",
            sock.to_str().unwrap(),
            "--memory",
            "32M",
            "--cmdline",
            "idle",
        ],
        &dir.join(format!("{name}.out")),
    );
    wait_api(&sock);
    let snap = dir.join(name);
    let o = api(&["snapshot", "--path", snap.to_str().unwrap()], &sock);
    assert_eq!(o.status, Some(0), "{}", o.dump());
    drop(vm);
    snap
}

#[test]
fn snapshot_files_that_are_not_files_or_loop_are_refused_at_once() {
    let dir = scratch("hostile-files");
    // State: a symlink to /dev/zero, then a FIFO nobody writes.
    let snap = idle_snapshot(&dir, "zero");
    std::fs::remove_file(snap.join("state")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", snap.join("state")).unwrap();
    refused_fast(&snap, "symbolic link");
    std::fs::remove_file(snap.join("state")).unwrap();
    let c = std::ffi::CString::new(snap.join("state").to_str().unwrap()).unwrap();
    // SAFETY: mkfifo reads a NUL-terminated path we own.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    refused_fast(&snap, "FIFO");
    // Memory: a symlink to a host file of the right size.
    let snap = idle_snapshot(&dir, "memlink");
    let size = std::fs::metadata(snap.join("memory")).unwrap().len();
    let host_file = dir.join("host-file");
    std::fs::write(&host_file, vec![0x41u8; size as usize]).unwrap();
    std::fs::remove_file(snap.join("memory")).unwrap();
    std::os::unix::fs::symlink(&host_file, snap.join("memory")).unwrap();
    refused_fast(&snap, "symbolic link");
    // Diff snapshots whose parents loop: a -> b -> a.
    let a = idle_snapshot(&dir, "a");
    let b = dir.join("b");
    copy_dir(&a, &b);
    for (d, parent) in [(&a, &b), (&b, &a)] {
        std::fs::write(d.join("parent"), parent.to_str().unwrap()).unwrap();
        std::fs::write(d.join("pages"), []).unwrap();
    }
    refused_fast(&a, "loops back");
}

#[test]
fn a_diff_snapshot_cannot_take_its_memory_from_a_snapshot_elsewhere() {
    // A "victim" snapshot in one place, a diff snapshot from elsewhere naming it as its parent:
    // restoring the diff would run the victim's memory under the attacker's vCPU state.
    let dir = scratch("hostile-parent");
    let victim_dir = dir.join("victims");
    std::fs::create_dir_all(&victim_dir).unwrap();
    let victim = idle_snapshot(&victim_dir, "victim");
    let incoming = dir.join("incoming");
    std::fs::create_dir_all(&incoming).unwrap();
    let evil = idle_snapshot(&incoming, "evil");
    std::fs::write(evil.join("parent"), victim.to_str().unwrap()).unwrap();
    std::fs::write(evil.join("pages"), []).unwrap();
    refused_fast(&evil, "outside the directory that holds the snapshot");
    // The operator can allow it, and a chain within one directory needs nothing.
    let o = plainvm(
        &[
            "restore",
            evil.to_str().unwrap(),
            "--allow-dir",
            victim_dir.to_str().unwrap(),
        ],
        Duration::from_secs(3),
    );
    assert!(!o.stderr.contains("outside the directory"), "{}", o.dump());
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn snapshots_and_sockets_are_the_owners_only() {
    let dir = scratch("modes");
    // A permissive umask must not leak into what plainvm creates.
    // SAFETY: umask only changes this test process's file-creation mask (inherited by children).
    let old = unsafe { libc::umask(0) };
    let snap = snapshot_with_devices(&dir);
    // SAFETY: as above, restoring the mask.
    unsafe { libc::umask(old) };
    for f in ["state", "memory"] {
        let m = std::fs::metadata(snap.join(f)).unwrap().mode() & 0o777;
        assert_eq!(m, 0o600, "{f} is {m:o}");
    }
    let m = std::fs::metadata(&snap).unwrap().mode() & 0o777;
    assert_eq!(m, 0o700, "the snapshot directory is {m:o}");
    let vsock = dir.join("images/v.sock");
    // The VM is gone; its socket file stays behind with its mode.
    let m = std::fs::symlink_metadata(&vsock).unwrap().mode() & 0o777;
    assert_eq!(m, 0o600, "the vsock socket is {m:o}");
}
