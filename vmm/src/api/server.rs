//! The API server: one thread answering HTTP requests on the VM's unix socket.

use crate::vm::controller::VmController;
use serde_json::{json, Value};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tiny_http::{Header, Method, Request, Response, Server};

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
pub fn start(path: &Path, vm: Arc<VmController>) -> Result<(), ApiServerError> {
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

/// A reply: status and JSON body.
pub type Reply = (u16, Value);

/// An error reply with a readable message.
pub fn error(status: u16, msg: impl std::fmt::Display) -> Reply {
    (status, json!({ "error": msg.to_string() }))
}

fn handle(mut req: Request, vm: &VmController) {
    let body = read_body(&mut req);
    let (status, value) = match body {
        Err(r) => r,
        Ok(body) => route(req.method(), req.url(), body, vm),
    };
    let mut resp = Response::from_string(value.to_string()).with_status_code(status);
    if let Ok(h) = Header::from_bytes("Content-Type", "application/json") {
        resp = resp.with_header(h);
    }
    let _ = req.respond(resp);
    // A request whose success ends this VM here (a migration) ends it after the answer is out.
    if let Some(reason) = vm
        .pending_exit
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    {
        vm.exit.request(reason);
    }
}

fn read_body(req: &mut Request) -> Result<Value, Reply> {
    let mut s = String::new();
    req.as_reader()
        .take(MAX_BODY + 1)
        .read_to_string(&mut s)
        .map_err(|e| error(400, format!("cannot read the request body: {e}")))?;
    if s.len() as u64 > MAX_BODY {
        return Err(error(413, "request body too large"));
    }
    if s.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&s).map_err(|e| error(400, format!("request body is not JSON: {e}")))
}

fn route(method: &Method, url: &str, body: Value, vm: &VmController) -> Reply {
    match (method, url) {
        (Method::Get, "/vm") => (200, json!(vm.info())),
        (Method::Patch, "/vm") => match body.get("state").and_then(Value::as_str) {
            Some("Paused") => match vm.pause() {
                Ok(()) => (200, json!(vm.info())),
                Err(e) => error(500, e),
            },
            Some("Running") => {
                vm.resume();
                (200, json!(vm.info()))
            }
            _ => error(
                400,
                r#"expected {"state": "Paused"} or {"state": "Running"}"#,
            ),
        },
        (Method::Put, "/snapshot/create") => match body.get("path").and_then(Value::as_str) {
            Some(p) => match vm.snapshot(Path::new(p), body.get("type") == Some(&json!("Diff"))) {
                Ok(r) => (200, json!(r)),
                Err(e) => error(500, e),
            },
            None => error(400, r#"expected {"path": "DIR"}"#),
        },
        (_, "/actions" | "/balloon") => super::actions::route(method, url, &body, vm),
        (_, "/migrate") => super::migrate::route(method, &body, vm),
        (_, "/vm" | "/snapshot/create") => error(405, format!("{method} is not allowed on {url}")),
        _ => error(404, format!("no resource {url}")),
    }
}
