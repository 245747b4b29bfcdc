//! Every limit of the API server in one place: what one client can make the VMM hold (bytes,
//! threads, time), and why each number is what it is.
//!
//! The socket is the owner's (mode 0600), but a buggy or hostile client must still not be able
//! to stop the VM or the API: nothing is ever allocated from a number the client sends, every
//! connection has a deadline, and the number of connection threads is bounded.

use std::time::Duration;

/// Request line plus headers, in bytes. The CLI sends about 150; 16 KiB leaves room for any
/// ordinary HTTP client (curl, a proxy adding headers). Beyond it: 431.
pub const MAX_HEAD_BYTES: usize = 16 << 10;

/// Headers per request. The CLI sends four. Beyond it: 431.
pub const MAX_HEADERS: usize = 64;

/// Request body, in bytes. The largest request (`PUT /migrate` with a key) is a few hundred
/// bytes. A larger `Content-Length` is answered 413 at once, before any of the body is read.
pub const MAX_BODY_BYTES: usize = 64 << 10;

/// Connections served at once, each on its own thread (a migration or a big snapshot holds its
/// connection for minutes, and `GET /vm` or `GET /migrate` must still be answered meanwhile).
/// When all are taken, the oldest connection that has not yet sent its whole request is closed
/// (with a 503) to make room; when every one is busy answering, the new one gets the 503.
pub const MAX_CONNECTIONS: usize = 16;

/// Time from accepting a connection to having its whole request (head and body). The CLI sends
/// its request in one write right after connecting; a client that trickles (slowloris) or never
/// finishes its headers gets a 408 and is closed.
pub const REQUEST_TIME: Duration = Duration::from_secs(10);

/// Time to write an answer (a few hundred bytes: only a client that never reads hits it).
pub const WRITE_TIME: Duration = Duration::from_secs(10);

/// After answering, the server reads and discards what the client still sends, for at most this
/// long and [`LINGER_BYTES`], before closing: closing a unix socket with unread data makes the
/// client's next read fail (ECONNRESET), so a client that sent too large a body would lose the
/// 413 that explains why.
pub const LINGER_TIME: Duration = Duration::from_secs(1);

/// See [`LINGER_TIME`].
pub const LINGER_BYTES: usize = 2 << 20;

/// The limits the request parser enforces (the server uses [`Limits::API`]; tests use smaller
/// ones).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Request line plus headers, in bytes.
    pub head_bytes: usize,
    /// Headers per request.
    pub headers: usize,
    /// Body, in bytes.
    pub body_bytes: usize,
}

impl Limits {
    /// The API server's limits.
    pub const API: Limits = Limits {
        head_bytes: MAX_HEAD_BYTES,
        headers: MAX_HEADERS,
        body_bytes: MAX_BODY_BYTES,
    };
}
