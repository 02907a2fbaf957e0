//! Arbitrary bytes as a CEL-JSON event log: parsing and replay never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tuk_measure::eventlog::{parse_log, replay, PCR_COUNT};

fuzz_target!(|data: &[u8]| {
    if let Ok(records) = parse_log(data) {
        if let Ok(pcrs) = replay(&records) {
            assert!(pcrs.keys().all(|pcr| *pcr < PCR_COUNT));
        }
    }
});
