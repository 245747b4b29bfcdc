//! The control API: HTTP + JSON on a per-VM unix socket (server) and the CLI's client.

pub mod actions;
pub mod client;
pub mod migrate;
pub mod server;
