//! The control API: HTTP + JSON on a per-VM unix socket. `types` are the requests and replies
//! (shared by the server and the CLI), `routes` maps a request to a `Vm` method, `server` serves
//! the socket (`plainvm_devices::socket_file` creates it, `slots` bounds the connections, `conn` serves one, `http`
//! reads a request and writes an answer, all within `limits`), `client` is the CLI's end.

pub mod client;
pub mod conn;
pub mod http;
pub mod limits;
pub mod routes;
pub mod server;
pub mod slots;

pub mod types;
