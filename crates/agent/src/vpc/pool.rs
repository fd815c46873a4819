//! The pool manager: keeps the warm target of free addresses by asking the
//! cloud for more, attaching and configuring ENIs when the attached ones are
//! full. Runs on its own thread; never holds the state lock across a cloud
//! call.

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

pub fn run(shared: &Shared) {
    let mut last_release = Instant::now();
    loop {
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
        let mut st = shared.lock();
        match outcome {
            Ok(()) => st.cloud_error = None,
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
fn release_surplus(shared: &Shared, last: &mut Instant) -> Option<Result<(), PoolError>> {
    shared.config.warm_ip_target?;
    if last.elapsed() < shared.config.pool_decrease_interval {
        return None;
    }
    let (eni_id, ips) = shared
        .lock()
        .pool
        .take_surplus(shared.targets(), Instant::now())?;
    *last = Instant::now();
    match shared.ec2.unassign_private_ip_addresses(&eni_id, &ips) {
        Ok(()) => {
            tracing::info!(eni = %eni_id, count = ips.len(), "surplus addresses returned");
            Some(Ok(()))
        }
        Err(e) => {
            shared.lock().pool.add_ips(&eni_id, &ips);
            Some(Err(e.into()))
        }
    }
}

fn assign(shared: &Shared, eni_id: &str, count: u32) -> Result<(), PoolError> {
    let ips = shared.ec2.assign_private_ip_addresses(eni_id, count)?;
    tracing::info!(
        eni = eni_id,
        count = ips.len(),
        "secondary addresses assigned"
    );
    shared.lock().pool.add_ips(eni_id, &ips);
    Ok(())
}

fn attach(shared: &Shared, device_index: u32, count: u32) -> Result<(), PoolError> {
    let node = &shared.node;
    let description = format!("podwire-{}", node.instance_id);
    let created = shared.ec2.create_network_interface(
        &node.subnet_id,
        &description,
        &node.security_groups,
        count,
    )?;
    if let Err(e) =
        shared
            .ec2
            .attach_network_interface(&created.id, &node.instance_id, device_index)
    {
        // Do not leak an unattached ENI (it holds subnet addresses).
        if let Err(d) = shared.ec2.delete_network_interface(&created.id) {
            tracing::warn!(eni = %created.id, error = %d, "could not delete the ENI that failed to attach");
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
    let mut st = shared.lock();
    st.pool
        .add_eni(&created.id, device_index, route_table_for(device_index));
    st.pool
        .add_ips(&created.id, &created.secondary_ips().collect::<Vec<_>>());
    Ok(())
}
