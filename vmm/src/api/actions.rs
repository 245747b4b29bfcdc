//! API resources for lifecycle actions: `PUT /actions {"action": "stop"|"kill"}` and
//! `PATCH /balloon {"amount_mib": N}`.

use crate::vm::actions::ActionError;
use crate::vm::controller::VmController;
use serde_json::{json, Value};
use tiny_http::Method;

/// Route a request for `/actions` or `/balloon`: (status, JSON body).
pub fn route(method: &Method, url: &str, body: &Value, vm: &VmController) -> (u16, Value) {
    let error = |status: u16, msg: String| (status, json!({ "error": msg }));
    match (method, url) {
        (Method::Put, "/actions") => match body.get("action").and_then(Value::as_str) {
            Some("stop") => match vm.stop() {
                Ok(r) => (200, json!({"action": "stop", "request": r.request})),
                Err(e @ ActionError::NoAgent) => error(409, e.to_string()),
                Err(e) => error(500, e.to_string()),
            },
            Some("kill") => {
                vm.kill();
                (200, json!({"action": "kill"}))
            }
            _ => error(
                400,
                r#"expected {"action": "stop"} or {"action": "kill"}"#.into(),
            ),
        },
        (Method::Patch, "/balloon") => match body.get("amount_mib").and_then(Value::as_u64) {
            Some(mib) if mib.checked_mul(1 << 20).is_some() => {
                match vm.set_balloon_target(mib << 20) {
                    Ok(t) => (200, json!(t)),
                    Err(e @ ActionError::NoBalloon) => error(409, e.to_string()),
                    Err(e) => error(400, e.to_string()),
                }
            }
            _ => error(400, r#"expected {"amount_mib": N}"#.into()),
        },
        _ => error(405, format!("{method} is not allowed on {url}")),
    }
}
