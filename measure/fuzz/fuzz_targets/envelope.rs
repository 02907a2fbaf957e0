//! Arbitrary bytes as a DSSE envelope: nothing may panic; whatever parses re-encodes to JSON
//! that parses to the same envelope.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tuk_measure::dsse::{Envelope, MAX_SIGNATURES};

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = Envelope::from_json(data) {
        assert!(env.signatures.len() <= MAX_SIGNATURES);
        let _ = env.pae();
        if let Ok(again) = Envelope::from_json(&env.to_json()) {
            assert_eq!(again, env);
        }
    }
});
