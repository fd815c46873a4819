//! The lab's cloud: one process in the fabric namespace that is the VPC
//! (see [`fabric`]), serves the EC2 Query API and IMDSv2, and keeps its state
//! in `<lab dir>/cloud.json`.

pub mod api;
pub mod fabric;
pub mod faults;
pub mod filter;
pub mod http;
pub mod imds;
pub mod model;
pub mod prefix;
pub mod scope;
pub mod sg;
pub mod tags;
pub mod xml;

#[cfg(test)]
mod api_tests;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ipnet::Ipv4Net;
use podwire_cloud::LimitsTable;
use podwire_netlink::{sysctl, Handle};

use crate::LabError;
use model::Cloud;

pub const IMDS_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// Where the lab's EC2 endpoint listens (`http://169.254.169.250`).
pub const EC2_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 250);
pub const CLOUD_FILE: &str = "cloud.json";
pub const READY_FILE: &str = "cloud.ready";

pub fn ec2_endpoint() -> String {
    format!("http://{EC2_ADDR}")
}

pub fn load(dir: &Path) -> Result<Cloud, LabError> {
    let p = dir.join(CLOUD_FILE);
    let bytes = std::fs::read(&p).map_err(|e| LabError::State(format!("{}: {e}", p.display())))?;
    serde_json::from_slice(&bytes).map_err(|e| LabError::State(format!("{}: {e}", p.display())))
}

pub fn save(dir: &Path, cloud: &Cloud) -> Result<(), LabError> {
    crate::state::write_atomic(
        &dir.join(CLOUD_FILE),
        &serde_json::to_vec_pretty(cloud).map_err(|e| LabError::State(e.to_string()))?,
    )
}

struct Proc {
    dir: PathBuf,
    cloud: Cloud,
    limits: LimitsTable,
    nl: Handle,
    tokens: imds::Tokens,
    /// The nftables ruleset last applied (re-applied only when it changes).
    nft: Option<String>,
    /// Decides which requests fail on purpose (lab.json's `cloud_faults`).
    dice: faults::Dice,
    /// Reconcile the fabric after changes (false only in tests that serve
    /// the API on loopback, where the "fabric" would be the host).
    fabric: bool,
}

impl Proc {
    /// The fabric in step with the model, and the model on disk.
    fn commit(&mut self, scope: &scope::LabScope) -> Result<(), LabError> {
        if self.fabric {
            fabric::sync(&mut self.nl, &self.cloud, scope, &mut self.nft)?;
        }
        save(&self.dir, &self.cloud)
    }
}

fn fabric_basics(nl: &mut Handle, cloud: &Cloud) -> Result<(), LabError> {
    sysctl::write("net/ipv4/ip_forward", "1")?;
    sysctl::write("net/ipv4/conf/all/rp_filter", "0")?;
    let lo = nl.link("lo")?;
    nl.set_up(lo.index)?;
    let mut addrs: Vec<Ipv4Addr> = vec![IMDS_ADDR, EC2_ADDR];
    // The VPC router: the .1 of every subnet answers ARP because it is local.
    addrs.extend(
        cloud
            .subnets
            .values()
            .map(|s| podwire_dataplane::routing::subnet_gateway(s.cidr)),
    );
    for a in addrs {
        if let Err(e) = nl.add_address(
            lo.index,
            Ipv4Net::new(a, 32).map_err(|e| LabError::Fabric(e.to_string()))?,
        ) {
            if !e.is_exists() {
                return Err(e.into());
            }
        }
    }
    // Like a VPC route table without a matching route: drop silently (no
    // ICMP "unreachable" that a real VPC would never send).
    nl.replace_route(&podwire_netlink::Route::new(Ipv4Net::default()).blackhole())?;
    // The VPC is not a hop: give back the TTL that forwarding takes.
    let rule = ["-t", "mangle", "PREROUTING", "-j", "TTL", "--ttl-inc", "1"];
    let exists = Command::new("iptables")
        .args([rule[0], rule[1], "-C"])
        .args(&rule[2..])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !exists {
        let out = Command::new("iptables")
            .args([rule[0], rule[1], "-A"])
            .args(&rule[2..])
            .output()
            .map_err(|e| {
                LabError::Fabric(format!("running iptables: {e} (is iptables installed?)"))
            })?;
        if !out.status.success() {
            return Err(LabError::Fabric(format!(
                "iptables TTL rule: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
    }
    Ok(())
}

/// Runs the cloud until killed. Must be started inside the fabric netns.
pub fn serve(dir: &Path) -> Result<(), LabError> {
    let cloud = load(dir)?;
    let limits = LimitsTable::builtin().map_err(|e| LabError::State(e.to_string()))?;
    let mut nl = Handle::new()?;
    fabric_basics(&mut nl, &cloud)?;
    let mut nft = None;
    fabric::sync(&mut nl, &cloud, &scope::LabScope::load(dir)?, &mut nft)?;
    let state = Arc::new(Mutex::new(Proc {
        dir: dir.to_path_buf(),
        cloud,
        limits,
        nl,
        tokens: imds::Tokens::default(),
        nft,
        dice: faults::Dice::default(),
        fabric: true,
    }));
    let bind = |addr: Ipv4Addr, what: &str| {
        TcpListener::bind((addr, 80)).map_err(|e| LabError::Fabric(format!("{what} listener: {e}")))
    };
    let imds = bind(IMDS_ADDR, "IMDS")?;
    let ec2 = bind(EC2_ADDR, "EC2")?;
    crate::state::write_atomic(
        &dir.join(READY_FILE),
        std::process::id().to_string().as_bytes(),
    )?;
    tracing::info!("lab cloud serving IMDS on {IMDS_ADDR}:80 and EC2 on {EC2_ADDR}:80");
    let ticker = Arc::clone(&state);
    std::thread::Builder::new()
        .name("attach-ticker".into())
        .spawn(move || attach_ticker(ticker))
        .map_err(|e| LabError::Fabric(format!("attach ticker: {e}")))?;
    let imds_handler = imds_handler(Arc::clone(&state));
    let t = std::thread::spawn(move || http::serve(imds, http::Limits::default(), imds_handler));
    let served = http::serve(ec2, http::Limits::default(), ec2_handler(state));
    if t.is_finished() {
        tracing::warn!("IMDS server ended");
    }
    served.map_err(|e| LabError::Fabric(format!("EC2 server: {e}")))
}

/// Ends the `attaching` state of every attachment that is due: the fabric
/// makes their links, cloud.json records it.
fn settle(p: &mut Proc, scope: &scope::LabScope) {
    if !p.cloud.settle_attachments(api::now_ms()) {
        return;
    }
    let synced =
        fabric::sync(&mut p.nl, &p.cloud, scope, &mut p.nft).and_then(|()| save(&p.dir, &p.cloud));
    if let Err(e) = synced {
        tracing::error!("completing attachments: {e}");
    }
}

/// Completes delayed attachments on time, also when nobody calls.
fn attach_ticker(s: Arc<Mutex<Proc>>) {
    loop {
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut guard = lock(&s);
        let p = &mut *guard;
        if p.cloud
            .next_attachment_due()
            .is_some_and(|t| t <= api::now_ms())
        {
            match scope::LabScope::load(&p.dir) {
                Ok(sc) => settle(p, &sc),
                Err(e) => tracing::warn!("completing attachments: {e}"),
            }
        }
    }
}

fn lock(s: &Mutex<Proc>) -> std::sync::MutexGuard<'_, Proc> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

fn imds_handler(s: Arc<Mutex<Proc>>) -> http::Handler {
    Arc::new(move |req: &http::Request| {
        let IpAddr::V4(source) = req.peer.ip() else {
            return http::Response::text(403, "Forbidden");
        };
        let r = imds::ImdsRequest {
            method: &req.method,
            path: &req.target,
            ttl: req.header("X-aws-ec2-metadata-token-ttl-seconds"),
            token: req.header("X-aws-ec2-metadata-token"),
            forwarded: req.header("X-Forwarded-For").is_some(),
        };
        let (status, body) = {
            let mut guard = lock(&s);
            let p = &mut *guard;
            imds::handle(&p.cloud, &mut p.tokens, source, &r, Instant::now())
        };
        http::Response::text(status, body)
    })
}

fn xml_answer(status: u16, body: String) -> http::Response {
    http::Response {
        status,
        content_type: "text/xml",
        body,
    }
}

fn ec2_handler(s: Arc<Mutex<Proc>>) -> http::Handler {
    Arc::new(move |req: &http::Request| handle_ec2(&s, req))
}

fn handle_ec2(s: &Mutex<Proc>, req: &http::Request) -> http::Response {
    let body = match String::from_utf8(req.body.clone()) {
        Ok(b) if req.method == "POST" => b,
        _ => {
            return xml_answer(
                400,
                xml::error(
                    "InvalidRequest",
                    "EC2 Query API requests are form-encoded POSTs",
                    "req-0",
                ),
            )
        }
    };
    let params: BTreeMap<String, String> = form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let host = req.header("host").unwrap_or_default().to_string();
    let q = api::QueryRequest {
        params,
        body,
        headers: req.headers.clone(),
        url: format!("http://{host}{}", req.target),
    };
    // Read afresh (`lab node add` records a namespace before it asks, `lab
    // faults` changes the timing), and before the lock: EC2's latency is
    // spent by each call on its own, not in a queue behind the others.
    let dir = lock(s).dir.clone();
    let scope = scope::LabScope::load(&dir).map_err(|e| model::ApiError {
        code: "InternalError".into(),
        message: e.to_string(),
        status: 500,
    });
    if let Ok(sc) = &scope {
        if sc.faults.ec2_latency_ms > 0 {
            std::thread::sleep(std::time::Duration::from_millis(sc.faults.ec2_latency_ms));
        }
    }
    let result = {
        let mut guard = lock(s);
        let p = &mut *guard;
        api::verify(&p.cloud, &q).and_then(|()| {
            let scope = scope?;
            // Injected failures come after authentication, as EC2's own
            // 5xx answers do, and change nothing.
            if let Some(e) = p.dice.roll(&scope.faults) {
                return Err(e);
            }
            settle(p, &scope);
            let before = p.cloud.clone();
            let (xml_body, effect) = match api::dispatch(&mut p.cloud, &p.limits, &scope, &q.params)
            {
                Ok(x) => x,
                Err(e) => {
                    // All or nothing: an action that failed half-way
                    // leaves no trace.
                    p.cloud = before;
                    return Err(e);
                }
            };
            if effect == api::Effect::Changed {
                if let Err(e) = p.commit(&scope) {
                    // Keep model and fabric in step: undo the change.
                    tracing::error!("fabric sync failed: {e}");
                    p.cloud = before;
                    let _ = p.commit(&scope);
                    return Err(model::ApiError {
                        code: "InternalError".into(),
                        message: e.to_string(),
                        status: 500,
                    });
                }
            }
            Ok(xml_body)
        })
    };
    match result {
        Ok(x) => xml_answer(200, x),
        Err(e) => {
            tracing::info!(code = %e.code, "EC2 error: {}", e.message);
            xml_answer(e.status, xml::error(&e.code, &e.message, "req-err"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::time::Duration;

    /// The cloud's EC2 server on a loopback port (no namespace needed).
    fn ec2_on_loopback() -> (SocketAddr, tempfile::TempDir) {
        ec2_on_loopback_with(Cloud {
            region: "us-east-1".into(),
            ..Default::default()
        })
    }

    fn ec2_on_loopback_with(mut cloud: Cloud) -> (SocketAddr, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        cloud.credentials.insert("AKIALAB".into(), "secret".into());
        let state = Arc::new(Mutex::new(Proc {
            dir: dir.path().to_path_buf(),
            cloud,
            limits: LimitsTable::builtin().expect("limits"),
            nl: Handle::new().expect("netlink socket"),
            tokens: imds::Tokens::default(),
            nft: None,
            dice: faults::Dice::default(),
            fabric: false,
        }));
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        std::thread::spawn(move || http::serve(l, http::Limits::default(), ec2_handler(state)));
        (addr, dir)
    }

    fn answer(addr: SocketAddr, raw: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(raw).expect("write");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    #[test]
    fn a_pod_holding_a_body_open_does_not_stall_the_ec2_api() {
        let (addr, _dir) = ec2_on_loopback();
        let mut slow = TcpStream::connect(addr).expect("connect");
        slow.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nAction=")
            .expect("write");
        let t = Instant::now();
        let out = answer(
            addr,
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 24\r\n\r\nAction=DescribeInstances",
        );
        assert!(out.starts_with("HTTP/1.1 401 "), "{out}");
        assert!(out.contains("<Code>AuthFailure</Code>"), "{out}");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        let huge = answer(
            addr,
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1500000000\r\n\r\n",
        );
        assert!(huge.starts_with("HTTP/1.1 413 "), "{huge}");
        drop(slow);
    }

    /// lab.json of a lab `t` in `dir` with these faults (the cloud reads
    /// it at every request).
    fn set_faults(dir: &Path, faults: faults::CloudFaults) {
        let mut st = crate::state::LabState::new("t", crate::Mode::Vpc);
        st.cloud_faults = faults;
        crate::state::write_atomic(
            &dir.join("lab.json"),
            &serde_json::to_vec(&st).expect("json"),
        )
        .expect("lab.json");
    }

    #[test]
    fn injected_faults_are_read_per_request() {
        // Only read-only actions here: a served change would reconcile the
        // fabric, and this test's "fabric" is the host's own namespace.
        let (addr, dir) = ec2_on_loopback();
        let client = podwire_cloud::Ec2Client::new(
            &format!("http://{addr}"),
            "us-east-1",
            podwire_cloud::Credentials {
                access_key_id: "AKIALAB".into(),
                secret_access_key: "secret".into(),
                session_token: None,
            },
        );
        let answer = || match client.call("DescribeInstances", &[]) {
            Ok(_) => (200, "served".to_string()),
            Err(podwire_cloud::Ec2Error::Api { status, code, .. }) => (status, code),
            Err(e) => panic!("{e}"),
        };
        set_faults(dir.path(), faults::CloudFaults::default());
        assert_eq!(answer(), (200, "served".into()));
        set_faults(
            dir.path(),
            faults::CloudFaults::new(0.0, 1.0, 1).expect("rates"),
        );
        for _ in 0..3 {
            assert_eq!(answer(), (503, "RequestLimitExceeded".into()));
        }
        set_faults(
            dir.path(),
            faults::CloudFaults::new(1.0, 0.0, 1).expect("rates"),
        );
        assert_eq!(answer(), (500, "InternalError".into()));
        // Half and half: both kinds and served requests, as the seed says.
        set_faults(
            dir.path(),
            faults::CloudFaults::new(0.3, 0.3, 5).expect("rates"),
        );
        let seen: BTreeMap<u16, usize> = (0..60).fold(BTreeMap::new(), |mut m, _| {
            *m.entry(answer().0).or_default() += 1;
            m
        });
        assert_eq!(
            seen.keys().copied().collect::<Vec<_>>(),
            [200, 500, 503],
            "{seen:?}"
        );
        set_faults(dir.path(), faults::CloudFaults::default());
        assert_eq!(answer(), (200, "served".into()));
    }

    /// A cloud with a /24 subnet and one m5.large (`i-node`) with its
    /// primary ENI.
    fn small_cloud() -> Cloud {
        let limits = LimitsTable::builtin().expect("limits");
        let mut c = Cloud {
            region: "us-east-1".into(),
            vpc_id: "vpc-1".into(),
            ..Default::default()
        };
        c.subnets.insert(
            "subnet-a".into(),
            model::Subnet {
                id: "subnet-a".into(),
                cidr: "10.0.0.0/24".parse().expect("cidr"),
                availability_zone: "us-east-1a".into(),
            },
        );
        c.instances.insert(
            "i-node".into(),
            model::Instance {
                id: "i-node".into(),
                host: "node-1".into(),
                netns: "pw-t-node-1".into(),
                instance_type: "m5.large".into(),
                subnet_id: "subnet-a".into(),
            },
        );
        let e = c
            .create_eni("subnet-a", "primary", vec![], 0, None)
            .expect("eni");
        c.attach(&limits, &e, "i-node", 0).expect("attach");
        c
    }

    fn client(addr: SocketAddr) -> podwire_cloud::Ec2Client {
        podwire_cloud::Ec2Client::new(
            &format!("http://{addr}"),
            "us-east-1",
            podwire_cloud::Credentials {
                access_key_id: "AKIALAB".into(),
                secret_access_key: "secret".into(),
                session_token: None,
            },
        )
    }

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn signed_calls_create_tag_filter_prefix_and_detach_on_the_wire() {
        let (addr, dir) = ec2_on_loopback_with(small_cloud());
        set_faults(dir.path(), faults::CloudFaults::default());
        let c = client(addr);
        let created = c
            .call(
                "CreateNetworkInterface",
                &kv(&[
                    ("SubnetId", "subnet-a"),
                    ("Description", "podwire-i-node"),
                    ("Ipv4PrefixCount", "1"),
                    ("ClientToken", "abc-1"),
                    ("TagSpecification.1.ResourceType", "network-interface"),
                    ("TagSpecification.1.Tag.1.Key", "podwire.io/instance-id"),
                    ("TagSpecification.1.Tag.1.Value", "i-node"),
                ]),
            )
            .expect("create");
        let eni = podwire_cloud::ec2_reply::create_network_interface(&created).expect("parsed");
        assert!(
            created.contains("<ipv4PrefixSet><item><ipv4Prefix>10.0.0."),
            "{created}"
        );
        assert!(created.contains("<key>podwire.io/instance-id</key><value>i-node</value>"));
        // The same token again: the same ENI, no second one.
        let again = c
            .call(
                "CreateNetworkInterface",
                &kv(&[
                    ("SubnetId", "subnet-a"),
                    ("Description", "podwire-i-node"),
                    ("Ipv4PrefixCount", "1"),
                    ("ClientToken", "abc-1"),
                    ("TagSpecification.1.ResourceType", "network-interface"),
                    ("TagSpecification.1.Tag.1.Key", "podwire.io/instance-id"),
                    ("TagSpecification.1.Tag.1.Value", "i-node"),
                ]),
            )
            .expect("retry");
        assert!(again.contains(&eni.id), "{again}");
        let tagged = c
            .describe_network_interfaces(&[("tag:podwire.io/instance-id", "i-node")], &[])
            .expect("filter");
        assert_eq!(
            tagged.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            [eni.id.as_str()]
        );
        let att = c
            .attach_network_interface(&eni.id, "i-node", 1)
            .expect("attach");
        let ips = c.assign_private_ip_addresses(&eni.id, 2).expect("assign");
        assert_eq!(ips.len(), 2);
        match c.call(
            "AssignPrivateIpAddresses",
            &kv(&[
                ("NetworkInterfaceId", &eni.id),
                ("Ipv4Prefix.1", "10.0.0.8/28"),
            ]),
        ) {
            Err(podwire_cloud::Ec2Error::Api { code, status, .. }) => {
                assert_eq!((status, code.as_str()), (400, "InvalidParameterValue"))
            }
            other => panic!("unaligned prefix: {other:?}"),
        }
        c.call(
            "DetachNetworkInterface",
            &kv(&[("AttachmentId", &att), ("Force", "false")]),
        )
        .expect("detach");
        let after = c
            .describe_network_interfaces(&[], &[&eni.id])
            .expect("describe");
        assert_eq!(after[0].status, "available");
        assert!(after[0].attachment.is_none());
        let subnets = c
            .call("DescribeSubnets", &kv(&[("SubnetId.1", "subnet-a")]))
            .expect("subnets");
        // 251 usable - 2 primaries - 2 secondaries - one /28.
        assert!(
            subnets.contains("<availableIpAddressCount>231</availableIpAddressCount>"),
            "{subnets}"
        );
        // What was served is on disk.
        let saved = load(dir.path()).expect("cloud.json");
        assert_eq!(saved.enis[&eni.id].prefixes.len(), 1);
        assert_eq!(saved.enis[&eni.id].tags.len(), 1);
    }

    #[test]
    fn every_call_waits_the_emulated_latency() {
        let (addr, dir) = ec2_on_loopback_with(small_cloud());
        let c = client(addr);
        set_faults(
            dir.path(),
            faults::CloudFaults::default()
                .with_timing(400, 0)
                .expect("timing"),
        );
        let t = Instant::now();
        c.call("DescribeSubnets", &[]).expect("served");
        assert!(
            t.elapsed() >= Duration::from_millis(400),
            "{:?}",
            t.elapsed()
        );
        // Per call, not in a queue: four at once take about one latency.
        let t = Instant::now();
        let calls: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || c.call("DescribeSubnets", &[]).map(|_| ()))
            })
            .collect();
        for h in calls {
            h.join().expect("thread").expect("served");
        }
        assert!(
            t.elapsed() < Duration::from_millis(1_500),
            "{:?}",
            t.elapsed()
        );
        set_faults(dir.path(), faults::CloudFaults::default());
        let t = Instant::now();
        c.call("DescribeSubnets", &[]).expect("served");
        assert!(
            t.elapsed() < Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );
    }

    #[test]
    fn cloud_json_holds_secrets_and_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = Cloud::default();
        c.credentials.insert("AKIALAB".into(), "secret".into());
        save(dir.path(), &c).expect("save");
        let meta = std::fs::metadata(dir.path().join(CLOUD_FILE)).expect("stat");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(load(dir.path()).expect("load").credentials, c.credentials);
    }
}
