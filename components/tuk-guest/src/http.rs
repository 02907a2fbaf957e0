//! Building responses and reading requests.
//!
//! Errors are JSON documents `{"error": "<code>", "message": "<what went wrong>"}` with
//! `content-type: application/json`, so clients can match on `error` and show `message`.

use alloc::borrow::ToOwned;
use alloc::string::String;
use alloc::vec::Vec;

use serde::Serialize;

use crate::{Request, Response};

pub const TEXT: &str = "text/plain; charset=utf-8";
pub const JSON: &str = "application/json";
pub const OCTETS: &str = "application/octet-stream";

/// A response with `status`, a `content-type` and `body`.
pub fn with_body(status: u16, content_type: &str, body: Vec<u8>) -> Response {
    Response {
        status,
        headers: alloc::vec![("content-type".into(), content_type.as_bytes().to_vec())],
        body,
    }
}

/// A `text/plain` response.
pub fn text(status: u16, body: &str) -> Response {
    with_body(status, TEXT, body.as_bytes().to_vec())
}

/// A JSON response (`value` serialized with a trailing newline).
pub fn json<T: Serialize + ?Sized>(status: u16, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(mut body) => {
            body.push(b'\n');
            with_body(status, JSON, body)
        }
        // Only a `Serialize` impl that fails on purpose gets here (maps with non-string keys).
        Err(e) => error(
            500,
            "internal",
            &alloc::format!("cannot serialize the response: {e}"),
        ),
    }
}

/// A response without a body (`204 No Content`, for example).
pub fn empty(status: u16) -> Response {
    Response {
        status,
        headers: Vec::new(),
        body: Vec::new(),
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
}

/// A JSON error: `code` is short and stable (`not_found`), `message` says what to do.
pub fn error(status: u16, code: &str, message: &str) -> Response {
    let body = ErrorBody {
        error: code,
        message,
    };
    // Two string fields always serialize.
    let mut bytes = serde_json::to_vec(&body).unwrap_or_default();
    bytes.push(b'\n');
    with_body(status, JSON, bytes)
}

pub fn bad_request(message: &str) -> Response {
    error(400, "bad_request", message)
}

pub fn not_found(message: &str) -> Response {
    error(404, "not_found", message)
}

/// `405 Method Not Allowed` with the `allow` header listing what the resource accepts.
pub fn method_not_allowed(method: &str, allow: &str) -> Response {
    let mut response = error(
        405,
        "method_not_allowed",
        &alloc::format!("{method} is not supported here; use {allow}"),
    );
    response
        .headers
        .push(("allow".into(), allow.as_bytes().to_vec()));
    response
}

/// `415 Unsupported Media Type` for a body that is not JSON.
pub fn expect_json() -> Response {
    error(
        415,
        "unsupported_media_type",
        "send the body as JSON with `content-type: application/json`",
    )
}

/// `413 Payload Too Large`.
pub fn too_large(limit: usize) -> Response {
    error(
        413,
        "payload_too_large",
        &alloc::format!("the body may be at most {limit} bytes"),
    )
}

/// The first value of header `name` (lower case, as the host delivers names).
pub fn header<'a>(req: &'a Request, name: &str) -> Option<&'a [u8]> {
    req.headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
}

/// True if the request says its body is JSON: `application/json`, any parameters
/// (`; charset=utf-8`), any case.
pub fn is_json(req: &Request) -> bool {
    header(req, "content-type").is_some_and(|v| {
        let media = v.split(|&b| b == b';').next().unwrap_or_default();
        media.trim_ascii().eq_ignore_ascii_case(b"application/json")
    })
}

/// The percent-decoded value of query parameter `name` (`+` is a space, as in forms). `None`
/// if absent; a parameter given without `=` has the empty value. The first occurrence wins.
/// Invalid escapes or non-UTF-8 values count as absent — callers that care use [`query_value`].
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query_value(query, name).and_then(Result::ok)
}

/// Like [`query_param`], but tells a malformed value (`Some(Err(raw))`) from an absent one.
pub fn query_value(query: Option<&str>, name: &str) -> Option<Result<String, String>> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(key, true).as_deref() == Some(name))
            .then(|| percent_decode(value, true).ok_or_else(|| value.to_owned()))
    })
}

/// Decodes `%XX` escapes (and `+` as space if `plus_is_space`). `None` for a truncated or
/// non-hex escape, or if the result is not UTF-8.
pub fn percent_decode(s: &str, plus_is_space: bool) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hi = (hex[0] as char).to_digit(16)?;
                let lo = (hex[1] as char).to_digit(16)?;
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn req(headers: Vec<(&str, &str)>) -> Request {
        Request {
            method: "POST".into(),
            path: "/".into(),
            query: None,
            headers: headers
                .into_iter()
                .map(|(n, v)| (n.into(), v.as_bytes().to_vec()))
                .collect(),
            body: vec![],
        }
    }

    #[test]
    fn json_content_type_accepts_parameters_and_case() {
        assert!(is_json(&req(vec![("content-type", "application/json")])));
        assert!(is_json(&req(vec![(
            "content-type",
            "Application/JSON ; charset=utf-8"
        )])));
        assert!(!is_json(&req(vec![("content-type", "text/plain")])));
        assert!(!is_json(&req(vec![("content-type", "application/jsonx")])));
        assert!(!is_json(&req(vec![])));
    }

    #[test]
    fn query_params_decode() {
        let q = Some("a=1&tag=two%20words&x&tag=second&p=a+b");
        assert_eq!(query_param(q, "tag").as_deref(), Some("two words"));
        assert_eq!(query_param(q, "x").as_deref(), Some(""));
        assert_eq!(query_param(q, "p").as_deref(), Some("a b"));
        assert_eq!(query_param(q, "missing"), None);
        assert_eq!(query_param(None, "a"), None);
        assert_eq!(query_value(Some("a=%zz"), "a"), Some(Err("%zz".into())));
    }

    #[test]
    fn percent_decoding_rejects_bad_escapes() {
        assert_eq!(percent_decode("%41%42", false).as_deref(), Some("AB"));
        assert_eq!(percent_decode("a+b", false).as_deref(), Some("a+b"));
        assert_eq!(percent_decode("%4", false), None);
        assert_eq!(percent_decode("%ff", false), None);
    }

    #[test]
    fn errors_are_json_with_allow() {
        let r = method_not_allowed("POST", "GET, PUT");
        assert_eq!(r.status, 405);
        assert!(r
            .headers
            .iter()
            .any(|(n, v)| n == "allow" && v == b"GET, PUT"));
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["error"], "method_not_allowed");
    }
}
