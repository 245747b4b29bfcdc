//! The control API's request parser (request line, headers, Content-Length, body, all limits)
//! and the router's parsing of method, path and JSON body into a typed request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plainvm::api::http::read_request;
use plainvm::api::limits::Limits;
use plainvm::api::routes::parse_request;

fuzz_target!(|data: &[u8]| {
    let mut r = data;
    if let Ok(req) = read_request(&mut r, &Limits::API) {
        let _ = parse_request(&req.method, &req.path, &req.body);
    }
    // The router on its own, with the input as the body of every resource.
    for (m, p) in [
        ("PATCH", "/vm"),
        ("PUT", "/snapshot/create"),
        ("PUT", "/actions"),
        ("PATCH", "/balloon"),
        ("PUT", "/migrate"),
    ] {
        if let Ok(plainvm::api::routes::ApiRequest::Migrate(m)) = parse_request(m, p, data) {
            let _ = plainvm::api::routes::migrate_options(&m);
        }
    }
});
