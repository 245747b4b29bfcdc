//! A network device as the user writes it: `--net tap=NAME[,mac=MAC]` or the `"nets"` key, and
//! the validated form with its MAC.

use plainvm_devices::virtio::net::mac::MacError;
use plainvm_devices::virtio::net::MacAddr;
use serde::{Deserialize, Serialize};

/// One virtio-net device as written: `--net tap=NAME[,mac=..]` or `{"tap": "NAME", "mac": ".."}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    pub tap: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// A validated virtio-net device: the tap and its MAC (generated when none was given).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetDevice {
    pub tap: String,
    pub mac: [u8; 6],
}

/// A network device that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum NetConfigError {
    #[error("invalid --net '{flag}': {detail}; use tap=NAME[,mac=aa:bb:cc:dd:ee:ff]")]
    Syntax { flag: String, detail: String },
    #[error("a network device has an empty tap name: give tap=NAME")]
    EmptyTap,
    #[error("network device on tap '{tap}': {source}")]
    BadMac { tap: String, source: MacError },
}

/// Parse a `--net` flag: `tap=NAME[,mac=aa:bb:cc:dd:ee:ff]`.
pub fn parse_net(s: &str) -> Result<NetConfig, NetConfigError> {
    let n: NetConfig = super::keyvalue::from_str(s).map_err(|e| NetConfigError::Syntax {
        flag: s.to_string(),
        detail: e.to_string(),
    })?;
    if n.tap.is_empty() {
        return Err(NetConfigError::EmptyTap);
    }
    Ok(n)
}

/// Check a validated network device (from a snapshot or stream): a tap name and a unicast MAC.
pub fn check_device(n: &NetDevice) -> Result<(), NetConfigError> {
    if n.tap.is_empty() {
        return Err(NetConfigError::EmptyTap);
    }
    MacAddr(n.mac)
        .to_string()
        .parse::<MacAddr>()
        .map(|_| ())
        .map_err(|source| NetConfigError::BadMac {
            tap: n.tap.clone(),
            source,
        })
}

/// Check each network device's MAC, or generate a locally administered one.
pub fn validate_nets(nets: Vec<NetConfig>) -> Result<Vec<NetDevice>, NetConfigError> {
    nets.into_iter()
        .map(|n| {
            if n.tap.is_empty() {
                return Err(NetConfigError::EmptyTap);
            }
            let mac = match &n.mac {
                Some(m) => m
                    .parse::<MacAddr>()
                    .map_err(|source| NetConfigError::BadMac {
                        tap: n.tap.clone(),
                        source,
                    })?,
                None => MacAddr::random_local(),
            };
            Ok(NetDevice {
                tap: n.tap,
                mac: mac.0,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_flags_and_json_parse() {
        let n = parse_net("tap=tap0,mac=02:00:00:00:00:07").unwrap();
        assert_eq!(
            (n.tap.as_str(), n.mac.as_deref()),
            ("tap0", Some("02:00:00:00:00:07"))
        );
        assert_eq!(parse_net("tap=t1").unwrap().mac, None);
        for bad in [
            "",
            "tap=",
            "mac=02:00:00:00:00:01",
            "tap=a,tap=b",
            "tap=a,colour=red",
            "tap0",
        ] {
            assert!(parse_net(bad).is_err(), "{bad}");
        }
        let nets: Vec<NetConfig> =
            serde_json::from_str(r#"[{"tap": "a", "mac": "02:00:00:00:00:01"}, {"tap": "b"}]"#)
                .unwrap();
        let nets = validate_nets(nets).unwrap();
        assert_eq!(nets[0].mac, [2, 0, 0, 0, 0, 1]);
        assert_eq!(nets[1].mac[0] & 3, 2, "generated MACs are local unicast");
        let bad = vec![NetConfig {
            tap: "a".into(),
            mac: Some("01:00:00:00:00:01".into()),
        }];
        assert!(validate_nets(bad)
            .unwrap_err()
            .to_string()
            .contains("multicast"));
    }
}
