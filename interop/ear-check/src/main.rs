//! `tuk-ear-check`: reads one EAR attestation result (a JWT in compact form, as `tuk verifier
//! serve` issues them) on stdin, parses its claims set with Veraison's `ear` crate and runs the
//! crate's own validation, then prints what the crate understood as JSON:
//! `{"profile", "status", "submods": {NAME: STATUS}}`.
//!
//! It checks the *shape* of tuk's results against an independent implementation; the
//! signature is checked by tuk's own code (`tuk_verifier::ear::verify`) in the same test.
//! Exit status: 0 parsed and valid, 1 otherwise (with the reason on stderr).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use std::io::Read;
use std::process::ExitCode;

fn main() -> ExitCode {
    match check() {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tuk-ear-check: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check() -> Result<serde_json::Value, String> {
    let mut token = String::new();
    std::io::stdin()
        .read_to_string(&mut token)
        .map_err(|e| format!("cannot read the JWT from stdin: {e}"))?;
    let payload = token
        .trim()
        .split('.')
        .nth(1)
        .ok_or("stdin is not a compact JWT (header.payload.signature)")?;
    let json = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|e| format!("the JWT payload is not base64url: {e}"))?;
    let ear: ear::Ear = serde_json::from_slice(&json)
        .map_err(|e| format!("the ear crate refused the claims set: {e}"))?;
    ear.validate()
        .map_err(|e| format!("the ear crate found the claims set invalid: {e}"))?;
    let submods: serde_json::Map<String, serde_json::Value> = ear
        .submods
        .iter()
        .map(|(name, appraisal)| (name.clone(), appraisal.status.to_string().into()))
        .collect();
    Ok(serde_json::json!({
        "profile": ear.profile,
        "status": ear.status.map(|t| t.to_string()),
        "submods": submods,
    }))
}
