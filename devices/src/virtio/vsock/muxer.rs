//! The unix-socket back-end (Firecracker's convention): the host connects to `PATH` and writes
//! `CONNECT <port>\n` to reach guest port `<port>`; guest connections to host port `P` become
//! connections to the unix socket `PATH_P`. Routes packets between the guest and the
//! connections, with bounded numbers of connections and queued resets.

use super::connection::{Connection, State};
use super::packet::*;
use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Instant;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

/// Most live connections (guest- and host-initiated together).
pub const MAX_CONNECTIONS: usize = 128;
/// Most host streams that have not sent their `CONNECT` line yet.
pub const MAX_PENDING_HOST: usize = 16;
/// Most resets queued for the guest (answers to bad packets); more are dropped.
pub const MAX_QUEUED_RESETS: usize = 64;
/// Longest `CONNECT <port>` line.
const MAX_CONNECT_LINE: usize = 32;
/// First port the host side uses for host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// Errors setting up the back-end.
#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    #[error("cannot listen on the vsock socket {path}: {source} (is another VM using it? pick another path)")]
    Listen {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create the vsock back-end's epoll set: {0}")]
    Epoll(std::io::Error),
}

/// A connection's identity: (host-side port, guest-side port).
type Key = (u32, u32);

/// A host stream waiting for its `CONNECT <port>` line.
struct PendingHost {
    stream: UnixStream,
    line: Vec<u8>,
}

/// The back-end.
pub struct Muxer {
    guest_cid: u64,
    path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    conns: HashMap<Key, Connection>,
    fd_keys: HashMap<RawFd, Key>,
    pending_host: HashMap<RawFd, PendingHost>,
    /// Connections with something for the guest, each at most once.
    rxq: VecDeque<Key>,
    resets: VecDeque<Header>,
    next_port: u32,
}

impl Muxer {
    /// Listen on `path` for host connections into a guest with CID `guest_cid`.
    pub fn new(guest_cid: u64, path: &Path) -> Result<Self, MuxerError> {
        let listen_err = |source| MuxerError::Listen {
            path: path.to_path_buf(),
            source,
        };
        // A stale socket is replaced; a live one, or a file that is not a socket, is refused.
        let listener = crate::socket_file::listen(path)
            .map_err(|e| listen_err(std::io::Error::other(e.to_string())))?;
        listener.set_nonblocking(true).map_err(listen_err)?;
        let epoll = Epoll::new().map_err(MuxerError::Epoll)?;
        let fd = listener.as_raw_fd();
        epoll
            .ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, fd as u64),
            )
            .map_err(MuxerError::Epoll)?;
        Ok(Self {
            guest_cid,
            path: path.to_path_buf(),
            listener,
            epoll,
            conns: HashMap::new(),
            fd_keys: HashMap::new(),
            pending_host: HashMap::new(),
            rxq: VecDeque::new(),
            resets: VecDeque::new(),
            next_port: FIRST_LOCAL_PORT,
        })
    }

    /// The epoll set to watch: readable when a host socket needs attention.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Number of live connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Whether there is a packet for the guest.
    pub fn has_rx(&self) -> bool {
        !self.resets.is_empty() || !self.rxq.is_empty()
    }

    /// Drop every connection (the driver reset the device).
    pub fn reset(&mut self) {
        self.conns.clear();
        self.fd_keys.clear();
        self.pending_host.clear();
        self.rxq.clear();
        self.resets.clear();
    }

    /// Handle what the host sockets reported (one round; the caller's loop comes back while
    /// the epoll set stays readable).
    pub fn handle_events(&mut self) {
        let mut events = [EpollEvent::default(); 32];
        let n = match self.epoll.wait(0, &mut events) {
            Ok(n) => n,
            Err(_) => return,
        };
        for ev in &events[..n] {
            let fd = ev.data() as RawFd;
            let set = ev.event_set();
            if fd == self.listener.as_raw_fd() {
                self.accept();
            } else if self.pending_host.contains_key(&fd) {
                self.read_connect_line(fd);
            } else if let Some(&key) = self.fd_keys.get(&fd) {
                if let Some(c) = self.conns.get_mut(&key) {
                    c.host_event(set);
                }
                self.after(key);
            }
        }
        self.sweep();
    }

    fn accept(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return, // WouldBlock, or out of fds: try again on the next event
            };
            let full = self.pending_host.len() >= MAX_PENDING_HOST
                || self.conns.len() + self.pending_host.len() >= MAX_CONNECTIONS;
            if full || stream.set_nonblocking(true).is_err() {
                continue; // dropping it closes it: the host sees EOF
            }
            let fd = stream.as_raw_fd();
            let ev = EpollEvent::new(EventSet::IN, fd as u64);
            if self.epoll.ctl(ControlOperation::Add, fd, ev).is_ok() {
                self.pending_host.insert(
                    fd,
                    PendingHost {
                        stream,
                        line: Vec::new(),
                    },
                );
            }
        }
    }

    /// Read the `CONNECT <port>\n` line byte by byte (whatever follows it is the guest's data).
    fn read_connect_line(&mut self, fd: RawFd) {
        let Some(p) = self.pending_host.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        let port = loop {
            match p.stream.read(&mut byte) {
                Ok(1) if byte[0] == b'\n' => break parse_connect(&p.line),
                Ok(1) if p.line.len() < MAX_CONNECT_LINE => p.line.push(byte[0]),
                Ok(_) => break None, // EOF or a line too long
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => break None,
            }
        };
        let Some(p) = self.pending_host.remove(&fd) else {
            return;
        };
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        let Some(peer_port) = port else {
            return; // bad request: drop the stream
        };
        let local = self.alloc_port();
        let key = (local, peer_port);
        let conn = Connection::host_initiated(p.stream, local, peer_port, self.guest_cid);
        self.fd_keys.insert(fd, key);
        self.conns.insert(key, conn);
        self.after(key);
    }

    fn alloc_port(&mut self) -> u32 {
        loop {
            let p = self.next_port;
            self.next_port = self.next_port.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            if !self.conns.keys().any(|k| k.0 == p) {
                return p;
            }
        }
    }

    /// A validated packet from the guest.
    pub fn send_pkt(&mut self, hdr: &Header, payload: &[u8]) {
        let key = (hdr.dst_port, hdr.src_port);
        if let Some(c) = self.conns.get_mut(&key) {
            c.recv_from_guest(hdr, payload);
            return self.after(key);
        }
        match hdr.op {
            OP_RST => {}
            OP_REQUEST if self.conns.len() < MAX_CONNECTIONS => {
                let path = format!("{}_{}", self.path.display(), hdr.dst_port);
                match connect_nonblocking(Path::new(&path)) {
                    Ok(stream) => {
                        let fd = stream.as_raw_fd();
                        self.conns.insert(
                            key,
                            Connection::guest_initiated(stream, hdr, self.guest_cid),
                        );
                        self.fd_keys.insert(fd, key);
                        self.after(key);
                    }
                    Err(_) => self.queue_reset(hdr),
                }
            }
            _ => self.queue_reset(hdr),
        }
    }

    /// Answer `hdr` with a reset (dropped when too many are queued already).
    pub fn queue_reset(&mut self, hdr: &Header) {
        if hdr.op != OP_RST && self.resets.len() < MAX_QUEUED_RESETS {
            self.resets.push_back(hdr.reset_reply());
        }
    }

    /// The next packet for the guest, its payload (at most `room` bytes) appended to `data`.
    pub fn recv_pkt(&mut self, room: usize, data: &mut Vec<u8>) -> Option<Header> {
        if let Some(h) = self.resets.pop_front() {
            return Some(h);
        }
        // Each queued connection gets one try per call, so this ends.
        for _ in 0..self.rxq.len() {
            let key = self.rxq.pop_front()?;
            let Some(c) = self.conns.get_mut(&key) else {
                continue;
            };
            c.queued = false;
            let pkt = c.next_packet(room, data);
            self.after(key);
            if pkt.is_some() {
                return pkt;
            }
        }
        None
    }

    /// Bring a connection's epoll interest and RX-queue membership up to date; drop it if dead.
    fn after(&mut self, key: Key) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if c.state == State::Dead {
            let fd = c.stream.as_raw_fd();
            self.fd_keys.remove(&fd);
            self.conns.remove(&key); // closing the stream also removes it from the epoll set
            return;
        }
        let want = c.interest();
        if want != c.registered {
            let fd = c.stream.as_raw_fd();
            // Streams without interest leave the set: hang-ups are reported regardless of
            // interest and would otherwise wake the loop forever.
            let op = match (c.registered.is_empty(), want.is_empty()) {
                (true, _) => ControlOperation::Add,
                (false, true) => ControlOperation::Delete,
                (false, false) => ControlOperation::Modify,
            };
            if self
                .epoll
                .ctl(op, fd, EpollEvent::new(want, fd as u64))
                .is_ok()
            {
                c.registered = want;
            } else {
                c.reset(true);
            }
        }
        if c.wants_rx() && !c.queued {
            c.queued = true;
            self.rxq.push_back(key);
        }
    }

    /// Give up on connections whose guest never finished closing.
    fn sweep(&mut self) {
        let now = Instant::now();
        let closing: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.state, State::Closing(_)))
            .map(|(k, _)| *k)
            .collect();
        for key in closing {
            if let Some(c) = self.conns.get_mut(&key) {
                c.expire(now);
            }
            self.after(key);
        }
    }
}

/// Parse `CONNECT <port>` (decimal port).
fn parse_connect(line: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    s.strip_prefix("CONNECT ")?.trim().parse().ok()
}

/// Connect to a unix socket without blocking: a listener with a full backlog refuses at once
/// (EAGAIN) instead of stalling the device loop.
fn connect_nonblocking(path: &Path) -> std::io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(ErrorKind::InvalidInput.into());
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let flags = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: plain socket creation; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_UNIX, flags, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket nobody else owns; the stream closes it.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid sockaddr_un and `len` does not exceed its size.
    let r = unsafe {
        libc::connect(
            fd,
            (&addr as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const CID: u64 = 3;

    fn req(src_port: u32, dst_port: u32) -> Header {
        Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            type_: TYPE_STREAM,
            op: OP_REQUEST,
            buf_alloc: 4096,
            ..Default::default()
        }
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("plainvm-vsock-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn connect_line_parses() {
        assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 52\r"), Some(52));
        assert_eq!(parse_connect(b"CONNECT -1"), None);
        assert_eq!(parse_connect(b"CONNEC 1"), None);
        assert_eq!(parse_connect(b"CONNECT 99999999999"), None);
    }

    #[test]
    fn guest_request_to_missing_host_socket_is_reset() {
        let d = dir("missing");
        let mut m = Muxer::new(CID, &d.join("v.sock")).unwrap();
        m.send_pkt(&req(1000, 77), &[]);
        let mut data = Vec::new();
        let h = m.recv_pkt(4096, &mut data).unwrap();
        assert_eq!((h.op, h.dst_port, h.src_port), (OP_RST, 1000, 77));
        assert_eq!(m.connections(), 0);
    }

    #[test]
    fn a_stale_socket_file_is_replaced_and_a_live_one_refused() {
        let d = dir("stale");
        let path = d.join("v.sock");
        drop(UnixListener::bind(&path).unwrap()); // the file stays, nobody listens
        let live = Muxer::new(CID, &path).unwrap();
        assert!(Muxer::new(CID, &path).is_err(), "took a live VM's socket");
        drop(live);
    }

    #[test]
    fn request_flood_is_bounded() {
        let d = dir("flood");
        let path = d.join("v.sock");
        let _host = UnixListener::bind(format!("{}_80", path.display())).unwrap();
        let mut m = Muxer::new(CID, &path).unwrap();
        for port in 0..(MAX_CONNECTIONS as u32 * 4) {
            m.send_pkt(&req(port, 80), &[]);
        }
        // Connections beyond the cap (or the host's backlog) were refused, not piled up.
        assert!(m.connections() <= MAX_CONNECTIONS);
        let mut data = Vec::new();
        let mut rsts = 0;
        while let Some(h) = m.recv_pkt(4096, &mut data) {
            if h.op == OP_RST {
                rsts += 1;
            }
        }
        assert!(rsts > 0);
        assert!(rsts <= MAX_QUEUED_RESETS + MAX_CONNECTIONS);
        // Packets for unknown connections are answered with (bounded) resets.
        for port in 0..1000 {
            let mut h = req(port + 100_000, 81);
            h.op = OP_RW;
            m.send_pkt(&h, b"x");
        }
        assert!(m.resets.len() <= MAX_QUEUED_RESETS);
    }

    #[test]
    fn host_connect_reaches_the_guest_and_gets_ok() {
        let d = dir("hostconn");
        let path = d.join("v.sock");
        let mut m = Muxer::new(CID, &path).unwrap();
        let mut host = UnixStream::connect(&path).unwrap();
        host.write_all(b"CONNECT 1234\nhello").unwrap();
        let mut data = Vec::new();
        let mut request = None;
        for _ in 0..100 {
            m.handle_events();
            if let Some(h) = m.recv_pkt(4096, &mut data) {
                request = Some(h);
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let r = request.expect("a REQUEST for the guest");
        assert_eq!((r.op, r.dst_port, r.dst_cid), (OP_REQUEST, 1234, CID));
        let resp = Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port: 1234,
            dst_port: r.src_port,
            type_: TYPE_STREAM,
            op: OP_RESPONSE,
            buf_alloc: 4096,
            ..Default::default()
        };
        m.send_pkt(&resp, &[]);
        let mut line = [0u8; 14];
        host.read_exact(&mut line).unwrap();
        assert_eq!(&line, format!("OK {}\n", r.src_port).as_bytes());
        // The bytes after the CONNECT line are the guest's.
        let mut got = None;
        for _ in 0..100 {
            m.handle_events();
            data.clear();
            if let Some(h) = m.recv_pkt(4096, &mut data) {
                got = Some(h);
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(got.unwrap().op, OP_RW);
        assert_eq!(data, b"hello");
    }

    #[test]
    fn bad_connect_lines_are_dropped() {
        let d = dir("badline");
        let path = d.join("v.sock");
        let mut m = Muxer::new(CID, &path).unwrap();
        let mut a = UnixStream::connect(&path).unwrap();
        a.write_all(&[b'x'; 100]).unwrap();
        let mut b = UnixStream::connect(&path).unwrap();
        b.write_all(b"CONNECT port\n").unwrap();
        for _ in 0..10 {
            m.handle_events();
        }
        let mut buf = [0u8; 8];
        for s in [&mut a, &mut b] {
            // Closed (a reset when the device left the rest of the bytes unread).
            let r = s.read(&mut buf);
            assert!(matches!(r, Ok(0)) || r.is_err(), "{r:?}");
        }
        assert_eq!(m.connections(), 0);
        assert!(!m.has_rx());
    }
}
