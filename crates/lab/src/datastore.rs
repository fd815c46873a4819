//! The overlay datastore of a lab: a shared SQLite file, or an etcd the lab
//! runs on the fabric. The etcd speaks only TLS and accepts only clients
//! with a certificate of the lab's own CA (`--client-cert-auth`): the
//! agents and the lab's control get one, pods do not (and nftables keeps
//! them away from the endpoint anyway).

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use podwire_netlink::{netns, Handle};
use podwire_store::pki::{write_etcd_files, EtcdFiles};
use podwire_store::EtcdTls;

use crate::state::LabState;
use crate::{names, procs, LabError};

/// Where the lab's etcd listens: an address of the fabric, reached by the
/// nodes through their eth0 like any VPC service.
pub const ETCD_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 251);

/// The lab's etcd CA, server and client certificates and keys, all 0600
/// in a 0700 directory of the lab.
pub fn etcd_tls_dir(st: &LabState) -> PathBuf {
    st.dir().join("etcd-tls")
}

/// What a client of the lab's etcd (an agent, the lab itself) presents
/// and trusts.
pub fn etcd_client_tls(st: &LabState) -> EtcdTls {
    EtcdFiles::in_dir(&etcd_tls_dir(st)).client
}

/// The datastore as the agents are told to open it (with the files of
/// [`etcd_client_tls`] for etcd).
pub fn datastore_spec(st: &LabState) -> String {
    if st.datastore == "etcd" {
        format!("etcd+https://{ETCD_ADDR}:2379")
    } else {
        format!("sqlite:{}", st.dir().join("datastore.db").display())
    }
}

/// Starts the lab's etcd in the fabric namespace, with new certificates:
/// TLS only, client certificates required.
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
    let files = write_etcd_files(
        &etcd_tls_dir(st),
        &[IpAddr::V4(ETCD_ADDR)],
        "podwire-lab-agent",
    )
    .map_err(|e| LabError::State(format!("etcd certificates: {e}")))?;
    let client = format!("https://{ETCD_ADDR}:2379");
    let path = |p: &Path| p.display().to_string();
    let args: Vec<String> = [
        "--cert-file",
        &path(&files.server_cert),
        "--key-file",
        &path(&files.server_key),
        "--trusted-ca-file",
        &path(&files.ca_cert),
        "--client-cert-auth",
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
        let endpoint = vec![format!("https://{ETCD_ADDR}:2379")];
        let tls = etcd_client_tls(st);
        // The store's runtime threads are born in the fabric namespace and
        // keep it, so its connections are made from there.
        let store = netns::run_in(&procs::netns_path(&names::ns_fabric(&st.name)), move || {
            podwire_store::EtcdStore::connect_with(&endpoint, &tls)
        })?
        .map_err(|e| LabError::Datastore {
            unavailable: matches!(e, podwire_store::StoreError::Unavailable(_)),
            msg: e.to_string(),
        })?;
        Ok(Arc::new(store))
    } else {
        let s = podwire_store::SqliteStore::open(&st.dir().join("datastore.db"))
            .map_err(|e| LabError::State(e.to_string()))?;
        Ok(Arc::new(s))
    }
}
