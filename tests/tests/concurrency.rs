//! 64 clients at once, 5 keep-alive requests each.
//!
//! The clients open their connections one after another and then, released together by a
//! barrier, all send their requests at the same moment while all 64 connections are open in
//! the guest. Why not 64 simultaneous `connect`s: QEMU's user networking (libslirp) listens on
//! the forwarded host port with a backlog of 1, so a burst of simultaneous SYNs overflows the
//! *host's* accept queue; Linux then drops the handshakes' final ACKs and some clients, which
//! believe they are connected, wait tens of seconds before the host completes the connection.
//! That measures the host's TCP stack and slirp, not the kernel under test.

use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tuk_e2e::{boot_with, health, num, Conn, IO_TIMEOUT};

const CLIENTS: usize = 64;
const REQUESTS: usize = 5;

#[test]
fn sixty_four_clients_five_requests_each() {
    // Connections opened early must survive until the last one is open (the connect phase can
    // take seconds when slirp drops SYNs), so this VM gets long HTTP timeouts.
    let vm = boot_with(
        "concurrency",
        &[
            ("http.idle_timeout_ms", "60000"),
            ("http.request_timeout_ms", "60000"),
        ],
    );
    let addr = vm.addr();
    let before = health(addr);

    let connect_gate = Arc::new(Mutex::new(()));
    // All clients and this thread: connected, requests done, counters read.
    let connected = Arc::new(Barrier::new(CLIENTS + 1));
    let answered = Arc::new(Barrier::new(CLIENTS + 1));
    let inspected = Arc::new(Barrier::new(CLIENTS + 1));

    let started = Instant::now();
    let workers: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let gate = Arc::clone(&connect_gate);
            let (connected, answered, inspected) = (
                Arc::clone(&connected),
                Arc::clone(&answered),
                Arc::clone(&inspected),
            );
            thread::spawn(move || -> Result<usize, String> {
                // Every path reaches every barrier, so one failure cannot hang the others.
                let conn = {
                    let _one_at_a_time = gate.lock().unwrap_or_else(|e| e.into_inner());
                    Conn::try_open(addr, IO_TIMEOUT)
                        .map_err(|e| format!("client {id}: connect: {e}"))
                };
                connected.wait();
                let outcome = conn.and_then(|mut c| {
                    for i in 0..REQUESTS {
                        let r = c
                            .try_get("/_tuk/health")
                            .map_err(|e| format!("client {id} request {i}: {e}"))?;
                        if r.status != 200 {
                            return Err(format!("client {id} request {i}: status {}", r.status));
                        }
                        serde_json::from_slice::<serde_json::Value>(&r.body)
                            .map_err(|e| format!("client {id} request {i}: {e}"))?;
                    }
                    Ok(c)
                });
                answered.wait();
                inspected.wait();
                outcome.map(|_c| REQUESTS)
            })
        })
        .collect();

    connected.wait();
    let connect_time = started.elapsed();
    let burst = Instant::now();
    answered.wait();
    let burst_time = burst.elapsed();
    // All 64 connections are still open here.
    let during = health(addr);
    inspected.wait();
    let results: Vec<Result<usize, String>> = workers
        .into_iter()
        .map(|w| w.join().expect("client thread panicked"))
        .collect();
    eprintln!(
        "  64 connects (one at a time): {} ms; 320 requests (all clients at once): {} ms",
        connect_time.as_millis(),
        burst_time.as_millis()
    );

    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    let ok: usize = results.iter().filter_map(|r| r.as_ref().ok()).sum();
    assert!(
        failures.is_empty(),
        "{ok}/{} requests succeeded; failures:\n{}\nserver counters: {}\nconsole: {:#?}",
        CLIENTS * REQUESTS,
        failures
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        during["http"],
        vm.console_tail()
    );
    assert_eq!(ok, CLIENTS * REQUESTS);
    assert!(
        num(&during, "http/connections_active") >= CLIENTS as u64,
        "the 64 client connections are open and should be active: {}",
        during["http"]
    );
    assert!(
        num(&during, "http/connections_accepted")
            >= num(&before, "http/connections_accepted") + CLIENTS as u64
    );
    assert!(
        num(&during, "http/responses_2xx")
            >= num(&before, "http/responses_2xx") + (CLIENTS * REQUESTS) as u64
    );
    assert!(
        burst_time < Duration::from_secs(15),
        "320 requests took {burst_time:?}"
    );
}
