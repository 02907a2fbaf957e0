//! The verifier's trust dashboard (issue 17) in a real browser: Debian's headless Chromium,
//! driven over the Chrome DevTools Protocol (a small CDP client below, over a minimal RFC 6455
//! websocket client on std's TcpStream: no extra crate), against a real `tuk verifier serve`
//! attesting a real instance (QEMU TCG, swtpm, signed components, a signed kernel reference).
//!
//! The user's path: the fleet page asks for a token; a read token (`tuk verifier token
//! --scope read`) is typed into the login form; the page shows the instance `affirming`; the
//! host attacker runs `tuk tamper` on the kernel's read-only data; the page, never reloaded,
//! shows `contraindicated` within 3 verifier intervals + 2 s of the tamper; the instance page
//! shows the kernel's reason; the page fits a 375 px wide screen; and the browser logged no
//! error (console, exceptions, network, CSP) the whole time. The `/ui/` answers carry the
//! Content-Security-Policy and nosniff headers.

use std::io::{BufRead as _, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tuk_e2e::process::Service;
use tuk_e2e::signing::signed_pack;
use tuk_e2e::{boot_full, kernel_image, tamper_cli, verifier};
use tuk_measure::sign::SigningKey;

const TUK: &str = env!("CARGO_BIN_EXE_tuk");
const CHROMIUM: &str = "/usr/bin/chromium";
/// The verifier's attestation interval in this test.
const INTERVAL_MS: u64 = 1000;
/// The stated bound: the page shows a tamper within 3 intervals + 2 s (the in-guest monitor's
/// 100 ms round, the next attestation, the page's 1 s poll, TCG slowness).
const DETECTION_BOUND: Duration = Duration::from_millis(3 * INTERVAL_MS + 2000);

// ---- a minimal websocket client (RFC 6455), enough for CDP on loopback ----

struct WebSocket {
    stream: TcpStream,
}

impl WebSocket {
    fn connect(url: &str) -> WebSocket {
        let rest = url.strip_prefix("ws://").expect("a ws:// URL");
        let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let mut stream = TcpStream::connect(host).unwrap_or_else(|e| panic!("connect {url}: {e}"));
        let key = base64_16(&tuk_attest::attester::random_bytes(16));
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream
                .read_exact(&mut byte)
                .expect("the websocket handshake");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(
            head.starts_with("HTTP/1.1 101"),
            "websocket refused: {head}"
        );
        WebSocket { stream }
    }

    fn send(&mut self, text: &str) {
        let payload = text.as_bytes();
        let mut frame = vec![0x81u8];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= 0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask: [u8; 4] = tuk_attest::attester::random_bytes(4).try_into().unwrap();
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).expect("send to the browser");
    }

    /// The next text message; None on timeout.
    fn recv(&mut self, timeout: Duration) -> Option<String> {
        self.stream.set_read_timeout(Some(timeout)).unwrap();
        let mut message = Vec::new();
        loop {
            let mut h = [0u8; 2];
            match self.stream.read_exact(&mut h) {
                Ok(()) => {}
                Err(e)
                    if message.is_empty()
                        && matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                {
                    return None
                }
                Err(e) => panic!("the browser's websocket: {e}"),
            }
            // Once a frame has started, read it whole.
            self.stream
                .set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            let (fin, opcode) = (h[0] & 0x80 != 0, h[0] & 0x0f);
            let mut len = u64::from(h[1] & 0x7f);
            if len == 126 {
                let mut b = [0u8; 2];
                self.stream.read_exact(&mut b).unwrap();
                len = u64::from(u16::from_be_bytes(b));
            } else if len == 127 {
                let mut b = [0u8; 8];
                self.stream.read_exact(&mut b).unwrap();
                len = u64::from_be_bytes(b);
            }
            let mut payload = vec![0u8; usize::try_from(len).unwrap()];
            self.stream.read_exact(&mut payload).unwrap();
            match opcode {
                0x0..=0x2 => message.extend_from_slice(&payload),
                0x8 => panic!("the browser closed the websocket"),
                _ => continue, // ping/pong: CDP does not need them answered on loopback
            }
            if fin {
                return Some(String::from_utf8(message).expect("CDP sends UTF-8 JSON"));
            }
        }
    }
}

fn base64_16(b: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

// ---- the browser ----

/// Headless Chromium with a fresh profile, one page, and the errors it reported.
struct Browser {
    child: Child,
    ws: WebSocket,
    next_id: u64,
    /// Every console error, exception, and error log entry (network, CSP, …) seen.
    errors: Vec<String>,
    _profile: PathBuf,
}

impl Browser {
    fn start(dir: &Path) -> Browser {
        assert!(
            Path::new(CHROMIUM).exists(),
            "{CHROMIUM} is missing: install Debian's chromium (`apt-get install chromium`, \
             it is in scripts/lib.sh's APT_PACKAGES; scripts/test installs it)"
        );
        let profile = dir.join("chromium-profile");
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).unwrap();
        let mut child = Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {CHROMIUM}: {e}"));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = Vec::new();
        let browser_ws = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(i) = line.find("ws://") {
                        break line[i..].trim().to_owned();
                    }
                    seen.push(line);
                }
                Err(_) => panic!("chromium did not open its DevTools port: {seen:?}"),
            }
        };
        let authority = browser_ws
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        let list = ureq::get(&format!("http://{authority}/json/list"))
            .call()
            .expect("DevTools /json/list")
            .body_mut()
            .read_to_string()
            .unwrap();
        let targets: Value = serde_json::from_str(&list).unwrap();
        let page = targets
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .unwrap_or_else(|| panic!("no page target: {targets}"));
        let ws = WebSocket::connect(page["webSocketDebuggerUrl"].as_str().unwrap());
        let mut b = Browser {
            child,
            ws,
            next_id: 0,
            errors: Vec::new(),
            _profile: profile,
        };
        for domain in ["Runtime.enable", "Log.enable", "Page.enable"] {
            b.call(domain, json!({}));
        }
        b
    }

    /// Keeps what the browser reports on the side: errors.
    fn observe(&mut self, event: &Value) {
        let p = &event["params"];
        match event["method"].as_str() {
            Some("Runtime.consoleAPICalled")
                if matches!(p["type"].as_str(), Some("error" | "assert")) =>
            {
                self.errors
                    .push(format!("console.{}: {}", p["type"], p["args"]));
            }
            Some("Runtime.exceptionThrown") => {
                self.errors
                    .push(format!("exception: {}", p["exceptionDetails"]));
            }
            Some("Log.entryAdded") if p["entry"]["level"] == "error" => {
                self.errors.push(format!(
                    "log ({}): {} {}",
                    p["entry"]["source"], p["entry"]["text"], p["entry"]["url"]
                ));
            }
            _ => {}
        }
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.ws
            .send(&json!({"id": id, "method": method, "params": params}).to_string());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "{method}: no answer from the browser");
            let Some(text) = self.ws.recv(left) else {
                continue;
            };
            let msg: Value = serde_json::from_str(&text).unwrap();
            if msg["id"] == id {
                assert!(msg["error"].is_null(), "{method}: {}", msg["error"]);
                return msg["result"].clone();
            }
            self.observe(&msg);
        }
    }

    /// Evaluates `expr` in the page; its value (JSON).
    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        );
        assert!(
            r["exceptionDetails"].is_null(),
            "{expr}: {}",
            r["exceptionDetails"]
        );
        r["result"]["value"].clone()
    }

    /// Polls `expr` every 50 ms until it gives `want`; the time it took. Panics after `within`.
    fn wait_for(&mut self, what: &str, expr: &str, want: &Value, within: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let got = self.eval(expr);
            if &got == want {
                return start.elapsed();
            }
            assert!(
                start.elapsed() <= within,
                "{what}: the page shows {got} after {:?} (want {want}); errors: {:?}",
                start.elapsed(),
                self.errors
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status text the fleet page shows for instance `id` (null when there is no row).
fn fleet_status(id: &str) -> String {
    format!(
        "(() => {{ const e = document.querySelector('#fleet-table tr[data-id=\"{id}\"] \
         .status-text'); return e ? e.textContent : null; }})()"
    )
}

#[test]
fn dashboard_shows_a_tampered_instance_turn_contraindicated() {
    let dir = std::env::temp_dir()
        .join("tuk-e2e")
        .join(format!("dashboard-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // Fail early, before the slow part, if the browser is missing.
    let mut browser = Browser::start(&dir);

    // References for an affirming instance: signed components and a signed kernel reference.
    let signed = signed_pack(&dir.join("pack"), &["hello", "kv"]);
    let components_pub = dir.join("components.pub");
    std::fs::write(&components_pub, signed.key.trusted_key().to_json()).unwrap();
    let kernel_key = SigningKey::generate().unwrap();
    let kernel_pub = dir.join("kernel.pub");
    std::fs::write(&kernel_pub, kernel_key.trusted_key().to_json()).unwrap();
    let image = std::fs::read(kernel_image()).unwrap();
    let reference = dir.join("kernel.ref.json");
    let envelope = tuk_measure::kernel_ref::sign(
        &kernel_key,
        &image,
        tuk_measure::kernel_ref::KernelPredicate {
            version: env!("CARGO_PKG_VERSION").into(),
            bytes: image.len() as u64,
            toolchain: "tests".into(),
        },
    );
    std::fs::write(&reference, envelope).unwrap();

    let vm = boot_full(
        "dashboard",
        &[("integrity.interval_ms", "100")],
        Some(&signed.pack),
        96,
    );
    let state = dir.join("verifier");
    let mut cmd = verifier::serve_command(TUK, &state, INTERVAL_MS);
    cmd.arg("--kernel-ref")
        .arg(&reference)
        .arg("--kernel-ref-key")
        .arg(&kernel_pub)
        .arg("--trust")
        .arg(&components_pub);
    let v = Service::start(cmd);
    let base = v.url();
    let admin = verifier::admin_token(&state);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let mut r = agent
        .post(&format!("{base}/v1/instances"))
        .header("Authorization", &format!("Bearer {admin}"))
        .header("Content-Type", "application/json")
        .send(
            json!({"url": tuk_e2e::admin_url(&vm), "service_url": vm.url(), "id": "a"})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
    let text = r.body_mut().read_to_string().unwrap();
    assert_eq!(r.status().as_u16(), 201, "registration: {text}");

    // The pages carry the policy; the data behind them still wants a token.
    let r = agent.get(&format!("{base}/ui/")).call().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let csp = r.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    let r = agent.get(&format!("{base}/v1/instances")).call().unwrap();
    assert_eq!(
        r.status().as_u16(),
        401,
        "the API's read routes need a token"
    );

    // A read token, as an operator makes one.
    let out = Command::new(TUK)
        .args(["verifier", "token", "--scope", "read", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    let read_token = line["token"].as_str().expect("a token").to_owned();

    // The fleet page: it asks for a token, gets it through the form, shows `a` affirming.
    browser.call("Page.navigate", json!({"url": format!("{base}/ui/")}));
    browser.wait_for(
        "the page's script",
        "document.readyState === 'complete' && !!document.getElementById('login-form')",
        &json!(true),
        Duration::from_secs(20),
    );
    // The error collector and the policy work: an injected inline script is refused by the
    // CSP, and that refusal is an error the browser reports (then forgotten: it was ours).
    browser.eval(
        "(() => { const s = document.createElement('script'); \
         s.textContent = 'window.tukInjected = 1'; document.body.append(s); return true; })()",
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        browser.eval("window.tukInjected === undefined"),
        json!(true)
    );
    assert!(
        browser
            .errors
            .iter()
            .any(|e| e.contains("Content Security Policy")),
        "the refused inline script was not reported: {:?}",
        browser.errors
    );
    browser.errors.clear();
    browser.wait_for(
        "the login form",
        "(() => { const s = document.getElementById('login'); return !!s && !s.hidden; })()",
        &json!(true),
        Duration::from_secs(20),
    );
    browser.eval(&format!(
        "(() => {{ document.getElementById('token').value = {}; \
         document.getElementById('login-form').requestSubmit(); return true; }})()",
        json!(read_token)
    ));
    let took = browser.wait_for(
        "instance a affirming on the fleet page",
        &fleet_status("a"),
        &json!("affirming"),
        Duration::from_secs(60),
    );
    eprintln!("the fleet page showed `a` affirming {took:?} after sign-in");
    let row = browser.eval("document.querySelector('#fleet-table tr[data-id=\"a\"]').innerText");
    let row = row.as_str().unwrap_or_default().to_owned();
    assert!(
        row.contains("hello 1.0.0") && row.contains("kv 1.0.0"),
        "{row}"
    );
    assert!(row.contains("sha256:") && row.contains("s ago"), "{row}");
    // The token is in the tab's sessionStorage, not in a cookie or the URL.
    assert_eq!(
        browser.eval("sessionStorage.getItem('tuk-verifier-token')"),
        json!(read_token)
    );
    assert_eq!(browser.eval("document.cookie"), json!(""));

    // A phone: nothing overflows 375 px (wide tables scroll inside their own region).
    browser.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 375, "height": 740, "deviceScaleFactor": 2, "mobile": true}),
    );
    std::thread::sleep(Duration::from_millis(300));
    let width = browser.eval("document.documentElement.scrollWidth");
    assert!(
        width.as_u64().is_some_and(|w| w <= 375),
        "the page is {width} px wide on a 375 px screen"
    );

    // A marker on the page and on the row: a reload (or a rebuilt table) would lose them.
    browser.eval(
        "window.tukMarker = 1; \
         document.querySelector('#fleet-table tr[data-id=\"a\"]').dataset.marker = '1'; true",
    );

    // The attack: a byte of the kernel's read-only data, by the host attacker's CLI.
    let offset = tuk_e2e::kernel_rodata_offset_of(b"no component serves this path");
    let tampered_at = Instant::now();
    tamper_cli(TUK, vm.state_dir(), "kernel:rodata", &offset.to_string());
    browser.wait_for(
        "instance a contraindicated on the fleet page",
        &fleet_status("a"),
        &json!("contraindicated"),
        DETECTION_BOUND,
    );
    let seen_after = tampered_at.elapsed();
    eprintln!(
        "the fleet page showed `a` contraindicated {seen_after:?} after the tamper \
         (bound {DETECTION_BOUND:?})"
    );
    assert!(seen_after <= DETECTION_BOUND);
    assert_eq!(
        browser.eval(
            "window.tukMarker === 1 && \
             document.querySelector('#fleet-table tr[data-id=\"a\"]').dataset.marker === '1'"
        ),
        json!(true),
        "the page was reloaded or its row rebuilt"
    );

    // The instance page: the kernel's reason, the timeline with both statuses.
    browser.eval("location.hash = '#/instance/a'; true");
    browser.wait_for(
        "the kernel's reason on the instance page",
        "(() => { const t = document.getElementById('submods').innerText; \
         return t.includes('changed since boot'); })()",
        &json!(true),
        Duration::from_secs(10),
    );
    let timeline = browser.eval("document.getElementById('timeline-table').innerText");
    let timeline = timeline.as_str().unwrap_or_default();
    assert!(
        timeline.contains("affirming") && timeline.contains("contraindicated"),
        "{timeline}"
    );
    // The event log of the latest attestation as tables: the kernel's (PCR 4), the policy's
    // (PCR 5) and the components' (PCR 9) records, and each PCR's replayed value as the API
    // gives it.
    browser.wait_for(
        "the event log tables with PCR 4, 5 and 9 rows",
        "(() => { const pcrs = [...document.querySelectorAll('#pcrs-table tbody tr')] \
         .map((r) => r.dataset.pcr); const recs = new Set([...document.querySelectorAll( \
         '#eventlog-table tbody tr')].map((r) => r.dataset.pcr)); \
         return ['4', '5', '9'].every((p) => pcrs.includes(p) && recs.has(p)); })()",
        &json!(true),
        Duration::from_secs(10),
    );
    let mut r = agent
        .get(&format!("{base}/v1/instances/a/eventlog"))
        .header("Authorization", &format!("Bearer {admin}"))
        .call()
        .unwrap();
    let text = r.body_mut().read_to_string().unwrap();
    assert_eq!(r.status().as_u16(), 200, "eventlog: {text}");
    let log: Value = serde_json::from_str(&text).unwrap();
    for pcr in ["4", "5", "9"] {
        let want = log["pcrs"][pcr].as_str().unwrap_or_default().to_owned();
        assert_eq!(want.len(), 64, "PCR {pcr} in {text}");
        let shown = browser.eval(&format!(
            "(document.querySelector('#pcrs-table tbody tr[data-pcr=\"{pcr}\"] td') || {{}}).textContent"
        ));
        // The page may have moved on to a newer result; the kernel's and the policy's PCRs
        // do not change between quotes, the components' may only with a re-instantiation.
        if pcr != "9" {
            assert_eq!(shown, json!(want), "PCR {pcr}");
        }
    }
    assert!(log["replay_error"].is_null(), "{text}");
    // Let a few polls run on this page too, then: no error in the browser at any point.
    std::thread::sleep(Duration::from_millis(2500));
    browser.eval("true");
    assert!(
        browser.errors.is_empty(),
        "the browser reported errors: {:#?}",
        browser.errors
    );
    drop(browser);
    drop(v);
    drop(vm);
    let _ = std::fs::remove_dir_all(&dir);
}
