//! I/O worker threads: reads that must wait for the disk (the page cache cannot serve them) and
//! flushes run here, several at once, off the device event loop, which serves everything else
//! inline and completes these when a worker reports back.

use super::backend::RawFile;
use super::request::Segment;
use crate::lock;
use crate::GuestRam;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use vm_memory::bitmap::Bitmap;
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Worker threads per disk.
pub const WORKERS: usize = 4;

/// What a job does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobOp {
    Read,
    Write,
    /// Make every write completed so far durable (`fdatasync`: it waits for the disk).
    Flush,
}

/// A read, write or flush handed to a worker.
pub struct Job {
    /// Chain head, status byte address, used length on success: handed back in `Done`.
    pub head: u16,
    pub status_addr: GuestAddress,
    pub used_len: u32,
    /// Queue generation when submitted (completions of an older generation are dropped).
    pub generation: u64,
    pub op: JobOp,
    pub offset: u64,
    /// Host buffers inside guest RAM (from `GuestRam` slices).
    pub iov: Vec<libc::iovec>,
    /// The guest segments behind `iov` (to mark them dirty after a read).
    pub segments: Vec<Segment>,
    /// Keeps the guest memory mapped while the job runs.
    pub mem: GuestRam,
}

// SAFETY: the raw pointers in `iov` point into guest RAM mappings that `mem` (moved along with
// the job) keeps alive; nothing else in a Job is tied to a thread.
unsafe impl Send for Job {}

/// A finished job.
pub struct Done {
    pub head: u16,
    pub status_addr: GuestAddress,
    pub used_len: u32,
    pub generation: u64,
    pub ok: bool,
}

/// The worker threads of one disk and their completion list.
pub struct Pool {
    jobs: Option<Sender<Job>>,
    done: Arc<Mutex<Vec<Done>>>,
    done_evt: EventFd,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Pool {
    /// Starts `WORKERS` threads doing I/O on `backend`.
    pub fn new(backend: Arc<RawFile>) -> std::io::Result<Self> {
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let done = Arc::new(Mutex::new(Vec::new()));
        let done_evt = EventFd::new(EFD_NONBLOCK)?;
        let mut threads = Vec::with_capacity(WORKERS);
        for i in 0..WORKERS {
            let (rx, done, evt, backend) = (
                rx.clone(),
                done.clone(),
                done_evt.try_clone()?,
                backend.clone(),
            );
            threads.push(
                std::thread::Builder::new()
                    .name(format!("blk-io-{i}"))
                    .spawn(move || work(&rx, &done, &evt, &backend))?,
            );
        }
        Ok(Self {
            jobs: Some(tx),
            done,
            done_evt,
            threads,
        })
    }

    /// Queues a job; false if the workers are gone (the caller then fails the request).
    pub fn submit(&self, job: Job) -> bool {
        self.jobs.as_ref().is_some_and(|tx| tx.send(job).is_ok())
    }

    /// The eventfd that becomes readable when jobs finish.
    pub fn done_evt(&self) -> &EventFd {
        &self.done_evt
    }

    /// Takes the finished jobs.
    pub fn take_done(&self) -> Vec<Done> {
        let _ = self.done_evt.read();
        std::mem::take(&mut *lock(&self.done))
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.jobs = None; // workers see the channel close and exit
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn work(rx: &Mutex<Receiver<Job>>, done: &Mutex<Vec<Done>>, evt: &EventFd, backend: &RawFile) {
    crate::thread_start::started(crate::thread_start::DeviceThread::BlockIo);
    loop {
        let job = match lock(rx).recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        let mut iov = job.iov;
        let r = match job.op {
            JobOp::Read => backend.read_at(&mut iov, job.offset),
            JobOp::Write => backend.write_at(&mut iov, job.offset),
            JobOp::Flush => backend.flush(),
        };
        if job.op == JobOp::Read && r.is_ok() {
            for seg in &job.segments {
                for slice in
                    GuestMemoryBackend::get_slices(&job.mem, seg.addr, seg.len as usize).flatten()
                {
                    slice.bitmap().mark_dirty(0, slice.len());
                }
            }
        }
        lock(done).push(Done {
            head: job.head,
            status_addr: job.status_addr,
            used_len: job.used_len,
            generation: job.generation,
            ok: r.is_ok(),
        });
        let _ = evt.write(1);
    }
}
