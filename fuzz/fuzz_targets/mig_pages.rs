//! A migration receiver's page batches (`Pages` and `Zeros` payloads) applied to guest memory
//! with a hole in it: offsets out of range, wrapping, unaligned, and lengths that lie.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plainvm::migration::pages::MemoryImage;
use plainvm_devices::GuestRam;
use vm_memory::GuestAddress;

fuzz_target!(|data: &[u8]| {
    thread_local! {
        static MEM: GuestRam = GuestRam::from_ranges(&[
            (GuestAddress(0), 256 << 10),
            (GuestAddress(1 << 32), 64 << 10),
        ])
        .unwrap();
    }
    MEM.with(|mem| {
        let img = MemoryImage::new(mem);
        let (kind, payload) = data.split_first().unwrap_or((&0, &[]));
        let _ = if kind & 1 == 0 {
            img.apply_pages(payload)
        } else {
            img.apply_zeros(payload)
        };
    });
});
