//! `hello`: the smallest useful component.
//!
//! - `GET /` → `200 text/plain`: the configured `greeting` (default "hello from tuk").
//! - `GET /json` → `200 application/json`: the greeting, the wall-clock time, the host's
//!   uptime and a random 128-bit id, so one request exercises the config, clock and random
//!   imports.
//!
//! Every request is logged through the host's log import.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

use alloc::format;
use alloc::string::String;

use serde::Serialize;
use tuk_guest::{clock, config, http, log, random, Guest, Request, Response};

const DEFAULT_GREETING: &str = "hello from tuk";

struct Hello;

#[derive(Serialize)]
struct Info {
    message: String,
    /// RFC 3339, UTC.
    time: String,
    unix_ms: u64,
    uptime_ms: u64,
    /// 32 lowercase hex digits from the host's secure random source.
    id: String,
}

fn greeting() -> String {
    config::get("greeting").unwrap_or_else(|| DEFAULT_GREETING.into())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn route(req: &Request) -> Response {
    let allow = "GET";
    match (req.path.as_str(), req.method.as_str()) {
        ("/", "GET") => http::text(200, &format!("{}\n", greeting())),
        ("/json", "GET") => {
            let (secs, nanos) = clock::now();
            http::json(
                200,
                &Info {
                    message: greeting(),
                    time: tuk_guest::time::rfc3339(secs, nanos),
                    unix_ms: secs
                        .saturating_mul(1000)
                        .saturating_add(u64::from(nanos / 1_000_000)),
                    uptime_ms: clock::monotonic_ns() / 1_000_000,
                    id: hex(&random::get_random_bytes(16)),
                },
            )
        }
        ("/" | "/json", method) => http::method_not_allowed(method, allow),
        (path, _) => http::not_found(&format!("no route for {path}; try / or /json")),
    }
}

impl Guest for Hello {
    fn handle(req: Request) -> Response {
        let response = route(&req);
        log::info(&format!(
            "{} {} -> {}",
            req.method, req.path, response.status
        ));
        response
    }
}

tuk_guest::export!(Hello);
