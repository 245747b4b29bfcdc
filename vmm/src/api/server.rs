//! The API server: one thread answering HTTP requests on the VM's unix socket.

use super::routes::{route, Reply};
use crate::vm::Vm;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tiny_http::{Header, Request, Response, Server};

/// Errors starting the API server.
#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    #[error("API socket {0} is in use by a running VM: pick another --api-sock")]
    InUse(PathBuf),
    #[error("cannot listen on API socket {path}: {detail}")]
    Listen { path: PathBuf, detail: String },
}

/// Largest request body accepted.
const MAX_BODY: u64 = 64 << 10;

/// Listen on `path` and serve requests on a new thread for the life of the process.
pub fn start(path: &Path, vm: Arc<Vm>) -> Result<(), ApiServerError> {
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(ApiServerError::InUse(path.to_path_buf()));
    }
    let _ = std::fs::remove_file(path); // a stale socket of a dead VM
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let server = Server::http_unix(path).map_err(|e| ApiServerError::Listen {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            for req in server.incoming_requests() {
                // One thread per request: a long one (snapshot, migration) must not block
                // `GET /vm` or the migration's progress.
                let vm = vm.clone();
                let _ = std::thread::Builder::new()
                    .name("api-request".into())
                    .spawn(move || handle(req, &vm));
            }
        })
        .map_err(|e| ApiServerError::Listen {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
    Ok(())
}

fn handle(mut req: Request, vm: &Vm) {
    let reply = match read_body(&mut req) {
        Err(r) => r,
        Ok(body) => route(req.method().as_str(), req.url(), &body, vm),
    };
    let mut resp = Response::from_string(reply.body).with_status_code(reply.status);
    if let Ok(h) = Header::from_bytes("Content-Type", "application/json") {
        resp = resp.with_header(h);
    }
    let _ = req.respond(resp);
    // A request whose success ends this VM here (a migration) ends it after the answer is out.
    if let Some(reason) = vm.take_pending_exit() {
        vm.end(reason);
    }
}

fn read_body(req: &mut Request) -> Result<Vec<u8>, Reply> {
    let mut body = Vec::new();
    req.as_reader()
        .take(MAX_BODY + 1)
        .read_to_end(&mut body)
        .map_err(|e| Reply::error(400, format!("cannot read the request body: {e}")))?;
    if body.len() as u64 > MAX_BODY {
        return Err(Reply::error(413, "request body too large"));
    }
    Ok(body)
}
