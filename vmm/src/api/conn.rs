//! One API connection, on its own thread: read the request before its deadline, answer it, then
//! linger briefly so the client reads the answer before the socket closes.

use super::http::{read_request, write_response, Request};
use super::limits::{Limits, MAX_CONNECTIONS, WRITE_TIME};
use super::routes::Reply;
use super::slots::Slot;
use std::io::{self, Read};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// Reads from a stream until a deadline: each read waits at most the time left, and once it is
/// past every read fails with `TimedOut`. A client that trickles a byte at a time gets no more
/// time than one that sends nothing.
pub struct Deadline<'a> {
    stream: &'a UnixStream,
    until: Instant,
}

impl<'a> Deadline<'a> {
    /// Reading `stream` for at most `time` from now.
    pub fn new(stream: &'a UnixStream, time: Duration) -> Self {
        Self {
            stream,
            until: Instant::now() + time,
        }
    }
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        let mut s = self.stream;
        s.read(buf)
    }
}

/// The answer to a connection that was closed to make room for a newer one.
pub fn evicted_reply() -> Reply {
    Reply::error(
        503,
        format!("too many API connections (at most {MAX_CONNECTIONS}): this one had not sent its request and was closed to make room; send the request right after connecting"),
    )
}

/// The answer to a connection refused because every slot is busy answering.
pub fn refused_reply() -> Reply {
    Reply::error(
        503,
        format!("too many API connections (at most {MAX_CONNECTIONS}) are being answered: retry when one has finished"),
    )
}

/// Read one request on `stream` within `time` and `limits`, answer it with `route` (not called
/// for a bad request, nor when the connection was evicted), then shut the writing side. Nothing
/// is written to a client that closed without sending anything.
pub fn answer(
    stream: &UnixStream,
    slot: &Slot,
    time: Duration,
    limits: &Limits,
    route: impl FnOnce(&Request) -> Reply,
) {
    let reply = match read_request(&mut Deadline::new(stream, time), limits) {
        Ok(req) if slot.begin_answer() => route(&req),
        Ok(_) => evicted_reply(),
        Err(_) if slot.evicted() => evicted_reply(),
        Err(e) => match e.status() {
            Some(status) => Reply::error(status, &e),
            None => return,
        },
    };
    let _ = stream.set_write_timeout(Some(WRITE_TIME));
    let mut w = stream;
    let _ = write_response(&mut w, reply.status, &reply.body);
    let _ = stream.shutdown(Shutdown::Write);
    slot.end_answer();
}

/// Read and drop what the client still sends, for at most `time` and `bytes`, so that closing
/// does not discard the answer on the client's side (a unix socket closed with unread data makes
/// the client's next read fail). Ends at once when the client closes or the connection is
/// evicted.
pub fn linger(stream: &UnixStream, time: Duration, bytes: usize) {
    let mut r = Deadline::new(stream, time);
    let mut buf = [0u8; 16 << 10];
    let mut total = 0;
    while total < bytes {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::slots::{Admit, Slots};
    use std::io::Write;

    const L: Limits = Limits {
        head_bytes: 1024,
        headers: 8,
        body_bytes: 64,
    };

    fn slot(slots: &std::sync::Arc<Slots>, s: &UnixStream) -> Slot {
        match slots.admit(s) {
            Admit::Serve(slot) => slot,
            Admit::Refuse => panic!("refused"),
        }
    }

    /// Serve `server` on a thread (answering 200 with the path), with `time` to read.
    fn spawn(server: UnixStream, time: Duration) -> std::thread::JoinHandle<Duration> {
        let slots = Slots::new(4);
        std::thread::spawn(move || {
            let start = Instant::now();
            let s = slot(&slots, &server);
            answer(&server, &s, time, &L, |r| Reply::ok(&r.path));
            linger(&server, Duration::from_millis(500), 1 << 20);
            start.elapsed()
        })
    }

    fn read_all(mut s: &UnixStream) -> String {
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn a_request_is_answered_and_the_connection_closed() {
        let (client, server) = UnixStream::pair().unwrap();
        let t = spawn(server, Duration::from_secs(5));
        (&client)
            .write_all(b"GET /vm HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        let out = read_all(&client);
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.contains("Content-Type: application/json\r\n"), "{out}");
        assert!(out.ends_with("\r\n\r\n\"/vm\""), "{out}");
        drop(client);
        assert!(t.join().unwrap() < Duration::from_secs(2));
    }

    #[test]
    fn a_trickling_client_gets_408_at_the_deadline() {
        let (client, server) = UnixStream::pair().unwrap();
        let t = spawn(server, Duration::from_millis(300));
        let writer = std::thread::spawn({
            let client = client.try_clone().unwrap();
            move || {
                // One header byte every 20 ms: each read returns in time, the whole never does.
                let _ = (&client).write_all(b"GET /vm HTTP/1.1\r\nX: ");
                for _ in 0..100 {
                    if (&client).write_all(b"a").is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        });
        let out = read_all(&client);
        assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
        assert!(out.contains("\"error\""), "{out}");
        let took = t.join().unwrap();
        assert!(took < Duration::from_millis(1500), "{took:?}");
        writer.join().unwrap();
    }

    #[test]
    fn a_too_large_body_is_answered_413_and_the_client_reads_it_whole() {
        let (client, server) = UnixStream::pair().unwrap();
        let t = spawn(server, Duration::from_secs(5));
        let writer = std::thread::spawn({
            let client = client.try_clone().unwrap();
            move || {
                let _ = (&client).write_all(b"PUT /vm HTTP/1.1\r\nContent-Length: 300000\r\n\r\n");
                let _ = (&client).write_all(&vec![b'x'; 300_000]);
            }
        });
        // Lingering drains the body, so the client sees the answer and a clean end, no reset.
        let mut out = Vec::new();
        (&client).read_to_end(&mut out).unwrap();
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with("HTTP/1.1 413 "), "{out}");
        writer.join().unwrap();
        drop(client);
        t.join().unwrap();
    }

    #[test]
    fn a_silent_client_that_closes_gets_nothing() {
        let (client, server) = UnixStream::pair().unwrap();
        let t = spawn(server, Duration::from_secs(5));
        client.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_all(&client), "");
        t.join().unwrap();
    }

    #[test]
    fn an_evicted_connection_is_told_503() {
        let slots = Slots::new(1);
        let (client, server) = UnixStream::pair().unwrap();
        let first = slot(&slots, &server);
        let t = std::thread::spawn(move || {
            answer(&server, &first, Duration::from_secs(5), &L, |_| {
                panic!("an evicted connection is not routed")
            });
        });
        std::thread::sleep(Duration::from_millis(50));
        let (_c2, s2) = UnixStream::pair().unwrap();
        let _second = slot(&slots, &s2);
        let out = read_all(&client);
        assert!(out.starts_with("HTTP/1.1 503 "), "{out}");
        assert!(out.contains("closed to make room"), "{out}");
        t.join().unwrap();
    }
}
