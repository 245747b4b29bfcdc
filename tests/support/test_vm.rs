//! The one test-VM harness: a plainvm process (or any command wrapping it, e.g. in a network
//! namespace) whose console and messages go to a file; tests wait for text anywhere in it
//! (`wait_for`) or line by line in order (`wait_line`, shown live with `--nocapture`). Killed
//! when dropped, so a failing test leaves no VM behind.

use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running test VM.
pub struct TestVm {
    child: Child,
    out: PathBuf,
    /// How far `wait_line` has read.
    cursor: u64,
    started: Instant,
}

impl TestVm {
    /// Start `plainvm <args>`, writing its stdout and stderr to `out`.
    pub fn start(args: &[&str], out: &Path) -> Self {
        Self::start_env(args, out, &[])
    }

    /// `start` with extra environment variables.
    pub fn start_env(args: &[&str], out: &Path, env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(crate::plainvm_bin());
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self::start_cmd(&mut cmd, out)
    }

    /// Start any command (e.g. plainvm inside `ip netns exec`), capturing its output to `out`.
    pub fn start_cmd(cmd: &mut Command, out: &Path) -> Self {
        let f = std::fs::File::create(out).expect("console capture file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("dup capture file"))
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Self {
            child,
            out: out.to_path_buf(),
            cursor: 0,
            started: Instant::now(),
        }
    }

    /// Start `cmd` with its output in a fresh scratch file (for tests that read it line by line).
    pub fn live(cmd: &mut Command) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = crate::scratch(&format!("live-{n}"));
        Self::start_cmd(cmd, &dir.join("console"))
    }

    /// Everything the VM printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// The output, for assertion messages.
    pub fn dump(&self) -> String {
        self.output()
    }

    /// True once the process has ended (it is a zombie until `wait` reaps it).
    fn ended(&self) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()));
        let state = stat
            .ok()
            .and_then(|s| s.rfind(')').map(|i| s[i + 1..].trim_start().chars().next()));
        !matches!(state, Some(Some(c)) if c != 'Z' && c != 'X')
    }

    /// Wait until the output contains `text` anywhere; panics with the output after `limit`,
    /// or as soon as the process has ended without printing it.
    pub fn wait_for(&self, text: &str, limit: Duration) {
        let start = Instant::now();
        while !self.output().contains(text) {
            assert!(
                start.elapsed() < limit,
                "'{text}' did not appear within {limit:?}:\n{}",
                self.output()
            );
            if self.ended() {
                std::thread::sleep(Duration::from_millis(100)); // its last output
                assert!(
                    self.output().contains(text),
                    "the VM ended without printing '{text}':\n{}",
                    self.output()
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait for the next complete line (after the last one this returned) that contains
    /// `needle`, and return it; lines on the way are shown (live with `--nocapture`).
    pub fn wait_line(&mut self, needle: &str, limit: Duration) -> String {
        let end = Instant::now() + limit;
        loop {
            if let Some(line) = self.next_line() {
                eprintln!("[{:7.1}s] {line}", self.started.elapsed().as_secs_f64());
                if line.contains(needle) {
                    return line;
                }
                continue;
            }
            assert!(
                Instant::now() < end,
                "no line with '{needle}' within {limit:?}:\n{}",
                self.output()
            );
            if self.ended() && self.next_line_pending().is_none() {
                panic!(
                    "the VM ended without a line with '{needle}':\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether a complete line is waiting after the cursor (without taking it).
    fn next_line_pending(&mut self) -> Option<()> {
        let cursor = self.cursor;
        let line = self.next_line();
        self.cursor = cursor;
        line.map(|_| ())
    }

    /// The next complete line after the cursor, if one is there.
    fn next_line(&mut self) -> Option<String> {
        let mut f = std::fs::File::open(&self.out).ok()?;
        f.seek(SeekFrom::Start(self.cursor)).ok()?;
        let mut line = Vec::new();
        let n = BufReader::new(f).read_until(b'\n', &mut line).ok()?;
        if n == 0 || line.last() != Some(&b'\n') {
            return None;
        }
        self.cursor += n as u64;
        Some(String::from_utf8_lossy(&line).trim_end().to_string())
    }

    /// Wait for the process to end (up to `limit`) and return its exit status.
    pub fn wait(&mut self, limit: Duration) -> Option<i32> {
        let start = Instant::now();
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            if start.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Wait for the process to end (killing it after `limit`): its status and whole output.
    pub fn finish(mut self, limit: Duration) -> (Option<i32>, String) {
        let status = self.wait(limit);
        if status.is_none() {
            self.kill();
        }
        (status, self.output())
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kill it now (SIGKILL).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TestVm {
    fn drop(&mut self) {
        self.kill();
    }
}
