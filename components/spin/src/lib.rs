//! `spin`, a test component for deadlines: `GET /` loops forever (the host interrupts it at
//! the component's deadline and answers 503); `GET /ok` answers `200 ok`.
#![no_std]

extern crate alloc;

use tuk_guest::{http, log, Guest, Request, Response};

struct Spin;

fn spin_forever() -> ! {
    log::warn("spinning forever on purpose");
    let mut n: u64 = 0;
    loop {
        // Opaque to the optimizer, so the loop stays a loop that does work.
        n = core::hint::black_box(n.wrapping_add(1));
    }
}

impl Guest for Spin {
    fn handle(req: Request) -> Response {
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/") => spin_forever(),
            ("GET", "/ok") => http::text(200, "ok\n"),
            (_, "/" | "/ok") => http::method_not_allowed(&req.method, "GET"),
            _ => http::not_found("try / (spins) or /ok"),
        }
    }
}

tuk_guest::export!(Spin);
