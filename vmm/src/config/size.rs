//! Sizes: "128M", "2G", a bare number of MiB; the `--memory` forms (SIZE, `size=SIZE,merge=on`,
//! or a JSON object) and the limits on guest memory.

use serde::Deserialize;

/// Smallest guest memory we accept: enough for boot structures and a small kernel.
pub const MIN_MEMORY: u64 = 16 << 20;
/// Largest guest memory we accept, whatever the host has.
pub const MAX_MEMORY: u64 = 1 << 40;
/// Guest memory when none is given.
pub const DEFAULT_MEMORY: u64 = 128 << 20;

/// A size or memory specification that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SizeError {
    #[error("invalid memory size '{0}': use a number with an optional unit, e.g. 128M, 2G, 512MiB (a bare number means MiB)")]
    BadSize(String),
    #[error("memory size {got} MiB is too small: give at least {} MiB", MIN_MEMORY >> 20)]
    MemoryTooSmall { got: u64 },
    #[error("memory size {got} MiB is too large: {why}")]
    MemoryTooLarge { got: u64, why: String },
    #[error("invalid --memory '{0}': use SIZE or size=SIZE,merge=on|off (JSON: \"128M\" or {{\"size\": \"128M\", \"merge\": true}})")]
    BadMemorySpec(String),
}

/// Parse "128M", "2G", "512MiB", "1048576K", "4096" (MiB) into bytes.
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    let bad = || SizeError::BadSize(s.to_string());
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "m" | "mb" | "mib" => 20,
        "k" | "kb" | "kib" => 10,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        "b" => 0,
        _ => return Err(bad()),
    };
    n.checked_mul(1 << shift).ok_or_else(bad)
}

/// A memory size as JSON: a number of MiB or a size string.
fn size_value(v: &serde_json::Value) -> Result<u64, SizeError> {
    match v {
        serde_json::Value::Number(n) => n
            .as_u64()
            .and_then(|m| m.checked_mul(1 << 20))
            .ok_or_else(|| SizeError::BadSize(n.to_string())),
        serde_json::Value::String(s) => parse_size(s),
        other => Err(SizeError::BadSize(other.to_string())),
    }
}

/// `size=SIZE,merge=on` as the key=value parser reads it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemorySpec {
    size: Option<String>,
    #[serde(default)]
    merge: bool,
}

/// `--memory`/"memory": SIZE, "size=SIZE[,merge=on|off]" or {"size": SIZE, "merge": bool};
/// returns (bytes, merge).
pub fn parse_memory(v: &serde_json::Value) -> Result<(u64, bool), SizeError> {
    let bad = || SizeError::BadMemorySpec(v.to_string().trim_matches('"').to_string());
    match v {
        serde_json::Value::String(s) if s.contains('=') => {
            let spec: MemorySpec = super::keyvalue::from_str(s).map_err(|_| bad())?;
            let size = spec.size.as_deref().map(parse_size).transpose()?;
            Ok((size.unwrap_or(DEFAULT_MEMORY), spec.merge))
        }
        serde_json::Value::Object(o) => {
            if o.keys().any(|k| k != "size" && k != "merge") {
                return Err(bad());
            }
            let size = o.get("size").map(size_value).transpose()?;
            let merge = match o.get("merge") {
                None => false,
                Some(serde_json::Value::Bool(b)) => *b,
                Some(_) => return Err(bad()),
            };
            Ok((size.unwrap_or(DEFAULT_MEMORY), merge))
        }
        other => Ok((size_value(other)?, false)),
    }
}

/// Check a guest memory size against plainvm's limits and the host's RAM.
pub fn check_memory(bytes: u64) -> Result<(), SizeError> {
    let mib = bytes >> 20;
    if bytes < MIN_MEMORY {
        return Err(SizeError::MemoryTooSmall { got: mib });
    }
    if bytes > MAX_MEMORY {
        return Err(SizeError::MemoryTooLarge {
            got: mib,
            why: format!("plainvm supports at most {} MiB", MAX_MEMORY >> 20),
        });
    }
    if !bytes.is_multiple_of(4096) {
        return Err(SizeError::BadSize(format!(
            "{bytes} bytes (not a multiple of 4 KiB)"
        )));
    }
    if let Some(host) = host_memory_bytes() {
        if bytes > host {
            return Err(SizeError::MemoryTooLarge {
                got: mib,
                why: format!("this host has only {} MiB of RAM", host >> 20),
            });
        }
    }
    Ok(())
}

/// The host's total RAM from /proc/meminfo, if readable.
fn host_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib << 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("128").unwrap(), 128 << 20);
        assert_eq!(parse_size("128M").unwrap(), 128 << 20);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("64k").unwrap(), 64 << 10);
        assert!(parse_size("12X").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("-5M").is_err());
        assert!(parse_size("99999999999999999999T").is_err());
    }

    #[test]
    fn memory_takes_size_or_size_and_merge() {
        let m = |v: serde_json::Value| parse_memory(&v);
        assert_eq!(m("256M".into()).unwrap(), (256 << 20, false));
        assert_eq!(m(512.into()).unwrap(), (512 << 20, false));
        assert_eq!(m("size=64M,merge=on".into()).unwrap(), (64 << 20, true));
        assert_eq!(m("size=64M,merge=yes".into()).unwrap(), (64 << 20, true));
        assert_eq!(m("merge=on".into()).unwrap(), (128 << 20, true));
        assert_eq!(
            m(serde_json::json!({"size": "1G", "merge": true})).unwrap(),
            (1 << 30, true)
        );
        for bad in [
            serde_json::json!("size=64M,merge=maybe"),
            serde_json::json!("size=64M,colour=red"),
            serde_json::json!({"size": "1G", "merge": "yes"}),
            serde_json::json!({"sise": "1G"}),
        ] {
            assert!(m(bad.clone()).is_err(), "{bad}");
        }
    }
}
