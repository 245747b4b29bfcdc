//! Runs one call: validates its arguments, acts through the host and the shared state, and
//! returns RET0..RET3 or a status code.

use super::log::GuestLog;
use super::{HypercallHost, HypercallState};
use crate::GuestRam;
use plainvm_guest_proto::call::{join, split};
use plainvm_guest_proto::{agent, nr, power, status};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

/// Bitmap of implemented calls (RET1 of VERSION).
const IMPLEMENTED: u32 = (1 << nr::COUNT) - 1;

/// The calls and what they act on.
pub struct Calls {
    pub state: Arc<HypercallState>,
    mem: GuestRam,
    ram_kib: u64,
    log: GuestLog,
    host: Box<dyn HypercallHost>,
}

impl Calls {
    /// Calls on guest memory `mem`, sharing `state`, reaching the VMM through `host`.
    pub fn new(mem: GuestRam, state: Arc<HypercallState>, host: Box<dyn HypercallHost>) -> Self {
        let ram_kib = mem.iter().map(|r| r.len()).sum::<u64>() >> 10;
        Self {
            state,
            mem,
            ram_kib,
            log: GuestLog::default(),
            host,
        }
    }

    /// Run call `nr` with `a`; `text` is the device page's TEXT window.
    pub fn run(&mut self, call: u32, a: [u32; 4], text: &[u8]) -> Result<[u32; 4], u32> {
        let now = Instant::now();
        match call {
            nr::VERSION => Ok([plainvm_guest_proto::VERSION, IMPLEMENTED, 0, 0]),
            nr::BOOT_MARK => {
                let i = self.state.mark(a[0], now).ok_or(status::LIMIT_REACHED)?;
                Ok([i as u32, 0, 0, 0])
            }
            nr::POWER => {
                let reboot = match a[0] {
                    power::OFF => false,
                    power::REBOOT => true,
                    _ => return Err(status::INVALID_ARGUMENT),
                };
                let code = u8::try_from(a[1]).map_err(|_| status::INVALID_ARGUMENT)?;
                self.host.power(reboot, code);
                Ok([0; 4])
            }
            nr::LOG => {
                let n =
                    self.log
                        .call(&self.mem, join(a[0], a[1]), a[2], now, self.host.as_mut())?;
                Ok([n, 0, 0, 0])
            }
            nr::HOST_TIME => {
                let t = self.host.wall_clock();
                let (lo, hi) = split(t.as_secs());
                Ok([lo, hi, t.subsec_nanos(), 0])
            }
            nr::GENERATION => {
                let (lo, hi) = split(self.state.generation());
                Ok([lo, hi, 0, 0])
            }
            nr::MEM_HINT => {
                let kib = join(a[0], a[1]);
                if kib > self.ram_kib {
                    return Err(status::INVALID_ARGUMENT);
                }
                self.state.set_mem_hint(kib);
                Ok([0; 4])
            }
            nr::HEARTBEAT => {
                let interval = match a[0] {
                    0 => None,
                    ms @ plainvm_guest_proto::HEARTBEAT_MIN_MS
                        ..=plainvm_guest_proto::HEARTBEAT_MAX_MS => {
                        Some(Duration::from_millis(u64::from(ms)))
                    }
                    _ => return Err(status::INVALID_ARGUMENT),
                };
                let (beats, event) = self.state.beat(interval, now);
                if let Some(super::HeartbeatEvent::Resumed { silent }) = event {
                    self.host.log(&format!(
                        "guest heartbeat resumed after {} ms of silence",
                        silent.as_millis()
                    ));
                }
                Ok([beats as u32, 0, 0, 0])
            }
            nr::REQUEST => Ok(match self.state.take_request() {
                Some(r) => {
                    let (kind, arg) = r.kind.encode();
                    [kind, arg, r.id, 0]
                }
                None => [0; 4],
            }),
            nr::AGENT_HELLO => {
                if a[0] & !(agent::POWER | agent::TIME_SYNC) != 0 {
                    return Err(status::INVALID_ARGUMENT);
                }
                if self.state.agent() != Some(a[0]) {
                    self.host.log(&format!(
                        "guest agent announced itself (power requests: {}, time sync: {})",
                        yes(a[0] & agent::POWER),
                        yes(a[0] & agent::TIME_SYNC)
                    ));
                }
                self.state.announce_agent(a[0]);
                Ok([self.state.generation() as u32, 0, 0, 0])
            }
            nr::LOG_TEXT => {
                let n = self.log.call_text(text, a[0], now, self.host.as_mut())?;
                Ok([n, 0, 0, 0])
            }
            _ => Err(status::UNKNOWN_CALL),
        }
    }
}

fn yes(bit: u32) -> &'static str {
    if bit != 0 {
        "yes"
    } else {
        "no"
    }
}
