//! The REST API (docs/verifier.openapi.yaml is the contract). Every answer is JSON but
//! `/metrics` (Prometheus text) and the OpenAPI document (YAML); errors are
//! `{"error": "<what to do>"}` with 400, 404, 405, 409, 422 (registration refused), 502 (the
//! instance could not be reached) or 500 (storage).

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};
use tuk_httpd::{Request, Response};

use crate::{ServiceError, Verifier};

/// The OpenAPI document, served at `GET /v1/openapi.yaml`.
pub const OPENAPI: &str = include_str!("../../../docs/verifier.openapi.yaml");

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Registration {
    url: String,
    #[serde(default)]
    id: Option<String>,
}

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

/// The request handler.
pub fn handler(v: Arc<Verifier>) -> Arc<tuk_httpd::Handler> {
    Arc::new(move |req: &Request| route(&v, req).unwrap_or_else(|e| error(&e)))
}

fn route(v: &Verifier, req: &Request) -> Result<Response, ServiceError> {
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
                "interval_ms": v.interval().as_millis() as u64,
                "store": v.store().kind(),
                "ear_key": v.signer().keyid(),
            }),
        ),
        ("GET", ["v1", "instances"]) => ok(200, &json!({"instances": v.list()})),
        ("POST", ["v1", "instances"]) => {
            let r: Registration = body(req)?;
            ok(201, &v.register(&r.url, r.id.as_deref())?)
        }
        ("GET", ["v1", "instances", id]) => ok(200, &v.get(id)?),
        ("DELETE", ["v1", "instances", id]) => {
            v.remove(id)?;
            Response::new(204)
        }
        ("GET", ["v1", "instances", id, "results"]) => {
            let limit = int_param(req, "limit")?.unwrap_or(50);
            ok(200, &v.history(id, limit, int_param(req, "before")?)?)
        }
        ("POST", ["v1", "instances", id, "attest"]) => ok(200, &v.attest_now(id)?),
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
            if !w.url.starts_with("http://") && !w.url.starts_with("https://") {
                return Err(ServiceError::BadRequest(
                    "a webhook url must be http:// or https://".into(),
                ));
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
        | (_, ["v1", "openapi.yaml" | "key" | "config" | "instances" | "webhooks"])
        | (_, ["v1", "instances", _])
        | (_, ["v1", "instances", _, "results" | "attest"])
        | (_, ["v1", "webhooks", _]) => {
            Response::error(405, &format!("{m} is not allowed on {}", req.path))
        }
        _ => Response::error(404, &format!("no such resource: {}", req.path)),
    })
}
