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
                let synced = fabric::sync(&mut p.nl, &p.cloud, &scope, &mut p.nft)
                    .and_then(|()| save(&p.dir, &p.cloud));
                if let Err(e) = synced {
                    // Keep model and fabric in step: undo the change.
                    tracing::error!("fabric sync failed: {e}");
                    p.cloud = before;
                    let _ = fabric::sync(&mut p.nl, &p.cloud, &scope, &mut p.nft);
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
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cloud = Cloud {
            region: "us-east-1".into(),
            ..Default::default()
        };
        cloud.credentials.insert("AKIALAB".into(), "secret".into());
        let state = Arc::new(Mutex::new(Proc {
            dir: dir.path().to_path_buf(),
            cloud,
            limits: LimitsTable::builtin().expect("limits"),
            nl: Handle::new().expect("netlink socket"),
            tokens: imds::Tokens::default(),
            nft: None,
            dice: faults::Dice::default(),
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
