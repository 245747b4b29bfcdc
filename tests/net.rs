//! virtio-net over a real tap in a network namespace the test creates: the ring-3 test guest
//! exchanges frames with the host, and bad --net input is refused. (A Linux guest pinging the host
//! and moving 4 MiB each way runs on the emulated AMD-V host: tests/hw_host.rs, virtio.sh.)

use plainvm_tests::support::netns::Netns;
use plainvm_tests::*;
use std::process::Command;
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

const TAP: &str = "pvtap0";

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
