//! Which unattached ENIs an agent deletes: only podwire's own for its
//! instance, and only once they are older than a grace period.
//!
//! podwire tags every ENI it creates at creation (`podwire.io/instance-id`
//! = the owner instance, `podwire.io/created-at` = RFC 3339 UTC). An agent
//! killed between CreateNetworkInterface and AttachNetworkInterface leaves
//! an unattached ENI holding subnet addresses; its instance's agent deletes
//! it at start and periodically, once `created-at` is older than the grace
//! period (so an ENI between create and attach right now is never taken).
//! ENIs of older podwire versions carry only the description
//! `podwire-<instance id>` and no tags: they are recognised by it and
//! deleted at once (an agent never had one of those in flight).
//!
//! ENIs without podwire's tags or description are never touched. A
//! cluster-wide sweeper (not here) would add what no agent can: ENIs of
//! instances that are gone (terminated before their agent ran again),
//! found by the tag and checked against DescribeInstances.

use std::time::Duration;

/// The tag keys, as in `podwire_cloud::ec2` (kept here so the decision
/// stays a pure function of strings).
pub const TAG_INSTANCE_ID: &str = "podwire.io/instance-id";
pub const TAG_CREATED_AT: &str = "podwire.io/created-at";

/// What an agent does with one ENI it found unattached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GcDecision {
    Delete,
    /// podwire's, but younger than the grace period (or its age cannot be
    /// read): look again later.
    Wait(String),
    /// Not this instance's podwire ENI: never touched.
    NotOurs,
}

/// The facts of one ENI the decision needs.
#[derive(Debug, Clone, Copy)]
pub struct EniFacts<'a> {
    pub attached: bool,
    pub status: &'a str,
    pub description: &'a str,
    pub tags: &'a [(String, String)],
}

fn tag<'a>(tags: &'a [(String, String)], key: &str) -> Option<&'a str> {
    tags.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Decides for one ENI. `now` in seconds since the Unix epoch.
pub fn decide(
    eni: EniFacts<'_>,
    instance_id: &str,
    legacy_description: &str,
    now: u64,
    grace: Duration,
) -> GcDecision {
    if eni.attached || eni.status != "available" {
        return GcDecision::NotOurs;
    }
    match tag(eni.tags, TAG_INSTANCE_ID) {
        Some(owner) if owner == instance_id => {
            let Some(created) = tag(eni.tags, TAG_CREATED_AT) else {
                return GcDecision::Wait("no created-at tag".into());
            };
            match parse_rfc3339(created) {
                Some(t) if now.saturating_sub(t) >= grace.as_secs() => GcDecision::Delete,
                Some(t) => GcDecision::Wait(format!(
                    "{}s old, grace {}s",
                    now.saturating_sub(t),
                    grace.as_secs()
                )),
                None => GcDecision::Wait(format!("unreadable created-at {created:?}")),
            }
        }
        Some(_) => GcDecision::NotOurs,
        None if eni.description == legacy_description
            && !eni.tags.iter().any(|(k, _)| k.starts_with("podwire.io/")) =>
        {
            GcDecision::Delete
        }
        None => GcDecision::NotOurs,
    }
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A civil date of days since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

/// `YYYY-MM-DDTHH:MM:SSZ` of seconds since the Unix epoch.
pub fn format_rfc3339(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Seconds since the Unix epoch of an RFC 3339 UTC time
/// (`2026-11-29T13:00:00Z`, fractions and `+00:00` accepted); `None` for
/// anything else (an offset other than UTC included: podwire writes UTC).
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.len() > 40 || !s.is_ascii() {
        return None;
    }
    let body = s
        .strip_suffix('Z')
        .or_else(|| s.strip_suffix('z'))
        .or_else(|| s.strip_suffix("+00:00"))?;
    let (date, time) = body.split_once(['T', 't'])?;
    let mut dp = date.split('-');
    let y: i64 = dp.next()?.parse().ok()?;
    let m: u32 = dp.next()?.parse().ok()?;
    let d: u32 = dp.next()?.parse().ok()?;
    if dp.next().is_some() || !(1970..=9999).contains(&y) || !(1..=12).contains(&m) {
        return None;
    }
    if !(1..=31).contains(&d) {
        return None;
    }
    let time = time.split('.').next()?;
    let mut tp = time.split(':');
    let hh: u64 = tp.next()?.parse().ok()?;
    let mm: u64 = tp.next()?.parse().ok()?;
    let ss: u64 = tp.next()?.parse().ok()?;
    if tp.next().is_some() || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let days = u64::try_from(days_from_civil(y, m, d)).ok()?;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(300);

    fn tags(owner: &str, created: &str) -> Vec<(String, String)> {
        vec![
            (TAG_INSTANCE_ID.into(), owner.into()),
            (TAG_CREATED_AT.into(), created.into()),
        ]
    }

    fn facts<'a>(tags: &'a [(String, String)], desc: &'a str) -> EniFacts<'a> {
        EniFacts {
            attached: false,
            status: "available",
            description: desc,
            tags,
        }
    }

    #[test]
    fn rfc3339_round_trips_and_junk_is_refused() {
        for secs in [0, 1, 951_782_400, 1_795_957_200, 4_102_444_799] {
            assert_eq!(parse_rfc3339(&format_rfc3339(secs)), Some(secs));
        }
        assert_eq!(format_rfc3339(1_795_957_200), "2026-11-29T13:00:00Z");
        assert_eq!(
            parse_rfc3339("2026-11-29T13:00:00.123Z"),
            Some(1_795_957_200)
        );
        assert_eq!(
            parse_rfc3339("2026-11-29T13:00:00+00:00"),
            Some(1_795_957_200)
        );
        for junk in [
            "",
            "yesterday",
            "2026-11-29",
            "2026-13-01T00:00:00Z",
            "2026-11-29T25:00:00Z",
            "2026-11-29T13:00:00+02:00",
            "99999999999999999999-01-01T00:00:00Z",
            "-2026-11-29T13:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn only_this_instance_s_podwire_enis_past_the_grace_are_deleted() {
        let now = 1_795_957_200 + 301;
        let old = tags("i-1", "2026-11-29T13:00:00Z");
        assert_eq!(
            decide(facts(&old, "x"), "i-1", "podwire-i-1", now, GRACE),
            GcDecision::Delete
        );
        // Young: a create-then-attach may be in flight.
        assert!(matches!(
            decide(facts(&old, "x"), "i-1", "podwire-i-1", now - 2, GRACE),
            GcDecision::Wait(_)
        ));
        // Another instance's.
        assert_eq!(
            decide(facts(&old, "x"), "i-2", "podwire-i-2", now, GRACE),
            GcDecision::NotOurs
        );
        // Foreign: no podwire tag, another description.
        let foreign = vec![("Name".to_string(), "db".to_string())];
        assert_eq!(
            decide(facts(&foreign, "db eni"), "i-1", "podwire-i-1", now, GRACE),
            GcDecision::NotOurs
        );
        assert_eq!(
            decide(facts(&[], ""), "i-1", "podwire-i-1", now, GRACE),
            GcDecision::NotOurs
        );
        // Attached or in use: never.
        let mut f = facts(&old, "x");
        f.attached = true;
        assert_eq!(
            decide(f, "i-1", "podwire-i-1", now, GRACE),
            GcDecision::NotOurs
        );
        let mut f = facts(&old, "x");
        f.status = "in-use";
        assert_eq!(
            decide(f, "i-1", "podwire-i-1", now, GRACE),
            GcDecision::NotOurs
        );
        // Older podwire: the description alone.
        assert_eq!(
            decide(facts(&[], "podwire-i-1"), "i-1", "podwire-i-1", now, GRACE),
            GcDecision::Delete
        );
        // Ours but its age unreadable: wait, never delete on a guess.
        let bad = tags("i-1", "soon");
        assert!(matches!(
            decide(facts(&bad, "podwire-i-1"), "i-1", "podwire-i-1", now, GRACE),
            GcDecision::Wait(_)
        ));
    }
}
