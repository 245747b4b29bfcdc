//! Building blocks of the allow-lists: a set of system calls, each allowed outright or only
//! with certain arguments, merged the way the lists combine them (an outright allow wins).

use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};
use std::collections::BTreeMap;

/// Errors building a rule (a mistake in the lists themselves, caught by the unit tests).
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error(
        "system call {nr}: bad argument condition: {source} (fix the list in vmm/src/seccomp)"
    )]
    Condition {
        nr: i64,
        source: seccompiler::BackendError,
    },
}

/// One argument check: `(argument index, how to compare, value)`.
pub type Check = (u8, SeccompCmpOp, u64);

/// The system calls of one list: `None` allows the call whatever its arguments, `Some` holds
/// alternative argument checks (any one that holds allows it).
#[derive(Clone, Debug, Default)]
pub struct Rules {
    calls: BTreeMap<i64, Option<Vec<Vec<Check>>>>,
}

impl Rules {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Allow each of `nrs` whatever its arguments.
    pub fn allow(mut self, nrs: &[libc::c_long]) -> Self {
        for &nr in nrs {
            self.calls.insert(nr, None);
        }
        self
    }

    /// Allow `nr` when every check of `checks` holds (or when another alternative does).
    pub fn allow_if(mut self, nr: libc::c_long, checks: Vec<Check>) -> Self {
        // Nothing to add when the call is allowed outright already.
        if let Some(alternatives) = self.calls.entry(nr).or_insert_with(|| Some(Vec::new())) {
            alternatives.push(checks);
        }
        self
    }

    /// Allow `nr` when argument `arg` equals one of `values`.
    pub fn allow_values(mut self, nr: libc::c_long, arg: u8, values: &[u64]) -> Self {
        for &v in values {
            self = self.allow_if(nr, vec![(arg, SeccompCmpOp::Eq, v)]);
        }
        self
    }

    /// Everything `other` allows too.
    pub fn merge(mut self, other: Rules) -> Self {
        for (nr, alternatives) in other.calls {
            match alternatives {
                None => {
                    self.calls.insert(nr, None);
                }
                Some(alts) => {
                    for checks in alts {
                        self = self.allow_if(nr, checks);
                    }
                }
            }
        }
        self
    }

    /// Whether `nr` is in the list at all (with or without argument checks).
    pub fn contains(&self, nr: libc::c_long) -> bool {
        self.calls.contains_key(&nr)
    }

    /// The list as seccompiler's rule map.
    pub fn build(&self) -> Result<BTreeMap<i64, Vec<SeccompRule>>, RuleError> {
        let mut map = BTreeMap::new();
        for (&nr, alternatives) in &self.calls {
            let rules = match alternatives {
                None => Vec::new(),
                Some(alts) => alts
                    .iter()
                    .map(|checks| rule(nr, checks))
                    .collect::<Result<_, _>>()?,
            };
            map.insert(nr, rules);
        }
        Ok(map)
    }
}

fn rule(nr: i64, checks: &[Check]) -> Result<SeccompRule, RuleError> {
    let err = |source| RuleError::Condition { nr, source };
    let conditions = checks
        .iter()
        .map(|(arg, op, value)| {
            // ioctl requests, flags, families and signals are 32-bit values in the kernel;
            // comparing the low 32 bits ignores whatever a caller left in the upper half.
            SeccompCondition::new(*arg, SeccompCmpArgLen::Dword, op.clone(), *value).map_err(err)
        })
        .collect::<Result<Vec<_>, _>>()?;
    SeccompRule::new(conditions).map_err(err)
}

/// A check that none of `bits` is set in argument `arg`.
pub fn without_bits(arg: u8, bits: u64) -> Check {
    (arg, SeccompCmpOp::MaskedEq(bits), 0)
}

/// A check that all of `bits` are set in argument `arg`.
pub fn with_bits(arg: u8, bits: u64) -> Check {
    (arg, SeccompCmpOp::MaskedEq(bits), bits)
}
