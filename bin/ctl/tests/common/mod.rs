//! Helpers for the end-to-end tests: they drive the built binaries exactly
//! as an operator or a runtime would, in labs (network namespaces) that each
//! test creates under its own name and removes when it ends, pass or fail.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

pub fn podwirectl() -> &'static str {
    env!("CARGO_BIN_EXE_podwirectl")
}

/// A binary of another package of the workspace: cargo puts every binary
/// in the same directory (`cargo build --workspace` builds them all first).
pub fn sibling(name: &str) -> String {
    let dir = std::path::Path::new(podwirectl())
        .parent()
        .expect("podwirectl lives in a directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` before these tests",
        path.display()
    );
    path.display().to_string()
}

pub fn plugin() -> String {
    sibling("podwire")
}

/// These tests need root (namespaces, netlink, nftables). Not being root is
/// a failure, not a silent pass, unless the caller explicitly opts out.
/// Polls `f` until it holds or `secs` pass; says what never happened.
pub fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "never within {secs}s: {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// One ping from a lab host (`lab exec`) to `ip`, waiting 2 s for the reply.
pub fn ping(lab: &Lab, from: &str, ip: &str) -> bool {
    lab.ctl(&["lab", "exec", from, "--", "ping", "-c", "1", "-W", "2", ip])
        .status
        .success()
}

pub fn require_root() -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    if std::env::var_os("PODWIRE_SKIP_ROOT_TESTS").is_some() {
        eprintln!("skipped: not root and PODWIRE_SKIP_ROOT_TESTS is set");
        return false;
    }
    panic!("end-to-end tests need root (set PODWIRE_SKIP_ROOT_TESTS=1 to skip them)");
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("spawn")
}

pub fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn ctl(args: &[&str]) -> Output {
    run(Command::new(podwirectl()).args(args))
}

/// Runs `podwirectl` and insists on success.
pub fn ctl_ok(args: &[&str]) -> String {
    let o = ctl(args);
    assert!(
        o.status.success(),
        "podwirectl {args:?} failed:\nstdout: {}\nstderr: {}",
        text(&o),
        String::from_utf8_lossy(&o.stderr)
    );
    text(&o)
}

pub fn ip(args: &[&str]) -> String {
    let o = run(Command::new("ip").args(args));
    assert!(
        o.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    text(&o)
}

/// A lab that is brought down when dropped.
pub struct Lab {
    pub name: String,
}

impl Lab {
    pub fn up(name: &str, extra: &[&str]) -> Lab {
        // A lab left over by an aborted earlier run of this test.
        if std::path::Path::new("/run/podwire/lab")
            .join(name)
            .join("lab.json")
            .exists()
        {
            let _ = ctl(&["lab", "down", "--name", name]);
        }
        let mut args = vec!["lab", "up", "--name", name];
        if !extra.contains(&"--mode") {
            args.extend(["--mode", "vpc"]);
        }
        args.extend_from_slice(extra);
        ctl_ok(&args);
        Lab {
            name: name.to_string(),
        }
    }

    pub fn ctl(&self, args: &[&str]) -> Output {
        // `--name` goes before a `--` that starts a command to run.
        let mut a = args.to_vec();
        let at = a.iter().position(|x| *x == "--").unwrap_or(a.len());
        a.insert(at, &self.name);
        a.insert(at, "--name");
        ctl(&a)
    }

    pub fn ctl_ok(&self, args: &[&str]) -> String {
        // `--name` goes before a `--` that starts a command to run.
        let mut a = args.to_vec();
        let at = a.iter().position(|x| *x == "--").unwrap_or(a.len());
        a.insert(at, &self.name);
        a.insert(at, "--name");
        ctl_ok(&a)
    }

    pub fn pod_add(&self, pod: &str, node: &str, http: bool) -> String {
        let mut a = vec!["lab", "pod", "add", pod, "--node", node];
        if http {
            a.push("--http");
        }
        self.ctl_ok(&a).trim().to_string()
    }

    pub fn status(&self) -> Value {
        serde_json::from_str(&self.ctl_ok(&["lab", "status", "--json"])).expect("status json")
    }

    pub fn node_ns(&self, i: usize) -> String {
        format!("pw-{}-node-{i}", self.name)
    }

    pub fn node_ip(&self, node: &str) -> String {
        let st = self.status();
        st["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .find(|n| n["name"] == node)
            .expect("node")["primary_ip"]
            .as_str()
            .expect("ip")
            .to_string()
    }

    /// A pod's address, from `lab status`.
    pub fn pod_ip(&self, pod: &str) -> String {
        self.status()["pods"]
            .as_array()
            .expect("pods")
            .iter()
            .find(|p| p["name"] == pod)
            .expect("pod")["ip"]
            .as_str()
            .expect("ip")
            .to_string()
    }

    /// conntrack entries in `netns` whose original source or destination
    /// is `ip`.
    pub fn conntrack_entries(netns: &str, ip: &str) -> usize {
        ["--orig-src", "--orig-dst"]
            .iter()
            .map(|f| conntrack_lines(netns, &[f, ip], &[ip]))
            .sum()
    }

    pub fn trace(&self, from: &str, to: &str) -> Value {
        let o = self.ctl(&["lab", "trace", from, to, "--json"]);
        serde_json::from_str(&text(&o)).expect("trace json")
    }

    /// Namespaces whose names this lab owns.
    pub fn namespaces(&self) -> BTreeSet<String> {
        let prefix = format!("pw-{}-", self.name);
        ip(&["netns", "list"])
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&prefix))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let o = ctl(&["lab", "down", "--name", &self.name]);
        if !o.status.success() {
            eprintln!(
                "lab down {}: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr)
            );
        }
        let left = self.namespaces();
        if !left.is_empty() && !std::thread::panicking() {
            panic!("lab down left namespaces behind: {left:?}");
        }
    }
}

/// The outcome of one plugin call.
#[derive(Debug)]
pub struct PluginRun {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
    pub json: Value,
}

/// Runs the plugin inside `netns` as a runtime does.
pub fn run_plugin(netns: &str, env: &[(&str, &str)], stdin: &str) -> PluginRun {
    let child = spawn_plugin(netns, env, stdin);
    finish_plugin(child, None).expect("no deadline, so an outcome")
}

/// Starts the plugin inside `netns` as a runtime does (env + config on
/// stdin) and returns the process, to wait for or to kill mid-call. `ip
/// netns exec` execs the plugin, so the child's PID is the plugin's.
pub fn spawn_plugin(netns: &str, env: &[(&str, &str)], stdin: &str) -> std::process::Child {
    let mut cmd = Command::new("ip");
    let plugin = plugin();
    cmd.args(["netns", "exec", netns, plugin.as_str()])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn plugin");
    // A plugin killed before it read its stdin closes the pipe: not an error.
    let _ = child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes());
    child
}

/// The outcome of a plugin started with [`spawn_plugin`]; `None` when it
/// was still running at `deadline` (it is then killed and reaped). A plugin
/// killed by a signal is an outcome: `ok` false, empty output.
pub fn finish_plugin(
    mut child: std::process::Child,
    deadline: Option<std::time::Instant>,
) -> Option<PluginRun> {
    if let Some(deadline) = deadline {
        // The plugin's answer is small and fits the pipes: polling for the
        // exit cannot deadlock on a full pipe.
        loop {
            if child.try_wait().expect("wait plugin").is_some() {
                break;
            }
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    let o = child.wait_with_output().expect("plugin");
    let stdout = text(&o);
    Some(PluginRun {
        ok: o.status.success(),
        json: serde_json::from_str(&stdout).unwrap_or(Value::Null),
        stdout,
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    })
}

/// A network namespace the test creates and removes.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> Netns {
        if std::path::Path::new("/run/netns").join(name).exists() {
            ip(&["netns", "del", name]);
        }
        ip(&["netns", "add", name]);
        Netns {
            name: name.to_string(),
        }
    }
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A snapshot of a namespace's kernel state, to show a call changed nothing.
pub fn kernel_snapshot(netns: &str) -> String {
    let mut s = String::new();
    for args in [
        &["-o", "link"][..],
        &["-4", "-o", "addr"],
        &["-4", "route", "show", "table", "all"],
        &["rule"],
        &["neigh", "show", "nud", "permanent"],
    ] {
        let mut a = vec!["-n", netns];
        a.extend_from_slice(args);
        // Link counters and state flags change on their own; keep names only.
        let out = ip(&a);
        let out: String = if args.contains(&"link") {
            out.lines()
                .map(|l| l.split(':').take(2).collect::<Vec<_>>().join(":") + "\n")
                .collect()
        } else {
            out
        };
        s.push_str(&out);
    }
    s
}

/// What the plugin may create on a node: `eni…`/`pw…` veths, routes through them,
/// and the per-pod policy rules. (The agent changes the rest on its own, e.g.
/// attaching an ENI for the warm pool, so a whole-node snapshot would race.)
pub fn pod_wiring_snapshot(netns: &str) -> String {
    let links: Vec<String> = ip(&["-n", netns, "-o", "link"])
        .lines()
        .filter_map(|l| {
            l.split(':')
                .nth(1)
                .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
        })
        .filter(|n| n.starts_with("eni") || n.starts_with("pw"))
        .collect();
    // IPv4 only: the kernel adds IPv6 link-local routes to new veths on its
    // own schedule (after DAD), which is not podwire's wiring.
    let routes: Vec<String> = ip(&["-4", "-n", netns, "route", "show", "table", "all"])
        .lines()
        .filter(|l| l.contains(" dev eni") || l.contains(" dev pw"))
        .map(str::to_string)
        .collect();
    let rules: Vec<String> = ip(&["-n", netns, "rule"])
        .lines()
        .filter(|l| l.starts_with("512:") || l.starts_with("1536:"))
        .map(str::to_string)
        .collect();
    format!("links {links:?}\nroutes {routes:?}\nrules {rules:?}")
}

/// The addresses of a `lab trace --json`, `*` for a silent hop.
pub fn hop_ips(trace: &Value) -> Vec<String> {
    trace["hops"]
        .as_array()
        .expect("hops")
        .iter()
        .map(|h| h["ip"].as_str().unwrap_or("*").to_string())
        .collect()
}

/// Makes a node track connections, as any node running kube-proxy does
/// (conntrack is per namespace and idle until a rule needs it). The table is
/// the test's own (`pwt_ct`) and goes with the namespace.
pub fn track_connections(netns: &str) {
    let rules = "table ip pwt_ct {\n chain f {\n type filter hook forward priority 0; policy accept;\n ct state established counter\n }\n}\n";
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("nft");
    child
        .stdin
        .as_mut()
        .expect("stdin")
        .write_all(rules.as_bytes())
        .expect("rules");
    drop(child.stdin.take());
    assert!(child.wait().expect("nft").success());
}

/// Confirmed conntrack entries in `netns` from `src` to `dst` (a packet
/// dropped on its way through the node never confirms one).
pub fn flows_between(netns: &str, src: &str, dst: &str) -> usize {
    conntrack_lines(netns, &["--orig-src", src, "--orig-dst", dst], &[src, dst])
}

/// Lines of `conntrack -L -f ipv4 FILTER…` in `netns` that mention every
/// one of `want`.
fn conntrack_lines(netns: &str, filter: &[&str], want: &[&str]) -> usize {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "conntrack", "-L", "-f", "ipv4"])
        .args(filter)
        .output()
        .expect("conntrack -L");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| want.iter().all(|w| l.contains(w)))
        .count()
}
