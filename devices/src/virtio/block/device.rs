//! The virtio-blk device: features and config space, and the request queue served on the device
//! event loop (one queue; requests run inline against the raw image, reads that must wait for
//! the disk on worker threads).

use super::backend::{BackendError, RawFile};
use super::request::{parse, Kind, Request};
use super::worker::{Job, JobOp, Pool};
use super::{
    F_FLUSH, F_RO, F_SEG_MAX, F_SIZE_MAX, ID_BYTES, SECTOR_SIZE, SEG_MAX, SIZE_MAX, S_IOERR, S_OK,
};
use crate::virtio::persist::{BlockState, DeviceState, PersistError};
use crate::virtio::{read_config_bytes, ActivateError, Interrupt, VirtioDevice, TYPE_BLOCK};
use crate::GuestRam;
use event_manager::{EventOps, Events, MutEventSubscriber};

use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use virtio_queue::{Queue, QueueT};
use vm_memory::bitmap::Bitmap;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Queue size offered.
const QUEUE_SIZE: u16 = 256;
/// Most chains served per wake-up before yielding the event loop to other devices.
const BUDGET: usize = 4 * QUEUE_SIZE as usize;
/// Longest wait for requests in flight when the VM pauses.
const QUIESCE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a block device cannot be created.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("disk id '{0}' is longer than {ID_BYTES} bytes: give a shorter id=")]
    IdTooLong(String),
    #[error("cannot create an eventfd for the disk: {0}")]
    EventFd(std::io::Error),
    #[error("cannot start the disk's I/O threads: {0}")]
    Workers(std::io::Error),
}

/// A virtio-blk device over a raw image.
pub struct Block {
    backend: Arc<RawFile>,
    pool: Pool,
    /// Bumped on every activation and reset: late completions of an old queue are dropped.
    generation: u64,
    /// Requests with the worker threads. At most a queue's worth: a driver that makes more
    /// available (re-using heads still in flight) waits until some complete.
    in_flight: usize,
    id: [u8; ID_BYTES],
    /// Usable bytes: the image size rounded down to whole sectors.
    capacity: u64,
    config: [u8; 16],
    queue_evt: EventFd,
    active: Option<Active>,
    req: Request,
    /// Requests answered with an error status (or dropped as malformed) so far.
    errors: u64,
    /// Send every read to the worker threads, as if the page cache held nothing (for tests of
    /// that path, which a cached image never takes).
    pub(crate) always_hand_off: bool,
}

struct Active {
    mem: GuestRam,
    queue: Queue,
    interrupt: Interrupt,
}

impl Block {
    /// A device serving the image at `path`; `id` is what `VIRTIO_BLK_T_GET_ID` returns.
    pub fn new(path: &Path, read_only: bool, id: Option<&str>) -> Result<Self, BlockError> {
        Self::open(path, read_only, id, false)
    }

    /// `new`; with `plain`, the image must be a regular file reached without any symlink (see
    /// `RawFile::open_with`).
    pub fn open(
        path: &Path,
        read_only: bool,
        id: Option<&str>,
        plain: bool,
    ) -> Result<Self, BlockError> {
        let mut id_bytes = [0u8; ID_BYTES];
        if let Some(id) = id {
            if id.len() > ID_BYTES {
                return Err(BlockError::IdTooLong(id.to_string()));
            }
            id_bytes[..id.len()].copy_from_slice(id.as_bytes());
        }
        let backend = RawFile::open_with(path, read_only, plain)?;
        Self::with_backend(backend, id_bytes)
    }

    fn with_backend(backend: RawFile, id: [u8; ID_BYTES]) -> Result<Self, BlockError> {
        let capacity = backend.size() / SECTOR_SIZE * SECTOR_SIZE;
        let mut config = [0u8; 16];
        config[0..8].copy_from_slice(&(capacity / SECTOR_SIZE).to_le_bytes());
        config[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        let backend = Arc::new(backend);
        Ok(Self {
            pool: Pool::new(backend.clone()).map_err(BlockError::Workers)?,
            generation: 0,
            in_flight: 0,
            backend,
            id,
            capacity,
            config,
            queue_evt: EventFd::new(EFD_NONBLOCK).map_err(BlockError::EventFd)?,
            active: None,
            req: Request::default(),
            errors: 0,
            always_hand_off: false,
        })
    }

    /// Clones of the queue eventfds, for the transport and the ioeventfd registration.
    pub fn queue_evts(&self) -> std::io::Result<Vec<EventFd>> {
        Ok(vec![self.queue_evt.try_clone()?])
    }

    /// Disk size in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.capacity / SECTOR_SIZE
    }

    /// Requests refused or dropped so far (for tests and diagnostics).
    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// Serves available requests (up to `BUDGET`); returns how many chains were completed.
    pub(super) fn process_queue(&mut self) -> usize {
        let Self {
            active,
            backend,
            pool,
            generation,
            in_flight,
            id,
            capacity,
            req,
            errors,
            queue_evt,
            always_hand_off,
            ..
        } = self;
        let ctx = Ctx {
            backend: backend.as_ref(),
            pool,
            generation: *generation,
            id,
            capacity: *capacity,
            always_hand_off: *always_hand_off,
        };
        let Some(Active {
            mem,
            queue,
            interrupt,
        }) = active
        else {
            return 0;
        };
        let mut iov: Vec<libc::iovec> = Vec::new();
        let mut done = 0;
        let mut looked_again = false;
        'outer: loop {
            // No kicks needed while we are draining the ring.
            if queue.disable_notification(&*mem).is_err() {
                break;
            }
            let mut popped = 0;
            loop {
                if *in_flight >= usize::from(QUEUE_SIZE) {
                    break 'outer; // resumed by `complete_jobs`
                }
                let Some(chain) = queue.pop_descriptor_chain(&*mem) else {
                    break;
                };
                let head = chain.head_index();
                popped += 1;
                let Some((len, ok)) = serve(mem, &ctx, head, req, &mut iov, chain) else {
                    *in_flight += 1; // handed to a worker; completed in `complete_jobs`
                    done += 1;
                    if done >= BUDGET {
                        let _ = queue_evt.write(1);
                        break 'outer;
                    }
                    continue;
                };
                if !ok {
                    *errors += 1;
                }
                if queue.add_used(&*mem, head, len).is_err() {
                    break 'outer; // used ring unusable: the driver broke the queue
                }
                done += 1;
                if done >= BUDGET {
                    // Let other devices run; come back through our own eventfd.
                    let _ = queue_evt.write(1);
                    break 'outer;
                }
            }
            // Re-enable kicks; if more arrived meanwhile, go again. The driver skips its kick
            // while kicks are off, so a request made between the last pop and here is only seen
            // by looking again, even after a pass that found nothing (a stale kick). A ring
            // whose index is garbage yields no chains: one empty look again, then stop.
            match queue.enable_notification(&*mem) {
                Ok(true) if popped > 0 => continue,
                Ok(true) if !looked_again => {
                    looked_again = true;
                    continue;
                }
                _ => break,
            }
        }
        if done > 0 && queue.needs_notification(&*mem).unwrap_or(true) {
            interrupt.signal_used_queue();
        }
        done
    }
}

impl Block {
    /// Completes requests the worker threads finished, and takes new ones if the workers were
    /// full.
    pub(super) fn complete_jobs(&mut self) {
        let was_full = self.in_flight >= usize::from(QUEUE_SIZE);
        self.finish_jobs();
        if was_full {
            self.process_queue(); // it stopped taking requests while the workers were full
        }
    }

    /// Puts the requests the worker threads finished on the used ring.
    fn finish_jobs(&mut self) {
        let finished = self.pool.take_done();
        self.in_flight = self.in_flight.saturating_sub(finished.len());
        let Some(Active {
            mem,
            queue,
            interrupt,
        }) = &mut self.active
        else {
            return;
        };
        let mut any = false;
        for d in &finished {
            if d.generation != self.generation {
                continue; // the queue it belonged to was reset
            }
            let status = if d.ok { S_OK } else { S_IOERR };
            let (len, ok) = finish(
                mem,
                d.status_addr,
                status,
                if d.ok { d.used_len } else { 0 },
            );
            if !ok {
                self.errors += 1;
            }
            if queue.add_used(&*mem, d.head, len).is_err() {
                break;
            }
            any = true;
        }
        if any && queue.needs_notification(&*mem).unwrap_or(true) {
            interrupt.signal_used_queue();
        }
    }
}

/// What a request needs from the device besides guest memory and the queue.
struct Ctx<'a> {
    backend: &'a RawFile,
    pool: &'a Pool,
    generation: u64,
    id: &'a [u8; ID_BYTES],
    capacity: u64,
    always_hand_off: bool,
}

/// Runs one chain; returns the used length and whether it succeeded, or None when a worker
/// thread took it over.
fn serve(
    mem: &GuestRam,
    ctx: &Ctx,
    head: u16,
    req: &mut Request,
    iov: &mut Vec<libc::iovec>,
    chain: impl Iterator<Item = virtio_queue::desc::split::Descriptor>,
) -> Option<(u32, bool)> {
    let (status_addr, verdict) = parse(chain, mem, ctx.capacity, ctx.backend.read_only(), req);
    let Some(status_addr) = status_addr else {
        return Some((0, false)); // nowhere to report: the chain is dropped
    };
    let (status, written) = match verdict {
        Err(e) => (e.status(), 0),
        Ok(()) => match execute(mem, ctx, req, iov) {
            Some(done) => done,
            // A read the page cache cannot serve, or a flush, goes to the worker threads
            // (several disk reads then run at once, and the event loop does not wait for the
            // disk).
            None => match hand_off(mem, ctx, head, status_addr, req) {
                Ok(()) => return None,
                Err(()) => (S_IOERR, 0),
            },
        },
    };
    Some(finish(mem, status_addr, status, written))
}

/// Writes the status byte; returns the used length and whether the request succeeded.
fn finish(mem: &GuestRam, status_addr: GuestAddress, status: u8, written: u32) -> (u32, bool) {
    if mem.write_obj(status, status_addr).is_err() {
        return (0, false);
    }
    // `written` is at most SEG_MAX * SIZE_MAX bytes, far below u32::MAX.
    (written.saturating_add(1), status == S_OK)
}

/// Gives a read the page cache cannot serve, or a flush, to the worker threads.
fn hand_off(
    mem: &GuestRam,
    ctx: &Ctx,
    head: u16,
    status_addr: GuestAddress,
    req: &Request,
) -> Result<(), ()> {
    let op = match req.kind {
        Some(Kind::Read) => JobOp::Read,
        Some(Kind::Write) => JobOp::Write,
        Some(Kind::Flush) => JobOp::Flush,
        _ => return Err(()),
    };
    let mut iov = Vec::with_capacity(req.segments.len());
    if op != JobOp::Flush {
        guest_iovecs(mem, req, &mut iov).map_err(|_| ())?;
    }
    let job = Job {
        head,
        status_addr,
        used_len: if op == JobOp::Read { req.len as u32 } else { 0 },
        generation: ctx.generation,
        op,
        offset: req.sector * SECTOR_SIZE, // range checked by `parse`
        iov,
        segments: req.segments.clone(),
        mem: mem.clone(),
    };
    if ctx.pool.submit(job) {
        Ok(())
    } else {
        Err(())
    }
}

/// Performs a validated request on the event loop; returns the status and the bytes written
/// into guest memory, or None for a read the page cache cannot serve and for a flush (see
/// `hand_off`). Writes run here: the page cache takes buffered writes without waiting for the
/// disk. A flush waits for the disk, so it runs on a worker and the loop (and every other device
/// on it) goes on; it covers every write completed before it, which is all a driver may rely on.
fn execute(
    mem: &GuestRam,
    ctx: &Ctx,
    req: &Request,
    iov: &mut Vec<libc::iovec>,
) -> Option<(u8, u32)> {
    let (backend, id) = (ctx.backend, ctx.id);
    Some(match req.kind {
        Some(Kind::Read) | Some(Kind::Write) => {
            let read = req.kind == Some(Kind::Read);
            if guest_iovecs(mem, req, iov).is_err() {
                return Some((S_IOERR, 0));
            }
            let offset = req.sector * SECTOR_SIZE; // range checked by `parse`
            let r = match (read, ctx.always_hand_off) {
                (true, false) => backend.read_cached_at(iov, offset),
                (true, true) => Err(std::io::ErrorKind::WouldBlock.into()),
                (false, _) => backend.write_at(iov, offset),
            };
            match r {
                Ok(()) if read => {
                    mark_dirty(mem, req);
                    (S_OK, req.len as u32)
                }
                Ok(()) => (S_OK, 0),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
                Err(_) => (S_IOERR, 0),
            }
        }
        // Nothing to make durable on a read-only disk.
        Some(Kind::Flush) if backend.read_only() => (S_OK, 0),
        Some(Kind::Flush) => return None,
        Some(Kind::GetId) => {
            let mut left = &id[..req.len as usize]; // len <= ID_BYTES (parse)
            let mut written = 0;
            for seg in &req.segments {
                if left.is_empty() {
                    break;
                }
                let n = left.len().min(seg.len as usize);
                if mem.write_slice(&left[..n], seg.addr).is_err() {
                    return Some((S_IOERR, 0));
                }
                left = &left[n..];
                written += n as u32;
            }
            (S_OK, written)
        }
        None => (S_IOERR, 0),
    })
}

/// Host iovecs for the request's data segments; an error if any byte is outside guest RAM.
fn guest_iovecs(
    mem: &GuestRam,
    req: &Request,
    iov: &mut Vec<libc::iovec>,
) -> Result<(), vm_memory::GuestMemoryError> {
    iov.clear();
    for seg in &req.segments {
        for slice in GuestMemoryBackend::get_slices(mem, seg.addr, seg.len as usize) {
            let slice = slice?;
            iov.push(libc::iovec {
                iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                iov_len: slice.len(),
            });
        }
    }
    Ok(())
}

/// Records guest pages the device wrote in the memory's dirty bitmap (if it keeps one).
fn mark_dirty(mem: &GuestRam, req: &Request) {
    for seg in &req.segments {
        for slice in GuestMemoryBackend::get_slices(mem, seg.addr, seg.len as usize).flatten() {
            slice.bitmap().mark_dirty(0, slice.len());
        }
    }
}

/// Used by tests: a device over an already-open image.
#[cfg(test)]
pub(crate) fn for_test(backend: RawFile, id: &str) -> Block {
    let mut b = [0u8; ID_BYTES];
    b[..id.len()].copy_from_slice(id.as_bytes());
    Block::with_backend(backend, b).unwrap()
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }
    fn features(&self) -> u64 {
        let ro = if self.backend.read_only() { F_RO } else { 0 };
        F_SIZE_MAX | F_SEG_MAX | F_FLUSH | ro
    }
    fn ack_features(&mut self, _features: u64) {}
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }
    fn activate(
        &mut self,
        mem: GuestRam,
        mut queues: Vec<Queue>,
        interrupt: Interrupt,
    ) -> Result<(), ActivateError> {
        crate::virtio::expect_queues(&queues, 1)?;
        self.generation += 1;
        self.active = Some(Active {
            mem,
            queue: queues.remove(0),
            interrupt,
        });
        Ok(())
    }
    fn reset(&mut self) {
        self.generation += 1;
        self.active = None;
    }
    fn queues(&self) -> &[Queue] {
        self.active
            .as_ref()
            .map_or(&[], |a| std::slice::from_ref(&a.queue))
    }
    fn quiesce(&mut self) -> Result<(), PersistError> {
        // Requests with the workers are popped from the queue but not yet used: a saved state
        // must not lose them, so wait for them and complete them now.
        let deadline = Instant::now() + QUIESCE_TIMEOUT;
        while self.in_flight > 0 {
            if Instant::now() >= deadline {
                return Err(PersistError::Busy(format!(
                    "{} disk request(s) still running after {QUIESCE_TIMEOUT:?}; try again",
                    self.in_flight
                )));
            }
            std::thread::sleep(Duration::from_micros(100));
            self.finish_jobs();
        }
        Ok(())
    }
    fn save_state(&self) -> DeviceState {
        DeviceState::Block(BlockState {
            capacity: self.capacity,
            read_only: self.backend.read_only(),
            id: self.id,
        })
    }
    fn restore_state(&mut self, state: &DeviceState) -> Result<(), PersistError> {
        let DeviceState::Block(saved) = state else {
            return Err(PersistError::WrongState {
                device_type: self.device_type(),
            });
        };
        if saved.capacity != self.capacity || saved.read_only != self.backend.read_only() {
            return Err(PersistError::Mismatch(format!(
                "a disk differs from when the VM was saved ({} bytes{}, now {} bytes{}): give the same image",
                saved.capacity,
                if saved.read_only { ", read-only" } else { "" },
                self.capacity,
                if self.backend.read_only() { ", read-only" } else { "" },
            )));
        }
        self.id = saved.id;
        Ok(())
    }
}

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&self.queue_evt, EventSet::IN));
        let _ = ops.add(Events::new(self.pool.done_evt(), EventSet::IN));
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == self.pool.done_evt().as_raw_fd() {
            self.complete_jobs();
        } else {
            let _ = self.queue_evt.read();
            self.process_queue();
        }
    }
}
