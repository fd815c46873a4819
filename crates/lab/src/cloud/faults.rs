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
    /// Every EC2 call waits this long before it is answered (EC2's latency).
    #[serde(default)]
    pub ec2_latency_ms: u64,
    /// An attached ENI's link appears in the instance this long after
    /// AttachNetworkInterface answers; `attaching` until then.
    #[serde(default)]
    pub attach_delay_ms: u64,
    /// What AssignPrivateIpAddresses lists.
    #[serde(default)]
    pub assign_reply: AssignReply,
}

/// What an AssignPrivateIpAddresses reply lists: EC2 lists the new
/// addresses; another EC2 implementation lists every address of the ENI,
/// the primary included (`--ec2-assign-reply all`), which clients must
/// survive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AssignReply {
    #[default]
    New,
    All,
}

impl std::str::FromStr for AssignReply {
    type Err = LabError;
    fn from_str(s: &str) -> Result<AssignReply, LabError> {
        match s {
            "new" => Ok(AssignReply::New),
            "all" => Ok(AssignReply::All),
            _ => Err(LabError::Usage(format!(
                "--ec2-assign-reply {:?}: `new` or `all`",
                s.escape_debug()
            ))),
        }
    }
}

/// The longest latency or attach delay the lab emulates (EC2 documents
/// attachments of up to 10 s; a minute leaves room for pessimism).
pub const MAX_DELAY_MS: u64 = 60_000;

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
            ..CloudFaults::default()
        })
    }

    /// The same faults with EC2's timing: per-call latency and attach delay
    /// in milliseconds, each at most [`MAX_DELAY_MS`].
    pub fn with_timing(
        self,
        ec2_latency_ms: u64,
        attach_delay_ms: u64,
    ) -> Result<CloudFaults, LabError> {
        for (name, v) in [
            ("--ec2-latency", ec2_latency_ms),
            ("--attach-delay", attach_delay_ms),
        ] {
            if v > MAX_DELAY_MS {
                return Err(LabError::Usage(format!(
                    "{name} {v} ms is more than the lab emulates ({MAX_DELAY_MS} ms)"
                )));
            }
        }
        Ok(CloudFaults {
            ec2_latency_ms,
            attach_delay_ms,
            ..self
        })
    }

    /// The same faults with this kind of Assign reply.
    pub fn with_assign_reply(self, assign_reply: AssignReply) -> CloudFaults {
        CloudFaults {
            assign_reply,
            ..self
        }
    }

    /// No injected failures (timing and reply shape aside).
    pub fn is_off(&self) -> bool {
        self.error_rate <= 0.0 && self.throttle_rate <= 0.0
    }
}

/// A change of the cloud's faults and timing (`lab up`, `lab faults`):
/// what is not given stays as it was.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FaultUpdate {
    pub error_rate: Option<f64>,
    pub throttle_rate: Option<f64>,
    pub seed: Option<u64>,
    pub ec2_latency_ms: Option<u64>,
    pub attach_delay_ms: Option<u64>,
    pub assign_reply: Option<AssignReply>,
}

impl FaultUpdate {
    /// `current` with this update applied, checked as a whole; a rate
    /// change without a seed draws `fresh_seed`.
    pub fn apply(&self, current: CloudFaults, fresh_seed: u64) -> Result<CloudFaults, LabError> {
        let rates_change = self.error_rate.is_some() || self.throttle_rate.is_some();
        let seed = self.seed.unwrap_or(if rates_change {
            fresh_seed
        } else {
            current.seed
        });
        CloudFaults::new(
            self.error_rate.unwrap_or(current.error_rate),
            self.throttle_rate.unwrap_or(current.throttle_rate),
            seed,
        )?
        .with_timing(
            self.ec2_latency_ms.unwrap_or(current.ec2_latency_ms),
            self.attach_delay_ms.unwrap_or(current.attach_delay_ms),
        )
        .map(|f| f.with_assign_reply(self.assign_reply.unwrap_or(current.assign_reply)))
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
        let rates = |f: &CloudFaults| (f.error_rate, f.throttle_rate, f.seed);
        if rates(faults) != rates(&self.faults) {
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
    fn timing_is_bounded_and_reply_kinds_parse() {
        let f = CloudFaults::default();
        assert_eq!(
            f.with_timing(250, 10_000).expect("ok").attach_delay_ms,
            10_000
        );
        assert!(f.with_timing(MAX_DELAY_MS + 1, 0).is_err());
        assert!(f.with_timing(0, u64::MAX).is_err());
        assert_eq!("all".parse::<AssignReply>().expect("all"), AssignReply::All);
        assert!("ALL".parse::<AssignReply>().is_err());
        assert!("".parse::<AssignReply>().is_err());
    }

    #[test]
    fn an_update_keeps_what_it_does_not_name() {
        let cur = CloudFaults::new(0.1, 0.2, 5)
            .and_then(|f| f.with_timing(100, 2_000))
            .expect("cur")
            .with_assign_reply(AssignReply::All);
        let only_latency = FaultUpdate {
            ec2_latency_ms: Some(7),
            ..Default::default()
        };
        let f = only_latency.apply(cur, 99).expect("apply");
        assert_eq!((f.error_rate, f.throttle_rate, f.seed), (0.1, 0.2, 5));
        assert_eq!((f.ec2_latency_ms, f.attach_delay_ms), (7, 2_000));
        assert_eq!(f.assign_reply, AssignReply::All);
        let rates = FaultUpdate {
            error_rate: Some(0.0),
            ..Default::default()
        };
        let f = rates.apply(cur, 99).expect("apply");
        assert_eq!((f.error_rate, f.throttle_rate, f.seed), (0.0, 0.2, 99));
        let bad = FaultUpdate {
            throttle_rate: Some(0.95),
            ..Default::default()
        };
        assert!(bad.apply(cur, 1).is_err(), "0.1 + 0.95 > 1");
        let bad = FaultUpdate {
            attach_delay_ms: Some(MAX_DELAY_MS + 1),
            ..Default::default()
        };
        assert!(bad.apply(cur, 1).is_err());
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
