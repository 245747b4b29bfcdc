//! The control API: HTTP + JSON on a per-VM unix socket. `types` are the requests and replies
//! (shared by the server and the CLI), `routes` maps a request to a `Vm` method, `server` serves
//! the socket, `client` is the CLI's end.

pub mod client;
pub mod routes;
pub mod server;
pub mod types;
