//! Booting: the test guest (plainvm and QEMU), SMP, config files, Linux, and bad input refused.

use plainvm_tests::*;
use std::process::Command;
use std::time::Duration;

const FAST: Duration = Duration::from_secs(30);

#[test]
fn bundled_test_guest_boots_and_powers_off() {
    let o = plainvm(&["run", "--verbose"], FAST);
    assert_eq!(o.status, Some(0), "{}", o.dump());
    assert!(o.stdout.contains("hello from vCPU 0 of 1"), "{}", o.dump());
    assert!(o.stdout.contains("TESTGUEST-OK"), "{}", o.dump());
    // The guest's port-0x80 milestones are timestamped by the VMM.
    for m in ["milestone 1 at", "milestone 2 at", "milestone 3 at"] {
        assert!(o.stderr.contains(m), "missing {m}: {}", o.dump());
    }
}

#[test]
fn test_guest_from_a_file_with_two_vcpus() {
    let dir = scratch("smp");
    let elf = export_testguest(&dir);
    let o = plainvm(
        &["run", "--kernel", elf.to_str().unwrap(), "--cpus", "2"],
        FAST,
    );
    assert_eq!(o.status, Some(0), "{}", o.dump());
    assert!(o.stdout.contains("vcpu 1 alive"), "{}", o.dump());
    assert!(o.stdout.contains("SMP-OK n=2"), "{}", o.dump());
}

#[test]
fn memory_workload_runs_across_the_mmio_gap_sized_vm() {
    // 4 GiB of guest RAM puts 1 GiB above the MMIO gap; the workload checks every page it wrote.
    let o = plainvm(
        &[
            "run",
            "--memory",
            "4G",
            "--cpus",
            "2",
            "--cmdline",
            "memwrite=256 passes=4",
        ],
        FAST,
    );
    assert_eq!(o.status, Some(0), "{}", o.dump());
    assert!(o.stdout.contains("MEMWRITE-DONE passes=4"), "{}", o.dump());
    assert!(!o.stdout.contains("CORRUPT"), "{}", o.dump());
}

#[test]
fn config_file_is_read_and_flags_override_it() {
    let dir = scratch("config");
    let cfg = dir.join("vm.json");
    std::fs::write(&cfg, r#"{"cpus": 3, "memory": "64M", "cmdline": "hello"}"#).unwrap();
    let o = plainvm(&["run", "--config", cfg.to_str().unwrap()], FAST);
    assert_eq!(o.status, Some(0), "{}", o.dump());
    assert!(o.stdout.contains("SMP-OK n=3"), "{}", o.dump());
    let o = plainvm(
        &["run", "--config", cfg.to_str().unwrap(), "--cpus", "2"],
        FAST,
    );
    assert!(o.stdout.contains("SMP-OK n=2"), "{}", o.dump());
    std::fs::write(&cfg, r#"{"cpus": 2, "colour": "blue"}"#).unwrap();
    let o = plainvm(&["run", "--config", cfg.to_str().unwrap()], FAST);
    assert_ne!(o.status, Some(0), "{}", o.dump());
    assert!(o.stderr.contains("colour"), "{}", o.dump());
}

/// Each bad input gets a one-line error naming the problem, a non-zero status, and no panic.
fn refused(args: &[&str], needle: &str) {
    let o = plainvm(args, FAST);
    assert!(
        matches!(o.status, Some(s) if s != 0),
        "{args:?} should fail: {}",
        o.dump()
    );
    assert!(
        o.stderr.contains(needle),
        "{args:?}: expected '{needle}': {}",
        o.dump()
    );
    assert!(!o.stderr.contains("panicked"), "{}", o.dump());
    assert!(!o.stdout.contains("TESTGUEST-OK"), "{}", o.dump());
}

#[test]
fn bad_input_is_refused_with_a_clear_message() {
    let dir = scratch("bad");
    refused(
        &["run", "--kernel", "/nonexistent/vmlinux"],
        "cannot open kernel /nonexistent/vmlinux",
    );
    let text = dir.join("notes.txt");
    std::fs::write(&text, "just some text, not a kernel\n").unwrap();
    refused(
        &["run", "--kernel", text.to_str().unwrap()],
        "neither an ELF vmlinux nor a bzImage",
    );
    let big = dir.join("initrd.img");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(40 << 20)
        .unwrap();
    refused(
        &["run", "--memory", "32M", "--initrd", big.to_str().unwrap()],
        "does not fit",
    );
    refused(
        &["run", "--initrd", "/nonexistent/initrd"],
        "cannot open initrd",
    );
    refused(&["run", "--memory", "4M"], "too small");
    refused(&["run", "--memory", "64T"], "too large");
    refused(&["run", "--memory", "lots"], "invalid memory size");
    let long = "x".repeat(4096);
    refused(&["run", "--cmdline", &long], "command line is 4096 bytes");
    refused(&["run", "--cpus", "0"], "--cpus must be between 1");
    refused(&["run", "--cpu-template", "fast"], "cpu-template");
}

#[test]
fn qemu_microvm_runs_the_same_test_guest_through_pvh() {
    if !have("qemu-system-x86_64") {
        eprintln!("SKIPPED: qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)");
        return;
    }
    let dir = scratch("qemu");
    let elf = export_testguest(&dir);
    let o = run_with_timeout(
        Command::new("qemu-system-x86_64").args([
            "-enable-kvm",
            "-cpu",
            "qemu64,-cx16,-xsave,-smap,-smep,+xsaveerptr",
            "-M",
            "microvm,pit=on,pic=on,rtc=on",
            "-m",
            "128",
            "-smp",
            "1",
            "-nographic",
            "-no-reboot",
            "-nodefaults",
            "-serial",
            "stdio",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-kernel",
            elf.to_str().unwrap(),
            "-append",
            "memwrite=8 passes=2",
        ]),
        Duration::from_secs(60),
    );
    // isa-debug-exit: status = code * 2 + 1, and the guest reports success with code 0.
    assert_eq!(o.status, Some(1), "{}", o.dump());
    assert!(o.stdout.contains("hello from vCPU 0 of 1"), "{}", o.dump());
    assert!(o.stdout.contains("MEMWRITE-DONE passes=2"), "{}", o.dump());
}

/// Linux is slow on hosts that emulate guest ring 0 (minutes), so one boot checks everything:
/// userspace reached, a clean power-off, and #BP injection for the kernel's int3 self-test
/// (this kernel is built without the change that skips it).
#[test]
fn linux_reaches_userspace_and_powers_off() {
    let a = linux_artifacts();
    let o = plainvm(
        &[
            "run",
            "--verbose",
            "--kernel",
            a.vmlinux.to_str().unwrap(),
            "--initrd",
            a.initramfs.to_str().unwrap(),
            "--cmdline",
            &a.cmdline,
            "--cpus",
            "2",
        ],
        Duration::from_secs(600),
    );
    assert_eq!(o.status, Some(0), "{}", o.dump());
    assert!(o.stdout.contains("GUEST-INIT-REACHED"), "{}", o.dump());
    assert!(o.stdout.contains("GUEST-POWEROFF"), "{}", o.dump());
    if plainvm::vcpu::cpuid::host_emulates_ring0() {
        assert!(
            !o.stderr
                .contains("int3 emulation failures answered with #BP: 0"),
            "the kernel's int3 self-test should have needed #BP injection here: {}",
            o.dump()
        );
    }
}
