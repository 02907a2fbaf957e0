//! The health document and unknown paths (docs/contracts.md, "HTTP").

use std::thread;
use std::time::Duration;

use tuk_e2e::{boot, num, timed, Conn};
use tuk_launcher::Health;

#[test]
fn health_document_follows_the_contract() {
    let vm = boot("health");
    // Another open connection, for connections_active to count.
    let other = Conn::open(vm.addr());
    let mut c = Conn::open(vm.addr());

    let first = timed("first GET /_tuk/health", || c.get("/_tuk/health"));
    assert_eq!(first.status, 200, "{}", first.body_text());
    assert_eq!(first.version, "HTTP/1.1");
    let ctype = first.header("content-type").unwrap_or_default();
    assert!(
        ctype.starts_with("application/json"),
        "content-type {ctype:?}"
    );
    assert!(!first.closes(), "health should keep the connection alive");
    // Every field of the contract, with the contract's types.
    let typed = Health::parse(&first.body).unwrap_or_else(|e| panic!("{e}: {}", first.body_text()));
    let a = first.json();

    assert_eq!(typed.status, "ok");
    assert_eq!(typed.kernel, "tuk-kernel");
    let parts: Vec<&str> = typed.version.split('.').collect();
    assert!(
        parts.len() == 3 && parts.iter().all(|p| p.parse::<u32>().is_ok()),
        "version {:?} is not x.y.z",
        typed.version
    );
    assert_eq!(typed.clock, "tsc");
    // The platform is detected at boot (CPUID): QEMU is never taken for Xen.
    let hypervisor = a["platform"]["hypervisor"].as_str().unwrap_or_default();
    assert!(
        matches!(hypervisor, "tcg" | "kvm"),
        "platform {} on QEMU",
        a["platform"]
    );
    assert!(typed.tsc_khz > 100_000, "tsc_khz {}", typed.tsc_khz);
    assert!(typed.boot_us > 0);
    let m = &typed.memory;
    assert!(
        m.heap_used_bytes <= m.heap_bytes && m.heap_bytes <= m.total_bytes,
        "memory {m:?}"
    );
    assert!(
        m.total_bytes > 16 << 20 && m.total_bytes <= 64 << 20,
        "total_bytes {}",
        m.total_bytes
    );
    assert!(m.heap_used_bytes > 0, "the kernel allocates something");
    assert!(typed.http.connections_accepted >= 2);

    thread::sleep(Duration::from_millis(250));
    let second = c.get("/_tuk/health");
    assert_eq!(second.status, 200);
    let b = second.json();
    let up_a = num(&a, "uptime_ms");
    let up_b = num(&b, "uptime_ms");
    assert!(
        up_b >= up_a + 200 && up_b < up_a + 20_000,
        "uptime_ms went {up_a} -> {up_b} across a 250 ms pause"
    );
    assert!(num(&b, "http/requests") > num(&a, "http/requests"));
    assert!(num(&b, "http/responses_2xx") > num(&a, "http/responses_2xx"));
    assert_eq!(
        num(&b, "http/connections_accepted"),
        num(&a, "http/connections_accepted"),
        "the second request came over the same connection"
    );
    assert_eq!(num(&b, "boot_us"), num(&a, "boot_us"), "boot_us is fixed");
    // Checked on the second answer: the kernel's gauge can lag a just-accepted connection.
    assert!(
        num(&b, "http/connections_active") >= 2,
        "both open connections are active: {}",
        b["http"]
    );
    drop(other);
}

#[test]
fn unknown_path_is_404_json_and_keeps_the_connection() {
    let vm = boot("not-found");
    let mut c = Conn::open(vm.addr());
    let before = c.get("/_tuk/health").json();
    // Unknown kernel endpoints are outside the service listener's short list: 403 there (see
    // admin_plane.rs), 404 on the admin listener.
    let mut admin = Conn::open(vm.admin_addr());
    for (path, status) in [
        ("/no/such/thing", 404),
        ("/", 404),
        ("/_tuk/healthz", 403),
        ("/_tuk/health/extra", 403),
    ] {
        let r = c.get(path);
        assert_eq!(r.status, status, "GET {path}: {}", r.body_text());
        if path.starts_with("/_tuk/") {
            assert_eq!(admin.get(path).status, 404, "GET {path} (admin listener)");
        }
        let ctype = r.header("content-type").unwrap_or_default();
        assert!(
            ctype.starts_with("application/json"),
            "GET {path}: content-type {ctype:?}"
        );
        let body = r.json();
        assert!(
            body["error"].as_str().is_some_and(|s| !s.is_empty()),
            "GET {path}: body {body}"
        );
    }
    // A 404 is not a protocol error: the same connection still serves.
    let after = c.get("/_tuk/health").json();
    assert!(num(&after, "http/responses_4xx") >= num(&before, "http/responses_4xx") + 4);
    assert_eq!(
        num(&after, "http/protocol_errors"),
        num(&before, "http/protocol_errors")
    );
}
