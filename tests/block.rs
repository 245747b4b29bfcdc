//! virtio-blk: the ring-3 test guest's polling driver against plainvm's device (selftest,
//! read-only disks, data visible in the host file, config file), bad --disk input refused. (Linux
//! with its ext4 root on virtio-blk across two boots runs on the emulated AMD-V host:
//! tests/hw_host.rs, virtio.sh.)

use plainvm_tests::*;
use std::path::Path;
use std::time::Duration;

const FAST: Duration = Duration::from_secs(30);

/// Byte `i` of sector `sector` of the pattern `blk-selftest` writes to sectors 0..64 (mirrors
/// `pattern_byte` in guest/testguest/src/blk_workload.rs).
fn pattern_byte(sector: u64, i: usize) -> u8 {
    match i {
        0..8 => b"PVBLKSEC"[i],
        8..16 => sector.to_le_bytes()[i - 8],
        _ => (sector as u8).wrapping_mul(31) ^ (i as u8),
    }
}

fn assert_pattern(img: &Path) {
    let data = std::fs::read(img).unwrap();
    for (i, &b) in data[..64 * 512].iter().enumerate() {
        let want = pattern_byte(i as u64 / 512, i % 512);
        assert_eq!(b, want, "byte {i} of {} differs", img.display());
    }
}

/// A writable 1 MiB image of zeros and a read-only 64 KiB image of 0x5a bytes.
fn images(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
    let rw = dir.join("rw.img");
    std::fs::write(&rw, vec![0u8; 1 << 20]).unwrap();
    let ro = dir.join("ro.img");
    let ro_data = vec![0x5au8; 64 << 10];
    std::fs::write(&ro, &ro_data).unwrap();
    (rw, ro, ro_data)
}

#[test]
fn test_guest_selftest_writes_the_host_file_and_the_read_only_disk_refuses() {
    let dir = scratch("blk-selftest");
    let (rw, ro, ro_data) = images(&dir);
    let o = plainvm(
        &[
            "run",
            "--cmdline",
            "blk-selftest",
            "--disk",
            &format!("path={},id=blk-test-0", rw.display()),
            "--disk",
            &format!("path={},readonly=on", ro.display()),
        ],
        FAST,
    );
    assert_eq!(o.status, Some(0), "{}", o.dump());
    let out = &o.stdout;
    assert!(out.contains("BLK-SELFTEST-OK disks=2"), "{}", o.dump());
    assert!(
        out.contains("BLK-ID disk=0 id=blk-test-0 capacity=2048 ro=0 flush=1"),
        "{}",
        o.dump()
    );
    assert!(
        out.contains("BLK-ID disk=1 id= capacity=128 ro=1"),
        "{}",
        o.dump()
    );
    assert!(out.contains("BLK-RW-OK disk=0"), "{}", o.dump());
    assert!(
        out.contains("BLK-RO-REFUSED disk=1 status=1"),
        "{}",
        o.dump()
    );
    // What the guest wrote is in the host file; the read-only image is untouched.
    assert_pattern(&rw);
    assert_eq!(std::fs::read(&ro).unwrap(), ro_data);
}

#[test]
fn disks_from_the_config_file() {
    let dir = scratch("blk-config");
    let (rw, ro, ro_data) = images(&dir);
    let cfg = dir.join("vm.json");
    let json = format!(
        r#"{{"cmdline": "blk-selftest", "disks": [{{"path": "{}", "id": "from-json"}}, {{"path": "{}", "readonly": true}}]}}"#,
        rw.display(),
        ro.display()
    );
    std::fs::write(&cfg, json).unwrap();
    let o = plainvm(&["run", "--config", cfg.to_str().unwrap()], FAST);
    assert_eq!(o.status, Some(0), "{}", o.dump());
    assert!(o.stdout.contains("BLK-SELFTEST-OK disks=2"), "{}", o.dump());
    assert!(
        o.stdout.contains("BLK-ID disk=0 id=from-json"),
        "{}",
        o.dump()
    );
    assert!(o.stdout.contains("BLK-RO-REFUSED disk=1"), "{}", o.dump());
    assert_pattern(&rw);
    assert_eq!(std::fs::read(&ro).unwrap(), ro_data);
}

#[test]
fn bad_disk_input_is_refused_with_a_clear_error() {
    let dir = scratch("blk-bad");
    let img = dir.join("ok.img");
    std::fs::write(&img, vec![0u8; 4096]).unwrap();
    let missing = dir.join("missing.img");
    let cases: Vec<(String, &str)> = vec![
        (format!("path={}", missing.display()), "missing.img"),
        (format!("path={}", dir.display()), "is a directory"),
        ("readonly=on".into(), "path=IMG"),
        (
            format!("path={},readonly=maybe", img.display()),
            "readonly=",
        ),
        (format!("path={},size=3", img.display()), "path=IMG"),
        (
            format!("path={},id=this-id-is-far-too-long", img.display()),
            "longer than 20 bytes",
        ),
    ];
    for (arg, want) in cases {
        let o = plainvm(&["run", "--cmdline", "exit-now", "--disk", &arg], FAST);
        assert_ne!(o.status, Some(0), "--disk {arg} was accepted: {}", o.dump());
        assert!(o.status.is_some(), "--disk {arg} hung: {}", o.dump());
        assert!(o.stderr.contains(want), "--disk {arg}: {}", o.dump());
        assert!(!o.stderr.contains("panicked"), "{}", o.dump());
    }
    // A read-only file the VMM may not open for writing needs readonly=on.
    let cfg = dir.join("vm.json");
    std::fs::write(&cfg, r#"{"disks": [{"path": ""}]}"#).unwrap();
    let o = plainvm(&["run", "--config", cfg.to_str().unwrap()], FAST);
    assert_ne!(o.status, Some(0), "{}", o.dump());
    assert!(o.stderr.contains("empty path"), "{}", o.dump());
}
