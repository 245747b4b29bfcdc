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
pub const VERSION: u32 = 4;
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

/// Which end a frame comes from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Source = 1,
    Destination = 2,
}

/// Length of each side's fresh random nonce in the preamble.
pub const NONCE_LEN: usize = 32;
/// The fixed part of the source's preamble: magic, version, flags (bit 0: keyed).
const SOURCE_FIXED: usize = 16;
/// The fixed part of the destination's answer: magic, version, status.
const DEST_FIXED: usize = 13;

/// A framed connection.
pub struct Channel {
    r: BufReader<Box<dyn Read + Send>>,
    w: BufWriter<Box<dyn Write + Send>>,
    /// The TCP connection (for timeouts), when there is one.
    stream: Option<TcpStream>,
    /// Keys of this session (derived from the shared key and both sides' nonces).
    send_cipher: Option<ChaCha20Poly1305>,
    recv_cipher: Option<ChaCha20Poly1305>,
    sent: u64,
    received: u64,
    buf: Vec<u8>,
    /// Payload bytes sent so far (for bandwidth figures).
    pub bytes_sent: u64,
}

/// Longest peer error text shown.
const MAX_PEER_TEXT: usize = 1000;

/// The peer's error text as it may be printed on our terminal: no control characters (escape
/// sequences), at most `MAX_PEER_TEXT` characters.
fn printable(text: &[u8]) -> String {
    let mut chars = String::from_utf8_lossy(text)
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(MAX_PEER_TEXT + 1)
        .collect::<Vec<_>>();
    let cut = chars.len() > MAX_PEER_TEXT;
    chars.truncate(MAX_PEER_TEXT);
    let mut s: String = chars.into_iter().collect();
    if cut {
        s.push_str(" [...]");
    }
    s
}

/// Fresh random bytes from the kernel.
fn random_nonce() -> std::io::Result<[u8; NONCE_LEN]> {
    let mut n = [0u8; NONCE_LEN];
    let mut off = 0;
    while off < n.len() {
        // SAFETY: getrandom writes at most `n.len() - off` bytes into `n` past `off`.
        let r = unsafe { libc::getrandom(n[off..].as_mut_ptr().cast(), n.len() - off, 0) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        } else {
            off += r as usize;
        }
    }
    Ok(n)
}

/// The session's two keys: HKDF-SHA256 over the shared key, salted with both preambles (their
/// nonces, versions and flags), one key per direction. A recorded session replayed to another
/// receiver meets a new destination nonce, so nothing of it decrypts; a changed preamble makes
/// the first frame fail authentication.
fn session_keys(psk: &[u8; 32], transcript: &[u8]) -> ([u8; 32], [u8; 32]) {
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(transcript), psk);
    let (mut sd, mut ds) = ([0u8; 32], [0u8; 32]);
    // Expanding 32 bytes from SHA-256 cannot fail (the limit is 255 * 32).
    let _ = hk.expand(b"plainvm migration v4: source to destination", &mut sd);
    let _ = hk.expand(b"plainvm migration v4: destination to source", &mut ds);
    (sd, ds)
}

impl Channel {
    /// A channel over any reader and writer (tests and fuzzing use in-memory ones).
    pub fn over(
        r: Box<dyn Read + Send>,
        w: Box<dyn Write + Send>,
        stream: Option<TcpStream>,
    ) -> Self {
        Self {
            r: BufReader::with_capacity(1 << 20, r),
            w: BufWriter::with_capacity(1 << 20, w),
            stream,
            send_cipher: None,
            recv_cipher: None,
            sent: 0,
            received: 0,
            buf: Vec::new(),
            bytes_sent: 0,
        }
    }

    fn tcp(stream: TcpStream) -> std::io::Result<Self> {
        stream.set_nodelay(true)?;
        let r = stream.try_clone()?;
        let w = stream.try_clone()?;
        Ok(Self::over(Box::new(r), Box::new(w), Some(stream)))
    }

    fn use_keys(&mut self, psk: Option<&[u8; 32]>, transcript: &[u8], me: Role) {
        if let Some(psk) = psk {
            let (sd, ds) = session_keys(psk, transcript);
            let (send, recv) = match me {
                Role::Source => (sd, ds),
                Role::Destination => (ds, sd),
            };
            self.send_cipher = Some(ChaCha20Poly1305::new(&send.into()));
            self.recv_cipher = Some(ChaCha20Poly1305::new(&recv.into()));
        }
    }

    /// The source's side: send the preamble and check the destination's answer.
    pub fn connect(stream: TcpStream, key: Option<&[u8; 32]>) -> Result<Self, FrameError> {
        // A destination that never answers must not hold the VM for good.
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut c = Self::tcp(stream)?;
        c.handshake_source(key)?;
        Ok(c)
    }

    /// The source's half of the preamble.
    pub fn handshake_source(&mut self, key: Option<&[u8; 32]>) -> Result<(), FrameError> {
        let mut mine = Vec::with_capacity(SOURCE_FIXED + NONCE_LEN);
        mine.extend_from_slice(&MAGIC);
        mine.extend_from_slice(&VERSION.to_le_bytes());
        mine.extend_from_slice(&u32::from(key.is_some()).to_le_bytes());
        mine.extend_from_slice(&random_nonce()?);
        self.w.write_all(&mine)?;
        self.w.flush()?;
        let mut ans = [0u8; DEST_FIXED];
        self.r.read_exact(&mut ans)?;
        if ans[..8] != MAGIC {
            return Err(FrameError::Magic);
        }
        let theirs = u32::from_le_bytes(ans[8..12].try_into().unwrap_or_default());
        match ans[12] {
            0 => {}
            1 => {
                return Err(FrameError::Version {
                    ours: VERSION,
                    theirs,
                })
            }
            _ => return Err(FrameError::KeyMismatch),
        }
        let mut nonce = [0u8; NONCE_LEN];
        self.r.read_exact(&mut nonce)?;
        let mut transcript = mine;
        transcript.extend_from_slice(&ans);
        transcript.extend_from_slice(&nonce);
        self.use_keys(key, &transcript, Role::Source);
        Ok(())
    }

    /// The destination's side: check the source's preamble and answer it.
    pub fn accept(stream: TcpStream, key: Option<&[u8; 32]>) -> Result<Self, FrameError> {
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut c = Self::tcp(stream)?;
        c.handshake_destination(key)?;
        Ok(c)
    }

    /// The destination's half of the preamble.
    pub fn handshake_destination(&mut self, key: Option<&[u8; 32]>) -> Result<(), FrameError> {
        let mut pre = [0u8; SOURCE_FIXED];
        self.r.read_exact(&mut pre)?;
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
        let mut ans = Vec::with_capacity(DEST_FIXED + NONCE_LEN);
        ans.extend_from_slice(&MAGIC);
        ans.extend_from_slice(&VERSION.to_le_bytes());
        ans.push(status);
        if status != 0 {
            // An older or newer peer's preamble may be shorter: answer at once.
            self.w.write_all(&ans)?;
            self.w.flush()?;
            return Err(match status {
                1 => FrameError::Version {
                    ours: VERSION,
                    theirs,
                },
                _ => FrameError::KeyMismatch,
            });
        }
        let mut their_nonce = [0u8; NONCE_LEN];
        self.r.read_exact(&mut their_nonce)?;
        let mine = random_nonce()?;
        self.w.write_all(&ans)?;
        self.w.write_all(&mine)?;
        self.w.flush()?;
        let mut transcript = pre.to_vec();
        transcript.extend_from_slice(&their_nonce);
        transcript.extend_from_slice(&ans);
        transcript.extend_from_slice(&mine);
        self.use_keys(key, &transcript, Role::Destination);
        Ok(())
    }

    /// Change how long a receive may wait (None: forever).
    pub fn set_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        match &self.stream {
            Some(s) => s.set_read_timeout(t),
            None => Ok(()),
        }
    }

    /// The AEAD nonce of frame `counter` (each direction has its own key).
    fn nonce(counter: u64) -> Nonce {
        let mut n = [0u8; 12];
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
        let wire_len = self.buf.len() + if self.send_cipher.is_some() { TAG } else { 0 };
        let mut header = [0u8; 12];
        header[0] = kind as u8;
        header[4..8].copy_from_slice(&(wire_len as u32).to_le_bytes());
        // The counter moves on before anything is written: a frame that failed half-way may be
        // on the wire already, and the next one (an Error frame) must not reuse its nonce.
        let counter = self.sent;
        self.sent += 1;
        if let Some(cipher) = &self.send_cipher {
            let nonce = Self::nonce(counter);
            cipher
                .encrypt_in_place(&nonce, &header[..8], &mut self.buf)
                .map_err(|_| FrameError::Auth)?;
        }
        header[8..12].copy_from_slice(&crc32fast::hash(&self.buf).to_le_bytes());
        self.w.write_all(&header)?;
        self.w.write_all(&self.buf)?;
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
        if let Some(cipher) = &self.recv_cipher {
            let nonce = Self::nonce(self.received);
            cipher
                .decrypt_in_place(&nonce, &header[..8], &mut payload)
                .map_err(|_| FrameError::Auth)?;
        }
        self.received += 1;
        if kind == Kind::Error {
            return Err(FrameError::Peer(printable(&payload)));
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;
    use std::sync::{Arc, Mutex};

    /// A writer that keeps a copy of everything written (what went over the wire).
    #[derive(Clone, Default)]
    struct Tap(Arc<Mutex<Vec<u8>>>);

    impl Write for Tap {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Writes go to both the socket and the tap.
    struct Both(UnixStream, Tap);

    impl Write for Both {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.1.write_all(b)?;
            self.0.write(b).inspect(|&n| {
                // Only what the socket took counts; drop the rest from the copy.
                let mut t = self.1 .0.lock().unwrap();
                let keep = t.len() - (b.len() - n);
                t.truncate(keep);
            })
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.0.flush()
        }
    }

    /// A keyed session over a socket pair: the source sends one Hello frame and the
    /// destination answers Ready. Returns what the source put on the wire.
    fn session(key: [u8; 32]) -> Vec<u8> {
        let (a, b) = UnixStream::pair().unwrap();
        let tap = Tap::default();
        let (w, t) = (Both(a.try_clone().unwrap(), tap.clone()), tap.clone());
        let dst = std::thread::spawn(move || {
            let mut d = Channel::over(Box::new(b.try_clone().unwrap()), Box::new(b), None);
            d.handshake_destination(Some(&key)).unwrap();
            let hello = d.expect(Kind::Hello, "hello").unwrap();
            d.send_now(Kind::Ready, &[]).unwrap();
            hello
        });
        let mut s = Channel::over(Box::new(a), Box::new(w), None);
        s.handshake_source(Some(&key)).unwrap();
        s.send_now(Kind::Hello, b"the same hello every time")
            .unwrap();
        s.expect(Kind::Ready, "ready").unwrap();
        assert_eq!(dst.join().unwrap(), b"the same hello every time");
        let wire = t.0.lock().unwrap().clone();
        wire
    }

    #[test]
    fn two_sessions_under_one_key_share_no_nonce_and_no_ciphertext() {
        let key = [7u8; 32];
        let (one, two) = (session(key), session(key));
        let nonce = |w: &[u8]| w[SOURCE_FIXED..SOURCE_FIXED + NONCE_LEN].to_vec();
        assert_ne!(nonce(&one), nonce(&two), "the preamble nonces repeat");
        let frame = |w: &[u8]| w[SOURCE_FIXED + NONCE_LEN..].to_vec();
        assert_ne!(
            frame(&one),
            frame(&two),
            "the same frame encrypts the same way twice"
        );
    }

    #[test]
    fn a_recorded_session_replayed_to_a_receiver_is_refused() {
        let key = [9u8; 32];
        let recorded = session(key);
        // Play the source's bytes to a fresh destination with the same key.
        let (a, b) = UnixStream::pair().unwrap();
        let feeder = std::thread::spawn(move || {
            let mut a = a;
            let _ = a.write_all(&recorded);
            // Keep the socket open while the destination reads.
            let mut sink = Vec::new();
            let _ = a.read_to_end(&mut sink);
        });
        let mut d = Channel::over(
            Box::new(b.try_clone().unwrap()),
            Box::new(b.try_clone().unwrap()),
            None,
        );
        d.handshake_destination(Some(&key)).unwrap();
        let r = d.expect(Kind::Hello, "hello");
        assert!(
            matches!(r, Err(FrameError::Auth)),
            "a replay was accepted: {r:?}"
        );
        let _ = b.shutdown(std::net::Shutdown::Both);
        feeder.join().unwrap();
    }

    #[test]
    fn a_changed_preamble_fails_the_first_frame() {
        let key = [3u8; 32];
        let (a, b) = UnixStream::pair().unwrap();
        let (m, n) = UnixStream::pair().unwrap();
        // A man in the middle flips a bit of the source's nonce on the way.
        let mitm = std::thread::spawn(move || {
            let (mut from, mut to) = (a, m);
            let mut buf = vec![0u8; SOURCE_FIXED + NONCE_LEN];
            from.read_exact(&mut buf).unwrap();
            buf[SOURCE_FIXED] ^= 1;
            to.write_all(&buf).unwrap();
            let (mut f2, mut t2) = (from.try_clone().unwrap(), to.try_clone().unwrap());
            let back = std::thread::spawn(move || {
                let _ = std::io::copy(&mut t2, &mut f2);
            });
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(std::net::Shutdown::Both);
            let _ = back.join();
        });
        let dst = std::thread::spawn(move || {
            let mut d = Channel::over(Box::new(n.try_clone().unwrap()), Box::new(n), None);
            d.handshake_destination(Some(&key)).unwrap();
            d.expect(Kind::Hello, "hello").map(|_| ())
        });
        let mut s = Channel::over(
            Box::new(b.try_clone().unwrap()),
            Box::new(b.try_clone().unwrap()),
            None,
        );
        s.handshake_source(Some(&key)).unwrap();
        s.send_now(Kind::Hello, b"x").unwrap();
        assert!(matches!(dst.join().unwrap(), Err(FrameError::Auth)));
        let _ = b.shutdown(std::net::Shutdown::Both);
        mitm.join().unwrap();
    }
}
