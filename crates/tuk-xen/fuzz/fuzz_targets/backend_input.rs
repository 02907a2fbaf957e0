//! Arbitrary bytes as everything a Xen backend or the toolstack writes: XenStore ring bytes in
//! arbitrary splits (replies, watch events, errors), hvm_start_info regions, netif ring indices
//! and responses, console and XenStore byte-ring indices. Nothing may panic; every parser stays
//! within the bounds it promises (asserted in `tuk_xen::fuzz::run`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tuk_xen::fuzz::run(data);
});
