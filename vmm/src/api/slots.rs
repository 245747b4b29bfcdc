//! The connection limit: at most `max` connections are served at once, each holding a [`Slot`]
//! for as long as its thread lives. A new connection that finds every slot taken closes the
//! oldest one still waiting for its request (or lingering after its answer) — that connection is
//! told 503 — so idle connections cannot lock the owner out; only when every slot is busy
//! answering is the new connection itself refused.

use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, MutexGuard};

/// Where a connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Reading its request: may be closed to make room.
    Reading,
    /// Answering (the router runs): never closed from outside.
    Answering,
    /// Answered, reading what the client still sends before closing: may be closed.
    Lingering,
    /// Closed to make room; its thread is ending.
    Evicted,
}

struct Entry {
    id: u64,
    phase: Phase,
    /// The connection, to shut down its reading side when it is evicted.
    stream: UnixStream,
}

struct Inner {
    next_id: u64,
    /// Oldest first.
    live: Vec<Entry>,
}

/// The table of live connections.
pub struct Slots {
    max: usize,
    inner: Mutex<Inner>,
}

/// What [`Slots::admit`] decided.
pub enum Admit {
    /// Serve the connection; the slot is freed when this is dropped.
    Serve(Slot),
    /// Every slot is busy answering (or the connection could not be tracked): answer 503.
    Refuse,
}

/// A connection's place in the table.
pub struct Slot {
    slots: Arc<Slots>,
    id: u64,
}

impl Slots {
    /// A table of at most `max` connections served at once.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            inner: Mutex::new(Inner {
                next_id: 0,
                live: Vec::new(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Take a slot for `stream`, closing the oldest idle connection if every slot is taken.
    /// Threads of evicted connections end within moments (their reads return at once), but they
    /// still count: at most `2 * max` threads live at any time.
    pub fn admit(self: &Arc<Self>, stream: &UnixStream) -> Admit {
        let Ok(handle) = stream.try_clone() else {
            return Admit::Refuse;
        };
        let mut inner = self.lock();
        let active = inner
            .live
            .iter()
            .filter(|e| e.phase != Phase::Evicted)
            .count();
        if inner.live.len() >= 2 * self.max {
            return Admit::Refuse;
        }
        if active >= self.max {
            // A lingering connection has its answer already: close it before a reading one.
            let victim = inner
                .live
                .iter()
                .find(|e| e.phase == Phase::Lingering)
                .or_else(|| inner.live.iter().find(|e| e.phase == Phase::Reading))
                .map(|e| e.id);
            let Some(victim) = victim else {
                return Admit::Refuse;
            };
            if let Some(e) = inner.live.iter_mut().find(|e| e.id == victim) {
                e.phase = Phase::Evicted;
                // Its blocked read returns 0 at once; its thread answers 503 and ends.
                let _ = e.stream.shutdown(Shutdown::Read);
            }
        }
        let id = inner.next_id;
        inner.next_id += 1;
        inner.live.push(Entry {
            id,
            phase: Phase::Reading,
            stream: handle,
        });
        Admit::Serve(Slot {
            slots: self.clone(),
            id,
        })
    }

    /// Connections now held (evicted ones whose threads are ending included).
    pub fn live(&self) -> usize {
        self.lock().live.len()
    }
}

impl Slot {
    /// Move from `from` to `to`; false (and no change) if the connection is not in `from`.
    fn advance(&self, from: Phase, to: Phase) -> bool {
        let mut inner = self.slots.lock();
        match inner.live.iter_mut().find(|e| e.id == self.id) {
            Some(e) if e.phase == from => {
                e.phase = to;
                true
            }
            _ => false,
        }
    }

    /// The request is read: answer it unless the connection was evicted meanwhile (then it must
    /// be answered 503, and nothing else done).
    pub fn begin_answer(&self) -> bool {
        self.advance(Phase::Reading, Phase::Answering)
    }

    /// The answer is out: the connection may be closed to make room from now on.
    pub fn end_answer(&self) {
        self.advance(Phase::Answering, Phase::Lingering);
    }

    /// The connection was closed to make room.
    pub fn evicted(&self) -> bool {
        let inner = self.slots.lock();
        inner
            .live
            .iter()
            .any(|e| e.id == self.id && e.phase == Phase::Evicted)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.lock().live.retain(|e| e.id != self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn pair() -> (UnixStream, UnixStream) {
        UnixStream::pair().unwrap()
    }

    fn serve(a: Admit) -> Slot {
        match a {
            Admit::Serve(s) => s,
            Admit::Refuse => panic!("refused"),
        }
    }

    #[test]
    fn a_full_table_evicts_the_oldest_idle_connection() {
        let slots = Slots::new(3);
        let conns: Vec<_> = (0..3).map(|_| pair()).collect();
        let held: Vec<Slot> = conns
            .iter()
            .map(|(server, _)| serve(slots.admit(server)))
            .collect();
        // The first is busy answering: the second (oldest idle) goes.
        assert!(held[0].begin_answer());
        let extra = pair();
        let fourth = serve(slots.admit(&extra.0));
        assert!(!held[0].evicted());
        assert!(held[1].evicted());
        assert!(
            !held[1].begin_answer(),
            "an evicted connection is not answered"
        );
        // Its reading side is shut: a read returns at once.
        let mut buf = [0u8; 8];
        assert_eq!((&conns[1].0).read(&mut buf).unwrap(), 0);
        assert_eq!(slots.live(), 4);
        drop(held);
        drop(fourth);
        assert_eq!(slots.live(), 0);
    }

    #[test]
    fn lingering_connections_go_before_reading_ones_and_busy_ones_never() {
        let slots = Slots::new(2);
        let (a, b, c, d) = (pair(), pair(), pair(), pair());
        let sa = serve(slots.admit(&a.0));
        let sb = serve(slots.admit(&b.0));
        assert!(sb.begin_answer());
        sb.end_answer();
        let _sc = serve(slots.admit(&c.0));
        assert!(sb.evicted() && !sa.evicted());
        // Both remaining are answering: the next one is refused.
        assert!(sa.begin_answer());
        assert!(_sc.begin_answer());
        assert!(matches!(slots.admit(&d.0), Admit::Refuse));
    }

    #[test]
    fn threads_stay_bounded_while_evicted_ones_end() {
        let slots = Slots::new(2);
        let conns: Vec<_> = (0..10).map(|_| pair()).collect();
        let mut held = Vec::new();
        let mut refused = 0;
        for (s, _) in &conns {
            match slots.admit(s) {
                Admit::Serve(slot) => held.push(slot),
                Admit::Refuse => refused += 1,
            }
        }
        // Nothing ended: 2 live + 2 evicted at most, the rest refused.
        assert_eq!(slots.live(), 4);
        assert_eq!(refused, 6);
        // Evicted threads end: room again.
        held.retain(|s| !s.evicted());
        assert_eq!(held.len(), 2);
        assert!(matches!(slots.admit(&conns[0].0), Admit::Serve(_)));
    }
}
