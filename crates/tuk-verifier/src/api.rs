//! The REST API (docs/verifier.openapi.yaml is the contract). Every answer is JSON but
//! `/metrics` (Prometheus text) and the OpenAPI document (YAML); errors are
//! `{"error": "<what to do>"}` with 400, 401 (no or an unknown bearer token), 403 (the token's
//! scope is too small), 404, 405, 409, 422 (registration refused), 502 (the instance could
//! not be reached) or 500 (storage).
//!
//! Access ([`crate::auth`]): `GET /healthz`, `/metrics`, `/v1/key` and `/v1/openapi.yaml` are
//! open; the other GET routes need a `read` token (or none with `--read-anonymous`), except
//! `GET /v1/webhooks` (hook URLs often carry secrets) which needs `admin`; every other
//! method needs an `admin` token. `/ui/…`, the dashboard's pages ([`dashboard`]), are open:
//! they hold no data, their script reads these routes with the user's token.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};
use tuk_httpd::{Request, Response};

use crate::auth::{Caller, Denied, Scope, Tokens};

use crate::dashboard;
use crate::{Registration, ServiceError, Verifier};

/// Who may use the API.
pub struct Access {
    pub tokens: Tokens,
    /// Let the `read` routes in without a token.
    pub read_anonymous: bool,
}

/// The scope a request needs; None: open to all.
pub fn required_scope(method: &str, path: &str) -> Option<Scope> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        ("GET", ["healthz" | "metrics"] | ["v1", "key" | "openapi.yaml"]) => None,
        ("GET", ["v1", "webhooks", ..]) => Some(Scope::Admin),
        ("GET", _) => Some(Scope::Read),
        _ => Some(Scope::Admin),
    }
}

/// The OpenAPI document, served at `GET /v1/openapi.yaml`.
pub const OPENAPI: &str = include_str!("../../../docs/verifier.openapi.yaml");

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Webhook {
    url: String,
}

fn ok(status: u16, v: &Value) -> Response {
    Response::json(status, v.to_string())
}

fn typed(content_type: &str, body: String) -> Response {
    Response {
        body: body.into_bytes(),
        ..Response::new(200).with_header("Content-Type", content_type)
    }
}

fn error(e: &ServiceError) -> Response {
    let status = match e {
        ServiceError::BadRequest(_) => 400,
        ServiceError::NotFound(_) => 404,
        ServiceError::Conflict(_) => 409,
        ServiceError::Refused(_) => 422,
        ServiceError::Unavailable(_) => 502,
        ServiceError::Store(_) => 500,
    };
    Response::error(status, &e.to_string())
}

fn query_param<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.query.as_deref()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

fn int_param(req: &Request, name: &str) -> Result<Option<i64>, ServiceError> {
    query_param(req, name)
        .map(|v| {
            v.parse::<i64>().map_err(|_| {
                ServiceError::BadRequest(format!("query parameter {name} must be an integer"))
            })
        })
        .transpose()
}

fn body<T: for<'de> Deserialize<'de>>(req: &Request) -> Result<T, ServiceError> {
    serde_json::from_slice(&req.body).map_err(|e| {
        ServiceError::BadRequest(format!("the request body is not the expected JSON: {e}"))
    })
}

/// The request handler: authentication, then the routes.
pub fn handler(v: Arc<Verifier>, access: Access) -> Arc<tuk_httpd::Handler> {
    Arc::new(move |req: &Request| {
        // The dashboard's pages hold no data (their script reads this API with the user's
        // token), so they are open; see dashboard.rs.
        if dashboard::is_ui(&req.path) {
            return dashboard::serve(&req.method, &req.path, access.read_anonymous);
        }
        let need = required_scope(&req.method, &req.path);
        let caller =
            match access
                .tokens
                .check(req.header("authorization"), need, access.read_anonymous)
            {
                Ok(c) => c,
                Err(denied) => {
                    v.metrics().auth_refused();
                    return refused(denied, need);
                }
            };
        route(&v, req, &caller).unwrap_or_else(|e| error(&e))
    })
}

/// 401 (with the challenge) or 403.
fn refused(denied: Denied, need: Option<Scope>) -> Response {
    let scope = need.map_or("read", Scope::as_str);
    match denied {
        Denied::Unauthenticated => Response::error(
            401,
            &format!(
                "this needs a bearer token with the {scope} scope (Authorization: Bearer TOKEN); \
                 the first admin token is in the verifier's STATE_DIR/admin.token, \
                 `tuk verifier token` makes more"
            ),
        )
        .with_header("WWW-Authenticate", "Bearer realm=\"tuk-verifier\""),
        Denied::Forbidden => Response::error(
            403,
            &format!("this needs a token with the {scope} scope; this token's is too small"),
        )
        .with_header(
            "WWW-Authenticate",
            &format!(
                "Bearer realm=\"tuk-verifier\", error=\"insufficient_scope\", scope=\"{scope}\""
            ),
        ),
    }
}

fn route(v: &Verifier, req: &Request, caller: &Caller) -> Result<Response, ServiceError> {
    let segments: Vec<&str> = req.path.trim_matches('/').split('/').collect();
    let m = req.method.as_str();
    Ok(match (m, segments.as_slice()) {
        ("GET", ["healthz"]) => ok(
            200,
            &json!({"status": "ok", "uptime_s": v.uptime().as_secs()}),
        ),
        ("GET", ["metrics"]) => typed(
            "text/plain; version=0.0.4",
            v.metrics()
                .render(&v.status_counts(), v.store().result_volume()?),
        ),
        ("GET", ["v1", "openapi.yaml"]) => typed("application/yaml", OPENAPI.to_owned()),
        ("GET", ["v1", "key"]) => ok(200, &v.signer().jwk()),
        ("GET", ["v1", "config"]) => ok(
            200,
            &json!({
                "interval_ms": v.interval_ms(),
                "store": v.store().kind(),
                "ear_key": v.signer().keyid(),
            }),
        ),
        ("GET", ["v1", "instances"]) => ok(200, &json!({"instances": v.list()})),
        ("POST", ["v1", "instances"]) => {
            let r: Registration = body(req)?;
            let done = v.register(&r, &caller.id)?;
            ok(if done["replaced"] == true { 200 } else { 201 }, &done)
        }
        ("GET", ["v1", "instances", id]) => ok(200, &v.get(id)?),
        ("DELETE", ["v1", "instances", id]) => {
            v.remove(id, &caller.id)?;
            Response::new(204)
        }
        ("GET", ["v1", "instances", id, "results"]) => {
            let limit = int_param(req, "limit")?.unwrap_or(50);
            ok(200, &v.history(id, limit, int_param(req, "before")?)?)
        }
        ("POST", ["v1", "instances", id, "attest"]) => ok(200, &v.attest_now(id)?),
        ("GET", ["v1", "instances", id, "eventlog"]) => ok(200, &v.eventlog(id)?),
        ("GET", ["v1", "audit"]) => {
            let limit = int_param(req, "limit")?.unwrap_or(100);
            ok(200, &v.audit_log(query_param(req, "instance"), limit)?)
        }
        ("GET", ["v1", "webhooks"]) => {
            let hooks: Vec<Value> = v
                .store()
                .webhooks()?
                .into_iter()
                .map(|(id, url)| json!({"id": id, "url": url}))
                .collect();
            ok(200, &json!({"webhooks": hooks}))
        }
        ("POST", ["v1", "webhooks"]) => {
            let w: Webhook = body(req)?;
            crate::webhook::check_target(&w.url, v.webhook_allow_private())
                .map_err(ServiceError::BadRequest)?;
            if v.store().webhooks()?.len() >= crate::webhook::MAX_WEBHOOKS {
                return Err(ServiceError::Conflict(format!(
                    "the verifier has {} webhooks, its limit: delete one first",
                    crate::webhook::MAX_WEBHOOKS
                )));
            }
            let id = tuk_measure::hex(&tuk_attest::attester::random_bytes(8));
            v.store().add_webhook(&id, &w.url, crate::now_ms())?;
            ok(201, &json!({"id": id, "url": w.url}))
        }
        ("DELETE", ["v1", "webhooks", id]) => {
            if !v.store().delete_webhook(id)? {
                return Err(ServiceError::NotFound(format!("no webhook {id:?}")));
            }
            Response::new(204)
        }
        (_, ["healthz" | "metrics"])
        | (_, ["v1", "openapi.yaml" | "key" | "config" | "instances" | "webhooks" | "audit"])
        | (_, ["v1", "instances", _])
        | (_, ["v1", "instances", _, "results" | "attest" | "eventlog"])
        | (_, ["v1", "webhooks", _]) => {
            Response::error(405, &format!("{m} is not allowed on {}", req.path))
        }
        _ => Response::error(404, &format!("no such resource: {}", req.path)),
    })
}
