//! `kv`: a JSON REST key-value service over the host's kv import.
//!
//! | request              | answer                                                        |
//! |----------------------|---------------------------------------------------------------|
//! | `PUT /kv/<key>`      | stores the body: `201` created or `200` replaced, JSON summary |
//! | `GET /kv/<key>`      | `200` with the stored bytes (`application/octet-stream`), `404` |
//! | `DELETE /kv/<key>`   | `204`, or `404`                                               |
//! | `GET /kv[?prefix=p]` | `200`, a JSON array of keys in ascending order                |
//!
//! Keys are 1-128 characters from `[A-Za-z0-9._-]` (else `400`); other methods get `405` with
//! `allow`. A store over its quota answers `507`. Errors are JSON (`tuk_guest::http`).
#![cfg_attr(not(test), no_std)]

extern crate alloc;

use alloc::format;
use alloc::string::String;

use serde::Serialize;
use tuk_guest::{http, kv, log, Guest, Request, Response};

const MAX_KEY: usize = 128;

struct Kv;

/// `Ok(())` if `key` is 1-128 characters from `[A-Za-z0-9._-]`, else why not.
fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(format!(
            "keys are 1 to {MAX_KEY} characters; this one has {}",
            key.len()
        ));
    }
    match key
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        Some(c) => Err(format!("keys use only A-Z a-z 0-9 . _ -; found {c:?}")),
        None => Ok(()),
    }
}

#[derive(Serialize)]
struct Stored<'a> {
    key: &'a str,
    size: usize,
    created: bool,
}

fn put(key: &str, value: &[u8]) -> Response {
    // The store tells created from replaced only through a read first.
    let existed = kv::get(key).is_some();
    match kv::set(key, value) {
        Ok(()) => http::json(
            if existed { 200 } else { 201 },
            &Stored {
                key,
                size: value.len(),
                created: !existed,
            },
        ),
        Err(why) => http::error(507, "insufficient_storage", &why),
    }
}

fn item(req: &Request, key: &str) -> Response {
    if let Err(why) = check_key(key) {
        return http::bad_request(&why);
    }
    match req.method.as_str() {
        "GET" => match kv::get(key) {
            Some(value) => http::with_body(200, http::OCTETS, value),
            None => http::not_found(&format!("no key {key:?}")),
        },
        "PUT" => put(key, &req.body),
        "DELETE" => match kv::delete(key) {
            true => http::empty(204),
            false => http::not_found(&format!("no key {key:?}")),
        },
        other => http::method_not_allowed(other, "GET, PUT, DELETE"),
    }
}

fn list(req: &Request) -> Response {
    if req.method != "GET" {
        return http::method_not_allowed(&req.method, "GET");
    }
    let prefix = match http::query_value(req.query.as_deref(), "prefix") {
        None => String::new(),
        Some(Err(raw)) => {
            return http::bad_request(&format!(
                "prefix {raw:?} is not valid percent-encoded UTF-8"
            ))
        }
        Some(Ok(p)) if p.is_empty() => p,
        Some(Ok(p)) => match check_key(&p) {
            Ok(()) => p,
            Err(why) => return http::bad_request(&format!("invalid prefix: {why}")),
        },
    };
    http::json(200, &kv::list_keys(&prefix))
}

fn route(req: &Request) -> Response {
    match req.path.as_str() {
        "/kv" | "/kv/" => list(req),
        path => match path.strip_prefix("/kv/") {
            Some(key) => item(req, key),
            None => http::not_found(&format!("no route for {path}; keys live under /kv/<key>")),
        },
    }
}

impl Guest for Kv {
    fn handle(req: Request) -> Response {
        let response = route(&req);
        log::info(&format!(
            "{} {} -> {}",
            req.method, req.path, response.status
        ));
        response
    }
}

tuk_guest::export!(Kv);

#[cfg(test)]
mod tests {
    use super::check_key;

    #[test]
    fn keys() {
        assert!(check_key("a").is_ok());
        assert!(check_key("user-1.profile_v2").is_ok());
        assert!(check_key(&"k".repeat(128)).is_ok());
        assert!(check_key(&"k".repeat(129)).is_err());
        assert!(check_key("").is_err());
        assert!(check_key("a/b").is_err());
        assert!(check_key("a%20b").is_err());
        assert!(check_key("é").is_err());
    }
}
