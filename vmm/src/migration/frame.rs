//! The migration stream: a preamble, then typed frames (length, CRC-32, payload), encrypted and
//! authenticated with ChaCha20-Poly1305 when both ends share a key.

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use std::io::{BufReader, BufWriter, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// First bytes of every migration stream.
pub const MAGIC: [u8; 8] = *b"PLVMMIG\0";
/// Protocol version; a receiver refuses any other.
pub const VERSION: u32 = 3;
/// Largest frame payload on the wire.
pub const MAX_PAYLOAD: usize = 17 << 20;
const TAG: usize = 16;

/// Frame kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Hello = 1,
    Ready = 2,
    Pages = 3,
    Zeros = 4,
    PassEnd = 5,
    State = 6,
    StateReady = 7,
    Commit = 8,
    Running = 9,
    Error = 10,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Self> {
        use Kind::*;
        [
            Hello, Ready, Pages, Zeros, PassEnd, State, StateReady, Commit, Running, Error,
        ]
        .into_iter()
        .find(|k| *k as u8 == b)
    }
}

/// Errors on the stream.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("the migration connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the peer is not a plainvm migration endpoint (bad magic)")]
    Magic,
    #[error("protocol version mismatch: this side speaks version {ours}, the peer {theirs}")]
    Version { ours: u32, theirs: u32 },
    #[error(
        "one side has a migration key and the other does not: give both --key FILE or neither"
    )]
    KeyMismatch,
    #[error("a frame failed authentication: wrong --key, or the stream was tampered with")]
    Auth,
    #[error("the stream is corrupted: {0}")]
    Corrupt(String),
    #[error("the peer reported: {0}")]
    Peer(String),
    #[error("unexpected {got:?} frame while waiting for {want}")]
    Unexpected { got: Kind, want: &'static str },
}

/// Which end a frame comes from (part of the nonce, so the two directions never share one).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Source = 1,
    Destination = 2,
}

/// A framed connection.
pub struct Channel {
    r: BufReader<TcpStream>,
    w: BufWriter<TcpStream>,
    cipher: Option<ChaCha20Poly1305>,
    me: Role,
    sent: u64,
    received: u64,
    buf: Vec<u8>,
    /// Payload bytes sent so far (for bandwidth figures).
    pub bytes_sent: u64,
}

impl Channel {
    fn new(stream: TcpStream, key: Option<&[u8; 32]>, me: Role) -> std::io::Result<Self> {
        stream.set_nodelay(true)?;
        Ok(Self {
            r: BufReader::with_capacity(1 << 20, stream.try_clone()?),
            w: BufWriter::with_capacity(1 << 20, stream),
            cipher: key.map(|k| ChaCha20Poly1305::new(k.into())),
            me,
            sent: 0,
            received: 0,
            buf: Vec::new(),
            bytes_sent: 0,
        })
    }

    /// The source's side: send the preamble and check the destination's answer.
    pub fn connect(stream: TcpStream, key: Option<&[u8; 32]>) -> Result<Self, FrameError> {
        let mut c = Self::new(stream, key, Role::Source)?;
        c.w.write_all(&MAGIC)?;
        c.w.write_all(&VERSION.to_le_bytes())?;
        c.w.write_all(&u32::from(key.is_some()).to_le_bytes())?;
        c.w.flush()?;
        let mut ans = [0u8; 12];
        c.r.read_exact(&mut ans)?;
        if ans[..8] != MAGIC {
            return Err(FrameError::Magic);
        }
        let theirs = u32::from_le_bytes(ans[8..12].try_into().unwrap_or_default());
        let mut status = [0u8; 1];
        c.r.read_exact(&mut status)?;
        match status[0] {
            0 => Ok(c),
            1 => Err(FrameError::Version {
                ours: VERSION,
                theirs,
            }),
            _ => Err(FrameError::KeyMismatch),
        }
    }

    /// The destination's side: check the source's preamble and answer it.
    pub fn accept(stream: TcpStream, key: Option<&[u8; 32]>) -> Result<Self, FrameError> {
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut c = Self::new(stream, key, Role::Destination)?;
        let mut pre = [0u8; 16];
        c.r.read_exact(&mut pre)?;
        if pre[..8] != MAGIC {
            return Err(FrameError::Magic);
        }
        let theirs = u32::from_le_bytes(pre[8..12].try_into().unwrap_or_default());
        let keyed = u32::from_le_bytes(pre[12..16].try_into().unwrap_or_default()) != 0;
        let status = if theirs != VERSION {
            1u8
        } else if keyed != key.is_some() {
            2
        } else {
            0
        };
        c.w.write_all(&MAGIC)?;
        c.w.write_all(&VERSION.to_le_bytes())?;
        c.w.write_all(&[status])?;
        c.w.flush()?;
        match status {
            0 => Ok(c),
            1 => Err(FrameError::Version {
                ours: VERSION,
                theirs,
            }),
            _ => Err(FrameError::KeyMismatch),
        }
    }

    /// Change how long a receive may wait (None: forever).
    pub fn set_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        self.r.get_ref().set_read_timeout(t)
    }

    fn nonce(role: Role, counter: u64) -> Nonce {
        let mut n = [0u8; 12];
        n[0] = role as u8;
        n[4..].copy_from_slice(&counter.to_le_bytes());
        n.into()
    }

    /// Queue a frame made of `parts` (not yet flushed). The parts are copied first: guest pages
    /// change under a running guest, and checksum, tag and data must describe the same bytes.
    pub fn send(&mut self, kind: Kind, parts: &[&[u8]]) -> Result<(), FrameError> {
        self.buf.clear();
        for p in parts {
            self.buf.extend_from_slice(p);
        }
        let wire_len = self.buf.len() + if self.cipher.is_some() { TAG } else { 0 };
        let mut header = [0u8; 12];
        header[0] = kind as u8;
        header[4..8].copy_from_slice(&(wire_len as u32).to_le_bytes());
        if let Some(cipher) = &self.cipher {
            let nonce = Self::nonce(self.me, self.sent);
            cipher
                .encrypt_in_place(&nonce, &header[..8], &mut self.buf)
                .map_err(|_| FrameError::Auth)?;
        }
        header[8..12].copy_from_slice(&crc32fast::hash(&self.buf).to_le_bytes());
        self.w.write_all(&header)?;
        self.w.write_all(&self.buf)?;
        self.sent += 1;
        self.bytes_sent += wire_len as u64 + 12;
        Ok(())
    }

    /// Send everything queued.
    pub fn flush(&mut self) -> Result<(), FrameError> {
        Ok(self.w.flush()?)
    }

    /// Send one frame and flush.
    pub fn send_now(&mut self, kind: Kind, payload: &[u8]) -> Result<(), FrameError> {
        self.send(kind, &[payload])?;
        self.flush()
    }

    /// Receive the next frame. An `Error` frame from the peer becomes `FrameError::Peer`.
    pub fn recv(&mut self) -> Result<(Kind, Vec<u8>), FrameError> {
        let mut header = [0u8; 12];
        self.r.read_exact(&mut header)?;
        let kind = Kind::from_u8(header[0])
            .ok_or_else(|| FrameError::Corrupt(format!("unknown frame kind {}", header[0])))?;
        let len = u32::from_le_bytes(header[4..8].try_into().unwrap_or_default()) as usize;
        if len > MAX_PAYLOAD || header[1..4] != [0, 0, 0] {
            return Err(FrameError::Corrupt(format!(
                "bad frame header (length {len})"
            )));
        }
        let mut payload = vec![0u8; len];
        self.r.read_exact(&mut payload)?;
        let crc = u32::from_le_bytes(header[8..12].try_into().unwrap_or_default());
        if crc32fast::hash(&payload) != crc {
            return Err(FrameError::Corrupt("frame checksum mismatch".into()));
        }
        let peer = match self.me {
            Role::Source => Role::Destination,
            Role::Destination => Role::Source,
        };
        if let Some(cipher) = &self.cipher {
            let nonce = Self::nonce(peer, self.received);
            cipher
                .decrypt_in_place(&nonce, &header[..8], &mut payload)
                .map_err(|_| FrameError::Auth)?;
        }
        self.received += 1;
        if kind == Kind::Error {
            return Err(FrameError::Peer(
                String::from_utf8_lossy(&payload).into_owned(),
            ));
        }
        Ok((kind, payload))
    }

    /// Receive a frame that must be of `kind`.
    pub fn expect(&mut self, kind: Kind, want: &'static str) -> Result<Vec<u8>, FrameError> {
        let (got, payload) = self.recv()?;
        if got != kind {
            return Err(FrameError::Unexpected { got, want });
        }
        Ok(payload)
    }

    /// Tell the peer why we give up (best effort).
    pub fn send_error(&mut self, msg: &str) {
        let _ = self.send_now(Kind::Error, msg.as_bytes());
    }
}
