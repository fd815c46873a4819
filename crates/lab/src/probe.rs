//! Looking at the lab from inside: exec, traceroute, HTTP GET, and the tiny
//! HTTP responder pods run.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use podwire_netlink::netns;
use serde::Serialize;

use crate::cloud::xml::dns_name;
use crate::state::LabState;
use crate::{names, procs, LabError};

/// A place in the lab: its namespace and main address.
#[derive(Debug, Clone)]
pub struct Target {
    pub label: String,
    pub netns: String,
    pub ip: Option<Ipv4Addr>,
}

/// How the lab names a pod: `name` in namespace default, else `ns/name`.
pub fn pod_label(p: &crate::state::PodRec) -> String {
    if p.namespace == names::DEFAULT_NAMESPACE {
        p.name.clone()
    } else {
        format!("{}/{}", p.namespace, p.name)
    }
}

/// Resolves `node-N`, `external`, `fabric` or a pod (`NAME` in namespace
/// default, or `NS/NAME`).
pub fn resolve(st: &LabState, name: &str) -> Result<Target, LabError> {
    if let Some(n) = st.nodes.iter().find(|n| n.name == name) {
        return Ok(Target {
            label: n.name.clone(),
            netns: n.netns.clone(),
            ip: Some(n.primary_ip),
        });
    }
    if name == names::EXTERNAL {
        if let Some(e) = &st.external {
            return Ok(Target {
                label: e.name.clone(),
                netns: e.netns.clone(),
                ip: Some(e.primary_ip),
            });
        }
    }
    if name == names::FABRIC {
        return Ok(Target {
            label: "fabric".into(),
            netns: names::ns_fabric(&st.name),
            ip: None,
        });
    }
    let pod = podwire_cluster::PodRef::parse(name)
        .ok()
        .and_then(|r| st.pod(&r));
    if let Some(p) = pod {
        return Ok(Target {
            label: format!("pod {}", pod_label(p)),
            netns: p.netns.clone(),
            ip: Some(p.ip),
        });
    }
    Err(LabError::Usage(format!(
        "lab {} has no node, pod or host named {name:?}",
        st.name
    )))
}

/// Resolves a destination: a lab name or a literal address.
pub fn resolve_ip(st: &LabState, to: &str) -> Result<(Ipv4Addr, String), LabError> {
    if let Ok(ip) = to.parse::<Ipv4Addr>() {
        return Ok((ip, who(st, ip)));
    }
    let t = resolve(st, to)?;
    let ip =
        t.ip.ok_or_else(|| LabError::Usage(format!("{to} has no address")))?;
    Ok((ip, t.label))
}

/// What the lab calls an address.
pub fn who(st: &LabState, ip: Ipv4Addr) -> String {
    Namer::new(st).name(ip)
}

/// Names addresses; built once per question, so naming every hop of a
/// trace reads the cloud's state and the datastore once, not per hop.
struct Namer<'a> {
    st: &'a LabState,
    tunnels: Vec<podwire_ipam::nodes::NodeRecord>,
    cloud: Option<crate::cloud::model::Cloud>,
}

impl<'a> Namer<'a> {
    fn new(st: &'a LabState) -> Namer<'a> {
        Namer {
            st,
            tunnels: overlay_nodes(st),
            cloud: crate::cloud::load(&st.dir()).ok(),
        }
    }

    fn name(&self, ip: Ipv4Addr) -> String {
        let st = self.st;
        if let Some(n) = st.nodes.iter().find(|n| n.primary_ip == ip) {
            return n.name.clone();
        }
        if st.external.as_ref().is_some_and(|e| e.primary_ip == ip) {
            return names::EXTERNAL.into();
        }
        if let Some(p) = st.pods.values().find(|p| p.ip == ip) {
            return format!("pod {}", pod_label(p));
        }
        if let Some(n) = self.tunnels.iter().find(|n| n.tunnel_ip == ip) {
            return format!("{} tunnel", n.name);
        }
        if let Some((eni, Some(inst))) = self.cloud.as_ref().and_then(|c| c.owner_of(ip)) {
            return format!("{} ({})", inst.host, eni.id);
        }
        String::new()
    }
}

/// The overlay's node records, from the lab's datastore.
pub fn overlay_nodes(st: &LabState) -> Vec<podwire_ipam::nodes::NodeRecord> {
    if st.mode != crate::state::Mode::Overlay {
        return Vec::new();
    }
    crate::datastore::lab_store(st)
        .ok()
        .and_then(|s| podwire_ipam::nodes::list(s.as_ref()).ok())
        .unwrap_or_default()
}

/// AWS-style DNS names exist only for addresses of the VPC.
fn vpc_dns_name(st: &LabState, ip: Ipv4Addr) -> Option<String> {
    let in_vpc =
        st.subnet.is_some_and(|s| s.contains(&ip)) || st.subnets.iter().any(|s| s.contains(&ip));
    in_vpc.then(|| dns_name(ip))
}

/// `lab exec`: runs a command inside a lab namespace; returns its status.
pub fn exec(st: &LabState, target: &str, cmd: &[String]) -> Result<i32, LabError> {
    let t = resolve(st, target)?;
    let (prog, args) = cmd
        .split_first()
        .ok_or_else(|| LabError::Usage("lab exec TARGET -- CMD...".into()))?;
    let status = Command::new("ip")
        .args(["netns", "exec", &t.netns])
        .arg(prog)
        .args(args)
        .status()
        .map_err(|e| LabError::Command {
            what: "ip netns exec".into(),
            msg: e.to_string(),
        })?;
    Ok(status.code().unwrap_or(1))
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Hop {
    pub hop: u32,
    pub ip: Option<Ipv4Addr>,
    pub name: Option<String>,
    pub lab: Option<String>,
    pub rtt_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Trace {
    pub from: String,
    pub to: String,
    pub to_ip: Ipv4Addr,
    pub reached: bool,
    pub hops: Vec<Hop>,
}

/// Parses `traceroute -n -q 1` output.
pub fn parse_traceroute(out: &str) -> Vec<(u32, Option<Ipv4Addr>, Option<f64>)> {
    let mut hops = Vec::new();
    for line in out.lines().skip_while(|l| l.starts_with("traceroute")) {
        let mut f = line.split_whitespace();
        let Some(n) = f.next().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let rest: Vec<&str> = f.collect();
        let ip = rest.iter().find_map(|w| w.parse::<Ipv4Addr>().ok());
        let rtt = rest
            .windows(2)
            .find(|w| w[1] == "ms")
            .and_then(|w| w[0].parse().ok());
        hops.push((n, ip, rtt));
    }
    hops
}

/// `lab trace`: traceroute from inside FROM's namespace, hops named.
pub fn trace(st: &LabState, from: &str, to: &str) -> Result<Trace, LabError> {
    // One probe per hop can be lost; a silent hop *before* one that answered
    // is such a loss (a filtered path is silent from some hop on): ask again.
    let mut t = trace_once(st, from, to)?;
    for _ in 0..2 {
        let last_answer = t.hops.iter().rposition(|h| h.ip.is_some());
        let gap = last_answer.is_some_and(|i| t.hops[..i].iter().any(|h| h.ip.is_none()));
        if !gap {
            break;
        }
        t = trace_once(st, from, to)?;
    }
    Ok(t)
}

fn trace_once(st: &LabState, from: &str, to: &str) -> Result<Trace, LabError> {
    let f = resolve(st, from)?;
    let (ip, label) = resolve_ip(st, to)?;
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &f.netns,
            "traceroute",
            "-n",
            "-q",
            "1",
            "-w",
            "2",
            "-m",
            "8",
        ])
        .arg(ip.to_string())
        .output()
        .map_err(|e| LabError::Command {
            what: "traceroute".into(),
            msg: format!("{e} (install the traceroute package)"),
        })?;
    if !out.status.success() && out.stdout.is_empty() {
        return Err(LabError::Command {
            what: "traceroute".into(),
            msg: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    let namer = Namer::new(st);
    let mut hops: Vec<Hop> = parse_traceroute(&String::from_utf8_lossy(&out.stdout))
        .into_iter()
        .map(|(hop, hip, rtt)| Hop {
            hop,
            ip: hip,
            name: hip.and_then(|i| vpc_dns_name(st, i)),
            lab: hip.map(|i| namer.name(i)).filter(|s| !s.is_empty()),
            rtt_ms: rtt,
        })
        .collect();
    let reached = hops.iter().any(|h| h.ip == Some(ip));
    if reached {
        // Drop the unanswered tail traceroute may print past the target.
        if let Some(pos) = hops.iter().position(|h| h.ip == Some(ip)) {
            hops.truncate(pos + 1);
        }
    }
    Ok(Trace {
        from: f.label,
        to: label,
        to_ip: ip,
        reached,
        hops,
    })
}

pub fn print_trace(t: &Trace) {
    println!("traceroute from {} to {} ({})", t.from, t.to, t.to_ip);
    for h in &t.hops {
        let Some(ip) = h.ip else {
            println!("{:>2}  *", h.hop);
            continue;
        };
        let who = match &h.name {
            Some(name) => format!("{name} ({ip})"),
            None => ip.to_string(),
        };
        let rtt = h.rtt_ms.map(|r| format!("{r:.3} ms")).unwrap_or_default();
        let lab = h
            .lab
            .as_deref()
            .map(|l| format!("[{l}]"))
            .unwrap_or_default();
        println!("{:>2}  {who}  {rtt}  {lab}", h.hop);
    }
    if !t.reached {
        println!("(no answer from {})", t.to_ip);
    }
}

/// `lab curl`: HTTP GET from inside FROM's namespace; the body.
pub fn curl(st: &LabState, from: &str, to: &str) -> Result<String, LabError> {
    let f = resolve(st, from)?;
    let (host, port) = match to.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| LabError::Usage(format!("bad port in {to}")))?,
        ),
        None => (to, 80),
    };
    let (ip, label) = resolve_ip(st, host)?;
    let ns = procs::netns_path(&f.netns);
    let result = netns::run_in(&ns, move || -> std::io::Result<String> {
        let addr = SocketAddr::from((ip, port));
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        // One write: a request split over segments would be half-read.
        s.write_all(
            format!("GET / HTTP/1.0\r\nHost: {ip}\r\nUser-Agent: podwirectl\r\n\r\n").as_bytes(),
        )?;
        let mut buf = String::new();
        s.read_to_string(&mut buf)?;
        Ok(buf)
    })?;
    match result {
        Ok(resp) => {
            let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
            if !head.starts_with("HTTP/1.")
                || !head
                    .split_whitespace()
                    .nth(1)
                    .is_some_and(|c| c.starts_with('2'))
            {
                return Err(LabError::Command {
                    what: format!("GET http://{ip}:{port}/"),
                    msg: head.lines().next().unwrap_or("").into(),
                });
            }
            Ok(body.to_string())
        }
        Err(e) => {
            let pod = st
                .pods
                .values()
                .find(|p| p.ip == ip)
                .map(|p| format!("{}/{}", p.namespace, p.name));
            Err(LabError::Command {
                what: format!("GET http://{ip}:{port}/ ({label}) from {}", f.label),
                msg: format!(
                    "{e}{}",
                    drop_hint(&st.name, pod.as_deref(), e.kind()).unwrap_or_default()
                ),
            })
        }
    }
}

/// After a timeout (something dropped the packets: a security group, the
/// agents' posture, a NetworkPolicy, no route), where to see which layer:
/// the audit, which explains each drop.
fn drop_hint(lab: &str, pod: Option<&str>, kind: std::io::ErrorKind) -> Option<String> {
    use std::io::ErrorKind::{TimedOut, WouldBlock};
    if !matches!(kind, TimedOut | WouldBlock) {
        return None;
    }
    Some(match pod {
        Some(p) => format!("; to see which layer drops it: podwirectl audit --lab {lab} --pod {p}"),
        None => format!("; to see which layer drops it: podwirectl audit --lab {lab}"),
    })
}

/// The pods' listener: the same small web page (nginx's welcome, in
/// spirit) on every port the pod serves, one thread per port.
pub fn serve_http(pod: &str, namespace: &str, ports: &[u16]) -> Result<(), LabError> {
    let ports: Vec<u16> = if ports.is_empty() {
        vec![80]
    } else {
        ports.to_vec()
    };
    let mut listeners = Vec::new();
    for port in &ports {
        let l = TcpListener::bind(("0.0.0.0", *port)).map_err(|e| LabError::Command {
            what: format!("listen on :{port}"),
            msg: e.to_string(),
        })?;
        listeners.push(l);
    }
    std::thread::scope(|s| {
        for l in &listeners {
            s.spawn(move || serve_on(l, pod, namespace));
        }
    });
    Ok(())
}

fn serve_on(l: &TcpListener, pod: &str, namespace: &str) {
    for conn in l.incoming() {
        let Ok(mut s) = conn else { continue };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
        // Read the whole request head: closing with unread bytes sends a RST
        // that would destroy the answer. A probe that only connects sends
        // nothing and closes: the read ends at once.
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16384 {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let peer = s
            .peer_addr()
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        let body = format!(
            "<!DOCTYPE html>\n<html><head><title>Welcome to podwire!</title></head>\n<body><h1>Welcome to podwire!</h1>\n<p>Pod {namespace}/{pod} answered a request from {peer}.</p></body></html>\n"
        );
        let _ = s.write_all(format!("HTTP/1.0 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes());
    }
}

#[cfg(test)]
mod tests {
    /// Newuser F9: a timed-out `lab curl` said nothing of where to look.
    #[test]
    fn a_timeout_points_at_the_audit() {
        use std::io::ErrorKind;
        let h = super::drop_hint("nu1", Some("default/p1"), ErrorKind::TimedOut).expect("hint");
        assert!(
            h.contains("podwirectl audit --lab nu1 --pod default/p1"),
            "{h}"
        );
        assert!(super::drop_hint("nu1", None, ErrorKind::WouldBlock)
            .is_some_and(|h| h.contains("podwirectl audit --lab nu1")));
        // A refusal is an answer (nothing listens), not a drop.
        assert_eq!(
            super::drop_hint("nu1", Some("default/p1"), ErrorKind::ConnectionRefused),
            None
        );
    }

    use super::*;

    #[test]
    fn parses_traceroute_output() {
        let out = "traceroute to 10.0.8.245 (10.0.8.245), 8 hops max, 60 byte packets\n 1  10.0.7.223  0.200 ms\n 2  10.0.12.177  0.953 ms\n 3  *\n";
        let hops = parse_traceroute(out);
        assert_eq!(hops.len(), 3);
        assert_eq!(hops[0], (1, Some(Ipv4Addr::new(10, 0, 7, 223)), Some(0.2)));
        assert_eq!(hops[2], (3, None, None));
    }
}
