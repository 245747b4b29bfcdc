//! How a subcommand names its VM: NAME, `--name NAME` or `--api-sock PATH`.

use crate::host::registry::{self, Entry};
use clap::Args;
use std::path::{Path, PathBuf};

/// A VM that cannot be found.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("name the VM: `plainvm {0} NAME` (see `plainvm ls`), or give its --api-sock")]
    NoTarget(&'static str),
    #[error("give the VM either as NAME or with --name, not both")]
    TwoNames,
    #[error(transparent)]
    Registry(#[from] registry::RegistryError),
}

/// The flags naming a VM.
#[derive(Args)]
pub struct ApiArgs {
    /// The VM's name (see `plainvm ls`).
    #[arg(value_name = "NAME")]
    pub name: Option<String>,
    /// The VM's name, as a flag.
    #[arg(long = "name", value_name = "NAME")]
    pub name_flag: Option<String>,
    /// The VM's API socket (as given to `run --api-sock`); wins over the name.
    #[arg(long)]
    pub api_sock: Option<PathBuf>,
}

impl ApiArgs {
    /// The VM these flags name.
    pub fn target(&self) -> Target<'_> {
        Target {
            name: self.name.as_deref(),
            name_flag: self.name_flag.as_deref(),
            api_sock: self.api_sock.as_deref(),
        }
    }
}

/// A VM as a subcommand names it: positional NAME, `--name NAME` or `--api-sock PATH`.
pub struct Target<'a> {
    pub name: Option<&'a str>,
    pub name_flag: Option<&'a str>,
    pub api_sock: Option<&'a Path>,
}

/// A resolved target: its API socket and, when found through the registry, its entry.
pub struct Resolved {
    pub label: String,
    pub sock: PathBuf,
    pub entry: Option<Entry>,
}

impl Target<'_> {
    /// Find the VM's API socket (`--api-sock` wins over the name).
    pub fn resolve(&self, verb: &'static str) -> Result<Resolved, TargetError> {
        let name = match (self.name, self.name_flag) {
            (Some(_), Some(_)) => return Err(TargetError::TwoNames),
            (a, b) => a.or(b),
        };
        if name.is_none() && self.api_sock.is_none() {
            return Err(TargetError::NoTarget(verb));
        }
        let (sock, entry) = registry::resolve(name, self.api_sock)?;
        let label = match (name, self.api_sock) {
            (Some(n), _) => n.to_string(),
            (None, Some(p)) => p.display().to_string(),
            (None, None) => String::new(),
        };
        Ok(Resolved { label, sock, entry })
    }
}
