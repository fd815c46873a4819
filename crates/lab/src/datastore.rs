//! The overlay datastore of a lab: a shared SQLite file, or an etcd the lab
//! runs on the fabric.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use podwire_netlink::{netns, Handle};

use crate::state::LabState;
use crate::{names, procs, LabError};

/// Where the lab's etcd listens: an address of the fabric, reached by the
/// nodes through their eth0 like any VPC service.
pub const ETCD_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 251);

/// The datastore as the agents are told to open it.
pub fn datastore_spec(st: &LabState) -> String {
    if st.datastore == "etcd" {
        format!("etcd://{ETCD_ADDR}:2379")
    } else {
        format!("sqlite:{}", st.dir().join("datastore.db").display())
    }
}

/// Starts the lab's etcd in the fabric namespace.
pub fn start_etcd(st: &mut LabState) -> Result<(), LabError> {
    let fabric = names::ns_fabric(&st.name);
    let mut h = Handle::in_netns(&procs::netns_path(&fabric))?;
    let lo = h.link("lo")?;
    if let Err(e) = h.add_address(
        lo.index,
        Ipv4Net::new(ETCD_ADDR, 32).map_err(|e| LabError::State(e.to_string()))?,
    ) {
        if !e.is_exists() {
            return Err(e.into());
        }
    }
    let dir = st.dir();
    let client = format!("http://{ETCD_ADDR}:2379");
    let args: Vec<String> = [
        "--name",
        "podwire-lab",
        "--data-dir",
        &dir.join("etcd").display().to_string(),
        "--listen-client-urls",
        &client,
        "--advertise-client-urls",
        &client,
        "--listen-peer-urls",
        "http://127.0.0.1:2380",
        "--initial-advertise-peer-urls",
        "http://127.0.0.1:2380",
        "--initial-cluster",
        "podwire-lab=http://127.0.0.1:2380",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let log = dir.join("etcd.log");
    let pid = procs::spawn_in(&fabric, Path::new("etcd"), &args, &log)?;
    st.etcd_pid = Some(pid);
    st.save()?;
    let ns = procs::netns_path(&fabric);
    procs::wait_for("etcd", pid, &log, Duration::from_secs(20), || {
        procs::port_open(&ns, ETCD_ADDR, 2379)
    })
}

/// The lab's datastore, opened from the host (etcd through the fabric).
pub fn lab_store(st: &LabState) -> Result<Arc<dyn podwire_store::Datastore>, LabError> {
    if st.datastore == "etcd" {
        let endpoint = vec![format!("http://{ETCD_ADDR}:2379")];
        // The store's runtime threads are born in the fabric namespace and
        // keep it, so its connections are made from there.
        let store = netns::run_in(&procs::netns_path(&names::ns_fabric(&st.name)), move || {
            podwire_store::EtcdStore::connect(&endpoint)
        })?
        .map_err(|e| LabError::State(e.to_string()))?;
        Ok(Arc::new(store))
    } else {
        let s = podwire_store::SqliteStore::open(&st.dir().join("datastore.db"))
            .map_err(|e| LabError::State(e.to_string()))?;
        Ok(Arc::new(s))
    }
}
