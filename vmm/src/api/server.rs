//! The API server: an `api` thread accepts connections on the VM's unix socket and serves each
//! on its own `api-request` thread (a snapshot or migration takes minutes, and `GET /vm` or
//! `GET /migrate` must be answered meanwhile), within the limits of [`super::limits`].

use super::conn::{self, refused_reply};
use super::http::response_bytes;
use super::limits::{Limits, LINGER_BYTES, LINGER_TIME, MAX_CONNECTIONS, REQUEST_TIME};
use super::routes::route;
use super::slots::{Admit, Slots};
use crate::vm::Vm;
use plainvm_devices::socket_file::{listen, SocketError};
use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Errors starting the API server.
#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    #[error(transparent)]
    Socket(#[from] SocketError),
    #[error("cannot start the API thread: {0} (the host is out of threads or memory)")]
    Thread(std::io::Error),
}

/// Listen on `path` and serve requests on a new thread for the life of the process.
pub fn start(path: &Path, vm: Arc<Vm>) -> Result<(), ApiServerError> {
    start_on(bind(path)?, vm)
}

/// The socket bound, not served yet (a migration's destination binds it before the commit, so
/// that nothing about the socket can fail after it).
pub fn bind(path: &Path) -> Result<UnixListener, ApiServerError> {
    Ok(listen(path)?)
}

/// Serve requests on `listener` on a new thread for the life of the process.
pub fn start_on(listener: UnixListener, vm: Arc<Vm>) -> Result<(), ApiServerError> {
    let slots = Slots::new(MAX_CONNECTIONS);
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            // The request threads it starts inherit this filter.
            crate::seccomp::install_or_exit(crate::seccomp::ThreadKind::Api);
            for conn in listener.incoming() {
                match conn {
                    Ok(stream) => accept(stream, &slots, &vm),
                    // Out of descriptors or memory: wait instead of spinning.
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        })
        .map_err(ApiServerError::Thread)?;
    Ok(())
}

/// Serve `stream` on a thread of its own, or refuse it when every slot is busy answering.
fn accept(stream: UnixStream, slots: &Arc<Slots>, vm: &Arc<Vm>) {
    let slot = match slots.admit(&stream) {
        Admit::Serve(slot) => slot,
        Admit::Refuse => return refuse(stream),
    };
    let vm = vm.clone();
    // A thread that cannot start drops the connection (and frees its slot).
    let _ = std::thread::Builder::new()
        .name("api-request".into())
        .spawn(move || {
            crate::seccomp::inherited(crate::seccomp::ThreadKind::Api);
            conn::answer(&stream, &slot, REQUEST_TIME, &Limits::API, |r| {
                route(&r.method, &r.path, &r.body, &vm)
            });
            // A request whose success ends this VM here (a migration) ends it after the answer
            // is out.
            if let Some(reason) = vm.take_pending_exit() {
                vm.end(reason);
            }
            conn::linger(&stream, LINGER_TIME, LINGER_BYTES);
        });
}

/// Answer 503 without reading the request, without ever blocking the accepting thread.
fn refuse(stream: UnixStream) {
    let reply = refused_reply();
    if stream.set_nonblocking(true).is_ok() {
        let mut s = &stream;
        let _ = s.write(&response_bytes(reply.status, &reply.body));
    }
}
