//! `--cgroup memory.max=SIZE,cpu.max=QUOTA [PERIOD],pids.max=N` and the config file's `"cgroup"`:
//! limits for the VM's own cgroup (host/cgroup.rs puts the process there). The local operator's
//! choice alone, like `jail`: not part of `VmConfig`.

use serde::{Deserialize, Serialize};

/// The default `cpu.max` period, in microseconds (the kernel's).
pub const DEFAULT_PERIOD_US: u64 = 100_000;

/// Errors in the cgroup limits.
#[derive(Debug, thiserror::Error)]
pub enum CgroupSettingError {
    #[error(
        "invalid --cgroup '{text}': {why} (e.g. memory.max=512M,cpu.max=50000 100000,pids.max=256)"
    )]
    Syntax { text: String, why: String },
    #[error("invalid {key} '{value}': {why}")]
    Bad {
        key: &'static str,
        value: String,
        why: String,
    },
    #[error("--cgroup sets no limit: give memory.max, cpu.max or pids.max")]
    Empty,
}

/// The limits as written (strings, as in cgroup v2's files).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CgroupConfig {
    /// Memory the VMM process may use (guest RAM it touched included): a size or "max".
    #[serde(
        rename = "memory.max",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub memory_max: Option<String>,
    /// CPU time per period: "QUOTA PERIOD" in microseconds, "QUOTA" (period 100000) or "max".
    #[serde(rename = "cpu.max", default, skip_serializing_if = "Option::is_none")]
    pub cpu_max: Option<String>,
    /// Threads the process may have: a number or "max".
    #[serde(rename = "pids.max", default, skip_serializing_if = "Option::is_none")]
    pub pids_max: Option<String>,
}

/// A limit or none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    Max,
    Value(u64),
}

/// The checked limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupLimits {
    pub memory_max: Option<Limit>,
    /// Quota (None: no limit) and period, in microseconds.
    pub cpu_max: Option<(Limit, u64)>,
    pub pids_max: Option<Limit>,
}

/// `--cgroup KEY=VALUE,...`.
pub fn parse_cgroup(s: &str) -> Result<CgroupConfig, CgroupSettingError> {
    super::keyvalue::from_str(s).map_err(|e| CgroupSettingError::Syntax {
        text: s.to_string(),
        why: e.to_string(),
    })
}

fn bad(key: &'static str, value: &str, why: &str) -> CgroupSettingError {
    CgroupSettingError::Bad {
        key,
        value: value.to_string(),
        why: why.to_string(),
    }
}

impl CgroupConfig {
    /// Check every value.
    pub fn limits(&self) -> Result<CgroupLimits, CgroupSettingError> {
        let memory_max = self
            .memory_max
            .as_deref()
            .map(|v| match v {
                "max" => Ok(Limit::Max),
                _ => {
                    let bytes = super::parse_size(v).map_err(|e| {
                        bad(
                            "memory.max",
                            v,
                            &format!("{e}; a size such as 512M, or max"),
                        )
                    })?;
                    if bytes < 16 << 20 {
                        return Err(bad("memory.max", v, "below 16 MiB, the VMM cannot run"));
                    }
                    Ok(Limit::Value(bytes))
                }
            })
            .transpose()?;
        let cpu_max = self
            .cpu_max
            .as_deref()
            .map(|v| {
                let mut words = v.split_whitespace();
                let (quota, period) = (words.next(), words.next());
                if words.next().is_some() {
                    return Err(bad("cpu.max", v, "use QUOTA [PERIOD] or max"));
                }
                let period = match period {
                    None => DEFAULT_PERIOD_US,
                    Some(p) => p
                        .parse::<u64>()
                        .ok()
                        .filter(|p| (1_000..=1_000_000).contains(p))
                        .ok_or_else(|| {
                            bad("cpu.max", v, "the period is 1000 to 1000000 microseconds")
                        })?,
                };
                let quota = match quota {
                    Some("max") => Limit::Max,
                    Some(q) => {
                        Limit::Value(q.parse::<u64>().ok().filter(|q| *q >= 1_000).ok_or_else(
                            || {
                                bad(
                                    "cpu.max",
                                    v,
                                    "the quota is at least 1000 microseconds, or max",
                                )
                            },
                        )?)
                    }
                    None => return Err(bad("cpu.max", v, "use QUOTA [PERIOD] or max")),
                };
                Ok((quota, period))
            })
            .transpose()?;
        let pids_max = self
            .pids_max
            .as_deref()
            .map(|v| match v {
                "max" => Ok(Limit::Max),
                _ => v
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n >= 16)
                    .map(Limit::Value)
                    .ok_or_else(|| bad("pids.max", v, "a number of at least 16, or max")),
            })
            .transpose()?;
        let limits = CgroupLimits {
            memory_max,
            cpu_max,
            pids_max,
        };
        if limits == CgroupLimits::default() {
            return Err(CgroupSettingError::Empty);
        }
        Ok(limits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_read_and_checked() {
        let l = parse_cgroup("memory.max=512M,cpu.max=50000 100000,pids.max=64")
            .unwrap()
            .limits()
            .unwrap();
        assert_eq!(l.memory_max, Some(Limit::Value(512 << 20)));
        assert_eq!(l.cpu_max, Some((Limit::Value(50_000), 100_000)));
        assert_eq!(l.pids_max, Some(Limit::Value(64)));
        let l = parse_cgroup("cpu.max=max").unwrap().limits().unwrap();
        assert_eq!(l.cpu_max, Some((Limit::Max, DEFAULT_PERIOD_US)));
        let l = parse_cgroup("cpu.max=20000").unwrap().limits().unwrap();
        assert_eq!(l.cpu_max, Some((Limit::Value(20_000), DEFAULT_PERIOD_US)));
        for bad in [
            "memory.max=1M",
            "memory.max=lots",
            "cpu.max=",
            "cpu.max=10 100000",
            "cpu.max=50000 10",
            "cpu.max=1 2 3",
            "pids.max=2",
            "pids.max=-1",
        ] {
            let r = parse_cgroup(bad).and_then(|c| c.limits());
            assert!(r.is_err(), "{bad}");
        }
        assert!(parse_cgroup("io.max=5").is_err());
        assert!(matches!(
            parse_cgroup("").unwrap().limits(),
            Err(CgroupSettingError::Empty)
        ));
        let j: CgroupConfig =
            serde_json::from_str(r#"{"memory.max": "1G", "pids.max": "max"}"#).unwrap();
        assert_eq!(j.limits().unwrap().pids_max, Some(Limit::Max));
    }
}
