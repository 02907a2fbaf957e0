//! Prometheus metrics (text exposition format 0.0.4), served at `GET /metrics`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the attestation-duration histogram's buckets.
const BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

#[derive(Default)]
struct Counters {
    attestations: BTreeMap<String, u64>,
    buckets: [u64; BUCKETS.len()],
    duration_count: u64,
    duration_sum: f64,
    registrations_ok: u64,
    registrations_refused: u64,
    webhooks_ok: u64,
    webhooks_failed: u64,
    webhooks_dropped: u64,
    store_errors: u64,
    panics: u64,
    auth_refused: u64,
}

/// The service's counters.
#[derive(Default)]
pub struct Metrics {
    c: Mutex<Counters>,
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.c.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn attestation(&self, status: &str, took: Duration) {
        let mut c = self.lock();
        *c.attestations.entry(status.to_owned()).or_insert(0) += 1;
        let s = took.as_secs_f64();
        for (i, le) in BUCKETS.iter().enumerate() {
            if s <= *le {
                c.buckets[i] += 1;
            }
        }
        c.duration_count += 1;
        c.duration_sum += s;
    }

    pub fn registration(&self, ok: bool) {
        let mut c = self.lock();
        if ok {
            c.registrations_ok += 1;
        } else {
            c.registrations_refused += 1;
        }
    }

    pub fn webhook(&self, delivered: bool) {
        let mut c = self.lock();
        if delivered {
            c.webhooks_ok += 1;
        } else {
            c.webhooks_failed += 1;
        }
    }

    pub fn store_error(&self) {
        self.lock().store_errors += 1;
    }

    /// A webhook notification dropped from a full queue.
    pub fn webhook_dropped(&self) {
        self.lock().webhooks_dropped += 1;
    }

    /// An attestation that panicked (became an `unavailable` result).
    pub fn panic(&self) {
        self.lock().panics += 1;
    }

    /// A request refused with 401 or 403.
    pub fn auth_refused(&self) {
        self.lock().auth_refused += 1;
    }

    /// The exposition text; `instances` is the count of instances per current status,
    /// `stored` the rows and bytes of stored results.
    pub fn render(&self, instances: &BTreeMap<String, u64>, stored: (i64, i64)) -> String {
        let c = self.lock();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP tuk_verifier_instances Registered instances by current status."
        );
        let _ = writeln!(out, "# TYPE tuk_verifier_instances gauge");
        for status in [
            "pending",
            "affirming",
            "warning",
            "contraindicated",
            "unavailable",
        ] {
            let n = instances.get(status).copied().unwrap_or(0);
            let _ = writeln!(out, "tuk_verifier_instances{{status=\"{status}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP tuk_verifier_attestations_total Attestations done, by result status."
        );
        let _ = writeln!(out, "# TYPE tuk_verifier_attestations_total counter");
        for status in ["affirming", "warning", "contraindicated", "unavailable"] {
            let n = c.attestations.get(status).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "tuk_verifier_attestations_total{{status=\"{status}\"}} {n}"
            );
        }
        let _ = writeln!(out, "# HELP tuk_verifier_attestation_duration_seconds One attestation: quote round trip, appraisal, signing.");
        let _ = writeln!(
            out,
            "# TYPE tuk_verifier_attestation_duration_seconds histogram"
        );
        for (i, le) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "tuk_verifier_attestation_duration_seconds_bucket{{le=\"{le}\"}} {}",
                c.buckets[i]
            );
        }
        let _ = writeln!(
            out,
            "tuk_verifier_attestation_duration_seconds_bucket{{le=\"+Inf\"}} {}",
            c.duration_count
        );
        let _ = writeln!(
            out,
            "tuk_verifier_attestation_duration_seconds_sum {}",
            c.duration_sum
        );
        let _ = writeln!(
            out,
            "tuk_verifier_attestation_duration_seconds_count {}",
            c.duration_count
        );
        let _ = writeln!(
            out,
            "# HELP tuk_verifier_registrations_total Registrations, by outcome."
        );
        let _ = writeln!(out, "# TYPE tuk_verifier_registrations_total counter");
        let _ = writeln!(
            out,
            "tuk_verifier_registrations_total{{outcome=\"registered\"}} {}",
            c.registrations_ok
        );
        let _ = writeln!(
            out,
            "tuk_verifier_registrations_total{{outcome=\"refused\"}} {}",
            c.registrations_refused
        );
        let _ = writeln!(out, "# HELP tuk_verifier_webhook_deliveries_total Webhook notifications, by outcome (after retries).");
        let _ = writeln!(out, "# TYPE tuk_verifier_webhook_deliveries_total counter");
        let _ = writeln!(
            out,
            "tuk_verifier_webhook_deliveries_total{{outcome=\"delivered\"}} {}",
            c.webhooks_ok
        );
        let _ = writeln!(
            out,
            "tuk_verifier_webhook_deliveries_total{{outcome=\"failed\"}} {}",
            c.webhooks_failed
        );
        let _ = writeln!(out, "# HELP tuk_verifier_webhook_dropped_total Webhook notifications dropped because the hook's queue was full.");
        let _ = writeln!(out, "# TYPE tuk_verifier_webhook_dropped_total counter");
        let _ = writeln!(
            out,
            "tuk_verifier_webhook_dropped_total {}",
            c.webhooks_dropped
        );
        let _ = writeln!(out, "# HELP tuk_verifier_attestation_panics_total Attestations that panicked (recorded as unavailable; the worker went on).");
        let _ = writeln!(out, "# TYPE tuk_verifier_attestation_panics_total counter");
        let _ = writeln!(out, "tuk_verifier_attestation_panics_total {}", c.panics);
        let _ = writeln!(out, "# HELP tuk_verifier_auth_refused_total API requests refused for a missing, unknown or too weak token (401, 403).");
        let _ = writeln!(out, "# TYPE tuk_verifier_auth_refused_total counter");
        let _ = writeln!(out, "tuk_verifier_auth_refused_total {}", c.auth_refused);
        let _ = writeln!(
            out,
            "# HELP tuk_verifier_store_errors_total Results that could not be stored."
        );
        let _ = writeln!(out, "# TYPE tuk_verifier_store_errors_total counter");
        let _ = writeln!(out, "tuk_verifier_store_errors_total {}", c.store_errors);
        let _ = writeln!(
            out,
            "# HELP tuk_verifier_stored_results Result rows in the store."
        );
        let _ = writeln!(out, "# TYPE tuk_verifier_stored_results gauge");
        let _ = writeln!(out, "tuk_verifier_stored_results {}", stored.0);
        let _ = writeln!(
            out,
            "# HELP tuk_verifier_stored_result_bytes Bytes of stored signed results and errors."
        );
        let _ = writeln!(out, "# TYPE tuk_verifier_stored_result_bytes gauge");
        let _ = writeln!(out, "tuk_verifier_stored_result_bytes {}", stored.1);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let m = Metrics::default();
        m.attestation("affirming", Duration::from_millis(7));
        m.attestation("warning", Duration::from_millis(300));
        m.webhook(true);
        let text = m.render(&BTreeMap::from([("affirming".into(), 2)]), (2, 100));
        assert!(text.contains("tuk_verifier_attestation_duration_seconds_bucket{le=\"0.005\"} 0"));
        assert!(text.contains("tuk_verifier_attestation_duration_seconds_bucket{le=\"0.01\"} 1"));
        assert!(text.contains("tuk_verifier_attestation_duration_seconds_bucket{le=\"0.5\"} 2"));
        assert!(text.contains("tuk_verifier_attestation_duration_seconds_count 2"));
        assert!(text.contains("tuk_verifier_attestations_total{status=\"warning\"} 1"));
        assert!(text.contains("tuk_verifier_instances{status=\"affirming\"} 2"));
        assert!(text.contains("tuk_verifier_webhook_deliveries_total{outcome=\"delivered\"} 1"));
        assert!(text.contains("tuk_verifier_stored_result_bytes 100"));
    }
}
