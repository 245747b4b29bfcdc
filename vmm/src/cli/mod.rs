//! The command line's subcommands beyond `run`: fleet management and migration.

pub mod fleet;
pub mod migrate;
