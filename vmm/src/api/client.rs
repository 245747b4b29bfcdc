//! The CLI's API client: one HTTP/1.1 request over the VM's unix socket.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Errors talking to a VM's API.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the VM's API socket {path}: {source} (is the VM running, and is this its --api-sock?)")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("API request failed: {0}")]
    Io(std::io::Error),
    #[error("the process serving {path} runs as user {uid}, neither root nor you: not sending it anything (is --api-sock the VM's socket?)")]
    Stranger { path: PathBuf, uid: u32 },
    #[error("the API answered something that is not HTTP + JSON: {0}")]
    BadResponse(String),
    #[error("{message}")]
    Api { status: u16, message: String },
}

/// Longest answer read (ours are a few KiB).
const MAX_ANSWER: u64 = 16 << 20;

/// The user id of the process at the other end of `s` (SO_PEERCRED).
fn peer_uid(s: &UnixStream) -> std::io::Result<u32> {
    use std::os::unix::io::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, which lives across the call.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// Send `method path` with an optional typed `body`; read the 2xx answer as an `R`.
pub fn call<B: Serialize, R: DeserializeOwned>(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&B>,
    timeout: Duration,
) -> Result<R, ClientError> {
    let v = request(sock, method, path, body, timeout)?;
    serde_json::from_value(v.clone()).map_err(|_| ClientError::BadResponse(v.to_string()))
}

/// Send `method path` with an optional JSON `body`; return the JSON answer of a 2xx response.
pub fn request<B: Serialize>(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&B>,
    timeout: Duration,
) -> Result<Value, ClientError> {
    let mut s = UnixStream::connect(sock).map_err(|source| ClientError::Connect {
        path: sock.to_path_buf(),
        source,
    })?;
    // A request may carry a secret (a migration key): only to a server run by root or by us.
    let uid = peer_uid(&s).map_err(ClientError::Io)?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if uid != 0 && uid != me {
        return Err(ClientError::Stranger {
            path: sock.to_path_buf(),
            uid,
        });
    }
    s.set_read_timeout(Some(timeout)).map_err(ClientError::Io)?;
    let body = match body {
        Some(b) => serde_json::to_string(b).map_err(|e| ClientError::BadResponse(e.to_string()))?,
        None => String::new(),
    };
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    // A server that refuses a connection (503) answers and closes it without reading the
    // request: the write, or the read after the answer, may fail with the answer there to read.
    let written = s.write_all(req.as_bytes());
    let mut raw = Vec::new();
    let read = (&mut s).take(MAX_ANSWER).read_to_end(&mut raw);
    if !raw.windows(4).any(|w| w == b"\r\n\r\n") {
        written.map_err(ClientError::Io)?;
        read.map_err(ClientError::Io)?;
    }
    let resp = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = resp
        .split_once("\r\n\r\n")
        .ok_or_else(|| ClientError::BadResponse(resp.clone()))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| ClientError::BadResponse(head.to_string()))?;
    let json_text = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    let value: Value = serde_json::from_str(json_text.trim())
        .map_err(|_| ClientError::BadResponse(json_text.clone()))?;
    if !(200..300).contains(&status) {
        let message = value
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("unknown error")
            .to_string();
        return Err(ClientError::Api { status, message });
    }
    Ok(value)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}
