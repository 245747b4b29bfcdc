//! Shared helpers for the integration tests: find the plainvm binary and guest artifacts, run VMs.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The plainvm binary built alongside these tests (`cargo test --workspace` builds it).
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
        "{} is missing: run the tests with `cargo test --workspace` (it builds the binary) or set PLAINVM_BIN",
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

/// True when a program is on PATH.
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}
