//! The destination side: check the offer, take the memory passes, load the state, and run the
//! VM only once the source commits.

use super::frame::{Channel, FrameError, Kind};
use super::pages::{MemoryImage, PagesError};
use super::sender::Hello;
use crate::config::overrides::Overrides;
use crate::config::VmConfig;
use crate::memory::Layout;
use crate::vm::state::VmState;
use crate::vm::{Restore, RestoreMemory, RunOptions, RunResult, VmError};
use bincode::Options;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
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
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Registry(#[from] crate::host::registry::RegistryError),
}

/// How to receive.
pub struct ReceiveOptions {
    pub listen: SocketAddr,
    pub key: Option<[u8; 32]>,
    /// The VM's name in the registry (None: a generated one).
    pub name: Option<String>,
    pub api_sock: Option<PathBuf>,
    pub overrides: Overrides,
}

/// Largest handshake or state frame decoded.
const MAX_DECODE: u64 = 16 << 20;

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, ReceiveError> {
    bincode::options()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(MAX_DECODE)
        .deserialize(bytes)
        .map_err(|e| ReceiveError::Decode(format!("{what}: {e}")))
}

/// Wait for one incoming migration and run the VM once the source commits. Returns when the VM
/// stops (like `vm::run`).
pub fn receive(opts: ReceiveOptions) -> Result<RunResult, ReceiveError> {
    let listener =
        TcpListener::bind(opts.listen).map_err(|e| ReceiveError::Listen(opts.listen, e))?;
    eprintln!("plainvm: waiting for a migration on {}", opts.listen);
    let (stream, peer) = listener
        .accept()
        .map_err(|e| ReceiveError::Listen(opts.listen, e))?;
    drop(listener);
    eprintln!("plainvm: migration from {peer}");
    let mut ch = Channel::accept(stream, opts.key.as_ref())?;
    let taken = take(&mut ch, &opts.overrides).and_then(|(cfg, state, mem)| {
        // Claimed before the commit: a name taken meanwhile refuses the VM, the source runs on.
        let reg =
            crate::host::registry::register(opts.name.as_deref(), opts.api_sock.as_deref(), &cfg)?;
        Ok((cfg, state, mem, reg))
    });
    match taken {
        Err(e) => {
            ch.send_error(&e.to_string());
            Err(e)
        }
        Ok((cfg, state, mem, reg)) => {
            let restore = Restore {
                state,
                memory: RestoreMemory::Filled(mem),
            };
            let gate = Box::new(move || -> Result<(), String> {
                super::fault::crash_at(super::fault::DEST_BEFORE_STATE_READY);
                let r = ch
                    .send_now(Kind::StateReady, &[])
                    .and_then(|_| ch.expect(Kind::Commit, "the commit"));
                if let Err(e) = r {
                    return Err(format!(
                        "the source did not commit ({e}); nothing runs here"
                    ));
                }
                // Committed: this VM runs now, whether or not the source hears about it.
                if super::fault::armed(super::fault::DEST_DROP_AFTER_COMMIT) {
                    eprintln!("plainvm: fault injection: dropping the link after the commit");
                    drop(ch);
                    return Ok(());
                }
                let _ = ch.send_now(Kind::Running, &[]);
                Ok(())
            });
            let run = RunOptions {
                restore: Some(restore),
                api_sock: reg
                    .as_ref()
                    .map(|r| r.api_sock().to_path_buf())
                    .or(opts.api_sock),
                before_start: Some(gate),
            };
            let out = crate::vm::run(&cfg, run);
            drop(reg);
            Ok(out?)
        }
    }
}

/// Everything up to the state: handshake, memory passes, the state itself.
fn take(
    ch: &mut Channel,
    overrides: &Overrides,
) -> Result<(VmConfig, VmState, plainvm_devices::GuestRam), ReceiveError> {
    let hello: Hello = decode(&ch.expect(Kind::Hello, "the handshake")?, "handshake")?;
    crate::vcpu::cpuid::check_cpuid(&hello.cpuid)
        .map_err(|e| ReceiveError::Incompatible(e.to_string()))?;
    let cfg = overrides
        .apply(hello.config)
        .map_err(|e| ReceiveError::Incompatible(e.to_string()))?;
    crate::config::check_memory(cfg.memory_bytes)
        .map_err(|e| ReceiveError::Incompatible(e.to_string()))?;
    let mem = Layout::new(cfg.memory_bytes)
        .create_memory()
        .map_err(|e| ReceiveError::Incompatible(e.to_string()))?;
    let img = MemoryImage::new(&mem);
    ch.send_now(Kind::Ready, &[])?;
    let mut pass = 1;
    loop {
        let (kind, payload) = ch.recv()?;
        match kind {
            Kind::Pages => {
                img.apply_pages(&payload)?;
            }
            Kind::Zeros => {
                img.apply_zeros(&payload)?;
            }
            Kind::PassEnd => {
                eprintln!("plainvm: migration: pass {pass} received");
                pass += 1;
            }
            Kind::State => {
                eprintln!("plainvm: migration: receiving the final state");
                let state: VmState = decode(&payload, "VM state")?;
                if state.vcpus.len() != usize::from(cfg.cpus) {
                    return Err(ReceiveError::Decode("vCPU count does not match".into()));
                }
                return Ok((cfg, state, mem));
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

/// How long the destination waits for the next frame before giving up.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(30);
