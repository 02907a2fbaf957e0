//! 200 requests over one TCP connection (HTTP/1.1 keep-alive).

use tuk_e2e::{boot, num, timed, Conn};

#[test]
fn two_hundred_requests_on_one_connection() {
    let vm = boot("keepalive");
    let mut c = Conn::open(vm.addr());
    let first = c.get("/_tuk/health").json();
    timed("200 keep-alive requests", || {
        for i in 0..200 {
            let r = c.get("/_tuk/health");
            assert_eq!(r.status, 200, "request {i}: {}", r.body_text());
            assert!(!r.closes(), "request {i}: server announced close");
            assert!(
                r.body.starts_with(b"{") && r.body.ends_with(b"}"),
                "request {i}"
            );
        }
    });
    let last = c.get("/_tuk/health").json();
    assert_eq!(
        num(&last, "http/connections_accepted"),
        num(&first, "http/connections_accepted"),
        "all requests must have used the one connection"
    );
    assert_eq!(
        num(&last, "http/requests") - num(&first, "http/requests"),
        201
    );
    assert_eq!(
        num(&last, "http/responses_2xx") - num(&first, "http/responses_2xx"),
        201
    );
}
