//! The trust dashboard (docs/verifier.md, "Dashboard"): plain HTML, CSS and JavaScript served
//! under `/ui/`, embedded in the binary (no CDN, no build step). The pages hold no data: the
//! script reads the JSON API from the same origin with the operator's bearer token (kept in
//! the tab's `sessionStorage`), so the data stays behind the API's `read` scope (`admin` for
//! the webhooks) while the pages themselves are open, like `/v1/openapi.yaml`.
//!
//! Every answer under `/ui/` carries a strict Content-Security-Policy (scripts, styles and
//! connections from this origin only, no inline script or style, no framing, no form posts
//! elsewhere), `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer` and
//! `Cache-Control: no-store`.

use tuk_httpd::Response;

/// The policy every `/ui/` answer carries.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'self'; \
    frame-ancestors 'none'";

const INDEX: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const APP_CSS: &str = include_str!("../assets/app.css");
const FAVICON: &str = include_str!("../assets/favicon.svg");

/// True for the paths this module answers (`/ui` and everything under `/ui/`).
pub fn is_ui(path: &str) -> bool {
    path == "/ui" || path.starts_with("/ui/")
}

fn secured(r: Response) -> Response {
    r.with_header("Content-Security-Policy", CSP)
        .with_header("X-Content-Type-Options", "nosniff")
        .with_header("Referrer-Policy", "no-referrer")
        .with_header("X-Frame-Options", "DENY")
        .with_header("Cache-Control", "no-store")
}

fn asset(content_type: &str, body: &str) -> Response {
    secured(Response {
        body: body.as_bytes().to_vec(),
        ..Response::new(200).with_header("Content-Type", content_type)
    })
}

/// The answer to `method path` under `/ui/`. `read_anonymous` (the verifier's
/// `--read-anonymous`) is told to the page at `/ui/access.json`, so it asks for a token only
/// when one is needed.
pub fn serve(method: &str, path: &str, read_anonymous: bool) -> Response {
    if method != "GET" && method != "HEAD" {
        return secured(Response::error(
            405,
            &format!("{method} is not allowed on {path}"),
        ))
        .with_header("Allow", "GET, HEAD");
    }
    match path {
        "/ui" => secured(Response::new(308).with_header("Location", "/ui/")),
        "/ui/" | "/ui/index.html" => asset("text/html; charset=utf-8", INDEX),
        "/ui/app.js" => asset("text/javascript; charset=utf-8", APP_JS),
        "/ui/app.css" => asset("text/css; charset=utf-8", APP_CSS),
        "/ui/favicon.svg" => asset("image/svg+xml", FAVICON),
        "/ui/access.json" => asset(
            "application/json",
            &serde_json::json!({"read_anonymous": read_anonymous}).to_string(),
        ),
        _ => secured(Response::error(
            404,
            &format!("no such page: {path}; the dashboard is at /ui/"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
        r.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn pages_carry_the_policy() {
        for p in ["/ui/", "/ui/app.js", "/ui/app.css", "/ui/nope", "/ui"] {
            let r = serve("GET", p, false);
            assert_eq!(header(&r, "Content-Security-Policy"), Some(CSP), "{p}");
            assert_eq!(header(&r, "X-Content-Type-Options"), Some("nosniff"), "{p}");
        }
        assert_eq!(serve("GET", "/ui/nope", false).status, 404);
        assert_eq!(serve("POST", "/ui/", false).status, 405);
        assert!(CSP.contains("script-src 'self';") && !CSP.contains("unsafe"));
    }

    #[test]
    fn access_tells_the_page_whether_a_token_is_needed() {
        let body = |a| String::from_utf8(serve("GET", "/ui/access.json", a).body).unwrap();
        assert_eq!(body(true), r#"{"read_anonymous":true}"#);
        assert_eq!(body(false), r#"{"read_anonymous":false}"#);
    }

    #[test]
    fn no_inline_script_or_style_and_no_external_origin() {
        // The policy forbids inline code: the page must not need any.
        assert!(!INDEX.contains("<script>") && !INDEX.contains("style="));
        assert!(!INDEX.contains("onclick=") && !INDEX.contains("onload="));
        for text in [INDEX, APP_JS, APP_CSS] {
            assert!(!text.contains("http://") && !text.contains("https://"));
            assert!(!text.contains("innerHTML"));
        }
    }
}
