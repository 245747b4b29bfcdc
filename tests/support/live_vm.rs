//! A VM process whose console (and plainvm's own messages on stderr) is read line by line as it
//! arrives, for tests that react to what the guest prints (shown live with `--nocapture`).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

/// plainvm running with its console streamed line by line; killed on drop.
pub struct LiveVm {
    child: Child,
    lines: Receiver<String>,
    log: Vec<String>,
    stderr: std::thread::JoinHandle<String>,
    started: Instant,
}

impl LiveVm {
    pub fn start(cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start plainvm");
        let out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let (tx, lines) = channel::<String>();
        let tx_err = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // plainvm's own messages (stderr) are waited for like console lines, marked as such.
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            for line in BufReader::new(&mut err).lines() {
                let Ok(line) = line else { break };
                let _ = tx_err.send(format!("[stderr] {line}"));
                s.push_str(&line);
                s.push('\n');
            }
            s
        });
        Self {
            child,
            lines,
            log: Vec::new(),
            stderr,
            started: Instant::now(),
        }
    }

    /// Wait for a console line containing `needle`; returns it.
    pub fn wait_for(&mut self, needle: &str, limit: Duration) -> String {
        let end = Instant::now() + limit;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    // Shown live with --nocapture, and with the failure otherwise.
                    eprintln!("[{:7.1}s] {line}", self.started.elapsed().as_secs_f64());
                    self.log.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!("no '{needle}' within {limit:?}:\n{}", self.dump()),
            }
        }
    }

    pub fn dump(&mut self) -> String {
        while let Ok(l) = self.lines.try_recv() {
            self.log.push(l);
        }
        self.log.join("\n")
    }

    /// Wait for the process to exit; its status.
    pub fn finish(mut self, limit: Duration) -> (Option<i32>, String, String) {
        let end = Instant::now() + limit;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s.code();
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The reader thread ends with the pipe.
        let end = Instant::now() + Duration::from_secs(5);
        while let Ok(l) = self
            .lines
            .recv_timeout(end.saturating_duration_since(Instant::now()))
        {
            self.log.push(l);
        }
        let log = self.log.join("\n");
        let stderr = std::mem::replace(&mut self.stderr, std::thread::spawn(String::new));
        (status, log, stderr.join().unwrap_or_default())
    }
}

impl Drop for LiveVm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
