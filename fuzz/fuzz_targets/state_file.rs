//! A snapshot's state file: the raw file (magic, version, length, CRC), and — wrapped in a
//! valid header and CRC so decoding is reached — the VM state inside it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plainvm::snapshot::state_file;
use plainvm::vm::state::VmState;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let _ = state_file::decode(data, Path::new("fuzz"));
    let wrapped = state_file::encode(data);
    if let Ok(payload) = state_file::decode(&wrapped, Path::new("fuzz")) {
        if let Ok(state) = VmState::decode(payload) {
            let _ = state.config.check();
        }
    }
});
