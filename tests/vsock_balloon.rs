//! vsock, balloon and rng with a real Linux guest, in one boot: a guest program connects to
//! the host's unix socket (`PATH_5000`) and gets its message echoed; the host connects into the
//! guest through `CONNECT 1234`; inflating the balloon by 64 MiB lowers plainvm's RSS by at
//! least 48 MiB; the guest reads /dev/hwrng. The device models' hostile-input tests are unit
//! tests in devices/src/virtio/{vsock,balloon}.

use plainvm_tests::support::vsock::echo_from_guest;
use plainvm_tests::*;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const GUEST_MEMORY: u64 = 256 * MIB;
/// Boot to the guest's checks: ~30 s on an idle 2-core PVM host, over 6 minutes when the
/// machine is busy (measured at load average 15).
const BOOT_LIMIT: Duration = Duration::from_secs(600);

/// plainvm's resident set size in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib << 10)
}

/// Make every page of the guest's RAM resident, from outside and without changing it: with
/// plainvm stopped, read each chunk of its guest-memory mapping through /proc/PID/mem and write
/// the same bytes back. (Guest code dirtying memory is far too slow on hosts that emulate guest
/// ring 0: ~2 s per MiB.) Returns the RSS afterwards.
fn prefault_guest_memory(pid: u32) -> u64 {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    // The guest RAM mapping: anonymous, read-write, at least the guest's memory size (it may
    // have merged with a neighbouring anonymous mapping).
    let (start, end) = maps
        .lines()
        .filter(|l| l.split_whitespace().count() == 5 && l.contains(" rw-p "))
        .filter_map(|l| {
            let (s, e) = l.split_whitespace().next()?.split_once('-')?;
            Some((
                u64::from_str_radix(s, 16).ok()?,
                u64::from_str_radix(e, 16).ok()?,
            ))
        })
        .find(|(s, e)| e - s >= GUEST_MEMORY)
        .unwrap_or_else(|| panic!("no guest-memory mapping in\n{maps}"));
    let signal = |sig: &str| {
        let st = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("kill");
        assert!(st.success());
    };
    signal("-STOP");
    // Wait until every thread is stopped.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks");
        let running = tasks.flatten().any(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            !matches!(state, Some("T") | Some("t"))
        });
        if !running {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mem = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/{pid}/mem"))
        .expect("open /proc/PID/mem (run the tests as root)");
    let mut buf = vec![0u8; MIB as usize];
    let mut at = start;
    while at < end {
        let n = (end - at).min(MIB) as usize;
        mem.read_exact_at(&mut buf[..n], at)
            .expect("read guest memory");
        mem.write_all_at(&buf[..n], at).expect("write guest memory");
        at += n as u64;
    }
    signal("-CONT");
    rss(pid)
}

/// The host side of the guest's connection: accept on `PATH_5000`, read until the guest's
/// half-close, answer "echo:<message>".
fn serve_echo(listener: UnixListener, limit: Duration) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        listener.set_nonblocking(true).unwrap();
        let start = Instant::now();
        let mut s = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(_) if start.elapsed() < limit => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return format!("no connection from the guest: {e}"),
            }
        };
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut msg = String::new();
        if let Err(e) = s.read_to_string(&mut msg) {
            return format!("read failed: {e}");
        }
        let _ = s.write_all(format!("echo:{msg}").as_bytes());
        msg
    })
}

#[test]
fn linux_guest_uses_vsock_balloon_and_rng() {
    let _serial = linux_lock();
    let a = linux_artifacts();
    let dir = scratch("vsock-balloon");
    let sock: PathBuf = dir.join("v.sock");
    let host_listener = UnixListener::bind(format!("{}_5000", sock.display())).unwrap();
    // The VMM runs jailed (tests/jail.rs): it reaches this listener through the read-only view
    // of the socket's directory in its jail, as the jail's user.
    use std::os::unix::fs::PermissionsExt;
    let perm = std::fs::Permissions::from_mode(0o777);
    std::fs::set_permissions(format!("{}_5000", sock.display()), perm).unwrap();
    let jail = scratch("vsock-balloon-jail").join("jail");
    let guest_msg = serve_echo(host_listener, 2 * BOOT_LIMIT);
    let cmdline = format!("{} plainvm.cmd=vsock-balloon", a.cmdline);
    let vsock = format!("cid=3,socket={}", sock.display());
    let mut vm = TestVm::start(
        &[
            "run",
            "--kernel",
            a.vmlinux.to_str().unwrap(),
            "--initrd",
            a.initramfs.to_str().unwrap(),
            "--memory",
            "256M",
            "--cmdline",
            &cmdline,
            "--rng",
            "--vsock",
            &vsock,
            "--balloon",
            "size=64M",
            "--jail",
            "64221:64221",
            "--jail-dir",
            jail.to_str().unwrap(),
        ],
        &dir.join("console.txt"),
    );
    // Guest RAM resident before the balloon driver starts (it probes ~20 s into the boot).
    vm.wait_for("Linux version", BOOT_LIMIT);
    let rss_full = prefault_guest_memory(vm.pid());
    assert!(
        rss_full > GUEST_MEMORY,
        "prefault left RSS at {} MiB",
        rss_full >> 20
    );
    eprintln!("RSS after prefault: {} MiB", rss_full >> 20);

    // Guest -> host.
    vm.wait_for("VSOCK-REPLY", BOOT_LIMIT);
    // The balloon: RSS falls by at least 48 MiB once the guest has inflated 64 MiB. Watch until
    // it has dropped that far and stopped falling for 5 s.
    let start = Instant::now();
    let mut rss_min = rss_full;
    let mut last_fall = Instant::now();
    while start.elapsed() < Duration::from_secs(180)
        && (rss_full - rss_min < 48 * MIB || last_fall.elapsed() < Duration::from_secs(5))
    {
        let r = rss(vm.pid());
        if r > 0 && r < rss_min {
            rss_min = r;
            last_fall = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let balloon_wait = start.elapsed();
    // Host -> guest.
    vm.wait_for("VSOCK-LISTENING 1234", Duration::from_secs(30));
    let reply = echo_from_guest(&sock, 1234, "hello-from-host", Duration::from_secs(60));
    let status = vm.wait(Duration::from_secs(60));
    let out = vm.output();
    eprintln!(
        "RSS after prefault {} MiB, lowest {} MiB: drop {} MiB (settled {:?} after the vsock checks)",
        rss_full >> 20,
        rss_min >> 20,
        (rss_full - rss_min) >> 20,
        balloon_wait
    );

    assert_eq!(
        guest_msg.join().unwrap(),
        "hello-from-guest",
        "host side of the guest's connection:\n{out}"
    );
    assert!(out.contains("VSOCK-REPLY echo:hello-from-guest"), "{out}");
    assert_eq!(reply.as_deref(), Ok("hello-from-host"), "{out}");
    assert!(out.contains("VSOCK-ECHOED 15"), "{out}");
    assert!(
        rss_full - rss_min >= 48 * MIB,
        "balloon: RSS {} MiB -> {} MiB\n{out}",
        rss_full >> 20,
        rss_min >> 20
    );
    let memtotal: u64 = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("BALLOON-MEMTOTAL-KB "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal line:\n{out}"));
    assert!(
        memtotal < (GUEST_MEMORY - 64 * MIB) >> 10,
        "the guest's MemTotal ({memtotal} KiB) does not show the inflated balloon"
    );
    assert!(out.contains("RNG-CURRENT virtio_rng"), "{out}");
    let bytes: Vec<&str> = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("RNG-BYTES"))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    assert_eq!(bytes.len(), 16, "{out}");
    assert!(bytes.iter().any(|b| *b != "00"), "{out}");
    assert!(out.contains("GUEST-POWEROFF"), "{out}");
    assert!(status.is_some(), "plainvm did not exit:\n{out}");
}
