//! Request and response values, and how a response is put on the wire.
//!
//! Responses come from Wasm components, which are not trusted either: serialization drops
//! header lines that could break framing (invalid names, CR/LF/NUL in values, handler copies of
//! the headers the engine owns) and never lets a handler produce an interim (1xx) response.

use alloc::string::String;
use alloc::vec::Vec;

/// HTTP version of a request. Responses are always sent as HTTP/1.1 (RFC 9110 §6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// One request header field line, as received (name case preserved, value without OWS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: Vec<u8>,
}

/// A complete request: head plus the whole (de-chunked) body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The raw request-target, e.g. `/kv/a?x=1`.
    pub target: String,
    /// `target` before the first `?`.
    pub path: String,
    /// `target` after the first `?`, if there is one.
    pub query: Option<String>,
    pub version: Version,
    pub headers: Vec<Header>,
    pub body: Vec<u8>,
}

impl Request {
    /// The value of the first header called `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_slice())
    }
}

/// A response from a [`Handler`](crate::Handler). The engine adds `Server`, `Content-Length`
/// and `Connection`; see the crate docs for what it drops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// An empty response with this status.
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A response with `Content-Type: application/json`.
    pub fn json(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Self::with_body(status, "application/json", body.into())
    }

    /// A response with `Content-Type: text/plain; charset=utf-8`.
    pub fn text(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Self::with_body(status, "text/plain; charset=utf-8", body.into())
    }

    /// Adds a header line.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// A JSON error, `{"error":"<message>"}`, with the message escaped.
    pub fn error(status: u16, message: &str) -> Self {
        let mut body = String::with_capacity(message.len() + 12);
        body.push_str("{\"error\":\"");
        json_escape(&mut body, message);
        body.push_str("\"}");
        Self::json(status, body)
    }

    fn with_body(status: u16, content_type: &str, body: Vec<u8>) -> Self {
        Self {
            body,
            ..Self::new(status).with_header("Content-Type", content_type)
        }
    }
}

fn json_escape(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.push_str("\\u00");
                out.push(HEX[(c as usize) >> 4] as char);
                out.push(HEX[(c as usize) & 0xf] as char);
            }
            c => out.push(c),
        }
    }
}

/// The reason phrase for a status code, or `""` if it is not one this server uses
/// (an empty reason phrase is valid, RFC 9112 §4).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        422 => "Unprocessable Content",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// Appends `resp` to `out` as an HTTP/1.1 response. `head_only` omits the body (HEAD);
/// `connection` is the engine's `Connection` header value, if any. The status must already be
/// a final one (200..=599); the caller checks.
pub(crate) fn write_response(
    out: &mut Vec<u8>,
    resp: &Response,
    head_only: bool,
    connection: Option<&str>,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, resp.status.into());
    out.push(b' ');
    out.extend_from_slice(reason_phrase(resp.status).as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut has_server = false;
    for (name, value) in &resp.headers {
        let owned = ["content-length", "transfer-encoding", "connection"]
            .iter()
            .any(|o| name.eq_ignore_ascii_case(o));
        if owned || !is_token(name.as_bytes()) || !is_field_value(value.as_bytes()) {
            continue;
        }
        has_server |= name.eq_ignore_ascii_case("server");
        push_header(out, name, value.as_bytes());
    }
    if !has_server {
        push_header(out, "Server", b"tuk");
    }
    // RFC 9110 §8.6, §15.3.5, §15.4.5: no Content-Length or body on 204 and 304.
    let bodiless = matches!(resp.status, 204 | 304);
    if !bodiless {
        out.extend_from_slice(b"Content-Length: ");
        push_decimal(out, resp.body.len() as u64);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(value) = connection {
        push_header(out, "Connection", value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    if !bodiless && !head_only {
        out.extend_from_slice(&resp.body);
    }
}

fn push_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// `token` (RFC 9110 §5.6.2), non-empty.
pub(crate) fn is_token(s: &[u8]) -> bool {
    !s.is_empty()
        && s.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `field-value` bytes (RFC 9110 §5.5): no control characters except HTAB.
pub(crate) fn is_field_value(s: &[u8]) -> bool {
    s.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(resp: &Response, head_only: bool, connection: Option<&str>) -> String {
        let mut out = Vec::new();
        write_response(&mut out, resp, head_only, connection);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn error_body_is_escaped_json() {
        let r = Response::error(404, "no \"route\" \\ here\n\u{1}é");
        assert_eq!(r.status, 404);
        assert_eq!(
            r.body,
            b"{\"error\":\"no \\\"route\\\" \\\\ here\\n\\u0001\xc3\xa9\"}".to_vec()
        );
        assert_eq!(
            r.headers,
            [("Content-Type".into(), "application/json".into())]
        );
    }

    #[test]
    fn constructors_set_content_type() {
        let t = Response::text(200, "hi").with_header("X-A", "1");
        assert_eq!(t.headers[0].1, "text/plain; charset=utf-8");
        assert_eq!(t.headers[1], ("X-A".into(), "1".into()));
        assert_eq!(t.body, b"hi");
        assert!(Response::new(204).headers.is_empty());
    }

    #[test]
    fn reason_phrases() {
        assert_eq!(reason_phrase(200), "OK");
        assert_eq!(reason_phrase(431), "Request Header Fields Too Large");
        assert_eq!(reason_phrase(299), "");
    }

    #[test]
    fn serializes_with_server_and_length_and_no_date() {
        let s = wire(&Response::text(200, "hello"), false, None);
        assert_eq!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nServer: tuk\r\n\
             Content-Length: 5\r\n\r\nhello"
        );
        let s = wire(&Response::new(299), false, Some("close"));
        assert_eq!(
            s,
            "HTTP/1.1 299 \r\nServer: tuk\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn head_keeps_length_but_drops_body() {
        let s = wire(&Response::text(200, "hello"), true, None);
        assert!(s.ends_with("Content-Length: 5\r\n\r\n"), "{s}");
    }

    #[test]
    fn no_body_statuses() {
        for status in [204, 304] {
            let s = wire(&Response::text(status, "dropped"), false, None);
            assert!(
                !s.contains("Content-Length") && s.ends_with("\r\n\r\n"),
                "{s}"
            );
        }
    }

    #[test]
    fn engine_owned_and_invalid_handler_headers_are_dropped() {
        let r = Response::text(200, "x")
            .with_header("content-length", "99")
            .with_header("Transfer-Encoding", "chunked")
            .with_header("CONNECTION", "keep-alive")
            .with_header("X-Split", "a\r\nSet-Cookie: evil=1")
            .with_header("Bad Name", "v")
            .with_header("", "v")
            .with_header("Server", "component/1");
        let s = wire(&r, false, None);
        assert_eq!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Server: component/1\r\nContent-Length: 1\r\n\r\nx"
        );
    }

    #[test]
    fn request_header_lookup_is_case_insensitive_first_match() {
        let h = |n: &str, v: &[u8]| Header {
            name: n.into(),
            value: v.to_vec(),
        };
        let req = Request {
            method: "GET".into(),
            target: "/".into(),
            path: "/".into(),
            query: None,
            version: Version::Http11,
            headers: alloc::vec![h("X-A", b"1"), h("x-a", b"2")],
            body: Vec::new(),
        };
        assert_eq!(req.header("x-A"), Some(&b"1"[..]));
        assert_eq!(req.header("x-b"), None);
    }
}
