//! `membomb`, a test component for memory limits:
//! - `GET /` allocates 1 MiB blocks (and writes to them) until an allocation fails, like a
//!   leaking service: the allocation failure is a panic, that is a trap (500).
//! - `GET /grow` calls `memory.grow` directly until the host refuses, then answers
//!   `507` with how far it got: the limit is enforced without a trap.
//! - `GET /ok` answers `200 ok`, showing the component recovered.
#![no_std]

extern crate alloc;

use alloc::format;
use alloc::vec::Vec;

use serde::Serialize;
use tuk_guest::{http, log, Guest, Request, Response};

const BLOCK: usize = 1 << 20;
const WASM_PAGE: usize = 64 * 1024;

struct MemBomb;

fn allocate_forever() -> ! {
    log::warn("allocating until memory runs out, on purpose");
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    loop {
        // `vec!` touches every page, so the memory is really used.
        blocks.push(alloc::vec![0xA5; BLOCK]);
        core::hint::black_box(&blocks);
    }
}

#[derive(Serialize)]
struct Grown {
    pages_grown: usize,
    memory_bytes: usize,
}

fn grow_until_refused() -> Response {
    // Leave the allocator room to build the response: memory grown behind its back is not
    // its to use, and it cannot grow any more afterwards.
    drop(core::hint::black_box(Vec::<u8>::with_capacity(256 * 1024)));
    let mut grown = 0;
    while core::arch::wasm32::memory_grow(0, 1) != usize::MAX {
        grown += 1;
    }
    let memory_bytes = core::arch::wasm32::memory_size(0) * WASM_PAGE;
    log::info(&format!(
        "memory.grow refused after {grown} pages; memory is {memory_bytes} bytes"
    ));
    http::json(
        507,
        &Grown {
            pages_grown: grown,
            memory_bytes,
        },
    )
}

impl Guest for MemBomb {
    fn handle(req: Request) -> Response {
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/") => allocate_forever(),
            ("GET", "/grow") => grow_until_refused(),
            ("GET", "/ok") => http::text(200, "ok\n"),
            (_, "/" | "/grow" | "/ok") => http::method_not_allowed(&req.method, "GET"),
            _ => http::not_found("try / (allocates until it fails), /grow or /ok"),
        }
    }
}

tuk_guest::export!(MemBomb);
