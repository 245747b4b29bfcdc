//! The control API against hostile and broken clients (issue 13): a huge Content-Length, an
//! endless header, a thousand headers, a hundred idle connections, a 1 MiB body. In every case
//! the VM keeps running and `plainvm info` answers right after. Also the socket's mode and what
//! `run` does with the path it is given.

use plainvm::api::limits::MAX_CONNECTIONS;
use plainvm_tests::*;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

/// The idle test guest with its API on DIR/api.sock, once the API answers.
fn api_vm(name: &str) -> (PathBuf, PathBuf, TestVm) {
    let dir = scratch(name);
    let sock = dir.join("api.sock");
    let vm = TestVm::start(
        &[
            "run",
            "--api-sock",
            sock.to_str().unwrap(),
            "--cmdline",
            "idle",
        ],
        &dir.join("console"),
    );
    wait_api(&sock, &vm);
    (dir, sock, vm)
}

fn wait_api(sock: &Path, vm: &TestVm) {
    let start = Instant::now();
    while UnixStream::connect(sock).is_err() {
        assert!(start.elapsed() < T, "the API never came up:\n{}", vm.dump());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The VM still runs and `plainvm info` answers within a few seconds (a loaded 2-core host is
/// slow to start a process; the server answers in milliseconds).
fn still_answers(vm: &mut TestVm, sock: &Path) {
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        vm.wait(Duration::ZERO),
        None,
        "the VM ended:\n{}",
        vm.dump()
    );
    let o = plainvm(
        &["info", "--api-sock", sock.to_str().unwrap()],
        Duration::from_secs(3),
    );
    assert_eq!(o.status, Some(0), "{}\n--- VM\n{}", o.dump(), vm.dump());
    assert!(o.stdout.contains("\"Running\""), "{}", o.dump());
}

fn connect(sock: &Path) -> UnixStream {
    UnixStream::connect(sock).unwrap()
}

/// Everything the server sends until it closes (or `limit` passes), errors after data ignored.
fn answer(s: &UnixStream, limit: Duration) -> String {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut out = Vec::new();
    let _ = (&*s).read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Write `data` on a thread, ignoring a closed connection.
fn send_later(s: &UnixStream, data: Vec<u8>) -> std::thread::JoinHandle<()> {
    let s = s.try_clone().unwrap();
    std::thread::spawn(move || {
        let _ = (&s).write_all(&data);
    })
}

#[test]
fn a_huge_content_length_then_a_close_leaves_the_vm_running() {
    let (_dir, sock, mut vm) = api_vm("huge-length");
    let head = b"PUT /vm HTTP/1.1\r\nContent-Length: 1000000000000000\r\n\r\n";
    // The attack of issue 13: declare a huge body, send none of it, close.
    let mut s = connect(&sock);
    s.write_all(head).unwrap();
    drop(s);
    still_answers(&mut vm, &sock);
    // A client that waits is told 413 at once.
    let mut s = connect(&sock);
    s.write_all(head).unwrap();
    let a = answer(&s, Duration::from_secs(2));
    assert!(a.starts_with("HTTP/1.1 413 "), "{a:?}");
    assert!(a.contains("\"error\""), "{a}");
    still_answers(&mut vm, &sock);
}

#[test]
fn an_endless_header_is_cut_off() {
    let (_dir, sock, mut vm) = api_vm("endless-header");
    let s = connect(&sock);
    let writer = {
        let s = s.try_clone().unwrap();
        std::thread::spawn(move || {
            // One header line that never ends: at most 64 MiB or 5 s (an unbounded server would
            // hold all of it).
            let start = Instant::now();
            let mut sent = 0usize;
            let chunk = vec![b'a'; 4096];
            if (&s).write_all(b"GET /vm HTTP/1.1\r\nX-Endless: ").is_err() {
                return (sent, true);
            }
            while sent < 64 << 20 && start.elapsed() < Duration::from_secs(5) {
                if (&s).write_all(&chunk).is_err() {
                    return (sent, true);
                }
                sent += chunk.len();
            }
            (sent, false)
        })
    };
    let a = answer(&s, Duration::from_secs(8));
    let (sent, cut_off) = writer.join().unwrap();
    assert!(a.starts_with("HTTP/1.1 431 "), "{a:?} after {sent} bytes");
    assert!(cut_off, "the server still read after {sent} bytes");
    still_answers(&mut vm, &sock);
}

#[test]
fn a_thousand_headers_get_431() {
    let (_dir, sock, mut vm) = api_vm("many-headers");
    let mut req = b"GET /vm HTTP/1.1\r\n".to_vec();
    for i in 0..1000 {
        req.extend(format!("h{i}:v\r\n").as_bytes());
    }
    req.extend(b"\r\n");
    let s = connect(&sock);
    let w = send_later(&s, req);
    let a = answer(&s, Duration::from_secs(5));
    w.join().unwrap();
    assert!(a.starts_with("HTTP/1.1 431 "), "{a:?}");
    assert!(a.contains("more than 64 headers"), "{a}");
    still_answers(&mut vm, &sock);
}

#[test]
fn a_hundred_idle_connections_do_not_lock_out_the_owner() {
    let (_dir, sock, mut vm) = api_vm("idle-conns");
    let idle: Vec<UnixStream> = (0..100).map(|_| connect(&sock)).collect();
    // The owner gets in at once: the oldest idle connection makes room.
    still_answers(&mut vm, &sock);
    // Only MAX_CONNECTIONS are kept; the others were told 503 and closed.
    for s in &idle {
        s.set_nonblocking(true).unwrap();
    }
    let mut answers = vec![Vec::new(); idle.len()];
    let start = Instant::now();
    let closed = loop {
        for (s, out) in idle.iter().zip(&mut answers) {
            let _ = (&*s).read_to_end(out);
        }
        let closed = answers.iter().filter(|a| !a.is_empty()).count();
        if closed >= 100 - MAX_CONNECTIONS || start.elapsed() > Duration::from_secs(5) {
            break closed;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    for a in answers.iter().filter(|a| !a.is_empty()) {
        let text = String::from_utf8_lossy(a);
        assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
    }
    assert!(
        closed >= 100 - MAX_CONNECTIONS,
        "{closed} of 100 idle connections were closed; at most {MAX_CONNECTIONS} may stay"
    );
    drop(idle);
    still_answers(&mut vm, &sock);
}

#[test]
fn a_one_mib_body_is_refused_at_once() {
    let (_dir, sock, mut vm) = api_vm("big-body");
    let head = b"PUT /snapshot/create HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 1048576\r\n\r\n";
    // 413 before any of the body is sent.
    let mut s = connect(&sock);
    s.write_all(head).unwrap();
    let a = answer(&s, Duration::from_secs(2));
    assert!(a.starts_with("HTTP/1.1 413 "), "{a:?}");
    let _ = s.write_all(&vec![b' '; 1 << 20]);
    drop(s);
    still_answers(&mut vm, &sock);
    // Sent whole: the client still reads the 413, and the connection ends cleanly.
    let s = connect(&sock);
    let w = send_later(&s, [&head[..], &vec![b' '; 1 << 20]].concat());
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = Vec::new();
    let read = (&s).read_to_end(&mut out);
    w.join().unwrap();
    let a = String::from_utf8_lossy(&out);
    assert!(a.starts_with("HTTP/1.1 413 "), "{a:?}");
    assert!(read.is_ok(), "{read:?}");
    still_answers(&mut vm, &sock);
}

#[test]
fn the_socket_is_0600_whatever_the_umask() {
    let dir = scratch("sock-mode");
    let sock = dir.join("api.sock");
    let script = format!(
        "umask 000; exec {} run --api-sock {} --cmdline idle",
        plainvm_bin().display(),
        sock.display()
    );
    let mut vm = TestVm::start_cmd(
        Command::new("sh").args(["-c", &script]),
        &dir.join("console"),
    );
    wait_api(&sock, &vm);
    let mode = std::fs::symlink_metadata(&sock)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o600, "socket mode {mode:o}");
    still_answers(&mut vm, &sock);
}

#[test]
fn run_replaces_a_stale_socket_but_never_removes_anything_else() {
    let dir = scratch("sock-path");
    // A regular file where the socket should go: refused, and left as it was.
    let file = dir.join("precious");
    std::fs::write(&file, "keep me").unwrap();
    let o = plainvm(
        &[
            "run",
            "--api-sock",
            file.to_str().unwrap(),
            "--cmdline",
            "idle",
        ],
        Duration::from_secs(15),
    );
    assert_eq!(
        std::fs::read_to_string(&file).ok().as_deref(),
        Some("keep me"),
        "{}",
        o.dump()
    );
    assert!(o.status.is_some_and(|s| s != 0), "{}", o.dump());
    assert!(o.stderr.contains("not a socket"), "{}", o.dump());
    // A stale socket (its listener gone) is replaced.
    let sock = dir.join("stale.sock");
    drop(UnixListener::bind(&sock).unwrap());
    let mut vm = TestVm::start(
        &[
            "run",
            "--api-sock",
            sock.to_str().unwrap(),
            "--cmdline",
            "idle",
        ],
        &dir.join("console"),
    );
    wait_api(&sock, &vm);
    still_answers(&mut vm, &sock);
}

#[test]
fn the_cli_sends_nothing_to_a_socket_served_by_another_user() {
    // Another user binds a socket where the CLI is pointed (e.g. a world-writable directory)
    // and records what it gets: a `migrate` request would hand it the migration key.
    let dir = scratch("api-stranger");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let sock = dir.join("vm.sock");
    let got = dir.join("got");
    let script = format!(
        "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.bind('{}')\ns.listen(1)\nprint('ready',flush=True)\nc,_=s.accept()\nc.settimeout(5)\nd=b''\ntry:\n    d=c.recv(65536)\nexcept Exception:\n    pass\nopen('{}','wb').write(d)\n",
        sock.display(),
        got.display()
    );
    let mut server = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
        ])
        .arg(&script)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("setpriv (util-linux)");
    let mut line = [0u8; 6];
    server.stdout.take().unwrap().read_exact(&mut line).unwrap();
    let key = dir.join("key");
    std::fs::write(&key, [7u8; 32]).unwrap();
    let o = plainvm(
        &[
            "migrate",
            "--api-sock",
            sock.to_str().unwrap(),
            "--to",
            "tcp:127.0.0.1:9",
            "--key",
            key.to_str().unwrap(),
        ],
        T,
    );
    assert_ne!(o.status, Some(0), "{}", o.dump());
    assert!(o.stderr.contains("neither root nor you"), "{}", o.dump());
    let _ = server.wait();
    let sent = std::fs::read(&got).unwrap_or_default();
    assert!(sent.is_empty(), "the CLI sent {} bytes", sent.len());
}
