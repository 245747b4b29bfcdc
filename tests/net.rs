//! virtio-net over a real tap in a network namespace the test creates: a Linux guest and the host
//! ping each other, and 4 MiB go over TCP to the guest and back with matching checksums.

use plainvm_tests::support::netns::Netns;
use plainvm_tests::*;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 1);
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
const TAP: &str = "pvtap0";
const BLOB: usize = 4 << 20;
/// Limit for each step of the Linux guest (its kernel is emulated here, and the host may be busy).
const SLOW: Duration = Duration::from_secs(600);

/// One ICMP echo from the calling thread's namespace; true when `to` answered within `limit`.
fn icmp_echo(to: Ipv4Addr, limit: Duration) -> bool {
    // SAFETY: creates a socket; the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
    assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    let id = (std::process::id() & 0xffff) as u16;
    let mut pkt = [0u8; 64];
    pkt[0] = 8; // echo request
    pkt[4..6].copy_from_slice(&id.to_be_bytes());
    pkt[6..8].copy_from_slice(&1u16.to_be_bytes());
    pkt[8..].fill(0xa5);
    let sum = checksum(&pkt);
    pkt[2..4].copy_from_slice(&sum.to_be_bytes());
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(to).to_be(),
        },
        sin_zero: [0; 8],
    };
    let tv = libc::timeval {
        tv_sec: 1,
        tv_usec: 0,
    };
    let end = Instant::now() + limit;
    let mut ok = false;
    // SAFETY: the pointers refer to live locals of the sizes passed.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        );
        'outer: while Instant::now() < end {
            libc::sendto(
                fd,
                pkt.as_ptr().cast(),
                pkt.len(),
                0,
                (&addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            );
            let mut buf = [0u8; 256];
            loop {
                let n = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
                if n < 28 {
                    break; // timeout: send again
                }
                let ihl = usize::from(buf[0] & 0xf) * 4;
                let src = Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]);
                if src == to && buf[ihl] == 0 && buf[ihl + 4..ihl + 6] == id.to_be_bytes() {
                    ok = true;
                    break 'outer;
                }
            }
        }
        libc::close(fd);
    }
    ok
}

fn checksum(b: &[u8]) -> u16 {
    let mut s: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

fn md5(data: &[u8], dir: &std::path::Path, name: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    let o = Command::new("md5sum").arg(&p).output().expect("md5sum");
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn linux_guest_pings_and_moves_4_mib_each_way_over_a_tap() {
    let a = linux_artifacts();
    let dir = scratch("net-linux");
    // A 64 KiB MTU (which the device reports to the guest): the guest's kernel handles far
    // fewer packets, which matters when that kernel is emulated.
    let ns = Netns::new("net");
    ns.add_tap(TAP, "10.0.2.1/24", 65520, None);
    // The host's listener for the guest's upload, bound before the guest runs.
    let upload = ns.run(|| {
        let l = TcpListener::bind(SocketAddr::from((HOST_IP, 5002))).expect("bind 10.0.2.1:5002");
        let (mut s, _) = l.accept().expect("accept the guest's upload");
        s.set_read_timeout(Some(SLOW)).unwrap();
        let mut data = vec![0u8; BLOB];
        s.read_exact(&mut data).map(|_| data)
    });
    let cmdline = format!("{} plainvm.cmd=net", a.cmdline);
    let bin = plainvm_bin();
    let mut vm = TestVm::live(Command::new("ip").args([
        "netns",
        "exec",
        &ns.name,
        bin.to_str().unwrap(),
        "run",
        "--kernel",
        a.vmlinux.to_str().unwrap(),
        "--initrd",
        a.initramfs.to_str().unwrap(),
        "--cmdline",
        &cmdline,
        "--net",
        &format!("tap={TAP},mac=02:00:00:00:00:02"),
    ]));
    let up = vm.wait_line("NET-UP", SLOW);
    assert!(
        up.contains("mtu=65520"),
        "the guest did not take the tap's MTU: {up}"
    );
    // Host -> guest ping (answered by the guest kernel), while the guest pings the host.
    let ping = ns.run(|| icmp_echo(GUEST_IP, Duration::from_secs(60)));
    assert!(
        ping.join().unwrap(),
        "the guest did not answer the host's ping:\n{}",
        vm.dump()
    );
    vm.wait_line("NET-GUEST-PING-OK", SLOW);
    // Host -> guest: 4 MiB into the guest's `nc -l`.
    let down: Vec<u8> = (0..BLOB).map(|i| (i * 7 + i / 4096) as u8).collect();
    let down_md5 = md5(&down, &dir, "down");
    let sender = ns.run(move || {
        let end = Instant::now() + SLOW;
        let mut s = loop {
            match TcpStream::connect_timeout(
                &SocketAddr::from((GUEST_IP, 5001)),
                Duration::from_secs(5),
            ) {
                Ok(s) => break s,
                Err(e) if Instant::now() > end => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(300)),
            }
        };
        s.set_write_timeout(Some(SLOW))?;
        s.write_all(&down)?;
        s.shutdown(std::net::Shutdown::Write)
    });
    sender.join().unwrap().expect("send 4 MiB to the guest");
    vm.wait_line("NET-RX-DONE", SLOW);
    let line = vm.wait_line("/net-rx", SLOW);
    assert!(
        line.starts_with(&down_md5),
        "guest received data with md5 {line}, sent {down_md5}"
    );
    // Guest -> host: the guest sends the same 4 MiB back.
    vm.wait_line("NET-DONE", SLOW);
    let up = upload
        .join()
        .unwrap()
        .expect("receive 4 MiB from the guest");
    assert_eq!(md5(&up, &dir, "up"), down_md5, "upload checksum");
    let (status, log) = vm.finish(Duration::from_secs(60));
    assert_eq!(status, Some(0), "{log}");
    assert!(log.contains("GUEST-POWEROFF"), "{log}");
}

/// An AF_PACKET socket on `ifname` for ethertype 0x88b5 (call from a thread inside the namespace).
fn packet_socket(ifname: &str) -> (i32, i32) {
    let proto = (0x88b5u16).to_be();
    // SAFETY: creates a socket; the caller owns the descriptor.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    assert!(
        fd >= 0,
        "packet socket: {}",
        std::io::Error::last_os_error()
    );
    let name = std::ffi::CString::new(ifname).unwrap();
    // SAFETY: NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
    assert!(ifindex > 0, "no interface {ifname}");
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid start.
    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sa.sll_family = libc::AF_PACKET as u16;
    sa.sll_protocol = proto;
    sa.sll_ifindex = ifindex;
    // SAFETY: `sa` is a live sockaddr_ll of the size passed.
    let rc = unsafe {
        libc::bind(
            fd,
            (&sa as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
    let tv = libc::timeval {
        tv_sec: 1,
        tv_usec: 0,
    };
    // SAFETY: `tv` is a live timeval of the size passed.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    (fd, ifindex)
}

#[test]
fn test_guest_exchanges_frames_with_the_host_over_a_tap() {
    const GUEST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 3];
    let ns = Netns::new("netfast");
    ns.add_tap(TAP, "10.0.2.1/24", 9000, None);
    let (ready_tx, ready) = channel();
    let host = ns.run(move || -> Result<usize, String> {
        let (fd, _) = packet_socket(TAP);
        ready_tx.send(()).unwrap();
        let end = Instant::now() + Duration::from_secs(30);
        let mut buf = [0u8; 2048];
        let n = loop {
            if Instant::now() > end {
                return Err("no frame from the guest within 30 s".into());
            }
            // SAFETY: `buf` is live and writable for its length.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n > 0 {
                break n as usize;
            }
        };
        let f = &buf[..n];
        if f[6..12] != GUEST_MAC || &f[14..25] != b"PVNET-GUEST" {
            return Err(format!("unexpected frame {:02x?}", &f[..n.min(40)]));
        }
        if f[25..].iter().enumerate().any(|(i, &b)| b != i as u8) || n - 25 < 100 {
            return Err(format!("guest payload corrupt: {:02x?}", &f[25..]));
        }
        let mut reply = vec![0u8; 1514];
        reply[0..6].copy_from_slice(&GUEST_MAC);
        reply[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 0xaa]);
        reply[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
        reply[14..24].copy_from_slice(b"PVNET-HOST");
        for (i, b) in reply[24..].iter_mut().enumerate() {
            *b = (i * 7) as u8;
        }
        // SAFETY: `reply` is live for its length; the socket is bound to the tap.
        let sent = unsafe { libc::send(fd, reply.as_ptr().cast(), reply.len(), 0) };
        // SAFETY: closing our own descriptor.
        unsafe { libc::close(fd) };
        if sent != reply.len() as isize {
            return Err(format!("send: {}", std::io::Error::last_os_error()));
        }
        Ok(n)
    });
    ready
        .recv_timeout(Duration::from_secs(10))
        .expect("host socket ready");
    let bin = plainvm_bin();
    let o = run_with_timeout(
        Command::new("ip").args([
            "netns",
            "exec",
            &ns.name,
            bin.to_str().unwrap(),
            "run",
            "--cmdline",
            "net-selftest",
            "--net",
            &format!("tap={TAP},mac=02:00:00:00:00:03"),
        ]),
        Duration::from_secs(60),
    );
    let host = host.join().unwrap();
    assert_eq!(o.status, Some(0), "host: {host:?}\n{}", o.dump());
    assert!(
        o.stdout.contains("NET-MAC 02:00:00:00:00:03"),
        "{}",
        o.dump()
    );
    assert!(
        o.stdout.contains("NET-SELFTEST-RX len=1514"),
        "{}",
        o.dump()
    );
    assert!(o.stdout.contains("NET-SELFTEST-OK"), "{}", o.dump());
    assert!(
        o.stdout.contains("NET-MTU 9000"),
        "the tap's MTU: {}",
        o.dump()
    );
    assert_eq!(host, Ok(125), "{}", o.dump());
}

#[test]
fn bad_net_flags_are_refused_with_clear_errors() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["run", "--net", "tap=t0,mac=01:00:5e:00:00:01"],
            "multicast",
        ),
        (
            &["run", "--net", "tap=t0,mac=zz:00:00:00:00:01"],
            "invalid MAC address",
        ),
        (&["run", "--net", "mac=02:00:00:00:00:01"], "use tap=NAME"),
        (&["run", "--net", "tap=a/b"], "invalid tap name"),
    ];
    for (args, needle) in cases {
        let o = plainvm(args, Duration::from_secs(20));
        assert!(
            matches!(o.status, Some(s) if s != 0),
            "{args:?}: {}",
            o.dump()
        );
        assert!(o.stderr.contains(needle), "{args:?}: {}", o.dump());
        assert!(!o.stderr.contains("panicked"), "{}", o.dump());
    }
}
