//! HTTP/1.1 on the API socket: read one request from any reader within [`Limits`] (a pure
//! function of the bytes it reads, so it is tested and fuzzed without a socket or a VM), and
//! write one answer. One request per connection; the answer says `Connection: close`.

use super::limits::Limits;
use std::io::{self, Read, Write};

/// A request as the router sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The request target as sent (path and query).
    pub path: String,
    pub body: Vec<u8>,
}

/// Why no request could be read; [`HttpError::status`] is the answer to send.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("the connection closed before a request arrived")]
    Closed,
    #[error("the connection ended inside the request: send the whole head and Content-Length bytes of body")]
    Truncated,
    #[error("the request line and headers exceed {0} bytes: send fewer or shorter headers")]
    HeadTooLarge(usize),
    #[error("the request has more than {0} headers: send fewer")]
    TooManyHeaders(usize),
    #[error(
        "malformed HTTP/1.1 request ({0}): send `METHOD /path HTTP/1.1`, headers, an empty line"
    )]
    Malformed(httparse::Error),
    #[error("Content-Length {0:?} is not one decimal number: send the body's length in bytes")]
    BadLength(String),
    #[error("the request body ({0} bytes) exceeds {1} bytes")]
    BodyTooLarge(String, usize),
    #[error("Transfer-Encoding is not accepted: send the body with a Content-Length")]
    TransferEncoding,
    #[error("no complete request arrived in time: send the whole request right after connecting")]
    Timeout,
    #[error("cannot read the request: {0}")]
    Io(io::Error),
}

impl HttpError {
    /// The status to answer with; `None` when there is no one to answer.
    pub fn status(&self) -> Option<u16> {
        Some(match self {
            HttpError::Closed => return None,
            HttpError::Truncated
            | HttpError::Malformed(_)
            | HttpError::BadLength(_)
            | HttpError::Io(_) => 400,
            HttpError::HeadTooLarge(_) | HttpError::TooManyHeaders(_) => 431,
            HttpError::BodyTooLarge(..) => 413,
            HttpError::TransferEncoding => 411,
            HttpError::Timeout => 408,
        })
    }
}

/// Read one request from `r`: the head (at most `limits.head_bytes`, `limits.headers`), then
/// exactly `Content-Length` bytes of body (at most `limits.body_bytes`, checked before any of the
/// body is read). Bytes after the body are left unread or ignored. A read that times out
/// (`WouldBlock` or `TimedOut`) is [`HttpError::Timeout`]. Never panics, never allocates more than
/// the limits, whatever the reader yields.
pub fn read_request(r: &mut impl Read, limits: &Limits) -> Result<Request, HttpError> {
    let mut buf = vec![0u8; limits.head_bytes];
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            return Err(HttpError::HeadTooLarge(limits.head_bytes));
        }
        let n = read_some(r, &mut buf[filled..])?;
        if n == 0 {
            return Err(if filled == 0 {
                HttpError::Closed
            } else {
                HttpError::Truncated
            });
        }
        let new = filled..filled + n;
        filled += n;
        // A head ends with a line feed: parse only when one arrived (a trickling client does
        // not make the server parse the whole buffer again for every byte).
        if !buf[new].contains(&b'\n') {
            continue;
        }
        if let Some(head) = parse_head(&buf[..filled], limits)? {
            let start = head.len.min(filled);
            let body = read_body(r, &buf[start..filled], head.content_length)?;
            return Ok(Request {
                method: head.method,
                path: head.path,
                body,
            });
        }
    }
}

/// A complete head.
struct Head {
    method: String,
    path: String,
    content_length: usize,
    /// Its length in bytes (the body starts there).
    len: usize,
}

/// The head if `buf` holds a complete one, `None` if more is needed.
fn parse_head(buf: &[u8], limits: &Limits) -> Result<Option<Head>, HttpError> {
    let mut headers = vec![httparse::EMPTY_HEADER; limits.headers];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HttpError::TooManyHeaders(limits.headers))
        }
        Err(e) => return Err(HttpError::Malformed(e)),
    };
    let mut content_length: Option<usize> = None;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::TransferEncoding);
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = parse_length(h.value, limits)?;
            if content_length.is_some_and(|c| c != n) {
                return Err(HttpError::BadLength("several different values".to_string()));
            }
            content_length = Some(n);
        }
    }
    Ok(Some(Head {
        method: req.method.unwrap_or_default().to_string(),
        path: req.path.unwrap_or_default().to_string(),
        content_length: content_length.unwrap_or(0),
        len,
    }))
}

/// A Content-Length value: ASCII digits only (no sign, no list), at most `limits.body_bytes`.
fn parse_length(value: &[u8], limits: &Limits) -> Result<usize, HttpError> {
    let text = String::from_utf8_lossy(value);
    let digits = text.trim_matches(|c| c == ' ' || c == '\t');
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HttpError::BadLength(shorten(&text)));
    }
    // All digits: a value that does not fit a usize is certainly too large.
    match digits.parse::<usize>() {
        Ok(n) if n <= limits.body_bytes => Ok(n),
        _ => Err(HttpError::BodyTooLarge(shorten(digits), limits.body_bytes)),
    }
}

/// At most 40 characters of a client's text, for an error message.
fn shorten(s: &str) -> String {
    match s.char_indices().nth(40) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// `len` bytes of body: `have` (read with the head; anything past `len` is dropped), then the
/// rest from `r`. `len` is already within the limit.
fn read_body(r: &mut impl Read, have: &[u8], len: usize) -> Result<Vec<u8>, HttpError> {
    let mut body = vec![0u8; len];
    let start = have.len().min(len);
    body[..start].copy_from_slice(&have[..start]);
    let mut filled = start;
    while filled < len {
        match read_some(r, &mut body[filled..])? {
            0 => return Err(HttpError::Truncated),
            n => filled += n,
        }
    }
    Ok(body)
}

/// One read, retried when interrupted; a timeout is [`HttpError::Timeout`]. A reader that claims
/// more bytes than the buffer holds counts as having filled it.
fn read_some(r: &mut impl Read, buf: &mut [u8]) -> Result<usize, HttpError> {
    loop {
        match r.read(buf) {
            Ok(n) => return Ok(n.min(buf.len())),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(HttpError::Timeout)
            }
            Err(e) => return Err(HttpError::Io(e)),
        }
    }
}

/// The reason phrase of the statuses the API uses.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// The bytes of an answer: status line, `Content-Type: application/json`, `Content-Length`,
/// `Connection: close`, then `body`.
pub fn response_bytes(status: u16, body: &str) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason(status),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// Write an answer (see [`response_bytes`]) in one write.
pub fn write_response(w: &mut impl Write, status: u16, body: &str) -> io::Result<()> {
    w.write_all(&response_bytes(status, body))?;
    w.flush()
}

#[cfg(test)]
mod tests;
