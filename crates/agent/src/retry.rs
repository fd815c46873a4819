//! Start-up calls to the cloud, retried while they fail transiently.
//!
//! An agent that exits on the first throttled or failed call at start-up is
//! restarted by its DaemonSet, which then hammers a struggling API harder;
//! ipamd retries instead. Here: exponential backoff from 200 ms to 5 s with
//! jitter, within a budget, and only for errors that a later call can cure
//! (the error types say which).

use std::time::{Duration, Instant};

/// How long start-up keeps retrying one call.
pub const STARTUP_BUDGET: Duration = Duration::from_secs(120);

/// Calls `f` until it succeeds, fails for good, or `budget` is spent.
pub fn transient<T, E: std::fmt::Display>(
    what: &str,
    budget: Duration,
    is_transient: impl Fn(&E) -> bool,
    mut f: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    let deadline = Instant::now() + budget;
    let mut delay = Duration::from_millis(200);
    let mut attempt = 0u32;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if is_transient(&e) && Instant::now() + delay < deadline => {
                attempt = attempt.saturating_add(1);
                let wait = delay + jitter(delay);
                tracing::warn!(
                    what,
                    attempt,
                    retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                    "transient failure: {e}"
                );
                std::thread::sleep(wait);
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Up to half of `d`, from the clock's low bits (spreads agents that
/// started together; not for anything that needs randomness).
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    let half_ms = u64::try_from(d.as_millis() / 2).unwrap_or(0).max(1);
    Duration::from_millis(u64::from(nanos) % half_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_failures_are_retried_and_others_are_not() {
        let mut calls = 0;
        let r: Result<u32, String> = transient(
            "t",
            Duration::from_secs(10),
            |e: &String| e == "busy",
            || {
                calls += 1;
                if calls < 3 {
                    Err("busy".to_string())
                } else {
                    Ok(7)
                }
            },
        );
        assert_eq!((r, calls), (Ok(7), 3));
        let mut calls = 0;
        let r: Result<u32, String> = transient(
            "t",
            Duration::from_secs(10),
            |e: &String| e == "busy",
            || {
                calls += 1;
                Err("denied".to_string())
            },
        );
        assert_eq!((r, calls), (Err("denied".to_string()), 1));
    }

    #[test]
    fn the_budget_ends_the_retries() {
        let started = Instant::now();
        let r: Result<(), String> = transient(
            "t",
            Duration::from_millis(500),
            |_: &String| true,
            || Err("busy".into()),
        );
        assert!(r.is_err());
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
