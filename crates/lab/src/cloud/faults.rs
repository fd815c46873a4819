//! Injected EC2 failures, for fault tests: a share of requests is answered
//! with the errors EC2 gives under trouble — `InternalError` (HTTP 500) and
//! `RequestLimitExceeded` (HTTP 503, throttling) — instead of being served.
//! A failed request changes nothing, as EC2's own 5xx answers promise.
//!
//! The rates live in lab.json (`lab up --error-rate/--throttle-rate`,
//! `lab faults` on a running lab) and are read by the cloud at every
//! request. The dice are a counter-based generator seeded from lab.json, so
//! the n-th request after a change of the rates gets the same verdict in
//! every run; which request is the n-th depends on the callers' timing.

use serde::{Deserialize, Serialize};

use super::model::ApiError;
use crate::LabError;

/// How often the cloud fails requests on purpose (both 0: never).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CloudFaults {
    /// Share of requests answered `InternalError` (500).
    #[serde(default)]
    pub error_rate: f64,
    /// Share of requests answered `RequestLimitExceeded` (503).
    #[serde(default)]
    pub throttle_rate: f64,
    /// Seed of the dice.
    #[serde(default)]
    pub seed: u64,
}

impl CloudFaults {
    /// Rates in 0..=1 whose sum is at most 1.
    pub fn new(error_rate: f64, throttle_rate: f64, seed: u64) -> Result<CloudFaults, LabError> {
        for (name, r) in [
            ("--error-rate", error_rate),
            ("--throttle-rate", throttle_rate),
        ] {
            if !(0.0..=1.0).contains(&r) {
                return Err(LabError::Usage(format!(
                    "{name} {r} is not a share between 0 and 1"
                )));
            }
        }
        if error_rate + throttle_rate > 1.0 {
            return Err(LabError::Usage(format!(
                "--error-rate {error_rate} and --throttle-rate {throttle_rate} add up to more than 1"
            )));
        }
        Ok(CloudFaults {
            error_rate,
            throttle_rate,
            seed,
        })
    }

    pub fn is_off(&self) -> bool {
        self.error_rate <= 0.0 && self.throttle_rate <= 0.0
    }
}

/// The cloud's dice: restarted from the seed whenever the rates change.
#[derive(Debug, Default)]
pub struct Dice {
    faults: CloudFaults,
    counter: u64,
}

/// SplitMix64: a well-mixed 64-bit value for each counter value.
fn mix(seed: u64, n: u64) -> u64 {
    let mut z = seed.wrapping_add(n.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The top 53 bits of `x` as a share in [0, 1), exact in an f64 (built
/// from two halves that convert without loss).
fn share(x: u64) -> f64 {
    let bits = x >> 11;
    let hi = u32::try_from(bits >> 32).unwrap_or(u32::MAX);
    let lo = u32::try_from(bits & 0xFFFF_FFFF).unwrap_or(0);
    (f64::from(hi) * 4_294_967_296.0 + f64::from(lo)) / 9_007_199_254_740_992.0
}

impl Dice {
    /// The verdict for the next request under `faults`: `Some(error)` when
    /// it is to fail.
    pub fn roll(&mut self, faults: &CloudFaults) -> Option<ApiError> {
        if *faults != self.faults {
            self.faults = *faults;
            self.counter = 0;
        }
        if faults.is_off() {
            return None;
        }
        let n = self.counter;
        self.counter = self.counter.wrapping_add(1);
        let draw = share(mix(faults.seed, n));
        if draw < faults.error_rate {
            Some(ApiError {
                code: "InternalError".into(),
                message: format!("An internal error has occurred (injected, request {n})"),
                status: 500,
            })
        } else if draw < faults.error_rate + faults.throttle_rate {
            Some(ApiError {
                code: "RequestLimitExceeded".into(),
                message: format!("Request limit exceeded. (injected, request {n})"),
                status: 503,
            })
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdicts(faults: &CloudFaults, n: usize) -> Vec<Option<String>> {
        let mut d = Dice::default();
        (0..n).map(|_| d.roll(faults).map(|e| e.code)).collect()
    }

    #[test]
    fn rates_are_checked() {
        assert!(CloudFaults::new(0.2, 0.3, 1).is_ok());
        assert!(CloudFaults::new(1.0, 0.0, 1).is_ok());
        for (e, t) in [(-0.1, 0.0), (0.0, 1.5), (0.6, 0.6), (f64::NAN, 0.0)] {
            assert!(CloudFaults::new(e, t, 1).is_err(), "{e} {t}");
        }
    }

    #[test]
    fn shares_follow_the_rates_and_the_seed_replays_them() {
        let f = CloudFaults::new(0.2, 0.1, 42).expect("rates");
        let v = verdicts(&f, 10_000);
        let count = |code: &str| v.iter().filter(|x| x.as_deref() == Some(code)).count();
        let (errors, throttles) = (count("InternalError"), count("RequestLimitExceeded"));
        assert!((1_800..2_200).contains(&errors), "{errors}");
        assert!((850..1_150).contains(&throttles), "{throttles}");
        assert_eq!(verdicts(&f, 10_000), v, "same seed, same verdicts");
        let other = CloudFaults { seed: 43, ..f };
        assert_ne!(verdicts(&other, 10_000), v, "another seed, other verdicts");
        assert!(verdicts(&CloudFaults::default(), 100)
            .iter()
            .all(Option::is_none));
        let all = CloudFaults::new(0.0, 1.0, 7).expect("rates");
        assert!(verdicts(&all, 100)
            .iter()
            .all(|x| x.as_deref() == Some("RequestLimitExceeded")));
    }

    #[test]
    fn a_change_of_rates_restarts_the_dice() {
        let f = CloudFaults::new(0.5, 0.0, 9).expect("rates");
        let mut d = Dice::default();
        let first: Vec<_> = (0..20).map(|_| d.roll(&f).is_some()).collect();
        assert!(d.roll(&CloudFaults::default()).is_none());
        let again: Vec<_> = (0..20).map(|_| d.roll(&f).is_some()).collect();
        assert_eq!(first, again);
    }
}
