//! Live migration: a running VM moves to another plainvm over TCP while it keeps running.
//! The protocol is documented in docs/migration.md.

pub mod converge;
pub mod fault;
pub mod frame;
pub mod pages;
pub mod progress;
pub mod receiver;
pub mod sender;

use std::net::SocketAddr;

/// Errors common to both ends.
#[derive(Debug, thiserror::Error)]
pub enum AddrError {
    #[error(
        "'{0}' is not a migration address: use tcp:HOST:PORT (or PORT to listen on 127.0.0.1)"
    )]
    Bad(String),
    #[error("'{0}' names a host: the VMM's API runs under a seccomp filter that does not resolve names; give an IP address (tcp:ADDR:PORT; `plainvm migrate` resolves names itself)")]
    NotAnAddress(String),
}

/// Where `receive` listens: `PORT` (127.0.0.1, this host only), `tcp:PORT`, or `tcp:ADDR:PORT`.
pub fn parse_listen(s: &str) -> Result<SocketAddr, AddrError> {
    let rest = s.strip_prefix("tcp:").unwrap_or(s);
    match rest.parse::<u16>() {
        Ok(port) => Ok(SocketAddr::from(([127, 0, 0, 1], port))),
        Err(_) => parse_tcp(&format!("tcp:{rest}")),
    }
}

/// Parse `tcp:HOST:PORT`.
pub fn parse_tcp(s: &str) -> Result<SocketAddr, AddrError> {
    use std::net::ToSocketAddrs;
    let rest = s
        .strip_prefix("tcp:")
        .ok_or_else(|| AddrError::Bad(s.into()))?;
    rest.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| AddrError::Bad(s.into()))
}

/// Parse `tcp:ADDR:PORT` with ADDR an IP address, without resolving any name (what a filtered
/// thread can do).
pub fn parse_tcp_address(s: &str) -> Result<SocketAddr, AddrError> {
    let rest = s
        .strip_prefix("tcp:")
        .ok_or_else(|| AddrError::Bad(s.into()))?;
    rest.parse().map_err(|_| {
        let named_host = rest
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if named_host {
            AddrError::NotAnAddress(s.into())
        } else {
            AddrError::Bad(s.into())
        }
    })
}

/// A key written as 64 hex digits.
pub fn key_from_hex(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(k)
}

/// The key as 64 hex digits (what the CLI sends in `PUT /migrate`).
pub fn key_to_hex(k: &[u8; 32]) -> String {
    k.iter().map(|b| format!("{b:02x}")).collect()
}

/// Read a migration key file: 32 bytes, raw or as 64 hex digits.
pub fn read_key(path: &std::path::Path) -> Result<[u8; 32], String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read key file {}: {e}", path.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    if let Some(k) = key_from_hex(text.trim()) {
        return Ok(k);
    }
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
        format!(
            "key file {} must hold 32 bytes or 64 hex digits (e.g. `head -c 32 /dev/urandom > key`)",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filtered_thread_takes_addresses_and_refuses_names_without_resolving_them() {
        let a = parse_tcp_address("tcp:127.0.0.1:7000").unwrap();
        assert_eq!(a, SocketAddr::from(([127, 0, 0, 1], 7000)));
        assert!(parse_tcp_address("tcp:[::1]:7000").is_ok());
        let e = parse_tcp_address("tcp:localhost:7000").unwrap_err();
        assert!(matches!(e, AddrError::NotAnAddress(_)), "{e}");
        assert!(matches!(
            parse_tcp_address("localhost"),
            Err(AddrError::Bad(_))
        ));
        assert!(matches!(
            parse_tcp_address("tcp:nowhere"),
            Err(AddrError::Bad(_))
        ));
    }
}
