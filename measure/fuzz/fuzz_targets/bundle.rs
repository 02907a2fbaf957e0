//! Arbitrary bytes as a bundle, verified against a fixed policy: nothing may panic, whatever
//! parses re-encodes to the same bytes, and whatever verifies describes the bundle's own
//! bytes. (The policy key's seed is public here, so seed corpora may hold valid bundles.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use tuk_measure::bundle::{encode, Bundle};
use tuk_measure::policy::TrustPolicy;
use tuk_measure::sign::SigningKey;
use tuk_measure::{sha256, verify_bundle};

fuzz_target!(|data: &[u8]| {
    let Ok(bundle) = Bundle::parse(data) else {
        return;
    };
    assert_eq!(encode(bundle.wasm, bundle.code, bundle.envelope), data);
    let policy = TrustPolicy {
        keys: vec![SigningKey::from_seed([1; 32]).trusted_key()],
        allowed_names: None,
        min_versions: Default::default(),
    };
    if let Ok(v) = verify_bundle(&bundle, &policy, &"0".repeat(64)) {
        assert_eq!(v.wasm_sha256, sha256(bundle.wasm));
        assert_eq!(v.code_sha256, sha256(bundle.code));
    }
});
