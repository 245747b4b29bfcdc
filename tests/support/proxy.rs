//! A one-connection TCP proxy between a migration's source and destination that damages or
//! slows the source-to-destination direction.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

/// What the test proxy does to the source's stream.
#[derive(Clone, Copy)]
pub enum Proxy {
    FlipAt(usize),
    CutAt(usize),
    /// Forward at most this many bytes per second (a slow link).
    Rate(u64),
}

/// A one-connection TCP proxy to `real` that damages the source-to-destination direction.
pub fn proxy(real: &str, mode: Proxy) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let front = l.local_addr().unwrap().to_string();
    let real = real.to_string();
    std::thread::spawn(move || {
        let (mut a, _) = l.accept().unwrap();
        let mut b = TcpStream::connect(&real).unwrap();
        let (mut a2, mut b2) = (a.try_clone().unwrap(), b.try_clone().unwrap());
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut b2, &mut a2);
        });
        let mut buf = [0u8; 65536];
        let mut total = 0usize;
        let started = std::time::Instant::now();
        loop {
            let n = match a.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            match mode {
                Proxy::FlipAt(at) if total <= at && at < total + n => buf[at - total] ^= 0x55,
                Proxy::CutAt(at) if total + n > at => {
                    let _ = b.write_all(&buf[..at - total]);
                    break;
                }
                Proxy::Rate(bps) => {
                    let due = Duration::from_secs_f64(total as f64 / bps as f64);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
                _ => {}
            }
            if b.write_all(&buf[..n]).is_err() {
                break;
            }
            total += n;
        }
        let _ = b.shutdown(std::net::Shutdown::Both);
        let _ = a.shutdown(std::net::Shutdown::Both);
    });
    front
}
