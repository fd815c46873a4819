//! The pool manager: keeps the pool true and at its targets. Runs on its
//! own thread; never holds the state lock across a cloud call, so an ADD
//! or a DEL never waits on EC2 (a DEL only frees an address in memory).
//!
//! - The cloud is the truth: after every Assign or Create, after every
//!   failed or timed-out call, and every `--reconcile-interval`, it
//!   describes this instance's ENIs and reconciles the pool with them
//!   ([`podwire_ipam::reconcile`]). An Assign reply is only a claim: what
//!   it names becomes usable when the Describe confirms it.
//! - Short of the targets, it asks for addresses or /28 prefixes, or
//!   creates (tagged, idempotently), attaches and configures an ENI.
//! - Beyond them, it gives addresses and prefixes back, and detaches and
//!   deletes whole idle ENIs (never the primary ENI).
//! - It deletes this instance's unattached podwire ENIs (tagged with this
//!   instance, older than `--eni-gc-grace` by their created-at tag) at
//!   start and periodically: what a crash between create and attach left.
//!   ENIs without podwire's tags are never touched.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime};

use podwire_cloud::ec2::{
    client_token, AddressRequest, Assignment, CreateEni, TAG_CREATED_AT, TAG_INSTANCE_ID,
};
use podwire_cloud::{Ec2Error, NetworkInterface};
use podwire_dataplane::routing::{host_route, route_table_for, RULE_ENI_PRIMARY_PRIORITY};
use podwire_ipam::eni_gc::{decide, format_rfc3339, EniFacts, GcDecision};
use podwire_ipam::{reconcile, Expected, ObservedEni, PoolPlan, Surplus};
use podwire_netlink::{Handle, Rule};
use podwire_proto::ErrorKind;

use super::{configure_link, observed, VpcAgent as Shared};
use crate::AgentError;

const IDLE: Duration = Duration::from_secs(5);
const BACKOFF: Duration = Duration::from_secs(2);
/// Unattached ENIs of this instance are looked for at most this far apart.
pub const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// A Describe right after an Assign may not list the new addresses yet
/// (EC2 is eventually consistent): this many more looks, this far apart.
const CONFIRM_TRIES: u32 = 3;
const CONFIRM_PAUSE: Duration = Duration::from_millis(300);
/// How long the agent waits for a claim (reply) to show in a Describe, and
/// how long an ENI it just attached is kept though a Describe omits it.
const FRESH: Duration = Duration::from_secs(60);
/// With the fallback on, single addresses are asked for this long after
/// the subnet had no free aligned /28.
const PREFIX_RETRY: Duration = Duration::from_secs(300);
/// After the pool grew (an Assign or Create the cloud answered), the
/// subnet's figures are described again, but at most this often: while a
/// cluster scales, `capacity --live` and its exhaustion warning then lag
/// the cloud by seconds, not by a whole `--reconcile-interval`.
pub const SUBNET_REFRESH_AFTER_GROWTH: Duration = Duration::from_secs(5);

/// The description of every ENI podwire creates for `instance_id` (also
/// how ENIs of older podwire versions, which had no tags, are recognised).
pub fn eni_description(instance_id: &str) -> String {
    format!("podwire-{instance_id}")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The tags of a new ENI: owner instance and creation time.
pub fn eni_tags(instance_id: &str, now_unix: u64) -> Vec<(String, String)> {
    vec![
        (TAG_INSTANCE_ID.to_string(), instance_id.to_string()),
        (TAG_CREATED_AT.to_string(), format_rfc3339(now_unix)),
    ]
}

/// What the pool manager remembers between reconciles.
#[derive(Debug, Default)]
struct Pending {
    /// What replies claimed, not yet confirmed by a Describe, and since when.
    expected: Expected,
    since: Option<Instant>,
    /// ENIs this agent attached lately, as their Create reply said.
    fresh: BTreeMap<String, (Instant, ObservedEni)>,
    /// ENIs this agent created whose attach failed and whose delete failed
    /// too: not in flight, so the sweep deletes them without the grace.
    leftovers: BTreeSet<String>,
    /// When DescribeSubnets last answered: again every `--reconcile-interval`,
    /// or [`SUBNET_REFRESH_AFTER_GROWTH`] after it when the pool grew since
    /// (not after every Assign: a burst of them asks once).
    subnet_at: Option<Instant>,
    /// The pool grew (a reply claimed addresses) since that answer.
    grew: bool,
}

impl Pending {
    fn claim(&mut self, a: &Assignment, now: Instant) {
        self.expected.ips.extend(a.ips.iter().copied());
        self.expected.prefixes.extend(a.prefixes.iter().copied());
        self.since.get_or_insert(now);
        if !a.ips.is_empty() || !a.prefixes.is_empty() {
            self.grew = true;
        }
    }

    /// Whether the subnet's figures are to be described again now.
    fn subnet_due(&self, now: Instant, interval: Duration) -> bool {
        self.subnet_at.is_none_or(|t| {
            let age = now.saturating_duration_since(t);
            age >= interval || (self.grew && age >= SUBNET_REFRESH_AFTER_GROWTH)
        })
    }

    /// When a refresh owed to growth falls due (the loop reconciles then).
    fn subnet_refresh_at(&self) -> Option<Instant> {
        match (self.grew, self.subnet_at) {
            (true, Some(t)) => Some(t + SUBNET_REFRESH_AFTER_GROWTH),
            _ => None,
        }
    }

    fn is_empty(&self) -> bool {
        self.expected.ips.is_empty() && self.expected.prefixes.is_empty()
    }
}

/// Deletes this instance's unattached podwire ENIs past the grace period.
/// Returns how many of its ENIs are left to look at again (too young, or a
/// delete that failed).
fn sweep_unattached(shared: &Shared, leftovers: &mut BTreeSet<String>) -> Result<usize, Ec2Error> {
    let id = &shared.node.instance_id;
    let legacy = eni_description(id);
    let tag_filter = format!("tag:{TAG_INSTANCE_ID}");
    let m = &shared.metrics;
    let mut found = m.ec2("DescribeNetworkInterfaces", || {
        shared.ec2.describe_network_interfaces(
            &[(tag_filter.as_str(), id.as_str()), ("status", "available")],
            &[],
        )
    })?;
    found.extend(m.ec2("DescribeNetworkInterfaces", || {
        shared
            .ec2
            .describe_network_interfaces(&[("description", &legacy), ("status", "available")], &[])
    })?);
    found.sort_by(|a, b| a.id.cmp(&b.id));
    found.dedup_by(|a, b| a.id == b.id);
    let (mut left, mut deleted) = (0, 0);
    let now = unix_now();
    for e in found {
        // The filters are the cloud's word; the decision reads the reply.
        let facts = EniFacts {
            attached: e.attachment.is_some(),
            status: &e.status,
            description: &e.description,
            tags: &e.tags,
        };
        let decision = match decide(facts, id, &legacy, now, shared.config.eni_gc_grace) {
            GcDecision::Wait(_) if leftovers.contains(&e.id) => GcDecision::Delete,
            d => d,
        };
        match decision {
            GcDecision::NotOurs => {}
            GcDecision::Wait(why) => {
                left += 1;
                tracing::debug!(eni = %e.id, why, "unattached ENI of this instance kept for now");
            }
            GcDecision::Delete => match delete_eni(shared, &e.id) {
                Ok(()) => {
                    leftovers.remove(&e.id);
                    deleted += 1;
                    tracing::info!(eni = %e.id, "deleted an unattached ENI of this instance");
                }
                Err(err) => {
                    left += 1;
                    tracing::warn!(eni = %e.id, error = %err, "unattached ENI not deleted yet");
                }
            },
        }
    }
    m.reconcile("sweep", &[("eni_deleted", deleted)]);
    Ok(left)
}

/// DeleteNetworkInterface; an ENI already gone (a retry after a lost
/// reply) is deleted.
fn delete_eni(shared: &Shared, eni_id: &str) -> Result<(), Ec2Error> {
    match shared.metrics.ec2("DeleteNetworkInterface", || {
        shared.ec2.delete_network_interface(eni_id)
    }) {
        Err(e) if e.code() == Some("InvalidNetworkInterfaceID.NotFound") => Ok(()),
        r => r,
    }
}

/// Describes this instance's ENIs and makes the pool match; adopts
/// attached ENIs it did not know (configuring their links first). Also
/// refreshes the subnet's figures.
fn reconcile_now(shared: &Shared, pending: &mut Pending) -> Result<(), PoolError> {
    let now = Instant::now();
    if pending.since.is_some_and(|t| now.duration_since(t) > FRESH) {
        pending.expected = Expected::default();
        pending.since = None;
    }
    pending
        .fresh
        .retain(|_, (t, _)| now.duration_since(*t) <= FRESH);
    let described = shared.metrics.ec2("DescribeNetworkInterfaces", || {
        shared.ec2.describe_instance_enis(&shared.node.instance_id)
    })?;
    let mut seen: Vec<ObservedEni> = described.iter().filter_map(observed).collect();
    // An ENI just attached may be missing from a Describe for a moment.
    for (id, (_, o)) in &pending.fresh {
        if !seen.iter().any(|s| &s.id == id) {
            seen.push(o.clone());
        }
    }
    let report = {
        let mut st = shared.lock();
        let r = reconcile(&mut st.pool, &seen, &pending.expected, now);
        if r.changed() {
            shared.changed.notify_all();
        }
        r
    };
    // Settled: what the pool now has, and what can never be a pod address
    // (a primary that a reply listed as assigned).
    {
        let st = shared.lock();
        pending
            .expected
            .ips
            .retain(|ip| !st.pool.contains(*ip) && !seen.iter().any(|o| o.primary_ip == *ip));
    }
    pending.expected.prefixes.retain(|p| {
        !seen
            .iter()
            .any(|o| o.prefixes.iter().any(|q| q.trunc() == *p))
    });
    if pending.is_empty() {
        pending.since = None;
    }
    if !report.lost.is_empty() {
        shared
            .metrics
            .lost_addresses(u64::try_from(report.lost.len()).unwrap_or(u64::MAX));
        for (ip, holder) in &report.lost {
            tracing::error!(%ip, holder, "the cloud no longer lists this pod's address (unassigned out of band, or an ENI's primary): the pod has no working address; delete and recreate it");
        }
        let holders: Vec<&str> = report.lost.iter().map(|(_, h)| h.as_str()).collect();
        shared.tell_lost(&holders);
    }
    let n = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
    shared.metrics.reconcile(
        "cloud",
        &[
            ("lost", n(report.lost.len())),
            ("dropped", n(report.dropped.len())),
            ("adopted", n(report.adopted.len())),
            ("confirmed", n(report.confirmed.len())),
            ("eni_gone", n(report.enis_gone.len())),
        ],
    );
    for o in &report.unknown_enis {
        let Some(e) = described.iter().find(|e| e.id == o.id) else {
            continue;
        };
        adopt_eni(shared, e, o)?;
    }
    if pending.subnet_due(now, shared.config.reconcile_interval) {
        match shared.metrics.ec2("DescribeSubnets", || {
            shared.ec2.describe_subnet(&shared.node.subnet_id)
        }) {
            Ok(s) => {
                shared.lock().subnet = Some(s);
                pending.subnet_at = Some(now);
                pending.grew = false;
            }
            Err(e) => tracing::debug!(error = %e, "subnet figures not refreshed"),
        }
    }
    Ok(())
}

/// An attached ENI the pool did not know: configure its link, then add it
/// with everything on it cooling down (someone else may have handed it out).
fn adopt_eni(shared: &Shared, e: &NetworkInterface, o: &ObservedEni) -> Result<(), PoolError> {
    let mut nl = Handle::new()?;
    configure_link(
        &mut nl,
        e,
        o.device_index,
        shared.node.subnet,
        &shared.config,
    )?;
    let now = Instant::now();
    let mut st = shared.lock();
    st.pool
        .add_eni(&o.id, o.device_index, route_table_for(o.device_index));
    st.pool.set_primary(&o.id, o.primary_ip);
    st.pool.add_ips_at(&o.id, &o.secondary_ips, Some(now));
    st.pool.add_prefixes_at(&o.id, &o.prefixes, Some(now));
    tracing::info!(eni = %o.id, device = o.device_index, "adopted an attached ENI the pool did not know");
    Ok(())
}

/// Reconciles, looking again shortly while a claim is unconfirmed.
fn confirm(shared: &Shared, pending: &mut Pending) -> Result<(), PoolError> {
    for attempt in 0..CONFIRM_TRIES {
        reconcile_now(shared, pending)?;
        if pending.is_empty() {
            return Ok(());
        }
        if attempt + 1 < CONFIRM_TRIES {
            std::thread::sleep(CONFIRM_PAUSE);
        }
    }
    tracing::warn!(
        ips = pending.expected.ips.len(),
        prefixes = pending.expected.prefixes.len(),
        "the cloud does not list what its reply claimed (yet); not used"
    );
    Ok(())
}

pub fn run(shared: &Shared) {
    let mut last_release = Instant::now();
    let mut pending = Pending::default();
    // At start: whatever a crash between create and attach left, and the
    // subnet's figures.
    let mut next_sweep = Instant::now();
    let mut next_reconcile = Instant::now();
    let sweep_every = SWEEP_EVERY.min(shared.config.eni_gc_grace.max(Duration::from_secs(1)));
    loop {
        if Instant::now() >= next_sweep {
            next_sweep = Instant::now()
                + match sweep_unattached(shared, &mut pending.leftovers) {
                    Ok(0) => SWEEP_EVERY,
                    Ok(_) => sweep_every,
                    Err(_) => BACKOFF,
                };
        }
        if Instant::now() >= next_reconcile {
            next_reconcile = Instant::now()
                + match reconcile_now(shared, &mut pending) {
                    Ok(()) => shared.config.reconcile_interval,
                    Err(e) => {
                        tracing::warn!(error = %e, "reconcile failed");
                        BACKOFF
                    }
                };
        }
        let plan = {
            let mut st = shared.lock();
            let targets = shared.current_targets(&st, Instant::now());
            let plan = st.pool.plan(targets);
            st.last_plan = plan.clone();
            plan
        };
        let outcome = match &plan {
            PoolPlan::Satisfied | PoolPlan::AtLimit => {
                if let Some(outcome) =
                    release_surplus(shared, &mut last_release, &mut pending.leftovers)
                {
                    outcome
                } else {
                    let st = shared.lock();
                    let wait = IDLE
                        .min(next_reconcile.saturating_duration_since(Instant::now()))
                        .min(next_sweep.saturating_duration_since(Instant::now()))
                        .max(Duration::from_millis(50));
                    let _unused = shared.changed.wait_timeout(st, wait);
                    continue;
                }
            }
            PoolPlan::AssignIps { eni_id, count } => {
                assign(shared, &mut pending, eni_id, AddressRequest::Ips(*count))
            }
            PoolPlan::AssignPrefixes { eni_id, count } => assign(
                shared,
                &mut pending,
                eni_id,
                AddressRequest::Prefixes(*count),
            ),
            PoolPlan::AttachEni {
                device_index,
                count,
                prefixes,
            } => {
                let what = if *prefixes {
                    AddressRequest::Prefixes(*count)
                } else {
                    AddressRequest::Ips(*count)
                };
                attach(shared, &mut pending, *device_index, what)
            }
        };
        // A failed attach may have left its ENI behind (its delete can fail
        // too): look for it soon rather than at the next regular sweep.
        // So may a failed detach-and-delete of an idle ENI.
        if outcome.is_err() && !pending.leftovers.is_empty() {
            next_sweep = next_sweep.min(Instant::now() + BACKOFF);
        }
        let changed: Vec<(&str, u64)> = match (&plan, &outcome) {
            (_, Err(_)) => vec![("failed", 1)],
            (PoolPlan::AssignIps { .. }, Ok(n)) => vec![("ips_assigned", *n)],
            (PoolPlan::AssignPrefixes { .. }, Ok(n)) => vec![("prefixes_assigned", *n)],
            (PoolPlan::AttachEni { .. }, Ok(n)) => vec![("eni_attached", 1), ("ips_assigned", *n)],
            (_, Ok(n)) => vec![("released", *n)],
        };
        shared.metrics.reconcile("pool", &changed);
        // The cloud is the truth after anything that asked it for more, and
        // after any failure (a timed-out call may have done its work).
        let asked = !matches!(plan, PoolPlan::Satisfied | PoolPlan::AtLimit);
        if asked || outcome.is_err() {
            match confirm(shared, &mut pending) {
                Ok(()) => next_reconcile = Instant::now() + shared.config.reconcile_interval,
                Err(e) => {
                    tracing::warn!(error = %e, "reconcile failed");
                    next_reconcile = Instant::now() + BACKOFF;
                }
            }
        }
        // Growth inside the refresh gap: the subnet's figures at its end.
        if let Some(t) = pending.subnet_refresh_at() {
            next_reconcile = next_reconcile.min(t);
        }
        let mut st = shared.lock();
        match outcome {
            Ok(_) => st.cloud_error = None,
            Err(e) => {
                let (kind, msg) = describe_failure(shared, &e);
                tracing::warn!(error = %e, ?plan, "pool manager: cloud call failed");
                st.cloud_error = Some((kind, msg));
            }
        }
        shared.changed.notify_all();
        if st.cloud_error.is_some() {
            let _unused = shared.changed.wait_timeout(st, BACKOFF);
        }
    }
}

/// The error kind an ADD gets, and the message operators read.
fn describe_failure(shared: &Shared, e: &PoolError) -> (ErrorKind, String) {
    match e.code() {
        Some("InsufficientCidrBlocks") => (
            ErrorKind::Exhausted,
            format!(
                "no free aligned /28 in subnet {} ({}) for a prefix (InsufficientCidrBlocks); \
                 free /28s in the subnet, use another subnet, or run with --prefix-fallback-to-secondary-ips: {e}",
                shared.node.subnet_id, shared.node.subnet
            ),
        ),
        Some("InsufficientFreeAddressesInSubnet")
        | Some("PrivateIpAddressLimitExceeded")
        | Some("AttachmentLimitExceeded") => (ErrorKind::Exhausted, e.to_string()),
        _ => (ErrorKind::TryAgain, e.to_string()),
    }
}

#[derive(Debug, thiserror::Error)]
enum PoolError {
    #[error(transparent)]
    Ec2(#[from] Ec2Error),
    #[error("kernel: {0}")]
    Agent(#[from] AgentError),
    #[error("kernel: {0}")]
    Netlink(#[from] podwire_netlink::Error),
    #[error("ENI {eni}: {msg}")]
    Eni { eni: String, msg: String },
}

impl PoolError {
    fn code(&self) -> Option<&str> {
        match self {
            PoolError::Ec2(e) => e.code(),
            _ => None,
        }
    }
}

/// With prefix delegation and the fallback on, a subnet without a free
/// aligned /28 switches the pool to single addresses for a while. Returns
/// true when it did (the failure is then handled).
fn fall_back_if_no_prefix(shared: &Shared, e: &Ec2Error, what: AddressRequest) -> bool {
    let prefix_refused =
        matches!(what, AddressRequest::Prefixes(_)) && e.code() == Some("InsufficientCidrBlocks");
    if !prefix_refused || !shared.config.prefix_fallback_to_secondary_ips {
        return false;
    }
    tracing::warn!(
        subnet = %shared.node.subnet_id, cidr = %shared.node.subnet,
        "no free aligned /28 in the subnet (InsufficientCidrBlocks): asking for single addresses for {}s",
        PREFIX_RETRY.as_secs()
    );
    shared.lock().prefixes_unavailable_until = Some(Instant::now() + PREFIX_RETRY);
    true
}

/// Gives back what the pool holds beyond its targets, at most once per
/// `pool_decrease_interval`: addresses, prefixes, or a whole idle ENI
/// (detached, then deleted).
fn release_surplus(
    shared: &Shared,
    last: &mut Instant,
    leftovers: &mut BTreeSet<String>,
) -> Option<Result<u64, PoolError>> {
    if last.elapsed() < shared.config.pool_decrease_interval {
        return None;
    }
    let surplus = {
        let mut st = shared.lock();
        let now = Instant::now();
        let targets = shared.current_targets(&st, now);
        st.pool.take_surplus(targets, now)?
    };
    *last = Instant::now();
    let m = &shared.metrics;
    Some(match surplus {
        Surplus::Ips { eni_id, ips } => {
            match m.ec2("UnassignPrivateIpAddresses", || {
                shared.ec2.unassign_private_ip_addresses(&eni_id, &ips)
            }) {
                Ok(()) => {
                    tracing::info!(eni = %eni_id, count = ips.len(), "surplus addresses returned");
                    Ok(u64::try_from(ips.len()).unwrap_or(u64::MAX))
                }
                Err(e) => {
                    // Back as cooling; the reconcile after this failure
                    // drops what the cloud did take.
                    shared
                        .lock()
                        .pool
                        .add_ips_at(&eni_id, &ips, Some(Instant::now()));
                    Err(e.into())
                }
            }
        }
        Surplus::Prefixes { eni_id, prefixes } => {
            match m.ec2("UnassignPrivateIpAddresses", || {
                shared.ec2.unassign_ipv4_prefixes(&eni_id, &prefixes)
            }) {
                Ok(()) => {
                    tracing::info!(eni = %eni_id, count = prefixes.len(), "surplus prefixes returned");
                    Ok(u64::try_from(prefixes.len()).unwrap_or(u64::MAX) * 16)
                }
                Err(e) => {
                    shared
                        .lock()
                        .pool
                        .add_prefixes_at(&eni_id, &prefixes, Some(Instant::now()));
                    Err(e.into())
                }
            }
        }
        Surplus::Eni { eni_id } => {
            let r = detach_and_delete(shared, &eni_id).map(|()| 0);
            if r.is_err() {
                // This agent detached it (or tried): it is in nobody's
                // flight, so the sweep deletes it without the grace once it
                // is unattached (a fault soak found one left for the whole
                // grace after a failed delete).
                leftovers.insert(eni_id);
            }
            r
        }
    })
}

/// Detaches an idle ENI, waits until it is `available`, deletes it and
/// removes its rule. Never the primary ENI. On failure the ENI is still
/// attached (or unattached and tagged): the next reconcile adopts it back,
/// or the sweep deletes it.
fn detach_and_delete(shared: &Shared, eni_id: &str) -> Result<(), PoolError> {
    let m = &shared.metrics;
    let found = m.ec2("DescribeNetworkInterfaces", || {
        shared.ec2.describe_network_interfaces(&[], &[eni_id])
    })?;
    let e = found
        .into_iter()
        .find(|e| e.id == eni_id)
        .ok_or_else(|| PoolError::Eni {
            eni: eni_id.into(),
            msg: "not listed".into(),
        })?;
    let device = e.attachment.as_ref().map(|a| a.device_index);
    if let Some(a) = &e.attachment {
        if a.device_index == 0 || a.instance_id != shared.node.instance_id {
            return Err(PoolError::Eni {
                eni: eni_id.into(),
                msg: "the primary ENI or another instance's: never detached".into(),
            });
        }
        match m.ec2("DetachNetworkInterface", || {
            shared.ec2.detach_network_interface(&a.attachment_id, false)
        }) {
            Err(err) if err.code() == Some("InvalidAttachmentID.NotFound") => {}
            r => r?,
        }
        wait_available(shared, eni_id)?;
    }
    delete_eni(shared, eni_id)?;
    if let Some(d) = device {
        let rule = Rule {
            priority: RULE_ENI_PRIMARY_PRIORITY,
            src: Some(host_route(e.private_ip)),
            dst: None,
            table: route_table_for(d),
        };
        if let Err(err) = Handle::new().and_then(|mut nl| nl.delete_rule(&rule)) {
            if !err.is_not_found() {
                tracing::warn!(eni = eni_id, error = %err, "the detached ENI's rule was not removed");
            }
        }
    }
    tracing::info!(
        eni = eni_id,
        "idle ENI above the targets detached and deleted"
    );
    Ok(())
}

/// Polls until the ENI is `available` (detached), within the link wait.
fn wait_available(shared: &Shared, eni_id: &str) -> Result<(), PoolError> {
    let deadline = Instant::now() + shared.config.eni_link_wait;
    loop {
        let found = shared.metrics.ec2("DescribeNetworkInterfaces", || {
            shared.ec2.describe_network_interfaces(&[], &[eni_id])
        })?;
        if found
            .iter()
            .any(|e| e.id == eni_id && e.status == "available" && e.attachment.is_none())
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(PoolError::Eni {
                eni: eni_id.into(),
                msg: format!(
                    "still not available {}s after DetachNetworkInterface",
                    shared.config.eni_link_wait.as_secs()
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Asks for addresses or prefixes; what the reply claims is only used once
/// a Describe confirms it (see [`confirm`]). Returns how many were claimed.
fn assign(
    shared: &Shared,
    pending: &mut Pending,
    eni_id: &str,
    what: AddressRequest,
) -> Result<u64, PoolError> {
    let got = match shared.metrics.ec2("AssignPrivateIpAddresses", || {
        shared.ec2.assign_addresses(eni_id, what)
    }) {
        Ok(got) => got,
        Err(e) if fall_back_if_no_prefix(shared, &e, what) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    tracing::info!(
        eni = eni_id,
        ips = got.ips.len(),
        prefixes = got.prefixes.len(),
        "the cloud says it assigned"
    );
    pending.claim(&got, Instant::now());
    Ok(u64::try_from(got.ips.len() + got.prefixes.len()).unwrap_or(u64::MAX))
}

/// Creates (tagged, with a ClientToken) and attaches an ENI, configures its
/// link, and adds it; its addresses are used once a Describe confirms them.
fn attach(
    shared: &Shared,
    pending: &mut Pending,
    device_index: u32,
    what: AddressRequest,
) -> Result<u64, PoolError> {
    let node = &shared.node;
    let m = &shared.metrics;
    let description = eni_description(&node.instance_id);
    let tags = eni_tags(&node.instance_id, unix_now());
    let token = client_token(&node.instance_id);
    let created = match m.ec2("CreateNetworkInterface", || {
        shared.ec2.create_network_interface(&CreateEni {
            subnet_id: &node.subnet_id,
            description: &description,
            groups: &node.security_groups,
            addresses: what,
            tags: &tags,
            client_token: &token,
        })
    }) {
        Ok(c) => c,
        Err(e) if fall_back_if_no_prefix(shared, &e, what) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let attached = m.ec2("AttachNetworkInterface", || {
        shared
            .ec2
            .attach_network_interface(&created.id, &node.instance_id, device_index)
    });
    if let Err(e) = attached {
        // Do not leak an unattached ENI (it holds subnet addresses).
        if let Err(d) = delete_eni(shared, &created.id) {
            tracing::warn!(eni = %created.id, error = %d, "could not delete the ENI that failed to attach; the sweep deletes it");
            pending.leftovers.insert(created.id.clone());
        }
        return Err(e.into());
    }
    let mut nl = Handle::new()?;
    configure_link(&mut nl, &created, device_index, node.subnet, &shared.config)?;
    tracing::info!(eni = %created.id, device_index, "ENI attached and configured");
    let now = Instant::now();
    let claim = Assignment {
        ips: created.secondary_ips().collect(),
        prefixes: created.prefixes.clone(),
    };
    pending.claim(&claim, now);
    pending.fresh.insert(
        created.id.clone(),
        (
            now,
            ObservedEni {
                id: created.id.clone(),
                device_index,
                primary_ip: created.private_ip,
                secondary_ips: Vec::new(),
                prefixes: Vec::new(),
            },
        ),
    );
    let mut st = shared.lock();
    st.pool
        .add_eni(&created.id, device_index, route_table_for(device_index));
    st.pool.set_primary(&created.id, created.private_ip);
    Ok(u64::try_from(claim.ips.len() + claim.prefixes.len()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests;
