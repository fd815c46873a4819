//! The lab's cloud: one process in the fabric namespace that is the VPC
//! (see [`fabric`]), serves the EC2 Query API and IMDSv2, and keeps its state
//! in `<lab dir>/cloud.json`.

pub mod api;
pub mod fabric;
pub mod imds;
pub mod model;
pub mod xml;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

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
            .map(|s| Ipv4Addr::from(u32::from(s.cidr.network()) + 1)),
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
    fabric::sync(&mut nl, &cloud, &mut nft)?;
    let state = Arc::new(Mutex::new(Proc {
        dir: dir.to_path_buf(),
        cloud,
        limits,
        nl,
        tokens: imds::Tokens::default(),
        nft,
    }));
    let imds = tiny_http::Server::http((IMDS_ADDR, 80))
        .map_err(|e| LabError::Fabric(format!("IMDS listener: {e}")))?;
    let ec2 = tiny_http::Server::http((EC2_ADDR, 80))
        .map_err(|e| LabError::Fabric(format!("EC2 listener: {e}")))?;
    crate::state::write_atomic(
        &dir.join(READY_FILE),
        std::process::id().to_string().as_bytes(),
    )?;
    tracing::info!("lab cloud serving IMDS on {IMDS_ADDR}:80 and EC2 on {EC2_ADDR}:80");
    let s2 = Arc::clone(&state);
    let t = std::thread::spawn(move || loop {
        match imds.recv() {
            Ok(req) => handle_imds(&s2, req),
            Err(e) => tracing::warn!("IMDS accept: {e}"),
        }
    });
    loop {
        match ec2.recv() {
            Ok(req) => handle_ec2(&state, req),
            Err(e) => {
                tracing::warn!("EC2 accept: {e}");
                if t.is_finished() {
                    return Ok(());
                }
            }
        }
    }
}

fn lock(s: &Mutex<Proc>) -> std::sync::MutexGuard<'_, Proc> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

fn header(req: &tiny_http::Request, name: &str) -> Option<String> {
    req.headers()
        .iter()
        .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str().to_string())
}

fn respond(req: tiny_http::Request, status: u16, body: String, content_type: &str) {
    let mut resp = tiny_http::Response::from_string(body).with_status_code(status);
    if let Ok(h) = tiny_http::Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes()) {
        resp = resp.with_header(h);
    }
    if let Err(e) = req.respond(resp) {
        tracing::warn!("answering: {e}");
    }
}

fn handle_imds(s: &Mutex<Proc>, req: tiny_http::Request) {
    let source = match req.remote_addr().map(|a| a.ip()) {
        Some(IpAddr::V4(ip)) => ip,
        _ => return respond(req, 403, "Forbidden".into(), "text/plain"),
    };
    let url = req.url().to_string();
    let method = req.method().as_str().to_string();
    let ttl = header(&req, "X-aws-ec2-metadata-token-ttl-seconds");
    let token = header(&req, "X-aws-ec2-metadata-token");
    let r = imds::ImdsRequest {
        method: &method,
        path: &url,
        ttl: ttl.as_deref(),
        token: token.as_deref(),
        forwarded: header(&req, "X-Forwarded-For").is_some(),
    };
    let (status, body) = {
        let mut guard = lock(s);
        let p = &mut *guard;
        imds::handle(
            &p.cloud,
            &mut p.tokens,
            source,
            &r,
            std::time::Instant::now(),
        )
    };
    respond(req, status, body, "text/plain")
}

fn handle_ec2(s: &Mutex<Proc>, mut req: tiny_http::Request) {
    let mut body = String::new();
    if req.as_reader().read_to_string(&mut body).is_err()
        || *req.method() != tiny_http::Method::Post
    {
        return respond(
            req,
            400,
            xml::error(
                "InvalidRequest",
                "EC2 Query API requests are form-encoded POSTs",
                "req-0",
            ),
            "text/xml",
        );
    }
    let params: BTreeMap<String, String> = form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|h| {
            (
                h.field.as_str().as_str().to_ascii_lowercase(),
                h.value.as_str().to_string(),
            )
        })
        .collect();
    let host = headers
        .iter()
        .find(|(k, _)| k == "host")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let q = api::QueryRequest {
        params,
        body,
        headers,
        url: format!("http://{host}{}", req.url()),
    };
    let result = {
        let mut guard = lock(s);
        let p = &mut *guard;
        api::verify(&p.cloud, &q).and_then(|()| {
            let before = p.cloud.clone();
            let (xml_body, effect) = api::dispatch(&mut p.cloud, &p.limits, &q.params)?;
            if effect == api::Effect::Changed {
                let synced = fabric::sync(&mut p.nl, &p.cloud, &mut p.nft)
                    .and_then(|()| save(&p.dir, &p.cloud));
                if let Err(e) = synced {
                    // Keep model and fabric in step: undo the change.
                    tracing::error!("fabric sync failed: {e}");
                    p.cloud = before;
                    let _ = fabric::sync(&mut p.nl, &p.cloud, &mut p.nft);
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
        Ok(x) => respond(req, 200, x, "text/xml"),
        Err(e) => {
            tracing::info!(code = %e.code, "EC2 error: {}", e.message);
            respond(
                req,
                e.status,
                xml::error(&e.code, &e.message, "req-err"),
                "text/xml",
            )
        }
    }
}
