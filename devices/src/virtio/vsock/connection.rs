//! One vsock stream connection between a guest port and a host unix stream: its state machine
//! (request, response, shutdown, reset) and credit-based flow control in both directions.

use super::packet::*;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};
use vmm_sys_util::epoll::EventSet;

/// Bytes of guest data the device buffers per connection (its `buf_alloc`): a guest that
/// respects the credit never makes the device hold more than this.
pub const BUF_ALLOC: u32 = 256 << 10;
/// How long a closing connection waits for the guest's reset before the device gives up.
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Where the connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Host-initiated: a REQUEST is (to be) sent; waiting for the guest's RESPONSE.
    Connecting,
    /// Data flows.
    Established,
    /// Both sides are done; waiting for the guest's RST until the deadline.
    Closing(Instant),
    /// Gone: the muxer drops it.
    Dead,
}

// Control packets waiting to go to the guest.
const PEND_REQUEST: u8 = 1;
const PEND_RESPONSE: u8 = 2;
const PEND_CREDIT_UPDATE: u8 = 4;
const PEND_SHUTDOWN: u8 = 8;
const PEND_RST: u8 = 16;

/// A connection; `local_port` is the host side's port, `peer_port` the guest's.
pub struct Connection {
    pub stream: UnixStream,
    pub local_port: u32,
    pub peer_port: u32,
    guest_cid: u64,
    pub state: State,
    pending: u8,
    shutdown_flags: u32,
    // Host -> guest: what the guest told us about its buffer, and what we sent.
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    tx_cnt: u32,
    /// The host stream may have data (epoll said so); cleared on EAGAIN.
    host_readable: bool,
    host_eof: bool,
    // Guest -> host.
    rx_cnt: u32,
    fwd_cnt: u32,
    last_fwd_cnt_sent: u32,
    /// Guest data the host stream did not take yet.
    to_host: Vec<u8>,
    guest_send_closed: bool,
    guest_recv_closed: bool,
    /// For host-initiated connections: "OK <port>\n" is owed to the host on RESPONSE.
    host_initiated: bool,
    /// The epoll interest currently registered for `stream` (kept by the muxer).
    pub registered: EventSet,
    /// Whether the muxer has this connection in its RX queue.
    pub queued: bool,
}

impl Connection {
    /// A connection the guest asked for (REQUEST from guest port `peer_port` to host port
    /// `local_port`), already connected to the host's listener: it answers RESPONSE.
    pub fn guest_initiated(stream: UnixStream, hdr: &Header, guest_cid: u64) -> Self {
        let mut c = Self::new(
            stream,
            hdr.dst_port,
            hdr.src_port,
            guest_cid,
            State::Established,
        );
        c.peer_buf_alloc = hdr.buf_alloc;
        c.peer_fwd_cnt = hdr.fwd_cnt;
        c.pending = PEND_RESPONSE;
        c
    }

    /// A connection the host asked for with `CONNECT <peer_port>`: it sends REQUEST.
    pub fn host_initiated(stream: UnixStream, local_port: u32, peer_port: u32, cid: u64) -> Self {
        let mut c = Self::new(stream, local_port, peer_port, cid, State::Connecting);
        c.pending = PEND_REQUEST;
        c.host_initiated = true;
        c
    }

    fn new(stream: UnixStream, local: u32, peer: u32, cid: u64, state: State) -> Self {
        Self {
            stream,
            local_port: local,
            peer_port: peer,
            guest_cid: cid,
            state,
            pending: 0,
            shutdown_flags: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            host_readable: false,
            host_eof: false,
            rx_cnt: 0,
            fwd_cnt: 0,
            last_fwd_cnt_sent: 0,
            to_host: Vec::new(),
            guest_send_closed: false,
            guest_recv_closed: false,
            host_initiated: false,
            registered: EventSet::empty(),
            queued: false,
        }
    }

    /// Bytes the guest can still take from us.
    fn peer_credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Reset the connection: tell the guest (unless it was the guest that reset) and die.
    pub fn reset(&mut self, tell_guest: bool) {
        if tell_guest {
            self.pending = PEND_RST;
            self.state = State::Closing(Instant::now());
        } else {
            self.pending = 0;
            self.state = State::Dead;
        }
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// A packet from the guest for this connection (header validated, payload read).
    pub fn recv_from_guest(&mut self, hdr: &Header, payload: &[u8]) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = hdr.fwd_cnt;
        match (hdr.op, self.state) {
            (OP_RST, _) => self.reset(false),
            (_, State::Dead) => {}
            (OP_RESPONSE, State::Connecting) => {
                self.state = State::Established;
                let line = format!("OK {}\n", self.local_port);
                // The host just sent CONNECT and waits for this line: its socket buffer is empty.
                if self.stream.write_all(line.as_bytes()).is_err() {
                    self.reset(true);
                }
            }
            (OP_RW, State::Established) if !self.guest_send_closed => self.data_from_guest(payload),
            (OP_CREDIT_UPDATE, _) => {}
            (OP_CREDIT_REQUEST, State::Established) => self.pending |= PEND_CREDIT_UPDATE,
            (OP_SHUTDOWN, State::Established) => {
                if hdr.flags & SHUTDOWN_SEND != 0 {
                    self.guest_send_closed = true;
                }
                if hdr.flags & SHUTDOWN_RCV != 0 {
                    self.guest_recv_closed = true;
                    let _ = self.stream.shutdown(Shutdown::Read);
                }
                self.flush_to_host();
            }
            (OP_SHUTDOWN | OP_CREDIT_REQUEST, State::Closing(_)) => {}
            // REQUEST on a live connection, RESPONSE when not connecting, data after SHUTDOWN:
            // the guest broke the protocol.
            _ => self.reset(true),
        }
        self.check_done();
    }

    fn data_from_guest(&mut self, payload: &[u8]) {
        let len = payload.len() as u32;
        let buffered = self.rx_cnt.wrapping_sub(self.fwd_cnt);
        if buffered.saturating_add(len) > BUF_ALLOC {
            return self.reset(true); // the guest ignored our credit
        }
        self.rx_cnt = self.rx_cnt.wrapping_add(len);
        self.to_host.extend_from_slice(payload);
        self.flush_to_host();
    }

    /// Write buffered guest data to the host stream (non-blocking); a broken stream resets.
    pub fn flush_to_host(&mut self) {
        while !self.to_host.is_empty() {
            match self.stream.write(&self.to_host) {
                Ok(0) => return self.reset(true),
                Ok(n) => {
                    self.to_host.drain(..n);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return self.reset(true),
            }
        }
        if self.to_host.is_empty() && self.guest_send_closed {
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        // Tell the guest about freed buffer space once a quarter of it is free again.
        if self.fwd_cnt.wrapping_sub(self.last_fwd_cnt_sent) >= BUF_ALLOC / 4
            || (self.to_host.is_empty() && self.fwd_cnt != self.last_fwd_cnt_sent)
        {
            self.pending |= PEND_CREDIT_UPDATE;
        }
    }

    /// Both directions finished: ask the guest to close, and wait for its reset.
    fn check_done(&mut self) {
        if self.state == State::Established
            && (self.host_eof || self.guest_recv_closed)
            && self.guest_send_closed
            && self.to_host.is_empty()
        {
            self.shutdown_flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
            self.pending |= PEND_SHUTDOWN;
            self.state = State::Closing(Instant::now());
        }
    }

    /// The host stream became readable (or writable).
    pub fn host_event(&mut self, events: EventSet) {
        if events.contains(EventSet::OUT) {
            self.flush_to_host();
        }
        if events.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR) {
            self.host_readable = true;
        }
        self.check_done();
    }

    /// Whether the connection has something for the guest.
    pub fn wants_rx(&self) -> bool {
        self.pending != 0 || self.can_read_host()
    }

    fn can_read_host(&self) -> bool {
        self.state == State::Established
            && self.host_readable
            && !self.host_eof
            && !self.guest_recv_closed
            && self.peer_credit() > 0
    }

    /// The epoll interest the host stream needs now.
    pub fn interest(&self) -> EventSet {
        let mut e = EventSet::empty();
        if matches!(self.state, State::Established)
            && !self.host_readable
            && !self.host_eof
            && !self.guest_recv_closed
        {
            e |= EventSet::IN;
        }
        if !self.to_host.is_empty() && self.state == State::Established {
            e |= EventSet::OUT;
        }
        e
    }

    fn header(&self, op: u16) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// The next packet for the guest, with at most `room` payload bytes appended to `data`.
    pub fn next_packet(&mut self, room: usize, data: &mut Vec<u8>) -> Option<Header> {
        let hdr = self.next_packet_inner(room, data)?;
        self.last_fwd_cnt_sent = self.fwd_cnt;
        self.pending &= !PEND_CREDIT_UPDATE; // every packet carries the credit
        Some(hdr)
    }

    fn next_packet_inner(&mut self, room: usize, data: &mut Vec<u8>) -> Option<Header> {
        if self.pending & PEND_RST != 0 {
            self.pending = 0;
            self.state = State::Dead;
            return Some(self.header(OP_RST));
        }
        for (bit, op) in [(PEND_REQUEST, OP_REQUEST), (PEND_RESPONSE, OP_RESPONSE)] {
            if self.pending & bit != 0 {
                self.pending &= !bit;
                return Some(self.header(op));
            }
        }
        if self.can_read_host() {
            let n = room
                .min(self.peer_credit() as usize)
                .min(MAX_PAYLOAD as usize);
            if n > 0 {
                let start = data.len();
                data.resize(start + n, 0);
                match self.stream.read(&mut data[start..]) {
                    Ok(0) => {
                        data.truncate(start);
                        self.host_eof = true;
                        self.shutdown_flags |= SHUTDOWN_SEND;
                        self.pending |= PEND_SHUTDOWN;
                        self.check_done();
                    }
                    Ok(k) => {
                        data.truncate(start + k);
                        self.tx_cnt = self.tx_cnt.wrapping_add(k as u32);
                        let mut h = self.header(OP_RW);
                        h.len = k as u32;
                        return Some(h);
                    }
                    Err(e) => {
                        data.truncate(start);
                        if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted {
                            self.host_readable = false;
                        } else {
                            self.reset(true);
                            return self.next_packet_inner(room, data);
                        }
                    }
                }
            }
        }
        if self.pending & PEND_SHUTDOWN != 0 {
            self.pending &= !PEND_SHUTDOWN;
            let mut h = self.header(OP_SHUTDOWN);
            h.flags = self.shutdown_flags;
            return Some(h);
        }
        if self.pending & PEND_CREDIT_UPDATE != 0 {
            return Some(self.header(OP_CREDIT_UPDATE));
        }
        None
    }

    /// A closing connection whose guest never answered: reset it.
    pub fn expire(&mut self, now: Instant) {
        if let State::Closing(since) = self.state {
            if now.duration_since(since) >= CLOSE_GRACE {
                if self.pending & PEND_RST == 0 {
                    self.reset(true);
                } else {
                    self.state = State::Dead; // the RST never found an RX buffer: give up
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CID: u64 = 3;

    fn guest_hdr(op: u16) -> Header {
        Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port: 1000,
            dst_port: 5000,
            type_: TYPE_STREAM,
            op,
            buf_alloc: 8192,
            ..Default::default()
        }
    }

    fn pair() -> (Connection, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let c = Connection::guest_initiated(a, &guest_hdr(OP_REQUEST), CID);
        (c, b)
    }

    #[test]
    fn guest_connection_answers_response_then_moves_data() {
        let (mut c, mut host) = pair();
        let mut data = Vec::new();
        assert_eq!(c.next_packet(4096, &mut data).unwrap().op, OP_RESPONSE);
        c.recv_from_guest(&guest_hdr(OP_RW), b"ping");
        let mut buf = [0u8; 4];
        host.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        host.write_all(b"pong!").unwrap();
        c.host_event(EventSet::IN);
        let h = c.next_packet(4096, &mut data).unwrap();
        assert_eq!((h.op, h.len, h.fwd_cnt), (OP_RW, 5, 4));
        assert_eq!(data, b"pong!");
    }

    #[test]
    fn host_data_respects_guest_credit() {
        let (mut c, mut host) = pair();
        let mut data = Vec::new();
        c.next_packet(4096, &mut data);
        let mut h = guest_hdr(OP_CREDIT_UPDATE);
        h.buf_alloc = 3;
        c.recv_from_guest(&h, &[]);
        host.write_all(b"abcdef").unwrap();
        c.host_event(EventSet::IN);
        assert_eq!(c.next_packet(4096, &mut data).unwrap().len, 3);
        assert!(c.next_packet(4096, &mut data).is_none(), "no credit left");
        assert!(!c.wants_rx());
        h.fwd_cnt = 3;
        c.recv_from_guest(&h, &[]);
        assert!(c.wants_rx());
    }

    #[test]
    fn guest_ignoring_credit_is_reset() {
        let (mut c, _host) = pair();
        let mut data = Vec::new();
        c.next_packet(4096, &mut data);
        let big = vec![0u8; MAX_PAYLOAD as usize];
        // The host never reads: the device's buffer fills up to BUF_ALLOC, then the guest is
        // over its credit.
        for _ in 0..(BUF_ALLOC / MAX_PAYLOAD + 8) {
            c.recv_from_guest(&guest_hdr(OP_RW), &big);
        }
        assert!(c.to_host.len() <= BUF_ALLOC as usize);
        assert_eq!(c.next_packet(4096, &mut data).unwrap().op, OP_RST);
        assert_eq!(c.state, State::Dead);
    }

    #[test]
    fn protocol_violations_reset() {
        let (mut c, _host) = pair();
        c.recv_from_guest(&guest_hdr(OP_REQUEST), &[]);
        let mut data = Vec::new();
        assert_eq!(c.next_packet(4096, &mut data).unwrap().op, OP_RST);
        let (mut c, _host) = pair();
        c.recv_from_guest(&guest_hdr(OP_RST), &[]);
        assert_eq!(c.state, State::Dead);
    }

    #[test]
    fn half_close_then_close() {
        let (mut c, mut host) = pair();
        let mut data = Vec::new();
        c.next_packet(4096, &mut data);
        let mut sd = guest_hdr(OP_SHUTDOWN);
        sd.flags = SHUTDOWN_SEND;
        c.recv_from_guest(&sd, &[]);
        let mut rest = Vec::new();
        host.read_to_end(&mut rest).unwrap(); // EOF reaches the host
        host.write_all(b"bye").unwrap();
        drop(host);
        c.host_event(EventSet::IN);
        assert_eq!(c.next_packet(4096, &mut data).unwrap().op, OP_RW);
        let h = c.next_packet(4096, &mut data).unwrap();
        assert_eq!((h.op, h.flags), (OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND));
        assert!(matches!(c.state, State::Closing(_)));
        c.expire(Instant::now() + CLOSE_GRACE);
        c.expire(Instant::now() + CLOSE_GRACE * 3);
        assert_eq!(c.state, State::Dead);
    }
}
