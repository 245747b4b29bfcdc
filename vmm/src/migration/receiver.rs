//! The destination side, step by step: the offer, the memory passes, the state, the commit.

use super::frame::{Channel, FrameError, Kind};
use super::pages::{MemoryImage, PagesError};
use super::sender::Hello;
use bincode::Options;
use plainvm_devices::GuestRam;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

/// Errors receiving a VM. Nothing runs here when one occurs.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    #[error(transparent)]
    Stream(#[from] FrameError),
    #[error(transparent)]
    Pages(#[from] PagesError),
    #[error("the offered VM cannot run here: {0}")]
    Incompatible(String),
    #[error("the migration stream is corrupted: {0}")]
    Decode(String),
}

/// Largest handshake or state frame decoded.
const MAX_DECODE: u64 = 16 << 20;

/// Decode a bincode frame payload, bounded in size, refusing garbage with an error.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, ReceiveError> {
    bincode::options()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(MAX_DECODE)
        .deserialize(bytes)
        .map_err(|e| ReceiveError::Decode(format!("{what}: {e}")))
}

/// An incoming migration, driven step by step by the caller (`cli::migrate`): handshake,
/// memory passes into guest memory, the state, then the commit. Until `commit` returns, nothing
/// may run here; any error before it should be sent back with `refuse`, and the source runs on.
pub struct Incoming {
    ch: Channel,
}

impl Incoming {
    /// Listen on `listen`, take one connection and check its preamble (and key).
    pub fn accept(listen: SocketAddr, key: Option<&[u8; 32]>) -> Result<Self, ReceiveError> {
        let listener = TcpListener::bind(listen).map_err(|e| ReceiveError::Listen(listen, e))?;
        plainvm_devices::log_line!("waiting for a migration on {listen}");
        let (stream, peer) = listener
            .accept()
            .map_err(|e| ReceiveError::Listen(listen, e))?;
        drop(listener);
        plainvm_devices::log_line!("migration from {peer}");
        Ok(Self {
            ch: Channel::accept(stream, key)?,
        })
    }

    /// An incoming migration on a channel whose preamble is done (tests and fuzzing).
    pub fn over(ch: Channel) -> Self {
        Self { ch }
    }

    /// The source's offer: its configuration and CPUID.
    pub fn hello(&mut self) -> Result<Hello, ReceiveError> {
        decode(&self.ch.expect(Kind::Hello, "the handshake")?, "handshake")
    }

    /// Take the memory passes into `mem` (fresh guest memory of the offered size); returns the
    /// encoded VM state that ends them.
    pub fn receive_memory(&mut self, mem: &GuestRam) -> Result<Vec<u8>, ReceiveError> {
        let img = MemoryImage::new(mem);
        self.ch.send_now(Kind::Ready, &[])?;
        let mut pass = 1;
        loop {
            let (kind, payload) = self.ch.recv()?;
            match kind {
                Kind::Pages => {
                    img.apply_pages(&payload)?;
                }
                Kind::Zeros => {
                    img.apply_zeros(&payload)?;
                }
                Kind::PassEnd => {
                    plainvm_devices::log_line!("migration: pass {pass} received");
                    pass += 1;
                }
                Kind::State => {
                    plainvm_devices::log_line!("migration: receiving the final state");
                    return Ok(payload);
                }
                got => {
                    return Err(FrameError::Unexpected {
                        got,
                        want: "memory pages or the state",
                    }
                    .into())
                }
            }
        }
    }

    /// Tell the source the VM is ready and wait for its commit. Once this returns Ok the VM is
    /// committed here: the caller runs it, whatever happens to the link.
    pub fn commit(mut self) -> Result<(), ReceiveError> {
        super::fault::crash_at(super::fault::DEST_BEFORE_STATE_READY);
        self.ch.send_now(Kind::StateReady, &[])?;
        self.ch.expect(Kind::Commit, "the commit")?;
        if super::fault::armed(super::fault::DEST_DROP_AFTER_COMMIT) {
            plainvm_devices::log_line!("fault injection: dropping the link after the commit");
            return Ok(());
        }
        let _ = self.ch.send_now(Kind::Running, &[]);
        Ok(())
    }

    /// Give up before the commit: the source is told why and keeps running.
    pub fn refuse(&mut self, why: &str) {
        self.ch.send_error(why);
    }
}

/// How long the destination waits for the next frame before giving up.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(30);
