//! The pool manager: keeps the warm target of free addresses by asking the
//! cloud for more, attaching and configuring ENIs when the attached ones are
//! full. Runs on its own thread; never holds the state lock across a cloud
//! call.
//!
//! It also deletes this instance's ENIs that are not attached (a failed
//! attach whose delete failed too, or an agent killed between create and
//! attach): at start and every [`SWEEP_EVERY`]. ENIs are found by the
//! description podwire gives them (`podwire-<instance id>`); ENIs podwire
//! did not create are never touched. The sweep runs on this thread only,
//! never while this thread is between creating and attaching one, so it
//! needs no grace period for this agent's own ENIs.

use std::time::{Duration, Instant};

use podwire_cloud::Ec2Error;
use podwire_dataplane::eni::{self, EniSpec};
use podwire_dataplane::routing::route_table_for;
use podwire_dataplane::DataplaneError;
use podwire_ipam::PoolPlan;
use podwire_netlink::{Handle, MacAddr};
use podwire_proto::ErrorKind;

use super::VpcAgent as Shared;

const IDLE: Duration = Duration::from_secs(5);
const BACKOFF: Duration = Duration::from_secs(2);
/// How long an attached ENI may take to show up as a link (AWS documents
/// attachments of up to 10 s).
pub const ENI_LINK_WAIT: Duration = Duration::from_secs(30);
/// Unattached ENIs of this instance are looked for this often.
pub const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// The description of every ENI podwire creates for `instance_id`.
pub fn eni_description(instance_id: &str) -> String {
    format!("podwire-{instance_id}")
}

/// Deletes this instance's unattached podwire ENIs. Returns how many are
/// left (a delete that failed is tried again at the next sweep).
fn sweep_unattached(shared: &Shared) -> Result<usize, Ec2Error> {
    let desc = eni_description(&shared.node.instance_id);
    let found = shared.metrics.ec2("DescribeNetworkInterfaces", || {
        shared
            .ec2
            .describe_network_interfaces(&[("description", &desc), ("status", "available")], &[])
    })?;
    let mut left = 0;
    let mut deleted = 0;
    for e in found {
        // The filters are the cloud's word; check what the reply says too.
        if e.description != desc || e.attachment.is_some() {
            continue;
        }
        match shared.metrics.ec2("DeleteNetworkInterface", || {
            shared.ec2.delete_network_interface(&e.id)
        }) {
            Ok(()) => {
                deleted += 1;
                tracing::info!(eni = %e.id, "deleted an unattached ENI of this instance")
            }
            Err(err) => {
                left += 1;
                tracing::warn!(eni = %e.id, error = %err, "unattached ENI not deleted yet");
            }
        }
    }
    shared
        .metrics
        .reconcile("sweep", &[("eni_deleted", deleted)]);
    Ok(left)
}

pub fn run(shared: &Shared) {
    let mut last_release = Instant::now();
    // At start: whatever a crash between create and attach left.
    let mut next_sweep = Instant::now();
    loop {
        if Instant::now() >= next_sweep {
            next_sweep = Instant::now()
                + match sweep_unattached(shared) {
                    Ok(0) => SWEEP_EVERY,
                    // Something is left: look again soon.
                    Ok(_) | Err(_) => BACKOFF,
                };
        }
        let plan = {
            let mut st = shared.lock();
            let plan = st.pool.plan(shared.targets());
            st.last_plan = plan.clone();
            plan
        };
        let outcome = match &plan {
            PoolPlan::Satisfied | PoolPlan::AtLimit => {
                if let Some(outcome) = release_surplus(shared, &mut last_release) {
                    outcome
                } else {
                    let st = shared.lock();
                    let _unused = shared.changed.wait_timeout(st, IDLE);
                    continue;
                }
            }
            PoolPlan::AssignIps { eni_id, count } => assign(shared, eni_id, *count),
            PoolPlan::AttachEni {
                device_index,
                count,
            } => attach(shared, *device_index, *count),
        };
        // A failed attach may have left its ENI behind (its delete can fail
        // too): look for it soon rather than at the next regular sweep.
        if matches!(plan, PoolPlan::AttachEni { .. }) && outcome.is_err() {
            next_sweep = next_sweep.min(Instant::now() + BACKOFF);
        }
        let changed: Vec<(&str, u64)> = match (&plan, &outcome) {
            (_, Err(_)) => vec![("failed", 1)],
            (PoolPlan::AssignIps { .. }, Ok(n)) => vec![("ips_assigned", *n)],
            (PoolPlan::AttachEni { .. }, Ok(n)) => vec![("eni_attached", 1), ("ips_assigned", *n)],
            (_, Ok(n)) => vec![("ips_released", *n)],
        };
        shared.metrics.reconcile("pool", &changed);
        let mut st = shared.lock();
        match outcome {
            Ok(_) => st.cloud_error = None,
            Err(e) => {
                let kind = match e.code() {
                    Some("InsufficientFreeAddressesInSubnet")
                    | Some("PrivateIpAddressLimitExceeded")
                    | Some("AttachmentLimitExceeded") => ErrorKind::Exhausted,
                    _ => ErrorKind::TryAgain,
                };
                tracing::warn!(error = %e, ?plan, "pool manager: cloud call failed");
                st.cloud_error = Some((kind, e.to_string()));
            }
        }
        shared.changed.notify_all();
        if st.cloud_error.is_some() {
            let _unused = shared.changed.wait_timeout(st, BACKOFF);
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum PoolError {
    #[error(transparent)]
    Ec2(#[from] Ec2Error),
    #[error("kernel: {0}")]
    Kernel(#[from] DataplaneError),
    #[error("kernel: {0}")]
    Netlink(#[from] podwire_netlink::Error),
    #[error("the cloud gave ENI {eni} an unusable MAC {mac:?}: {msg}")]
    BadMac {
        eni: String,
        mac: String,
        msg: String,
    },
}

impl PoolError {
    fn code(&self) -> Option<&str> {
        match self {
            PoolError::Ec2(e) => e.code(),
            _ => None,
        }
    }
}

/// Gives addresses above the warm target back to the cloud, at most once
/// per `pool_decrease_interval` (only with an explicit `--warm-ip-target`:
/// the default keeps whole ENIs, as the VPC CNI's WARM_ENI_TARGET does).
fn release_surplus(shared: &Shared, last: &mut Instant) -> Option<Result<u64, PoolError>> {
    shared.config.warm_ip_target?;
    if last.elapsed() < shared.config.pool_decrease_interval {
        return None;
    }
    let (eni_id, ips) = {
        let mut st = shared.lock();
        let (eni_id, ips) = st.pool.take_surplus(shared.targets(), Instant::now())?;
        st.forget_ips(&eni_id, &ips);
        (eni_id, ips)
    };
    *last = Instant::now();
    match shared.metrics.ec2("UnassignPrivateIpAddresses", || {
        shared.ec2.unassign_private_ip_addresses(&eni_id, &ips)
    }) {
        Ok(()) => {
            tracing::info!(eni = %eni_id, count = ips.len(), "surplus addresses returned");
            Some(Ok(u64::try_from(ips.len()).unwrap_or(u64::MAX)))
        }
        Err(e) => {
            shared.lock().add_ips(&eni_id, &ips);
            Some(Err(e.into()))
        }
    }
}

/// Returns how many addresses arrived.
fn assign(shared: &Shared, eni_id: &str, count: u32) -> Result<u64, PoolError> {
    let ips = shared.metrics.ec2("AssignPrivateIpAddresses", || {
        shared.ec2.assign_private_ip_addresses(eni_id, count)
    })?;
    tracing::info!(
        eni = eni_id,
        count = ips.len(),
        "secondary addresses assigned"
    );
    shared.lock().add_ips(eni_id, &ips);
    Ok(u64::try_from(ips.len()).unwrap_or(u64::MAX))
}

/// Returns how many secondary addresses the new ENI brought.
fn attach(shared: &Shared, device_index: u32, count: u32) -> Result<u64, PoolError> {
    let node = &shared.node;
    let m = &shared.metrics;
    let description = eni_description(&node.instance_id);
    let created = m.ec2("CreateNetworkInterface", || {
        shared.ec2.create_network_interface(
            &node.subnet_id,
            &description,
            &node.security_groups,
            count,
        )
    })?;
    if let Err(e) = m.ec2("AttachNetworkInterface", || {
        shared
            .ec2
            .attach_network_interface(&created.id, &node.instance_id, device_index)
    }) {
        // Do not leak an unattached ENI (it holds subnet addresses).
        if let Err(d) = m.ec2("DeleteNetworkInterface", || {
            shared.ec2.delete_network_interface(&created.id)
        }) {
            tracing::warn!(eni = %created.id, error = %d, "could not delete the ENI that failed to attach; the next sweep deletes it");
        }
        return Err(e.into());
    }
    let mac: MacAddr = created.mac.parse().map_err(|msg| PoolError::BadMac {
        eni: created.id.clone(),
        mac: created.mac.clone(),
        msg,
    })?;
    let spec = EniSpec {
        mac,
        device_number: device_index,
        primary_ip: created.private_ip,
        subnet: node.subnet,
        mtu: shared.config.eni_mtu,
    };
    let mut nl = Handle::new()?;
    let link = eni::wait_for_link(&mut nl, mac, ENI_LINK_WAIT)?;
    eni::configure_secondary(&mut nl, &spec, &link)?;
    tracing::info!(eni = %created.id, device_index, link = %link.name, "ENI attached and configured");
    let ips: Vec<std::net::Ipv4Addr> = created.secondary_ips().collect();
    let mut st = shared.lock();
    st.add_eni(&created.id, device_index, route_table_for(device_index));
    st.add_ips(&created.id, &ips);
    Ok(u64::try_from(ips.len()).unwrap_or(u64::MAX))
}
