//! State shared by the device and the VMM: boot marks, generation, heartbeat, host requests,
//! the agent's announcement and the free-memory hint. The control API can expose a [`Snapshot`].

use crate::lock;
use plainvm_guest_proto as proto;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most host requests waiting for the agent.
pub const MAX_PENDING: usize = 16;

/// Errors posting a host request.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    #[error("{MAX_PENDING} host requests are already waiting for the guest agent; wait until it picks them up (is the agent running?)")]
    QueueFull,
}

/// One BOOT_MARK call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootMark {
    pub stage: u32,
    pub at: Instant,
}

/// What the host asks the guest agent to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// Power off gracefully, then POWER(off, code).
    PowerOff { code: u8 },
    /// Reboot gracefully, then POWER(reboot, code).
    Reboot { code: u8 },
    /// Resync the guest clock from HOST_TIME.
    TimeSync,
}

impl RequestKind {
    /// (kind, argument) as the REQUEST call returns them.
    pub fn encode(self) -> (u32, u32) {
        match self {
            Self::PowerOff { code } => (proto::request::POWER_OFF, u32::from(code)),
            Self::Reboot { code } => (proto::request::REBOOT, u32::from(code)),
            Self::TimeSync => (proto::request::TIME_SYNC, 0),
        }
    }
}

/// A posted request with its id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostRequest {
    pub id: u32,
    pub kind: RequestKind,
}

/// A change in the guest's heartbeat the VMM reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeartbeatEvent {
    /// No beat for `silent`, longer than the declared `interval`.
    Missed {
        silent: Duration,
        interval: Duration,
    },
    /// A beat arrived after a reported miss.
    Resumed { silent: Duration },
}

#[derive(Debug, Default)]
struct Heartbeat {
    interval: Option<Duration>,
    last: Option<Instant>,
    beats: u64,
    missed: bool,
}

#[derive(Debug, Default)]
struct Inner {
    marks: Vec<BootMark>,
    heartbeat: Heartbeat,
    requests: VecDeque<HostRequest>,
    next_id: u32,
    agent: Option<u32>,
    mem_hint_kib: Option<u64>,
}

/// Everything the host can see of the guest's cooperation, at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub marks: Vec<BootMark>,
    pub generation: u64,
    pub heartbeat_interval: Option<Duration>,
    pub heartbeats: u64,
    pub last_heartbeat: Option<Instant>,
    pub pending_requests: usize,
    /// Capability bits of the agent, once it announced itself.
    pub agent: Option<u32>,
    pub free_memory_kib: Option<u64>,
}

/// Shared between the device (guest side) and the VMM (host side).
#[derive(Debug, Default)]
pub struct HypercallState {
    inner: Mutex<Inner>,
    generation: AtomicU64,
}

impl HypercallState {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    /// Record a boot mark; false when the table is full.
    pub fn mark(&self, stage: u32, at: Instant) -> Option<usize> {
        let mut s = self.lock();
        if s.marks.len() >= proto::MAX_MARKS {
            return None;
        }
        s.marks.push(BootMark { stage, at });
        Some(s.marks.len() - 1)
    }

    /// The boot marks so far.
    pub fn marks(&self) -> Vec<BootMark> {
        self.lock().marks.clone()
    }

    /// The generation counter.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Bump the generation (after a restore or a migration) and ask the agent to resync time.
    /// Returns the new generation.
    pub fn bump_generation(&self) -> u64 {
        // A saved generation may be anything: wrap rather than overflow.
        let g = self
            .generation
            .fetch_add(1, Ordering::SeqCst)
            .wrapping_add(1);
        // A full queue already holds work for the agent; it reads GENERATION anyway.
        let _ = self.post(RequestKind::TimeSync);
        g
    }

    /// Post a request for the guest agent; returns its id.
    pub fn post(&self, kind: RequestKind) -> Result<u32, StateError> {
        let mut s = self.lock();
        if s.requests.len() >= MAX_PENDING {
            return Err(StateError::QueueFull);
        }
        s.next_id = s.next_id.wrapping_add(1).max(1);
        let id = s.next_id;
        s.requests.push_back(HostRequest { id, kind });
        Ok(id)
    }

    /// The guest agent takes the oldest pending request.
    pub fn take_request(&self) -> Option<HostRequest> {
        self.lock().requests.pop_front()
    }

    /// How many requests wait for the agent.
    pub fn pending(&self) -> usize {
        self.lock().requests.len()
    }

    /// The agent announced itself with these capability bits.
    pub fn announce_agent(&self, caps: u32) {
        self.lock().agent = Some(caps);
    }

    /// The agent's capability bits, if it announced itself.
    pub fn agent(&self) -> Option<u32> {
        self.lock().agent
    }

    /// True while the guest has a heartbeat interval declared (the VMM then watches it).
    pub fn heartbeat_declared(&self) -> bool {
        self.lock().heartbeat.interval.is_some()
    }

    /// The guest reported this much free memory.
    pub fn set_mem_hint(&self, kib: u64) {
        self.lock().mem_hint_kib = Some(kib);
    }

    /// A heartbeat at `now` declaring `interval` (None: stop watching).
    pub fn beat(&self, interval: Option<Duration>, now: Instant) -> (u64, Option<HeartbeatEvent>) {
        let mut s = self.lock();
        let h = &mut s.heartbeat;
        let event = match (h.missed, h.last) {
            (true, Some(last)) => Some(HeartbeatEvent::Resumed {
                silent: now.saturating_duration_since(last),
            }),
            _ => None,
        };
        h.interval = interval;
        h.last = Some(now);
        h.beats += 1;
        h.missed = false;
        (h.beats, event)
    }

    /// A `Missed` event, once, when a beating guest has been silent longer than its interval.
    pub fn check_heartbeat(&self, now: Instant) -> Option<HeartbeatEvent> {
        let mut s = self.lock();
        let h = &mut s.heartbeat;
        let (Some(interval), Some(last)) = (h.interval, h.last) else {
            return None;
        };
        let silent = now.saturating_duration_since(last);
        if h.missed || silent <= interval {
            return None;
        }
        h.missed = true;
        Some(HeartbeatEvent::Missed { silent, interval })
    }

    /// Continue from a saved VM (snapshot or migration): its generation and agent, then bump
    /// the generation so the guest agent resyncs its clock. Returns the new generation.
    pub fn continue_from(&self, generation: u64, agent: Option<u32>) -> u64 {
        self.generation.store(generation, Ordering::SeqCst);
        self.lock().agent = agent;
        self.bump_generation()
    }

    /// Everything at once (for the log and, later, the control API).
    pub fn snapshot(&self) -> Snapshot {
        let s = self.lock();
        Snapshot {
            marks: s.marks.clone(),
            generation: self.generation(),
            heartbeat_interval: s.heartbeat.interval,
            heartbeats: s.heartbeat.beats,
            last_heartbeat: s.heartbeat.last,
            pending_requests: s.requests.len(),
            agent: s.agent,
            free_memory_kib: s.mem_hint_kib,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_queue_in_order_and_refuse_when_full() {
        let s = HypercallState::default();
        let a = s.post(RequestKind::PowerOff { code: 7 }).unwrap();
        let b = s.post(RequestKind::TimeSync).unwrap();
        assert_ne!(a, b);
        assert_eq!(s.pending(), 2);
        let r = s.take_request().unwrap();
        assert_eq!((r.id, r.kind), (a, RequestKind::PowerOff { code: 7 }));
        assert_eq!(r.kind.encode(), (proto::request::POWER_OFF, 7));
        assert_eq!(s.take_request().unwrap().id, b);
        assert_eq!(s.take_request(), None);
        for _ in 0..MAX_PENDING {
            s.post(RequestKind::TimeSync).unwrap();
        }
        assert_eq!(s.post(RequestKind::TimeSync), Err(StateError::QueueFull));
    }

    #[test]
    fn generation_bump_posts_a_time_sync() {
        let s = HypercallState::default();
        assert_eq!(s.generation(), 0);
        assert_eq!(s.bump_generation(), 1);
        assert_eq!(s.take_request().unwrap().kind, RequestKind::TimeSync);
    }

    #[test]
    fn heartbeat_miss_is_reported_once_then_resumes() {
        let s = HypercallState::default();
        let t = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(s.check_heartbeat(t + ms(10_000)), None, "never beat");
        s.beat(Some(ms(100)), t);
        assert_eq!(s.check_heartbeat(t + ms(50)), None);
        assert_eq!(
            s.check_heartbeat(t + ms(300)),
            Some(HeartbeatEvent::Missed {
                silent: ms(300),
                interval: ms(100)
            })
        );
        assert_eq!(s.check_heartbeat(t + ms(400)), None, "reported once");
        let (beats, ev) = s.beat(Some(ms(100)), t + ms(500));
        assert_eq!(beats, 2);
        assert_eq!(ev, Some(HeartbeatEvent::Resumed { silent: ms(500) }));
        s.beat(None, t + ms(600));
        assert_eq!(s.check_heartbeat(t + ms(60_000)), None, "stopped watching");
    }

    #[test]
    fn marks_are_bounded() {
        let s = HypercallState::default();
        let t = Instant::now();
        for i in 0..proto::MAX_MARKS {
            assert_eq!(s.mark(i as u32, t), Some(i));
        }
        assert_eq!(s.mark(0, t), None);
        assert_eq!(s.snapshot().marks.len(), proto::MAX_MARKS);
    }
}
