//! `--cpu-affinity LIST`: parse and check a host CPU list ("0,1", "0-3", "0-1,6").

/// Errors parsing or applying a CPU list.
#[derive(Debug, thiserror::Error)]
pub enum AffinityError {
    #[error(
        "invalid --cpu-affinity '{0}': use host CPU numbers and ranges, e.g. 0,1 or 0-3 or 0-1,6"
    )]
    Bad(String),
    #[error("--cpu-affinity names host CPU {cpu}, which this process may not use (allowed: {allowed}): pick CPUs from that list")]
    NotAllowed { cpu: usize, allowed: String },
    #[error("--cpu-affinity lists {cpus} CPU(s) but the VM has {vcpus} vCPU(s): give at least one host CPU per vCPU (vCPU i runs on the i-th CPU of the list)")]
    TooFew { cpus: usize, vcpus: usize },
}

/// Parse "0,1", "0-3", "0-1,6" into the CPUs in the order given (ranges ascending).
pub fn parse(s: &str) -> Result<Vec<usize>, AffinityError> {
    let bad = || AffinityError::Bad(s.to_string());
    let mut out = Vec::new();
    for part in s.split(',') {
        let part = part.trim();
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a, b),
            None => (part, part),
        };
        let a: usize = a.trim().parse().map_err(|_| bad())?;
        let b: usize = b.trim().parse().map_err(|_| bad())?;
        if a > b || b >= libc::CPU_SETSIZE as usize {
            return Err(bad());
        }
        for c in a..=b {
            if out.contains(&c) {
                return Err(bad());
            }
            out.push(c);
        }
    }
    Ok(out)
}

/// The CPUs this process may run on.
pub fn allowed() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; zeroed is an empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the pointer and size describe `set`, which lives across the call.
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    if rc != 0 {
        return Vec::new();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `c` is below CPU_SETSIZE, the size of `set`.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

/// Check a parsed list against the allowed CPUs and the vCPU count.
pub fn validate(cpus: &[usize], vcpus: usize) -> Result<(), AffinityError> {
    if let Some(&cpu) = cpus.iter().find(|&&c| c >= libc::CPU_SETSIZE as usize) {
        return Err(AffinityError::Bad(cpu.to_string()));
    }
    let ok = allowed();
    if let Some(&cpu) = cpus.iter().find(|c| !ok.contains(c)) {
        return Err(AffinityError::NotAllowed {
            cpu,
            allowed: format_list(&ok),
        });
    }
    if cpus.len() < vcpus {
        return Err(AffinityError::TooFew {
            cpus: cpus.len(),
            vcpus,
        });
    }
    Ok(())
}

/// "0-3,6" for [0, 1, 2, 3, 6].
pub fn format_list(cpus: &[usize]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        parts.push(match i == j {
            true => cpus[i].to_string(),
            false => format!("{}-{}", cpus[i], cpus[j]),
        });
        i = j + 1;
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse() {
        assert_eq!(parse("0").unwrap(), vec![0]);
        assert_eq!(parse("0,1").unwrap(), vec![0, 1]);
        assert_eq!(parse("2-4,0").unwrap(), vec![2, 3, 4, 0]);
        for bad in ["", "a", "1-", "3-1", "0,0", "0-2,1", "99999", "-1"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert_eq!(format_list(&[0, 1, 2, 3, 6]), "0-3,6");
    }

    #[test]
    fn validation_says_what_is_wrong() {
        let ok = allowed();
        assert!(!ok.is_empty());
        assert!(validate(&ok[..1], 1).is_ok());
        let e = validate(&ok[..1], 2).unwrap_err().to_string();
        assert!(e.contains("2 vCPU"), "{e}");
        let e = validate(&[1023], 1).unwrap_err().to_string();
        assert!(e.contains("may not use"), "{e}");
    }
}
