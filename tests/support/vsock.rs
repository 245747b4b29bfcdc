//! The host side of plainvm's vsock convention: connect to the device's unix socket and ask for a
//! guest port with `CONNECT <port>`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Connect into the guest's port through the vsock socket and have `msg` echoed; retried
/// while the guest's listener is not up yet (the guest resets, the device closes the stream).
pub fn echo_from_guest(
    sock: &Path,
    port: u32,
    msg: &str,
    limit: Duration,
) -> Result<String, String> {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < limit {
        let attempt = || -> std::io::Result<Option<String>> {
            let mut s = UnixStream::connect(sock)?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            s.write_all(format!("CONNECT {port}\n").as_bytes())?;
            let mut r = BufReader::new(s.try_clone()?);
            let mut line = String::new();
            r.read_line(&mut line)?;
            if !line.starts_with("OK ") {
                return Ok(None);
            }
            s.write_all(msg.as_bytes())?;
            s.shutdown(std::net::Shutdown::Write)?;
            let mut reply = String::new();
            r.read_to_string(&mut reply)?;
            Ok(Some(reply))
        };
        match attempt() {
            Ok(Some(reply)) => return Ok(reply),
            Ok(None) => last = "the guest refused".into(),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    Err(last)
}
