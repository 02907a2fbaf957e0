//! The gateway's added latency: N sequential keep-alive GETs straight to an upstream and the
//! same N through a gateway in front of it (same run, same client), with the gateway admitting
//! on a signed affirming result. The upstream is a tuk-httpd server answering a 13-byte body
//! (and an AK at /_tuk/attestation/identity); the verifier is a tuk-httpd server serving one
//! signed result. Prints one JSON line.
//!
//! `cargo run --release -p tuk-gateway --example latency -- [N]` (default 1000).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;
use tuk_httpd::{Request, Response, Server};

/// A restricted ECDSA-P256-SHA256 signing key's TPMT_PUBLIC (the point is the generator).
fn ak_public() -> Vec<u8> {
    let unhex = |h: &str| -> Vec<u8> {
        (0..h.len() / 2)
            .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap())
            .collect()
    };
    let mut p = Vec::new();
    for v in [0x0023u16, 0x000b] {
        p.extend_from_slice(&v.to_be_bytes());
    }
    p.extend_from_slice(&(0x2u32 | 0x10 | 0x20 | 0x1_0000 | 0x4_0000).to_be_bytes());
    for v in [0u16, 0x0010, 0x0018, 0x000b, 0x0003, 0x0010] {
        p.extend_from_slice(&v.to_be_bytes());
    }
    for c in [
        "6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296",
        "4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5",
    ] {
        p.extend_from_slice(&32u16.to_be_bytes());
        p.extend_from_slice(&unhex(c));
    }
    p
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

fn run(agent: &ureq::Agent, url: &str, n: usize) -> Vec<Duration> {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let mut r = agent.get(url).call().unwrap();
        assert_eq!(r.status().as_u16(), 200);
        r.body_mut().read_to_vec().unwrap();
        times.push(t.elapsed());
    }
    times.sort();
    times
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map_or(1000, |a| a.parse().expect("N"));
    let public = ak_public();
    let ak = tuk_attest::AkPublic::parse(&public).unwrap().name();
    let identity = tuk_attest::evidence::Identity {
        ek_handle: 0x8101_0001,
        ek_template: "rsa2048".into(),
        ek_public: vec![1],
        ek_certificate: vec![2],
        ak_public: public,
        ak_name: ak.clone(),
    }
    .to_json()
    .to_string();
    let upstream = Server::bind("127.0.0.1:0".parse().unwrap())
        .unwrap()
        .spawn(Arc::new(move |req: &Request| {
            if req.path == "/_tuk/attestation/identity" {
                return Response::json(200, identity.clone());
            }
            Response::text(200, "hello, world\n")
        }))
        .unwrap();
    let up_url = format!("http://{}", upstream.addr());
    let signer =
        tuk_verifier::ear::EarSigner::new(tuk_measure::sign::SigningKey::generate().unwrap());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = json!({"ear_status": "affirming", "iat": now, "exp": now + 3600,
        "tuk_instance": "a", "tuk_url": up_url, "tuk_ak_name": tuk_measure::hex(&ak)});
    let doc = json!({"interval_ms": 1000, "latest": {"status": "affirming",
        "ear": signer.sign(&claims)}})
    .to_string();
    let verifier = Server::bind("127.0.0.1:0".parse().unwrap())
        .unwrap()
        .spawn(Arc::new(move |_: &Request| {
            Response::json(200, doc.clone())
        }))
        .unwrap();
    let gateway = tuk_gateway::Gateway::start(tuk_gateway::Config {
        upstream: up_url.clone(),
        verifier: format!("http://{}", verifier.addr()),
        instance: "a".into(),
        verifier_key: tuk_gateway::KeyPin::Key(signer.public_key()),
        verifier_ca: None,
        require_verifier_tls: false,
        forward_tuk: false,
        verifier_token: None,
        timeout: Duration::from_secs(10),
    })
    .unwrap();
    gateway.admit().expect("the gateway admits");
    let gw = Server::bind("127.0.0.1:0".parse().unwrap())
        .unwrap()
        .spawn(gateway.handler())
        .unwrap();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let direct_url = format!("{up_url}/hello");
    let gw_url = format!("http://{}/hello", gw.addr());
    // Warm-up, then interleaved halves so that drift hits both alike.
    run(&agent, &direct_url, 100);
    run(&agent, &gw_url, 100);
    let mut direct = run(&agent, &direct_url, n / 2);
    let mut through = run(&agent, &gw_url, n / 2);
    direct.extend(run(&agent, &direct_url, n - n / 2));
    through.extend(run(&agent, &gw_url, n - n / 2));
    direct.sort();
    through.sort();
    let mean =
        |v: &[Duration]| v.iter().map(Duration::as_secs_f64).sum::<f64>() / v.len() as f64 * 1e6;
    println!(
        "{}",
        json!({
            "requests": n,
            "direct_us": {"mean": mean(&direct), "p50": percentile(&direct, 0.5), "p99": percentile(&direct, 0.99)},
            "gateway_us": {"mean": mean(&through), "p50": percentile(&through, 0.5), "p99": percentile(&through, 0.99)},
            "added_us": {"mean": mean(&through) - mean(&direct), "p50": percentile(&through, 0.5) - percentile(&direct, 0.5)},
        })
    );
}
