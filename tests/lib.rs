//! Shared helpers for the integration tests: find the plainvm binary and guest artifacts, run VMs.

pub mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The plainvm binary the tests run (`cargo build --workspace` builds it; `.ci/run` does so first).
pub fn plainvm_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PLAINVM_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/plainvm
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("plainvm"))
        .expect("target directory");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build --workspace` before the tests (as .ci/run does) or set PLAINVM_BIN",
        bin.display()
    );
    bin
}

/// What a finished process left behind.
#[derive(Debug)]
pub struct Outcome {
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Outcome {
    /// Both streams, for assertion messages.
    pub fn dump(&self) -> String {
        format!(
            "status {:?} after {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.status, self.elapsed, self.stdout, self.stderr
        )
    }
}

/// Run `cmd` with no stdin, killing it after `limit`; a test never hangs on a stuck guest.
pub fn run_with_timeout(cmd: &mut Command, limit: Duration) -> Outcome {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let err_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for child") {
            break st.code();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Outcome {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
        elapsed: start.elapsed(),
    }
}

/// `plainvm <args>` with a time limit.
pub fn plainvm(args: &[&str], limit: Duration) -> Outcome {
    run_with_timeout(Command::new(plainvm_bin()).args(args), limit)
}

/// `plainvm <args> --api-sock <sock>`, within 60 s.
pub fn api(args: &[&str], sock: &std::path::Path) -> Outcome {
    let mut a = args.to_vec();
    a.extend_from_slice(&["--api-sock", sock.to_str().unwrap()]);
    plainvm(&a, std::time::Duration::from_secs(60))
}

/// Wait (up to 60 s) until the VM at `sock` answers its API.
pub fn wait_api(sock: &std::path::Path) {
    let start = std::time::Instant::now();
    while api(&["info"], sock).status != Some(0) {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "the API at {} never answered",
            sock.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A fresh scratch directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("plainvm-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// The bundled test guest written to `dir`.
pub fn export_testguest(dir: &Path) -> PathBuf {
    let p = dir.join("testguest.elf");
    let o = plainvm(
        &["export-testguest", "--out", p.to_str().expect("utf-8 path")],
        Duration::from_secs(10),
    );
    assert_eq!(o.status, Some(0), "{}", o.dump());
    p
}

/// Cached Linux guest artifacts built by resources/build-guest.sh.
pub struct LinuxArtifacts {
    pub vmlinux: PathBuf,
    pub initramfs: PathBuf,
    pub rootfs: PathBuf,
    pub cmdline: String,
}

/// Find the Linux guest artifacts (PLAINVM_CACHE, default /var/cache/plainvm). Panics with the
/// command to build them when they are missing: the Linux tests must not pass by skipping.
pub fn linux_artifacts() -> LinuxArtifacts {
    let cache = PathBuf::from(
        std::env::var_os("PLAINVM_CACHE").unwrap_or_else(|| "/var/cache/plainvm".into()),
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let a = LinuxArtifacts {
        vmlinux: cache.join("vmlinux"),
        initramfs: cache.join("initramfs.cpio"),
        rootfs: cache.join("rootfs.ext4"),
        cmdline: std::fs::read_to_string(root.join("resources/cmdline"))
            .expect("resources/cmdline")
            .trim()
            .to_string(),
    };
    for p in [&a.vmlinux, &a.initramfs] {
        assert!(
            p.exists(),
            "{} is missing: build the guest artifacts with resources/build-guest.sh",
            p.display()
        );
    }
    a
}

/// Serializes Linux-guest tests within one test binary: each boot takes most of the (2-core)
/// machine for ~30 s, and running several at once makes all of them slow enough to time out.
pub fn linux_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// True when a program is on PATH.
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Tiny hand-assembled 64-bit ring-0 payloads in the two Linux image formats, for testing the
/// boot protocols without a (slow) Linux boot. The code checks RSI points at a zero page with the
/// "HdrS" magic, prints `msg` on the serial port, runs `extra` (raw instruction bytes), then
/// asks for a reset through the i8042 (port 0x64 <- 0xfe).
pub mod payload {
    /// Offset of `extra` in the code (the RIP an emulation failure there reports, from the entry).
    pub const EXTRA_OFFSET: u64 = 35;

    /// The machine code.
    pub fn code(msg: &str, extra: &[u8]) -> Vec<u8> {
        let mut c = Vec::new();
        let msg_off = 41 + extra.len() as i32;
        c.extend([0x48, 0x8d, 0x1d]); // lea rbx, [rip + msg]
        c.extend((msg_off - 7).to_le_bytes());
        c.extend([0x66, 0xba, 0xf8, 0x03]); // mov dx, 0x3f8
        c.extend([0x81, 0xbe, 0x02, 0x02, 0, 0]); // cmp dword [rsi + 0x202], "HdrS"
        c.extend(0x5372_6448u32.to_le_bytes());
        c.extend([0x75, 12]); // jne done
        c.extend([0x8a, 0x03, 0x84, 0xc0, 0x74, 0x06]); // L: mov al,[rbx]; test al,al; jz done
        c.extend([0xee, 0x48, 0xff, 0xc3, 0xeb, 0xf4]); // out dx,al; inc rbx; jmp L
        assert_eq!(c.len() as u64, EXTRA_OFFSET);
        c.extend(extra); // done:
        c.extend([0xb0, 0xfe, 0xe6, 0x64, 0xeb, 0xfe]); // mov al,0xfe; out 0x64,al; jmp $
        c.extend(msg.as_bytes());
        c.push(0);
        c
    }

    /// A bzImage whose protected-mode part is loaded at 1 MiB, 64-bit entry at +0x200.
    pub fn bzimage(code: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 1024 + 0x200];
        f[0x1f1] = 1; // setup_sects: the setup part is 2 sectors
        f[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        f[0x202..0x206].copy_from_slice(b"HdrS");
        f[0x206..0x208].copy_from_slice(&0x020cu16.to_le_bytes());
        f[0x211] = 1; // loadflags: LOADED_HIGH
        f[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
        f.extend(code);
        f
    }

    /// A 64-bit ELF with one segment at 1 MiB and no notes (so: the 64-bit Linux boot protocol).
    pub fn elf(code: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 0x1000];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2; // 64-bit
        f[5] = 1; // little endian
        f[6] = 1; // version
        f[16..18].copy_from_slice(&2u16.to_le_bytes()); // executable
        f[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
        f[20..24].copy_from_slice(&1u32.to_le_bytes());
        f[24..32].copy_from_slice(&0x10_0000u64.to_le_bytes()); // entry
        f[32..40].copy_from_slice(&64u64.to_le_bytes()); // program headers
        f[52..54].copy_from_slice(&64u16.to_le_bytes());
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&1u16.to_le_bytes());
        let ph = &mut f[64..120];
        ph[0..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        ph[4..8].copy_from_slice(&5u32.to_le_bytes()); // R+X
        ph[8..16].copy_from_slice(&0x1000u64.to_le_bytes()); // offset
        ph[16..24].copy_from_slice(&0x10_0000u64.to_le_bytes()); // vaddr
        ph[24..32].copy_from_slice(&0x10_0000u64.to_le_bytes()); // paddr
        ph[32..40].copy_from_slice(&(code.len() as u64).to_le_bytes());
        ph[40..48].copy_from_slice(&(code.len() as u64).to_le_bytes());
        ph[48..56].copy_from_slice(&0x1000u64.to_le_bytes());
        f.extend(code);
        f
    }
}

pub use support::test_vm::TestVm;

/// The pass number of a `memwrite pass=N ok[ gen=G]` line.
fn memwrite_pass(line: &str) -> Option<u64> {
    line.strip_prefix("memwrite pass=")?
        .split(' ')
        .next()?
        .parse()
        .ok()
}

/// The highest `memwrite pass=N ok` the test guest printed in `output`.
pub fn last_memwrite_pass(output: &str) -> u64 {
    output.lines().filter_map(memwrite_pass).max().unwrap_or(0)
}

/// The first `memwrite pass=N ok` in `output`.
pub fn first_memwrite_pass(output: &str) -> u64 {
    output.lines().find_map(memwrite_pass).unwrap_or(0)
}

/// The `gen=G` of the last memwrite line that shows one.
pub fn last_generation(output: &str) -> Option<u64> {
    output
        .lines()
        .rev()
        .filter(|l| l.starts_with("memwrite pass="))
        .find_map(|l| l.split(" gen=").nth(1)?.trim().parse().ok())
}
