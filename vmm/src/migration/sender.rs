//! The source side: memory passes while the guest runs, then a short pause for the rest. It
//! works on any `Source` (the VM implements it in `vm::migrate`), so it knows nothing of KVM.

use super::converge::{Hold, Throttle};
use super::frame::{Channel, FrameError, Kind};
use super::pages::{batch_header, MemoryImage, BATCH, PAGE};
use super::progress::{MigrateResult, Phase, Progress};
use crate::memory::slots::DirtyBitmap;
use plainvm_devices::GuestRam;
use serde::{Deserialize, Serialize};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the source sends first: enough for the destination to check it can run the VM.
#[derive(Serialize, Deserialize)]
pub struct Hello {
    #[serde(with = "crate::config::as_json")]
    pub config: crate::config::VmConfig,
    pub cpuid: Vec<kvm_bindings::kvm_cpuid_entry2>,
}

/// A failure of the VM being migrated (pausing it, reading its state or dirty log).
pub type SourceError = Box<dyn std::error::Error + Send + Sync>;

/// The VM being migrated, as the sender needs it.
pub trait Source {
    /// The handshake: configuration and CPUID.
    fn hello(&self) -> Hello;
    /// Guest memory.
    fn memory(&self) -> &GuestRam;
    /// True when guest memory maps a snapshot's memory file (pages not in the page cache
    /// still hold data).
    fn file_backed(&self) -> bool;
    /// Start (or restart) the dirty-page log with nothing in it.
    fn start_dirty_log(&self) -> Result<(), SourceError>;
    /// The pages written since the last call, one bitmap per memory region.
    fn take_dirty(&self) -> Result<Vec<DirtyBitmap>, SourceError>;
    /// True when the VM was paused before the migration.
    fn is_paused(&self) -> bool;
    /// Stop vCPUs and devices.
    fn pause(&self) -> Result<(), SourceError>;
    /// Let them run again.
    fn resume(&self);
    /// The whole VM state, encoded (the VM is paused).
    fn save_state(&self) -> Result<Vec<u8>, SourceError>;
    /// What auto-converge holds.
    fn throttle_target(&self) -> Arc<dyn Hold>;
}

/// How to migrate.
#[derive(Clone, Debug)]
pub struct MigrateOptions {
    pub to: SocketAddr,
    /// The longest acceptable final pause.
    pub downtime: Duration,
    /// Give up (or force the switch, with `force`) after this long.
    pub timeout: Option<Duration>,
    pub force: bool,
    pub key: Option<[u8; 32]>,
}

/// Errors migrating out.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("cannot connect to the destination {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error(transparent)]
    Stream(#[from] FrameError),
    #[error("{0}")]
    Source(SourceError),
    #[error("migration did not converge within {0:?}; cancelled, the VM keeps running here")]
    Timeout(Duration),
    #[error("the link broke at the commit ({0}): the destination may or may not be running the VM. This VM stays PAUSED so that there are never two running copies: check the destination, and only if it is not running, `plainvm resume` here")]
    AtCommit(FrameError),
    #[error("{0}")]
    Busy(String),
}

const MIB: f64 = 1048576.0;

/// Migrate `src` to `opts.to`. On success the VM runs at the destination (the caller ends this
/// copy); on failure before the commit point the VM keeps running here.
pub fn migrate(
    src: &dyn Source,
    opts: &MigrateOptions,
    report: &dyn Fn(&Progress),
) -> Result<MigrateResult, MigrateError> {
    let t0 = Instant::now();
    let was_paused = src.is_paused();
    let stream = TcpStream::connect_timeout(&opts.to, Duration::from_secs(10))
        .map_err(|e| MigrateError::Connect(opts.to, e))?;
    let mut ch = Channel::connect(stream, opts.key.as_ref())?;
    ch.set_timeout(Some(Duration::from_secs(60)))
        .map_err(FrameError::Io)?;
    let hello = bincode::serialize(&src.hello())
        .map_err(|e| FrameError::Corrupt(format!("cannot encode the handshake: {e}")))?;
    ch.send_now(Kind::Hello, &hello)?;
    ch.expect(Kind::Ready, "the destination to get ready")?;

    let img = MemoryImage::new(src.memory()).file_backed(src.file_backed());
    let take_dirty = || -> Result<Vec<u64>, MigrateError> {
        let d = src.take_dirty().map_err(MigrateError::Source)?;
        Ok(img.dirty_pages(&d))
    };
    src.start_dirty_log().map_err(MigrateError::Source)?;

    let throttle = Throttle::start(src.throttle_target());
    let result = passes(
        opts,
        was_paused,
        &mut ch,
        &img,
        &take_dirty,
        &throttle,
        report,
    );
    let max_throttle_percent = throttle.percent();
    throttle.stop();
    let passes = match result {
        Ok(p) => p,
        Err(e) => {
            ch.send_error(&e.to_string());
            if !was_paused {
                src.resume();
            }
            return Err(e);
        }
    };

    // Final phase: stop the guest, send what is left and the device state.
    let paused_at = Instant::now();
    if let Err(e) = src.pause() {
        ch.send_error(&e.to_string());
        return Err(MigrateError::Source(e));
    }
    let before_commit = (|| -> Result<(), MigrateError> {
        let dirty = take_dirty()?;
        send_pages(&mut ch, &img, &dirty, true)?;
        let bytes = src.save_state().map_err(MigrateError::Source)?;
        ch.send(Kind::State, &[&bytes])?;
        ch.flush()?;
        ch.expect(Kind::StateReady, "the destination to load the state")?;
        Ok(())
    })();
    if let Err(e) = before_commit {
        ch.send_error(&e.to_string());
        if !was_paused {
            src.resume();
        }
        return Err(e);
    }
    // The commit point: once the destination has this frame it runs the VM.
    let committed = ch
        .send_now(Kind::Commit, &[])
        .and_then(|_| ch.expect(Kind::Running, "the destination to run"));
    if let Err(e) = committed {
        return Err(MigrateError::AtCommit(e));
    }
    let downtime = paused_at.elapsed();
    let total = t0.elapsed();
    let result = MigrateResult {
        downtime_ms: downtime.as_secs_f64() * 1e3,
        total_ms: total.as_secs_f64() * 1e3,
        passes,
        bytes_sent: ch.bytes_sent,
        bandwidth_mib_s: ch.bytes_sent as f64 / MIB / total.as_secs_f64(),
        max_throttle_percent,
    };
    Ok(result)
}

/// The live passes; returns how many were made.
fn passes(
    opts: &MigrateOptions,
    was_paused: bool,
    ch: &mut Channel,
    img: &MemoryImage,
    take_dirty: &dyn Fn() -> Result<Vec<u64>, MigrateError>,
    throttle: &Throttle,
    report: &dyn Fn(&Progress),
) -> Result<u32, MigrateError> {
    let start = Instant::now();
    let mut progress = Progress {
        phase: Phase::FirstPass,
        pass: 1,
        ..Default::default()
    };
    let first = img.first_pass_pages();
    progress.pages_left = first.len() as u64;
    report(&progress);
    let t = Instant::now();
    send_pages(ch, img, &first, false)?;
    super::fault::crash_at(super::fault::SOURCE_EXIT_IN_PASSES);
    let mut bandwidth = (first.len() * PAGE) as f64 / t.elapsed().as_secs_f64().max(1e-6);
    let mut last_pass_time = t.elapsed();
    let mut prev_dirty = usize::MAX;
    loop {
        let dirty = take_dirty()?;
        let dirty_bytes = (dirty.len() * PAGE) as f64;
        let estimate = Duration::from_secs_f64(dirty_bytes / bandwidth);
        progress = Progress {
            phase: Phase::DirtyPages,
            pass: progress.pass + 1,
            pages_left: dirty.len() as u64,
            dirty_rate_mib_s: dirty_bytes / MIB / last_pass_time.as_secs_f64().max(1e-6),
            bandwidth_mib_s: bandwidth / MIB,
            estimated_downtime_ms: estimate.as_secs_f64() * 1e3,
            throttle_percent: throttle.percent(),
            bytes_sent: ch.bytes_sent,
        };
        report(&progress);
        // A VM paused before the migration changes nothing: no need for more passes.
        if estimate <= opts.downtime || was_paused {
            // Send this pass live; the final phase sends what the guest dirties meanwhile.
            return finish_with(ch, img, &dirty, progress.pass);
        }
        if let Some(limit) = opts.timeout {
            if start.elapsed() >= limit {
                if opts.force {
                    return finish_with(ch, img, &dirty, progress.pass);
                }
                return Err(MigrateError::Timeout(limit));
            }
        }
        // Not converging: the guest dirties about as much as a pass sends.
        if progress.pass >= 3 && dirty.len() * 10 >= prev_dirty * 8 {
            throttle.increase(20);
        }
        prev_dirty = dirty.len();
        let t = Instant::now();
        send_pages(ch, img, &dirty, true)?;
        last_pass_time = t.elapsed();
        let pass_bw = dirty_bytes / last_pass_time.as_secs_f64().max(1e-6);
        // Small passes measure latency more than bandwidth: only let big ones lower it.
        if dirty.len() >= 1024 || pass_bw > bandwidth {
            bandwidth = 0.5 * bandwidth + 0.5 * pass_bw;
        }
    }
}

/// Send the pages of the last live pass before the final phase (they were taken from the log).
fn finish_with(
    ch: &mut Channel,
    img: &MemoryImage,
    dirty: &[u64],
    pass: u32,
) -> Result<u32, MigrateError> {
    send_pages(ch, img, dirty, true)?;
    Ok(pass)
}

/// Send `pages` in batches; with `zeros`, pages that are all zero go as offsets only.
fn send_pages(
    ch: &mut Channel,
    img: &MemoryImage,
    pages: &[u64],
    zeros: bool,
) -> Result<(), MigrateError> {
    let mut data_offs = Vec::with_capacity(BATCH);
    let mut zero_offs = Vec::new();
    for chunk in pages.chunks(BATCH) {
        data_offs.clear();
        let mut parts: Vec<&[u8]> = Vec::with_capacity(BATCH + 1);
        for &off in chunk {
            let Some(p) = img.read(off) else { continue };
            if zeros && p.iter().all(|&b| b == 0) {
                zero_offs.push(off);
            } else {
                data_offs.push(off);
                parts.push(p);
            }
        }
        if !data_offs.is_empty() {
            let header = batch_header(&data_offs);
            parts.insert(0, &header);
            ch.send(Kind::Pages, &parts)?;
        }
        if zero_offs.len() >= BATCH {
            ch.send(Kind::Zeros, &[&batch_header(&zero_offs)])?;
            zero_offs.clear();
        }
    }
    if !zero_offs.is_empty() {
        ch.send(Kind::Zeros, &[&batch_header(&zero_offs)])?;
    }
    ch.send(Kind::PassEnd, &[])?;
    ch.flush()?;
    Ok(())
}
