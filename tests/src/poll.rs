//! Waiting for a condition within a bound.

use std::thread;
use std::time::{Duration, Instant};

/// Calls `probe` until it returns `Ok`, sleeping `every` between calls; returns the value and
/// the time from the first call until then. Panics with `what`, the bound and the last `Err`
/// (say what was seen) once a probe fails after `within` has passed; the first probe always
/// runs.
pub fn until<T>(
    what: &str,
    within: Duration,
    every: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> (T, Duration) {
    let start = Instant::now();
    loop {
        match probe() {
            Ok(v) => return (v, start.elapsed()),
            Err(seen) => assert!(
                start.elapsed() <= within,
                "{what}: not within {within:?}: {seen}"
            ),
        }
        thread::sleep(every);
    }
}
