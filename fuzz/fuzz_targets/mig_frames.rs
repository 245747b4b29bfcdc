//! A migration destination reading a hostile stream from the first byte: the preamble (keyed or
//! not), frames with their checksums and authentication, the handshake, memory passes into
//! guest memory, and the VM state that ends them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plainvm::migration::frame::Channel;
use plainvm::migration::receiver::Incoming;
use plainvm::vm::state::VmState;
use plainvm_devices::GuestRam;
use vm_memory::GuestAddress;

fuzz_target!(|data: &[u8]| {
    let (mode, stream) = data.split_first().unwrap_or((&0, &[]));
    let key = [0x42u8; 32];
    let key = (mode & 1 == 1).then_some(&key);
    let mut ch = Channel::over(
        Box::new(std::io::Cursor::new(stream.to_vec())),
        Box::new(std::io::sink()),
        None,
    );
    if ch.handshake_destination(key).is_err() {
        return;
    }
    let mut incoming = Incoming::over(ch);
    let Ok(hello) = incoming.hello() else {
        return;
    };
    let _ = hello.config.check();
    let mem = GuestRam::from_ranges(&[(GuestAddress(0), 128 << 10)]).unwrap();
    if let Ok(state) = incoming.receive_memory(&mem) {
        let _ = VmState::decode(&state);
    }
});
