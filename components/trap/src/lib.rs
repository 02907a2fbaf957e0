//! `trap`, a test component for isolation: `GET /` executes `unreachable` (a trap, which
//! the host answers with 500); `GET /ok` answers `200 ok`, showing the component recovered.
#![no_std]

extern crate alloc;

use tuk_guest::{http, log, Guest, Request, Response};

struct Trap;

impl Guest for Trap {
    fn handle(req: Request) -> Response {
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/") => {
                log::warn("trapping on purpose");
                core::arch::wasm32::unreachable()
            }
            ("GET", "/ok") => http::text(200, "ok\n"),
            (_, "/" | "/ok") => http::method_not_allowed(&req.method, "GET"),
            _ => http::not_found("try / (traps) or /ok"),
        }
    }
}

tuk_guest::export!(Trap);
