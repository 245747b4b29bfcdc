//! The vsock device as the user writes it: `--vsock cid=N,socket=PATH` or the `"vsock"` key.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The vsock device as written: `--vsock cid=N,socket=PATH` or `{"cid": N, "socket": "PATH"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's context ID (3 or more).
    pub cid: u64,
    /// The host-side unix socket: the host connects here; guest connections to host port P
    /// go to `PATH_P`.
    pub socket: PathBuf,
}

/// A vsock description that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum VsockConfigError {
    #[error("invalid --vsock '{flag}': {detail}; use cid=N,socket=PATH")]
    Syntax { flag: String, detail: String },
    #[error("vsock cid {0} is reserved: use a number from 3 to 4294967294")]
    BadCid(u64),
    #[error("the vsock socket path is empty: give socket=PATH")]
    EmptySocket,
}

/// Parses a `--vsock` flag.
pub fn parse_vsock(s: &str) -> Result<VsockConfig, VsockConfigError> {
    let v: VsockConfig = super::keyvalue::from_str(s).map_err(|e| VsockConfigError::Syntax {
        flag: s.to_string(),
        detail: e.to_string(),
    })?;
    check(&v)?;
    Ok(v)
}

/// Checks a vsock description (from the flag or the config file).
pub fn check(v: &VsockConfig) -> Result<(), VsockConfigError> {
    if v.cid <= 2 || v.cid >= u64::from(u32::MAX) {
        return Err(VsockConfigError::BadCid(v.cid));
    }
    if v.socket.as_os_str().is_empty() {
        return Err(VsockConfigError::EmptySocket);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_and_json_forms() {
        let v = parse_vsock("cid=3,socket=/tmp/v.sock").unwrap();
        assert_eq!((v.cid, v.socket.to_str().unwrap()), (3, "/tmp/v.sock"));
        for bad in [
            "",
            "cid=3",
            "socket=/x",
            "cid=x,socket=/x",
            "cid=2,socket=/x",
            "cid=3,socket=",
            "cid=3,socket=/x,cid=4",
            "cid=3,socket=/x,port=1",
        ] {
            assert!(parse_vsock(bad).is_err(), "{bad}");
        }
        let j: VsockConfig = serde_json::from_str(r#"{"cid": 7, "socket": "/v"}"#).unwrap();
        assert_eq!(j.cid, 7);
        assert!(serde_json::from_str::<VsockConfig>(r#"{"cid": 7}"#).is_err());
    }
}
