//! `notes`: a notes API with validation, stored in the host's kv import.
//!
//! | request              | answer                                                      |
//! |----------------------|-------------------------------------------------------------|
//! | `POST /notes`        | `201` with the new note (and `location`)                    |
//! | `GET /notes[?tag=t]` | `200`, the notes in id order (only those tagged `t`)        |
//! | `GET /notes/<id>`    | `200` with the note, `404`                                  |
//! | `PATCH /notes/<id>`  | `200` with the updated note (only the fields given change)  |
//! | `DELETE /notes/<id>` | `204`, `404`                                                |
//!
//! A note is `{"id", "title", "body", "tags", "created", "updated"}`. Bodies are JSON
//! (`content-type: application/json`, else `415`) of at most 64 KiB (else `413`):
//! `title` 1-200 characters, `body` at most 10000, `tags` at most 16 of 1-32 characters each
//! from `[a-z0-9-_]`. Unknown fields, malformed JSON and invalid values get `400` with a
//! message naming the problem. Ids are positive integers from a counter kept in the store.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};
use tuk_guest::{http, kv, log, Guest, Request, Response};

const MAX_REQUEST_BODY: usize = 64 * 1024;
const MAX_TITLE: usize = 200;
const MAX_BODY: usize = 10_000;
const MAX_TAGS: usize = 16;
const MAX_TAG: usize = 32;

/// The counter of the last id handed out.
const COUNTER_KEY: &str = "meta:last-id";
/// Notes are stored under `note:<id, 20 digits>`, so the store's key order is id order.
const NOTE_PREFIX: &str = "note:";

struct Notes;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Note {
    id: u64,
    title: String,
    body: String,
    tags: Vec<String>,
    /// RFC 3339 UTC.
    created: String,
    updated: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewNote {
    title: String,
    body: String,
    #[serde(default)]
    tags: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NotePatch {
    title: Option<String>,
    body: Option<String>,
    tags: Option<Vec<String>>,
}

/// A request failing validation: answered `400` with this message.
type Invalid = String;

fn check_title(title: &str) -> Result<(), Invalid> {
    let n = title.chars().count();
    if n == 0 || n > MAX_TITLE || title.trim().is_empty() {
        return Err(format!(
            "title must be 1 to {MAX_TITLE} characters and not blank (got {n})"
        ));
    }
    Ok(())
}

fn check_body(body: &str) -> Result<(), Invalid> {
    let n = body.chars().count();
    if n > MAX_BODY {
        return Err(format!(
            "body must be at most {MAX_BODY} characters (got {n})"
        ));
    }
    Ok(())
}

fn check_tags(tags: &[String]) -> Result<(), Invalid> {
    if tags.len() > MAX_TAGS {
        return Err(format!("at most {MAX_TAGS} tags (got {})", tags.len()));
    }
    for (i, tag) in tags.iter().enumerate() {
        let valid_chars = tag
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if tag.is_empty() || tag.len() > MAX_TAG || !valid_chars {
            return Err(format!(
                "tags[{i}] {tag:?}: tags are 1 to {MAX_TAG} characters from a-z 0-9 - _"
            ));
        }
        if tags[..i].contains(tag) {
            return Err(format!("tags[{i}] {tag:?} is given twice"));
        }
    }
    Ok(())
}

fn store_key(id: u64) -> String {
    format!("{NOTE_PREFIX}{id:020}")
}

fn load(id: u64) -> Option<Note> {
    // A record that does not parse was not written by this component: treat it as absent.
    kv::get(&store_key(id)).and_then(|bytes| serde_json::from_slice(&bytes).ok())
}

fn save(note: &Note) -> Result<(), Response> {
    let bytes =
        serde_json::to_vec(note).map_err(|e| http::error(500, "internal", &e.to_string()))?;
    kv::set(&store_key(note.id), &bytes)
        .map_err(|why| http::error(507, "insufficient_storage", &why))
}

fn next_id() -> Result<u64, Response> {
    let last = kv::get(COUNTER_KEY)
        .and_then(|b| {
            core::str::from_utf8(&b)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
        })
        .unwrap_or(0);
    let id = last + 1;
    kv::set(COUNTER_KEY, id.to_string().as_bytes())
        .map_err(|why| http::error(507, "insufficient_storage", &why))?;
    Ok(id)
}

/// The JSON body of `req` as `T`, or the response that says what is wrong with it.
fn json_body<T: serde::de::DeserializeOwned>(req: &Request) -> Result<T, Response> {
    if !http::is_json(req) {
        return Err(http::expect_json());
    }
    if req.body.len() > MAX_REQUEST_BODY {
        return Err(http::too_large(MAX_REQUEST_BODY));
    }
    serde_json::from_slice(&req.body).map_err(|e| {
        let problem = match e.classify() {
            serde_json::error::Category::Data => "invalid note",
            _ => "malformed JSON",
        };
        http::bad_request(&format!("{problem}: {e}"))
    })
}

fn create(req: &Request) -> Result<Response, Response> {
    let new: NewNote = json_body(req)?;
    check_title(&new.title)
        .and(check_body(&new.body))
        .and(check_tags(&new.tags))
        .map_err(|m| http::bad_request(&m))?;
    let now = tuk_guest::time::now_rfc3339();
    let note = Note {
        id: next_id()?,
        title: new.title,
        body: new.body,
        tags: new.tags,
        created: now.clone(),
        updated: now,
    };
    save(&note)?;
    let mut response = http::json(201, &note);
    response.headers.push((
        "location".into(),
        format!("/notes/{}", note.id).into_bytes(),
    ));
    Ok(response)
}

fn list(req: &Request) -> Result<Response, Response> {
    let tag = match http::query_value(req.query.as_deref(), "tag") {
        None => None,
        Some(Ok(tag)) => Some(tag),
        Some(Err(raw)) => {
            return Err(http::bad_request(&format!(
                "tag {raw:?} is not valid percent-encoded UTF-8"
            )))
        }
    };
    let notes: Vec<Note> = kv::list_keys(NOTE_PREFIX)
        .iter()
        .filter_map(|key| {
            kv::get(key).and_then(|bytes| serde_json::from_slice::<Note>(&bytes).ok())
        })
        .filter(|note| tag.as_ref().is_none_or(|t| note.tags.contains(t)))
        .collect();
    Ok(http::json(200, &notes))
}

fn update(req: &Request, mut note: Note) -> Result<Response, Response> {
    let patch: NotePatch = json_body(req)?;
    let bad = |m: Invalid| http::bad_request(&m);
    if let Some(title) = patch.title {
        check_title(&title).map_err(bad)?;
        note.title = title;
    }
    if let Some(body) = patch.body {
        check_body(&body).map_err(bad)?;
        note.body = body;
    }
    if let Some(tags) = patch.tags {
        check_tags(&tags).map_err(bad)?;
        note.tags = tags;
    }
    note.updated = tuk_guest::time::now_rfc3339();
    save(&note)?;
    Ok(http::json(200, &note))
}

fn item(req: &Request, id: &str) -> Result<Response, Response> {
    let not_found = || http::not_found(&format!("no note with id {id:?}"));
    // Ids are what `POST /notes` handed out: positive decimal numbers, no sign or padding.
    let id_num = id
        .parse::<u64>()
        .ok()
        .filter(|n| *n > 0 && !id.starts_with(['0', '+']))
        .ok_or_else(not_found)?;
    match req.method.as_str() {
        "GET" => Ok(http::json(200, &load(id_num).ok_or_else(not_found)?)),
        "PATCH" => update(req, load(id_num).ok_or_else(not_found)?),
        "DELETE" => match kv::delete(&store_key(id_num)) {
            true => Ok(http::empty(204)),
            false => Err(not_found()),
        },
        other => Err(http::method_not_allowed(other, "GET, PATCH, DELETE")),
    }
}

fn route(req: &Request) -> Result<Response, Response> {
    match (req.path.as_str(), req.method.as_str()) {
        ("/notes" | "/notes/", "POST") => create(req),
        ("/notes" | "/notes/", "GET") => list(req),
        ("/notes" | "/notes/", other) => Err(http::method_not_allowed(other, "GET, POST")),
        (path, _) => match path.strip_prefix("/notes/") {
            Some(id) => item(req, id),
            None => Err(http::not_found(&format!(
                "no route for {path}; notes live under /notes"
            ))),
        },
    }
}

impl Guest for Notes {
    fn handle(req: Request) -> Response {
        let response = route(&req).unwrap_or_else(|e| e);
        log::info(&format!(
            "{} {} -> {}",
            req.method, req.path, response.status
        ));
        response
    }
}

tuk_guest::export!(Notes);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert!(check_title("groceries").is_ok());
        assert!(check_title("").is_err());
        assert!(check_title("   ").is_err());
        assert!(check_title(&"é".repeat(200)).is_ok());
        assert!(check_title(&"é".repeat(201)).is_err());
        assert!(check_body("").is_ok());
        assert!(check_body(&"x".repeat(10_001)).is_err());
        assert!(check_tags(&["home".into(), "to-do_2".into()]).is_ok());
        assert!(check_tags(&["Home".into()]).is_err());
        assert!(check_tags(&["a".into(), "a".into()]).is_err());
        assert!(check_tags(&vec!["a".into(); 17]).is_err());
    }

    #[test]
    fn unknown_fields_and_types_are_named() {
        let e = serde_json::from_slice::<NewNote>(br#"{"title":"t","body":"b","colour":1}"#)
            .unwrap_err();
        assert!(e.to_string().contains("unknown field `colour`"), "{e}");
        let e = serde_json::from_slice::<NewNote>(br#"{"title":5,"body":"b"}"#).unwrap_err();
        assert!(
            e.to_string()
                .contains("invalid type: integer `5`, expected a string"),
            "{e}"
        );
        let e = serde_json::from_slice::<NewNote>(br#"{"body":"b"}"#).unwrap_err();
        assert!(e.to_string().contains("missing field `title`"), "{e}");
    }

    #[test]
    fn store_keys_sort_by_id() {
        assert!(store_key(9) < store_key(10));
        assert_eq!(store_key(1), "note:00000000000000000001");
    }
}
