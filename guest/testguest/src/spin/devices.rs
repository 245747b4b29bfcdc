//! Set-up of the devices `spin=` keeps busy: each one's queues as the VMM expects them (every
//! queue the device has must be ready at DRIVER_OK), and the chains its spinner re-publishes.

use crate::virtio::spinner::Spinner;
use crate::virtio::{dma_alloc, Buf, Device, Error, Queue, TYPE_BALLOON, TYPE_RNG, TYPE_VSOCK};

/// Entries per queue (the VMM's devices offer 256).
const QSIZE: u16 = 256;
const PAGE: usize = 4096;

/// Bytes per rng request: small, so the device takes many requests per second.
const RNG_BUF: usize = 64;
/// VIRTIO_BALLOON_F_FREE_PAGE_REPORTING.
const F_REPORTING: u64 = 1 << 5;
/// Guest pages the balloon spinner inflates and reports, over and over.
const BALLOON_PAGES: usize = 4;

/// The vsock header (`struct virtio_vsock_hdr`).
const VSOCK_HDR: usize = 44;
const VSOCK_HOST_CID: u64 = 2;
const VSOCK_TYPE_STREAM: u16 = 1;
const VSOCK_OP_REQUEST: u16 = 1;
/// A host port nothing listens on (the VMM tries to connect `<socket>_<port>` and fails).
const VSOCK_UNBOUND_PORT: u32 = 0x7fff_0001;
/// Receive buffers posted once (the device answers the requests with resets into them).
const VSOCK_RX_BUFS: usize = 8;
const VSOCK_RX_BUF: usize = 4096;

/// Why a device could not be set up.
pub enum SetupError {
    /// No such device on the command line.
    Missing,
    /// The DMA pool is used up.
    NoMemory,
    /// The transport refused something.
    Virtio(Error),
}

impl From<Error> for SetupError {
    fn from(e: Error) -> Self {
        SetupError::Virtio(e)
    }
}

fn alloc(len: usize) -> Result<&'static mut [u8], SetupError> {
    dma_alloc(len).ok_or(SetupError::NoMemory)
}

/// virtio-rng: its one queue, with chains of one device-writable buffer each.
pub fn rng(line: &[u8]) -> Result<Spinner, SetupError> {
    let dev = Device::find(line, TYPE_RNG, 0).ok_or(SetupError::Missing)?;
    dev.negotiate(0)?;
    let q = Queue::new(&dev, 0, QSIZE)?;
    let mem = alloc(4 * RNG_BUF)?;
    let mut bufs = [Buf::out(0, 0); 4];
    for (b, chunk) in bufs.iter_mut().zip(mem.chunks_mut(RNG_BUF)) {
        *b = Buf::input_slice(chunk);
    }
    let chains: [&[Buf]; 4] = core::array::from_fn(|i| core::slice::from_ref(&bufs[i]));
    let s = Spinner::new("rng", q, &chains)?;
    dev.driver_ok();
    Ok(s)
}

/// virtio-balloon: the inflate queue with the PFNs of a few pages of our own, and the free page
/// reporting queue (negotiated when offered) with those same pages as the free range. The
/// deflate queue is set up but left empty. Returns (inflate, reporting if offered).
pub fn balloon(line: &[u8]) -> Result<(Spinner, Option<Spinner>), SetupError> {
    let dev = Device::find(line, TYPE_BALLOON, 0).ok_or(SetupError::Missing)?;
    let feats = dev.negotiate(F_REPORTING)?;
    let inflate = Queue::new(&dev, 0, QSIZE)?;
    let _deflate = Queue::new(&dev, 1, QSIZE)?;
    // The pages the device drops again and again: nothing else uses them.
    let pages = alloc(BALLOON_PAGES * PAGE)?;
    let first_pfn = (pages.as_ptr() as u64 / PAGE as u64) as u32;
    let pfns = alloc(PAGE)?;
    for i in 0..BALLOON_PAGES {
        pfns[4 * i..4 * i + 4].copy_from_slice(&(first_pfn + i as u32).to_le_bytes());
    }
    let pfn_buf = Buf::out(pfns.as_ptr() as u64, (4 * BALLOON_PAGES) as u32);
    let inflate = Spinner::new("balloon-inflate", inflate, &[&[pfn_buf]])?;
    let reporting = if feats & F_REPORTING != 0 {
        let q = Queue::new(&dev, 2, QSIZE)?;
        // Linux reports free ranges as device-writable buffers naming the free pages.
        let range = Buf::input(pages.as_ptr() as u64, (BALLOON_PAGES * PAGE) as u32);
        Some(Spinner::new("balloon-reporting", q, &[&[range]])?)
    } else {
        None
    };
    dev.driver_ok();
    Ok((inflate, reporting))
}

/// A vsock header from the guest `src_cid`.
fn vsock_hdr(buf: &mut [u8], src_cid: u64, dst_cid: u64, src_port: u32, type_: u16, op: u16) {
    buf[..VSOCK_HDR].fill(0);
    buf[0..8].copy_from_slice(&src_cid.to_le_bytes());
    buf[8..16].copy_from_slice(&dst_cid.to_le_bytes());
    buf[16..20].copy_from_slice(&src_port.to_le_bytes());
    buf[20..24].copy_from_slice(&VSOCK_UNBOUND_PORT.to_le_bytes());
    buf[28..30].copy_from_slice(&type_.to_le_bytes());
    buf[30..32].copy_from_slice(&op.to_le_bytes());
    buf[36..40].copy_from_slice(&(64u32 << 10).to_le_bytes()); // buf_alloc
}

/// virtio-vsock: RX gets a few buffers once (for the device's resets), the event queue is set
/// up empty, and the TX spinner sends packets the device must parse: connection requests to an
/// unbound host port (each costs the VMM a failed connect and a reset) and headers it refuses
/// (unknown operation, socket type, destination CID: each answered with a reset).
pub fn vsock(line: &[u8]) -> Result<Spinner, SetupError> {
    let dev = Device::find(line, TYPE_VSOCK, 0).ok_or(SetupError::Missing)?;
    dev.negotiate(0)?;
    let cid = dev.config_u64(0);
    let mut rx = Queue::new(&dev, 0, QSIZE)?;
    let tx = Queue::new(&dev, 1, QSIZE)?;
    let _event = Queue::new(&dev, 2, QSIZE)?;
    let rx_bufs = alloc(VSOCK_RX_BUFS * VSOCK_RX_BUF)?;
    for b in rx_bufs.chunks_mut(VSOCK_RX_BUF) {
        rx.push(&[Buf::input_slice(b)])?;
    }
    // (source port, socket type, operation, destination CID) of each packet.
    let kinds = [
        (
            0x4000_0001,
            VSOCK_TYPE_STREAM,
            VSOCK_OP_REQUEST,
            VSOCK_HOST_CID,
        ),
        (0x4000_0002, VSOCK_TYPE_STREAM, 0x7777, VSOCK_HOST_CID),
        (0x4000_0003, 2, VSOCK_OP_REQUEST, VSOCK_HOST_CID),
        (0x4000_0004, VSOCK_TYPE_STREAM, VSOCK_OP_REQUEST, 99),
    ];
    let mem = alloc(kinds.len() * 64)?;
    let mut bufs = [Buf::out(0, 0); 4];
    for ((b, chunk), (port, type_, op, dst)) in bufs.iter_mut().zip(mem.chunks_mut(64)).zip(kinds) {
        vsock_hdr(chunk, cid, dst, port, type_, op);
        *b = Buf::out(chunk.as_ptr() as u64, VSOCK_HDR as u32);
    }
    let chains: [&[Buf]; 4] = core::array::from_fn(|i| core::slice::from_ref(&bufs[i]));
    let s = Spinner::new("vsock-tx", tx, &chains)?;
    dev.driver_ok();
    Ok(s)
}
