//! The appraisal's side for the end-to-end tests: the references a verifier of the tests'
//! instances holds, and a one-line account of a result.

use tuk_attest::appraise::{Ca, References};
use tuk_measure::policy::TrustPolicy;

/// What a verifier of a test instance trusts: the tests' vTPM CA ([`crate::vtpm_ca_dir`]), the
/// SHA-256 of the kernel image under test ([`crate::kernel_image`]), the components' `policy`
/// and the default boot reference. Panics if the CA does not exist yet (it does once a VM has
/// booted).
pub fn references(policy: &TrustPolicy) -> References {
    References {
        ca: Ca::load(&crate::vtpm_ca_dir()).expect("the test CA exists once a VM booted"),
        kernel_sha256: Some(tuk_measure::sha256(
            &std::fs::read(crate::kernel_image()).unwrap(),
        )),
        policy: Some(policy.clone()),
        boot: Default::default(),
    }
}

/// Every submodule of `r` as `NAME: STATUS [REASONS]`, joined by `; ` (for failure messages).
pub fn summary(r: &tuk_attest::AttestationResult) -> String {
    r.submods
        .iter()
        .map(|(n, s)| format!("{n}: {} {:?}", s.status(), s.reasons))
        .collect::<Vec<_>>()
        .join("; ")
}
