//! The Linux boot protocols (bzImage, 64-bit ELF without PVH) and emulation-failure reports,
//! with tiny hand-made kernels instead of a slow Linux boot.

use plainvm_tests::*;
use std::time::Duration;

fn boot(name: &str, image: Vec<u8>) -> Outcome {
    let dir = scratch(name);
    let path = dir.join("kernel");
    std::fs::write(&path, image).unwrap();
    plainvm(
        &["run", "--kernel", path.to_str().unwrap()],
        Duration::from_secs(30),
    )
}

#[test]
fn bzimage_boots_through_the_64bit_protocol() {
    let o = boot("bz", payload::bzimage(&payload::code("BZIMAGE-OK", &[])));
    assert_eq!(o.status, Some(0), "{}", o.dump());
    assert!(o.stdout.contains("BZIMAGE-OK"), "{}", o.dump());
}

#[test]
fn elf_without_pvh_note_boots_through_the_64bit_protocol() {
    let o = boot("elf64", payload::elf(&payload::code("ELF64-OK", &[])));
    assert_eq!(o.status, Some(0), "{}", o.dump());
    assert!(o.stdout.contains("ELF64-OK"), "{}", o.dump());
}

#[test]
fn truncated_bzimage_is_refused() {
    let mut image = payload::bzimage(&payload::code("X", &[]));
    image.truncate(0x300);
    let o = boot("bztrunc", image);
    assert_eq!(o.status, Some(1), "{}", o.dump());
    assert!(o.stderr.contains("bzImage"), "{}", o.dump());
    assert!(!o.stderr.contains("panicked"), "{}", o.dump());
}

/// On hosts whose KVM emulates guest ring 0, an instruction the emulator lacks (cmpxchg16b)
/// must end the VM with the RIP and the instruction bytes, not hang or crash the VMM.
#[test]
fn emulation_failure_reports_rip_and_instruction_bytes() {
    let cmpxchg16b_rsi = [0x48, 0x0f, 0xc7, 0x0e];
    let o = boot("emu", payload::elf(&payload::code("EMU", &cmpxchg16b_rsi)));
    if !plainvm::vcpu::cpuid::host_emulates_ring0() {
        // Hardware virtualization runs it; the guest then resets normally.
        assert_eq!(o.status, Some(0), "{}", o.dump());
        return;
    }
    assert_eq!(o.status, Some(1), "{}", o.dump());
    let rip = format!("RIP {:#x}", 0x10_0000 + payload::EXTRA_OFFSET);
    assert!(o.stderr.contains(&rip), "expected {rip}: {}", o.dump());
    assert!(
        o.stderr.contains("instruction bytes [48 0f c7 0e"),
        "{}",
        o.dump()
    );
}
