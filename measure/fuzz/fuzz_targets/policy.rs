//! Arbitrary bytes as a trust policy: nothing may panic; whatever parses is valid, and its
//! canonical bytes parse to the same policy and are a fixed point.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tuk_measure::policy::TrustPolicy;

fuzz_target!(|data: &[u8]| {
    if let Ok(policy) = TrustPolicy::from_json(data) {
        let canonical = policy.canonical_json();
        let again = TrustPolicy::from_json(&canonical).expect("canonical bytes parse");
        assert_eq!(again, policy);
        assert_eq!(again.canonical_json(), canonical);
    }
});
