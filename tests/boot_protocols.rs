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

/// Ring-0 code that fails (`ud2`: the guest triple-faults) unless CPUID shows the safe template
/// in force, then prints the command line from the zero page (RSI) and a newline.
fn safe_cpuid_checks() -> Vec<u8> {
    const FAIL: u8 = 0xff; // placeholder for the rel32 to the ud2 at the end
    let mut c: Vec<u8> = Vec::new();
    let mut jumps = Vec::new();
    let mut check = |c: &mut Vec<u8>, leaf: u32, test: &[u8], mask: u32, jcc: u8| {
        c.push(0xb8); // mov eax, leaf
        c.extend(leaf.to_le_bytes());
        c.extend([0x31, 0xc9, 0x0f, 0xa2]); // xor ecx, ecx; cpuid
        c.extend(test); // test/cmp reg, imm32
        c.extend(mask.to_le_bytes());
        c.extend([0x0f, jcc]); // jcc fail
        jumps.push(c.len());
        c.extend([FAIL; 4]);
    };
    check(&mut c, 0, &[0x3d], 0xd, 0x83); // max basic leaf: cmp eax, 0xd; jae
    check(&mut c, 1, &[0xf7, 0xc1], 1 << 13, 0x85); // CX16: test ecx; jnz
    check(&mut c, 7, &[0xf7, 0xc3], (1 << 7) | (1 << 20), 0x85); // SMEP, SMAP: test ebx
    check(&mut c, 7, &[0xf7, 0xc1], 1 << 2, 0x85); // UMIP: test ecx
    c.extend([0x8b, 0x9e, 0x28, 0x02, 0, 0]); // mov ebx, [rsi + 0x228] (cmd_line_ptr)
    c.extend([0x66, 0xba, 0xf8, 0x03]); // mov dx, 0x3f8
    c.extend([0x8a, 0x03, 0x84, 0xc0, 0x74, 0x06]); // L: mov al,[rbx]; test al,al; jz out
    c.extend([0xee, 0x48, 0xff, 0xc3, 0xeb, 0xf4]); // out dx,al; inc rbx; jmp L
    c.extend([0xb0, 0x0a, 0xee]); // out: mov al, '\n'; out dx, al
    c.extend([0xeb, 0x02]); // jmp past the ud2
    let fail = c.len();
    c.extend([0x0f, 0x0b]); // fail: ud2
    for at in jumps {
        let rel = (fail - (at + 4)) as i32;
        c[at..at + 4].copy_from_slice(&rel.to_le_bytes());
    }
    c
}

/// The safe template takes effect in (emulated) ring 0: no XSAVE leaf, no CX16, SMEP, SMAP or
/// UMIP. What a host's KVM forces into the CPUID whatever the template says (this machine's
/// `kvm_pvm`: POPCNT, see vmm/src/cpuid.rs) reaches a Linux guest's command line as
/// `clearcpuid=`, once, and not when the user gave one.
#[test]
fn safe_template_takes_effect_in_ring0_and_the_rest_goes_to_the_command_line() {
    let dir = scratch("safecpuid");
    let path = dir.join("kernel");
    std::fs::write(
        &path,
        payload::elf(&payload::code("CPUID-SAFE ", &safe_cpuid_checks())),
    )
    .unwrap();
    let kernel = path.to_str().unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "--cpu-template", "safe", "--kernel", kernel];
        args.extend(extra);
        plainvm(&args, Duration::from_secs(30))
    };
    let o = run(&[]);
    assert_eq!(o.status, Some(0), "{}", o.dump());
    let line = o
        .stdout
        .lines()
        .find_map(|l| l.split_once("CPUID-SAFE "))
        .map(|(_, cmdline)| cmdline.to_string())
        .unwrap_or_else(|| panic!("no command line printed: {}", o.dump()));
    assert_eq!(
        line.matches("clearcpuid=").count(),
        usize::from(plainvm::vcpu::cpuid::host_emulates_ring0()),
        "{line}"
    );
    if plainvm::vcpu::cpuid::host_emulates_ring0() {
        assert!(line.contains("clearcpuid=popcnt"), "{line}");
        for hidden in ["cx16", "xsave", "smep", "smap", "umip"] {
            assert!(
                !line.contains(hidden),
                "the template hides {hidden} itself: {line}"
            );
        }
    }
    let o = run(&["--cmdline", "console=ttyS0 clearcpuid=cx16"]);
    assert_eq!(o.status, Some(0), "{}", o.dump());
    assert!(
        o.stdout
            .contains("CPUID-SAFE console=ttyS0 clearcpuid=cx16\n"),
        "{}",
        o.dump()
    );
}
