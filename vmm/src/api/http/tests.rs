//! The request parser against every limit, malformed and truncated input, timeouts, and a
//! property-style loop over random, mutated and truncated byte sequences.

use super::*;
use std::io;

/// Small limits, so the tests reach them with little data.
const L: Limits = Limits {
    head_bytes: 256,
    headers: 8,
    body_bytes: 64,
};

/// Yields `data` in reads of at most `chunk` bytes, then EOF (or `end` if given).
struct Chunks<'a> {
    data: &'a [u8],
    chunk: usize,
    end: Option<io::ErrorKind>,
}

impl Read for Chunks<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.data.is_empty() {
            return match self.end {
                Some(kind) => Err(kind.into()),
                None => Ok(0),
            };
        }
        let n = self.chunk.max(1).min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fn parse_chunked(data: &[u8], chunk: usize, limits: &Limits) -> Result<Request, HttpError> {
    read_request(
        &mut Chunks {
            data,
            chunk,
            end: None,
        },
        limits,
    )
}

/// `data` read at once and byte by byte must give the same result; return it.
fn parse(data: &[u8]) -> Result<Request, HttpError> {
    let whole = parse_chunked(data, usize::MAX, &L);
    let bytewise = parse_chunked(data, 1, &L);
    assert_eq!(
        format!("{whole:?}"),
        format!("{bytewise:?}"),
        "{:?}",
        String::from_utf8_lossy(data)
    );
    whole
}

fn status(data: &[u8]) -> Option<u16> {
    match parse(data) {
        Ok(_) => Some(200),
        Err(e) => e.status(),
    }
}

#[test]
fn reads_the_requests_the_cli_and_the_tests_send() {
    let r = parse(b"GET /vm HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 0\r\n\r\n").unwrap();
    assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", "/vm"));
    assert!(r.body.is_empty());
    let r = parse(b"PATCH /vm HTTP/1.1\r\nConnection: close\r\nContent-Length: 19\r\n\r\n{\"state\":\"Asleep\"}\n").unwrap();
    assert_eq!(r.body, b"{\"state\":\"Asleep\"}\n");
    let r = parse(b"GET /nothing HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
    assert_eq!(r.path, "/nothing");
    let r = parse(b"PUT /snapshot/create?x=1 HTTP/1.0\ncontent-LENGTH:  5 \n\n{oops").unwrap();
    assert_eq!(
        (r.method.as_str(), r.path.as_str(), &r.body[..]),
        ("PUT", "/snapshot/create?x=1", &b"{oops"[..])
    );
    // Bytes after the body are not part of it; a repeated equal length is fine.
    let r = parse(b"PUT /a HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nokGET /b HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(r.body, b"ok");
}

#[test]
fn head_and_header_count_limits_answer_431() {
    let head = |filler: usize| {
        let mut h = b"GET /vm HTTP/1.1\r\nX: ".to_vec();
        h.extend(std::iter::repeat_n(b'a', filler));
        h.extend(b"\r\n\r\n");
        h
    };
    let base = head(0).len();
    assert_eq!(status(&head(L.head_bytes - base)), Some(200));
    assert_eq!(status(&head(L.head_bytes - base + 1)), Some(431));
    // An endless header: the parser stops at the limit, however much more there is.
    let endless = [&b"GET /vm HTTP/1.1\r\nX: "[..], &[b'a'; 100_000]].concat();
    assert!(matches!(parse(&endless), Err(HttpError::HeadTooLarge(256))));
    // Endless empty lines before the request line are no way around it.
    assert_eq!(status(&vec![b'\n'; 10_000]), Some(431));

    let headers = |n: usize| {
        let mut h = b"GET /vm HTTP/1.1\r\n".to_vec();
        for _ in 0..n {
            h.extend(b"h:v\r\n");
        }
        h.extend(b"\r\n");
        h
    };
    assert_eq!(status(&headers(L.headers)), Some(200));
    assert!(matches!(
        parse(&headers(L.headers + 1)),
        Err(HttpError::TooManyHeaders(8))
    ));
    assert!(matches!(
        parse_chunked(&headers(1000), 4096, &Limits::API),
        Err(HttpError::TooManyHeaders(64))
    ));
}

#[test]
fn body_limit_answers_413_before_reading_the_body() {
    let req = |len: &str, body: &[u8]| {
        [
            format!("PUT /vm HTTP/1.1\r\nContent-Length: {len}\r\n\r\n").as_bytes(),
            body,
        ]
        .concat()
    };
    assert_eq!(parse(&req("64", &[b'x'; 64])).unwrap().body.len(), 64);
    assert_eq!(status(&req("65", &[b'x'; 65])), Some(413));
    // The body is never waited for: the reader has none of it, and a read past the head fails.
    for len in [
        "65",
        "1000000000000000",
        "18446744073709551615",
        "18446744073709551616",
        &"9".repeat(200),
    ] {
        let head = req(len, b"");
        let mut r = Chunks {
            data: &head,
            chunk: 7,
            end: Some(io::ErrorKind::Other),
        };
        let e = read_request(&mut r, &L).unwrap_err();
        assert!(matches!(e, HttpError::BodyTooLarge(..)), "{len}: {e}");
        assert_eq!(e.status(), Some(413));
        assert!(e.to_string().len() < 200, "{e}");
    }
    // The real limit: 64 KiB.
    let big = req(&(64 << 10).to_string(), &vec![b'x'; 64 << 10]);
    assert!(parse_chunked(&big, 4096, &Limits::API).is_ok());
    let big = req(&((64 << 10) + 1).to_string(), &[]);
    assert!(matches!(
        parse_chunked(&big, 4096, &Limits::API),
        Err(HttpError::BodyTooLarge(..))
    ));
}

#[test]
fn lengths_that_are_not_one_number_and_chunked_bodies_are_refused() {
    for bad in ["abc", "-1", "+5", "5, 5", "", "0x10", "1 2", "５"] {
        let r = format!("PUT /vm HTTP/1.1\r\nContent-Length: {bad}\r\n\r\n12345");
        assert!(
            matches!(parse(r.as_bytes()), Err(HttpError::BadLength(_))),
            "{bad}"
        );
    }
    assert_eq!(
        status(b"PUT /vm HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"),
        Some(400)
    );
    for te in ["chunked", "gzip, chunked", "identity"] {
        let r =
            format!("PUT /vm HTTP/1.1\r\nTransfer-Encoding: {te}\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
        assert_eq!(status(r.as_bytes()), Some(411), "{te}");
    }
}

#[test]
fn malformed_truncated_and_silent_requests() {
    for bad in [
        &b"GET\r\n\r\n"[..],
        b"GET /vm\r\n\r\n",
        b"GET /vm HTTP/2.0\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"G(T /vm HTTP/1.1\r\n\r\n",
        b"GET /vm HTTP/1.1\r\nNo colon\r\n\r\n",
        b"GET /vm HTTP/1.1\r\nBad Name: v\r\n\r\n",
        b"GET /v m HTTP/1.1\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n",
    ] {
        assert!(
            matches!(parse(bad), Err(HttpError::Malformed(_))),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    assert!(matches!(parse(b""), Err(HttpError::Closed)));
    assert_eq!(HttpError::Closed.status(), None);
    assert!(matches!(
        parse(b"GET /vm HTTP/1.1\r\nHost"),
        Err(HttpError::Truncated)
    ));
    assert!(matches!(
        parse(b"PUT /vm HTTP/1.1\r\nContent-Length: 10\r\n\r\n12345"),
        Err(HttpError::Truncated)
    ));
}

#[test]
fn a_read_that_times_out_is_408_and_interruptions_are_retried() {
    for kind in [io::ErrorKind::WouldBlock, io::ErrorKind::TimedOut] {
        for data in [
            &b""[..],
            b"GET /vm HTTP/1.1\r\n",
            b"PUT /vm HTTP/1.1\r\nContent-Length: 3\r\n\r\n1",
        ] {
            let mut r = Chunks {
                data,
                chunk: 5,
                end: Some(kind),
            };
            let e = read_request(&mut r, &L).unwrap_err();
            assert!(matches!(e, HttpError::Timeout), "{e}");
            assert_eq!(e.status(), Some(408));
        }
    }
    /// Interrupted before every read.
    struct Jumpy<'a>(Chunks<'a>, bool);
    impl Read for Jumpy<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.1 = !self.1;
            if self.1 {
                return Err(io::ErrorKind::Interrupted.into());
            }
            self.0.read(buf)
        }
    }
    let data = b"PUT /vm HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
    let mut r = Jumpy(
        Chunks {
            data,
            chunk: 3,
            end: None,
        },
        false,
    );
    assert_eq!(read_request(&mut r, &L).unwrap().body, b"abc");
}

#[test]
fn a_reader_that_lies_about_its_count_cannot_make_it_panic() {
    struct Liar(usize);
    impl Read for Liar {
        fn read(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
            Ok(self.0)
        }
    }
    for n in [1, 100, usize::MAX] {
        // Claims of bytes that are zeros: malformed or too large, never a panic.
        assert!(read_request(&mut Liar(n), &L).is_err());
    }
}

#[test]
fn answers_carry_json_type_length_and_close() {
    let mut out = Vec::new();
    write_response(&mut out, 413, "{\"error\":\"x\"}").unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "HTTP/1.1 413 Content Too Large\r\nContent-Type: application/json\r\nContent-Length: 13\r\nConnection: close\r\n\r\n{\"error\":\"x\"}"
    );
    assert!(response_bytes(200, "{}").starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert!(response_bytes(599, "").starts_with(b"HTTP/1.1 599 \r\n"));
}

/// xorshift64*: reproducible pseudo-random numbers without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Check what any input may produce: a request within the limits or an error with an answer.
fn check(data: &[u8], chunk: usize) {
    match parse_chunked(data, chunk, &L) {
        Ok(r) => {
            assert!(r.body.len() <= L.body_bytes);
            assert!(r.method.len() + r.path.len() <= L.head_bytes);
        }
        Err(e) => {
            assert!(
                e.status().is_some() || matches!(e, HttpError::Closed),
                "{e}"
            );
        }
    }
}

#[test]
fn no_byte_sequence_makes_it_panic() {
    let seeds: [&[u8]; 5] = [
        b"GET /vm HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        b"PATCH /vm HTTP/1.1\r\nContent-Length: 19\r\n\r\n{\"state\":\"Paused\"}\n",
        b"PUT /migrate HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n{\"to\":\"tcp:h:1\"}    ",
        b"PUT /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"GET / HTTP/1.0\n\n",
    ];
    // Every truncation of every seed, read at once and byte by byte.
    for seed in seeds {
        for end in 0..=seed.len() {
            let _ = parse(&seed[..end]);
        }
    }
    let alphabet = b"\r\n :\t0123456789GETPUT/HTTP1.-,Content-Length\x00\x7f\xff";
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20_000 {
        let mut data: Vec<u8> = seeds[rng.below(seeds.len())].to_vec();
        for _ in 0..1 + rng.below(8) {
            let at = rng.below(data.len() + 1);
            match rng.below(6) {
                0 if at < data.len() => data[at] = rng.next() as u8,
                1 if at < data.len() => {
                    data.remove(at);
                }
                2 => data.insert(at, alphabet[rng.below(alphabet.len())]),
                3 => {
                    let run = vec![alphabet[rng.below(alphabet.len())]; rng.below(300)];
                    data.splice(at..at, run);
                }
                4 => data.truncate(at),
                _ => {
                    let len = rng.below(40);
                    let digits: Vec<u8> = (0..len).map(|_| b'0' + rng.below(10) as u8).collect();
                    data.splice(at..at, digits);
                }
            }
        }
        check(&data, 1 + rng.below(64));
    }
    // Pure noise.
    for _ in 0..5_000 {
        let data: Vec<u8> = (0..rng.below(600)).map(|_| rng.next() as u8).collect();
        check(&data, 1 + rng.below(600));
    }
}
