//! The fault soak (issue 6, "Proof that it stays fixed"): per mode, a lab
//! with two nodes; random ADD/DEL/CHECK/GC through the real plugin binary
//! as a runtime drives it, with faults at random points — kill -9 of an
//! agent (started again as a DaemonSet would), kill -9 of a plugin mid-call,
//! the lab's etcd paused (overlay), injected EC2 errors (vpc). Then the
//! runtime's clean-up (DEL every attachment it started that is not live, GC
//! with the live list) and the books: addresses unique and really held,
//! nothing leaked in the kernel, the agents, the datastore or the cloud;
//! after every pod is gone, the nodes and the IPAM look as before.
//!
//! Bounded: a fixed number of rounds (PODWIRE_SOAK_STEPS, default below),
//! a quiet moment with the books every 100 rounds. It prints its seed;
//! PODWIRE_SOAK_SEED=N replays the same random choices, and the cloud's
//! injected errors come from the same dice. Processes keep their own timing:
//! where an outcome depends on it (a kill that lands before or after a call
//! ends), a replay can part ways from there on.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Child;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

/// Rounds per mode unless PODWIRE_SOAK_STEPS says otherwise.
const DEFAULT_STEPS: usize = 400;
/// The plugin's one deadline (conflist `timeoutSeconds`).
const PLUGIN_TIMEOUT_SECS: u64 = 3;
/// A plugin still running this long after its start overran its deadline.
const PLUGIN_GRACE: Duration = Duration::from_secs(PLUGIN_TIMEOUT_SECS + 5);
/// A DaemonSet restarts a crashing agent for ever; the soak gives up here.
const MAX_AGENT_STARTS: usize = 20;
/// Rounds between quiet moments with the books checked.
const CHECKPOINT_EVERY: usize = 100;
/// After this many failed starts the cloud's injected errors stop.
const CALM_AFTER: usize = 11;
/// The modes run one after the other: CI has two cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// SplitMix64: small, fast, and the same sequence everywhere for a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n.max(1)).expect("fits")).expect("fits")
    }
    /// True with probability `percent` / 100.
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo + 1))
    }
}

fn soak_seed() -> u64 {
    if let Some(s) = std::env::var_os("PODWIRE_SOAK_SEED") {
        let s = s.to_string_lossy();
        return s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("PODWIRE_SOAK_SEED={s} is not a number"));
    }
    let mut b = [0u8; 8];
    let mut f = std::fs::File::open("/dev/urandom").expect("/dev/urandom");
    std::io::Read::read_exact(&mut f, &mut b).expect("random seed");
    // Small enough to type.
    u64::from_le_bytes(b) % 1_000_000_000
}

fn soak_steps() -> usize {
    std::env::var("PODWIRE_SOAK_STEPS")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(DEFAULT_STEPS)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AttState {
    /// ADD succeeded (and no DEL was started since).
    Live,
    /// Started, but its outcome is a failure or unknown (failed or killed
    /// ADD, failed or killed DEL): the runtime owes it a DEL.
    Dirty,
}

struct Att {
    id: String,
    pod: String,
    node: usize,
    /// Dropped (and so removed) once a DEL succeeded.
    netns: Netns,
    state: AttState,
    ip: Option<Ipv4Addr>,
}

struct NodeInfo {
    name: String,
    ns: String,
    socket: String,
}

#[derive(Debug, Clone, Copy)]
enum Verb {
    Add,
    Del,
    Check,
}

/// One plugin call of a round.
struct InFlight {
    verb: Verb,
    id: String,
    child: Child,
    killed: bool,
}

#[derive(Debug, Clone)]
enum Fault {
    KillPlugin(usize),
    KillAgent(usize),
    /// SIGSTOP, then SIGCONT: a process that hangs (now and then for
    /// longer than the plugin's deadline).
    PauseAgent(usize, Duration),
    PauseEtcd(Duration),
}

/// SIGCONT for a paused agent or etcd, also when the test fails meanwhile.
struct Paused(i32);

impl Drop for Paused {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0), Signal::SIGCONT);
    }
}

struct Soak {
    /// Pod namespaces go before the lab (fields drop in order).
    atts: BTreeMap<String, Att>,
    lab: Lab,
    overlay: bool,
    nodes: Vec<NodeInfo>,
    rng: Rng,
    seed: u64,
    next_id: usize,
    log: Vec<String>,
    findings: Vec<String>,
    stats: BTreeMap<&'static str, usize>,
    /// Nodes whose agent was seen exiting on a transient EC2 error (one
    /// finding per node, not per exit).
    agent_exits_on_transient_ec2: BTreeSet<String>,
    /// ENI lines of agent logs that restarts truncated.
    agent_history: Vec<String>,
    /// vpc: the cloud's injected error and throttle rates, and their seed.
    cloud_rates: Option<(f64, f64, u64)>,
    /// Leaked ENIs already reported (a leak stays; one finding each).
    leaked_enis: BTreeSet<String>,
}

impl Soak {
    fn note(&mut self, s: String) {
        eprintln!("{s}");
        self.log.push(s);
    }

    fn finding(&mut self, s: String) {
        let s = format!("FINDING (seed {}): {s}", self.seed);
        eprintln!("{s}");
        self.findings.push(s);
    }

    fn count(&mut self, what: &'static str) {
        *self.stats.entry(what).or_default() += 1;
    }

    fn conf(&self, node: usize) -> Value {
        json!({
            "cniVersion": "1.1.0", "name": "podwire", "type": "podwire",
            "mode": if self.overlay { "overlay" } else { "vpc" },
            "agentSocket": self.nodes[node].socket,
            "timeoutSeconds": PLUGIN_TIMEOUT_SECS,
        })
    }

    fn spawn(&self, verb: Verb, att: &Att) -> Child {
        let cmd = match verb {
            Verb::Add => "ADD",
            Verb::Del => "DEL",
            Verb::Check => "CHECK",
        };
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=soak;K8S_POD_NAME={}",
            att.pod
        );
        let path = att.netns.path();
        let env = [
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", att.id.as_str()),
            ("CNI_NETNS", path.as_str()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
            ("CNI_ARGS", args.as_str()),
        ];
        spawn_plugin(
            &self.nodes[att.node].ns,
            &env,
            &self.conf(att.node).to_string(),
        )
    }

    /// GC on `node` with every live attachment of that node as valid.
    fn gc(&mut self, node: usize) -> Option<PluginRun> {
        let valid: Vec<Value> = self
            .atts
            .values()
            .filter(|a| a.node == node && a.state == AttState::Live)
            .map(|a| json!({"containerID": a.id, "ifname": "eth0"}))
            .collect();
        let mut conf = self.conf(node);
        conf["cni.dev/valid-attachments"] = Value::Array(valid);
        let env = [("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")];
        let child = spawn_plugin(&self.nodes[node].ns, &env, &conf.to_string());
        finish_plugin(child, Some(Instant::now() + PLUGIN_GRACE))
    }

    /// lab.json as the lab keeps it (no agent is asked, unlike `lab status`).
    fn lab_state(&self) -> podwire_lab::state::LabState {
        podwire_lab::state::LabState::load(&self.lab.name).expect("lab.json")
    }

    /// Is `pid` this lab's `what` (by its command line)? Signals go only
    /// to processes the lab started.
    fn is_lab_process(&self, pid: i32, what: &str) -> bool {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let ours = cmdline.contains(what) && cmdline.contains(&self.lab.name);
        if !ours {
            eprintln!("  (pid {pid} is not the lab's {what}: {cmdline:?})");
        }
        ours
    }

    /// kill -9 of a process the lab started.
    fn kill9(&mut self, pid: i32, what: &str) {
        if self.is_lab_process(pid, what) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }

    /// `lab agent start`, retried as a DaemonSet restarts a crashing pod.
    /// An agent that exits at start-up because one EC2 request failed
    /// transiently (500 InternalError, 503 RequestLimitExceeded) is a
    /// finding: EC2 clients retry those (the AWS SDKs do, with backoff);
    /// on a node, each such exit is a CrashLoopBackOff delay during which
    /// no pod can be added.
    fn start_agent(&mut self, node: usize) {
        let name = self.nodes[node].name.clone();
        for attempt in 1..=MAX_AGENT_STARTS {
            self.keep_agent_log(node);
            if attempt == CALM_AFTER && !self.overlay {
                // The throttling storm passes (the agent's exits are a
                // finding already); the soak goes on.
                self.set_cloud_faults(0.0, 0.0, 0);
                self.note(format!(
                    "  cloud faults off: {name} failed {} starts",
                    attempt - 1
                ));
            }
            let o = self.lab.ctl(&["lab", "agent", "start", &name]);
            if o.status.success() {
                if attempt > 1 {
                    self.note(format!("  agent {name} started at attempt {attempt}"));
                }
                return;
            }
            self.count("agent start failures");
            // The agent's own words (its log), without backtrace frames.
            let log = Path::new("/run/podwire/lab")
                .join(&self.lab.name)
                .join(&name)
                .join("agent.log");
            let log = std::fs::read_to_string(log).unwrap_or_default();
            let stderr = String::from_utf8_lossy(&o.stderr);
            let why = log
                .lines()
                .rev()
                .find(|l| l.starts_with("Error:"))
                .or_else(|| stderr.lines().next())
                .unwrap_or_default()
                .to_string();
            self.note(format!("  agent {name} start {attempt} failed: {why}"));
            if why.contains("InternalError") || why.contains("RequestLimitExceeded") {
                self.count("agent exits on a transient EC2 error");
                if !self.agent_exits_on_transient_ec2.contains(&name) {
                    self.agent_exits_on_transient_ec2.insert(name.clone());
                    self.finding(format!(
                        "the agent of {name} exits at start-up on one transient EC2 error instead of retrying it: {why}"
                    ));
                }
            }
        }
        self.finding(format!(
            "the agent of {name} did not start in {MAX_AGENT_STARTS} attempts"
        ));
        panic!("{}", self.report());
    }

    /// The runtime's clean-up with the faults over: every agent up, a DEL
    /// (until it succeeds) of every attachment started and not live, GC
    /// with the live list, CHECK of every live pod; then the books.
    fn settle(&mut self, phase: &str, baseline: &[Baseline]) {
        if !self.overlay {
            self.set_cloud_faults(0.0, 0.0, 0);
        }
        for n in 0..2 {
            if self.agent_status(n).is_none() {
                self.note(format!("{phase}: agent of node-{} not answering", n + 1));
                self.start_agent(n);
            }
        }
        let dirty: Vec<String> = self
            .atts
            .values()
            .filter(|a| a.state == AttState::Dirty)
            .map(|a| a.id.clone())
            .collect();
        self.note(format!(
            "{phase}: DEL of {} attachments not live",
            dirty.len()
        ));
        for id in dirty {
            let child = self.spawn(Verb::Del, &self.atts[&id]);
            let run = finish_plugin(child, Some(Instant::now() + PLUGIN_GRACE));
            if run.as_ref().is_some_and(|r| r.ok) {
                self.atts.remove(&id);
            } else {
                self.finding(format!(
                    "{phase}: DEL of {id} failed without faults: {:?}",
                    run.map(|r| r.stdout)
                ));
            }
        }
        for n in 0..2 {
            if !self.gc(n).is_some_and(|r| r.ok) {
                self.finding(format!("{phase}: GC on node-{} failed", n + 1));
            }
        }
        let live: Vec<String> = self.live().iter().map(|a| a.id.clone()).collect();
        for id in &live {
            let child = self.spawn(Verb::Check, &self.atts[id]);
            let run = finish_plugin(child, Some(Instant::now() + PLUGIN_GRACE));
            if !run.as_ref().is_some_and(|r| r.ok) {
                self.finding(format!(
                    "{phase}: CHECK of live {id} failed: {:?}",
                    run.map(|r| r.stdout)
                ));
            }
        }
        for b in self.books(phase, baseline) {
            self.finding(b);
        }
        self.remember_leaked_enis();
    }

    /// Unattached podwire ENIs stay leaked: each is reported once.
    fn remember_leaked_enis(&mut self) {
        if self.overlay {
            return;
        }
        let dir = Path::new("/run/podwire/lab").join(&self.lab.name);
        let cloud = podwire_lab::cloud::load(&dir).expect("cloud.json");
        self.leaked_enis.extend(
            cloud
                .enis
                .values()
                .filter(|e| e.attachment.is_none() && e.description.contains("podwire"))
                .map(|e| e.id.clone()),
        );
    }

    /// The cloud's injected errors as they were before a quiet moment.
    fn restore_cloud_faults(&mut self) {
        if let Some((e, t, seed)) = self.cloud_rates {
            self.set_cloud_faults(e, t, seed);
        }
    }

    fn set_cloud_faults(&mut self, error: f64, throttle: f64, seed: u64) {
        self.lab.ctl_ok(&[
            "lab",
            "faults",
            "--error-rate",
            &error.to_string(),
            "--throttle-rate",
            &throttle.to_string(),
            "--fault-seed",
            &seed.to_string(),
        ]);
    }

    /// `lab agent start` begins a new agent.log: keep what the agent said
    /// about ENIs, for the evidence of a leak.
    fn keep_agent_log(&mut self, node: usize) {
        let name = &self.nodes[node].name;
        let log = Path::new("/run/podwire/lab")
            .join(&self.lab.name)
            .join(name)
            .join("agent.log");
        let log = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<String> = log
            .lines()
            .filter(|l| l.contains("eni-"))
            .map(|l| format!("{name}: {l}"))
            .collect();
        self.agent_history.extend(lines);
    }

    fn new_attachment(&mut self, busy: &BTreeSet<String>) -> String {
        let node = self.rng.below(2);
        // Now and then a new sandbox of a pod that has one on this node
        // (kubelet recreates sandboxes): same pod name, new container id.
        let same_pod: Vec<String> = self
            .atts
            .values()
            .filter(|a| a.node == node && !busy.contains(&a.id))
            .map(|a| a.pod.clone())
            .collect();
        let n = self.next_id;
        self.next_id += 1;
        let pod = if !same_pod.is_empty() && self.rng.chance(15) {
            same_pod[self.rng.below(same_pod.len())].clone()
        } else {
            format!("p{n}")
        };
        let id = format!("soak{n}");
        let netns = Netns::new(&format!("pw-{}-s{n}", self.lab.name));
        ip(&["-n", &netns.name, "link", "set", "lo", "up"]);
        self.atts.insert(
            id.clone(),
            Att {
                id: id.clone(),
                pod,
                node,
                netns,
                state: AttState::Dirty,
                ip: None,
            },
        );
        id
    }

    fn pick(&mut self, busy: &BTreeSet<String>, want: impl Fn(&Att) -> bool) -> Option<String> {
        let c: Vec<String> = self
            .atts
            .values()
            .filter(|a| !busy.contains(&a.id) && want(a))
            .map(|a| a.id.clone())
            .collect();
        (!c.is_empty()).then(|| c[self.rng.below(c.len())].clone())
    }

    /// Applies a finished call to the books.
    fn record(
        &mut self,
        round: usize,
        verb: Verb,
        id: &str,
        run: Option<PluginRun>,
        killed: bool,
        faulty: bool,
    ) {
        let Some(att) = self.atts.get(id) else { return };
        let node = self.nodes[att.node].name.clone();
        let how = match &run {
            None => "overran its deadline".to_string(),
            Some(_) if killed => "killed".to_string(),
            Some(r) if r.ok => "ok".to_string(),
            Some(r) => format!(
                "code {} {}",
                r.json["code"],
                r.json["msg"].as_str().unwrap_or(r.stderr.trim())
            ),
        };
        if run.is_none() {
            self.finding(format!(
                "round {round}: {verb:?} {id} on {node} was still running {PLUGIN_GRACE:?} after it started (timeoutSeconds {PLUGIN_TIMEOUT_SECS})"
            ));
        }
        let ok = !killed && run.as_ref().is_some_and(|r| r.ok);
        match verb {
            Verb::Add if ok => {
                let r = run.as_ref().expect("ok");
                let addr = r.json["ips"][0]["address"]
                    .as_str()
                    .and_then(|a| a.split('/').next())
                    .and_then(|a| a.parse::<Ipv4Addr>().ok());
                let Some(addr) = addr else {
                    self.finding(format!(
                        "round {round}: ADD {id} succeeded without an address: {}",
                        r.stdout
                    ));
                    return;
                };
                if let Some(other) = self
                    .atts
                    .values()
                    .find(|a| a.state == AttState::Live && a.ip == Some(addr) && a.id != id)
                {
                    let other = other.id.clone();
                    self.finding(format!(
                        "round {round}: ADD {id} on {node} got {addr}, which live {other} holds"
                    ));
                }
                let att = self.atts.get_mut(id).expect("att");
                att.state = AttState::Live;
                att.ip = Some(addr);
                self.note(format!(
                    "  ADD {id} ({}) on {node}: ok {addr}",
                    self.atts[id].pod
                ));
                self.count("ADD ok");
            }
            Verb::Add => {
                self.note(format!("  ADD {id} on {node}: {how}"));
                self.count(if killed { "ADD killed" } else { "ADD failed" });
            }
            Verb::Del if ok => {
                self.note(format!("  DEL {id} on {node}: ok"));
                self.atts.remove(id);
                self.count("DEL ok");
            }
            Verb::Del => {
                self.note(format!("  DEL {id} on {node}: {how}"));
                if let Some(a) = self.atts.get_mut(id) {
                    a.state = AttState::Dirty;
                }
                self.count(if killed { "DEL killed" } else { "DEL failed" });
            }
            Verb::Check => {
                self.note(format!("  CHECK {id} on {node}: {how}"));
                if ok {
                    self.count("CHECK ok");
                } else if killed {
                    self.count("CHECK killed");
                } else {
                    self.count("CHECK failed");
                    // A live pod's CHECK may fail while its agent or the
                    // datastore is away; otherwise the pod is broken.
                    if !faulty {
                        self.finding(format!("round {round}: CHECK of live {id} on {node} failed without a fault: {how}"));
                    }
                }
            }
        }
    }

    /// One round: 1–3 calls at once (or a GC alone), maybe a fault.
    fn round(&mut self, round: usize) {
        if self.rng.chance(10) {
            let node = self.rng.below(2);
            let r = self.gc(node);
            let how = match &r {
                Some(r) if r.ok => "ok".to_string(),
                Some(r) => format!("failed: {}", r.stdout),
                None => "overran its deadline".to_string(),
            };
            self.note(format!(
                "round {round}: GC on {} with its live list: {how}",
                self.nodes[node].name
            ));
            self.count("GC");
            if r.is_none() {
                self.finding(format!("round {round}: GC overran its deadline"));
            }
            return;
        }
        if !self.overlay && self.rng.chance(8) {
            let (e, t) = [(0.0, 0.0), (0.1, 0.1), (0.2, 0.1), (0.3, 0.2)][self.rng.below(4)];
            let seed = self.rng.next() % 1_000_000;
            self.set_cloud_faults(e, t, seed);
            self.cloud_rates = Some((e, t, seed));
            self.note(format!(
                "round {round}: cloud faults now error {e} throttle {t} (seed {seed})"
            ));
        }
        let calls = 1 + self.rng.below(3);
        let mut busy = BTreeSet::new();
        let mut plan: Vec<(Verb, String)> = Vec::new();
        for _ in 0..calls {
            let roll = self.rng.below(100);
            // ADDs outnumber DELs until about 20 attachments (two ENIs'
            // worth on a node in vpc mode), then DELs do.
            let add_share = if self.atts.len() < 20 { 45 } else { 20 };
            let pick = if roll < add_share || self.atts.len() < 3 {
                Some((Verb::Add, self.new_attachment(&busy)))
            } else if roll < 75 {
                self.pick(&busy, |_| true).map(|id| (Verb::Del, id))
            } else {
                self.pick(&busy, |a| a.state == AttState::Live)
                    .map(|id| (Verb::Check, id))
            };
            if let Some((v, id)) = pick {
                busy.insert(id.clone());
                plan.push((v, id));
            }
        }
        // When: a plugin call takes some 30–150 ms, so most faults land
        // while calls are in flight.
        let (fault, at) = if self.rng.chance(30) && !plan.is_empty() {
            let kinds = if self.overlay { 4 } else { 3 };
            // Mostly short; one in eight outlasts the plugin's deadline.
            let pause = if self.rng.chance(12) {
                let deadline = PLUGIN_TIMEOUT_SECS * 1000;
                self.rng.millis(deadline + 200, deadline + 800)
            } else {
                self.rng.millis(100, 800)
            };
            match self.rng.below(kinds) {
                0 => (
                    Some(Fault::KillPlugin(self.rng.below(plan.len()))),
                    self.rng.millis(5, 50),
                ),
                1 => (
                    Some(Fault::KillAgent(self.rng.below(2))),
                    self.rng.millis(0, 150),
                ),
                2 => (
                    Some(Fault::PauseAgent(self.rng.below(2), pause)),
                    self.rng.millis(0, 80),
                ),
                _ => (Some(Fault::PauseEtcd(pause)), self.rng.millis(0, 80)),
            }
        } else {
            (None, Duration::ZERO)
        };
        let summary: Vec<String> = plan.iter().map(|(v, id)| format!("{v:?} {id}")).collect();
        self.note(format!(
            "round {round}: {} fault {fault:?} at {at:?}",
            summary.join(", ")
        ));

        let start = Instant::now();
        let mut flights: Vec<InFlight> = plan
            .iter()
            .map(|(verb, id)| InFlight {
                verb: *verb,
                id: id.clone(),
                child: self.spawn(*verb, &self.atts[id]),
                killed: false,
            })
            .collect();
        let mut paused: Option<Paused> = None;
        let mut killed_agent = None;
        if let Some(f) = &fault {
            std::thread::sleep(at.saturating_sub(start.elapsed()));
            match f {
                Fault::KillPlugin(i) => {
                    let fl = &mut flights[*i];
                    // Only if it is still running: a finished call was not
                    // killed mid-call.
                    if fl.child.try_wait().expect("try_wait").is_none() {
                        let _ = fl.child.kill();
                        fl.killed = true;
                        self.count("plugin kills");
                    } else {
                        self.count("plugin kills too late");
                    }
                }
                Fault::KillAgent(n) => {
                    if let Some(pid) = self.lab_state().nodes[*n].agent_pid {
                        self.kill9(pid, "podwire-agent");
                        killed_agent = Some(*n);
                        self.count("agent kills");
                    }
                }
                Fault::PauseAgent(n, d) => {
                    let pid = self.lab_state().nodes[*n].agent_pid;
                    if let Some(pid) = pid.filter(|p| self.is_lab_process(*p, "podwire-agent")) {
                        let _ = kill(Pid::from_raw(pid), Signal::SIGSTOP);
                        paused = Some(Paused(pid));
                        std::thread::sleep(*d);
                        drop(paused.take());
                        self.count("agent pauses");
                    }
                }
                Fault::PauseEtcd(d) => {
                    let pid = self.lab_state().etcd_pid;
                    if let Some(pid) = pid.filter(|p| self.is_lab_process(*p, "etcd")) {
                        let _ = kill(Pid::from_raw(pid), Signal::SIGSTOP);
                        paused = Some(Paused(pid));
                        std::thread::sleep(*d);
                        drop(paused.take());
                        self.count("etcd pauses");
                    }
                }
            }
        }
        drop(paused);
        let faulty = fault
            .as_ref()
            .is_some_and(|f| !matches!(f, Fault::KillPlugin(_)));
        for fl in flights {
            let run = finish_plugin(fl.child, Some(start + PLUGIN_GRACE));
            self.record(round, fl.verb, &fl.id, run, fl.killed, faulty);
        }
        if let Some(n) = killed_agent {
            self.start_agent(n);
        }
    }

    // ---- the books -------------------------------------------------------

    fn agent_call(
        &self,
        node: usize,
        req: &podwire_proto::Request,
    ) -> Option<podwire_proto::Response> {
        podwire_proto::call(
            Path::new(&self.nodes[node].socket),
            req,
            Instant::now() + Duration::from_secs(5),
        )
        .ok()
    }

    fn agent_status(&self, node: usize) -> Option<podwire_proto::StatusInfo> {
        match self.agent_call(node, &podwire_proto::Request::Status) {
            Some(podwire_proto::Response::Status { status }) => Some(status),
            _ => None,
        }
    }

    fn live(&self) -> Vec<&Att> {
        self.atts
            .values()
            .filter(|a| a.state == AttState::Live)
            .collect()
    }

    /// Every invariant of a settled lab; returns what is wrong.
    fn books(&self, phase: &str, baseline: &[Baseline]) -> Vec<String> {
        let mut bad = Vec::new();
        let live = self.live();
        let live_ips: BTreeMap<Ipv4Addr, &Att> = live
            .iter()
            .filter_map(|a| a.ip.map(|ip| (ip, *a)))
            .collect();
        if live_ips.len() != live.len() {
            bad.push(format!(
                "{phase}: live pods share addresses: {:?}",
                live.iter().map(|a| (&a.id, a.ip)).collect::<Vec<_>>()
            ));
        }
        for a in &live {
            let ip = a.ip.expect("live has an address");
            let have = ip_out(&[
                "-n",
                &a.netns.name,
                "-4",
                "-o",
                "addr",
                "show",
                "dev",
                "eth0",
            ]);
            if !have.contains(&format!("inet {ip}/32")) {
                bad.push(format!(
                    "{phase}: live {} does not have {ip} in its namespace: {have:?}",
                    a.id
                ));
            }
            let key = podwire_proto::AttachmentKey {
                network: "podwire".into(),
                container_id: a.id.clone(),
                ifname: "eth0".into(),
            };
            match self.agent_call(a.node, &podwire_proto::Request::Get { key }) {
                Some(podwire_proto::Response::Found {
                    allocation: Some(al),
                }) if al.ip == ip => {}
                other => bad.push(format!(
                    "{phase}: the agent of {} does not list live {} with {ip}: {other:?}",
                    self.nodes[a.node].name, a.id
                )),
            }
        }
        for (n, node) in self.nodes.iter().enumerate() {
            let mine: BTreeMap<&str, Ipv4Addr> = live
                .iter()
                .filter(|a| a.node == n)
                .filter_map(|a| a.ip.map(|ip| (a.id.as_str(), ip)))
                .collect();
            // Host veths: every pod veth names a live attachment of this node.
            for l in ip_out(&["-n", &node.ns, "-d", "-o", "link", "show", "type", "veth"]).lines() {
                let name = l
                    .split(':')
                    .nth(1)
                    .unwrap_or("")
                    .trim()
                    .split('@')
                    .next()
                    .unwrap_or("")
                    .to_string();
                if name.starts_with("eth") {
                    continue; // an ENI
                }
                let owner = l
                    .split("alias podwire podwire ")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next());
                if !owner.is_some_and(|o| mine.contains_key(o)) {
                    bad.push(format!("{phase}: {}: host veth {name} without a live owner (alias owner {owner:?})", node.name));
                }
            }
            // /32 routes: only for live pods (of any node: overlay routes
            // borrowed addresses to their node).
            for r in ip_out(&["-n", &node.ns, "-4", "-o", "route", "show", "table", "all"]).lines()
            {
                if baseline[n].routes.contains(r)
                    || r.starts_with("local ")
                    || r.starts_with("broadcast ")
                    || r.contains(" dev eth")
                {
                    continue;
                }
                let dst = r.split_whitespace().next().unwrap_or("");
                let host = dst.strip_suffix("/32").unwrap_or(dst);
                if let Ok(addr) = host.parse::<Ipv4Addr>() {
                    if !live_ips.contains_key(&addr) {
                        bad.push(format!(
                            "{phase}: {}: route {r:?} for an address no live pod has",
                            node.name
                        ));
                    }
                }
            }
            for r in ip_out(&["-n", &node.ns, "rule"]).lines() {
                if !(r.starts_with("512:") || r.starts_with("1536:")) {
                    continue;
                }
                // `512: from all to A lookup main`, `1536: from A lookup N`.
                let addr = r
                    .split_whitespace()
                    .find_map(|w| w.parse::<Ipv4Addr>().ok());
                if !addr.is_some_and(|a| mine.values().any(|m| *m == a)) {
                    bad.push(format!(
                        "{phase}: {}: rule {r:?} for no live pod of the node",
                        node.name
                    ));
                }
            }
            match self.agent_status(n) {
                Some(s) if s.assigned_ips == mine.len() => {}
                other => bad.push(format!(
                    "{phase}: {}: agent STATUS {other:?}, {} live pods",
                    node.name,
                    mine.len()
                )),
            }
            if !self.overlay {
                let cp = checkpoint(&self.lab.name, &node.name);
                let want: BTreeMap<String, Ipv4Addr> =
                    mine.iter().map(|(k, v)| (k.to_string(), *v)).collect();
                if cp != want {
                    bad.push(format!(
                        "{phase}: {}: checkpoint {cp:?}, live {want:?}",
                        node.name
                    ));
                }
            }
        }
        if self.overlay {
            bad.extend(self.overlay_books(phase));
        } else {
            bad.extend(self.cloud_books(phase));
        }
        bad
    }

    /// The datastore: every attachment handle (in blocks and in the handle
    /// index) belongs to a live attachment, with its address.
    fn overlay_books(&self, phase: &str) -> Vec<String> {
        let mut bad = Vec::new();
        let (blocks, handles) = ipam_view(&self.lab.name);
        let mut seen = BTreeSet::new();
        for (cidr, holders) in &blocks {
            for (ip, h) in holders {
                let podwire_ipam::handle::Handle::Attachment {
                    network,
                    container_id,
                    ifname,
                } = &h.handle
                else {
                    continue;
                };
                let owner = self
                    .atts
                    .get(container_id)
                    .filter(|a| a.state == AttState::Live);
                match owner {
                    Some(a)
                        if network == "podwire"
                            && ifname == "eth0"
                            && a.ip == Some(*ip)
                            && h.node == self.nodes[a.node].name =>
                    {
                        seen.insert(container_id.clone());
                    }
                    _ => bad.push(format!(
                        "{phase}: block {cidr} holds {ip} for {} on {}: no live owner",
                        h.handle, h.node
                    )),
                }
            }
        }
        let attachment_handles = handles
            .iter()
            .filter(|k| k.contains("/handles/attachment/"))
            .count();
        if attachment_handles != self.live().len() || seen.len() != self.live().len() {
            bad.push(format!(
                "{phase}: {attachment_handles} attachment handles and {} allocations in the datastore, {} live pods: {handles:?}",
                seen.len(),
                self.live().len()
            ));
        }
        bad
    }

    /// The cloud: every node's secondary addresses are its agent's pool,
    /// and every assigned address is one of them. The pool manager may be
    /// mid-way, so this waits (bounded) for the two to meet.
    fn cloud_books(&self, phase: &str) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut bad = Vec::new();
            let dir = Path::new("/run/podwire/lab").join(&self.lab.name);
            let cloud = podwire_lab::cloud::load(&dir).expect("cloud.json");
            let st = self.lab_state();
            for (n, node) in self.nodes.iter().enumerate() {
                let instance = st.nodes[n].instance_id.clone();
                let secondaries: BTreeSet<Ipv4Addr> = cloud
                    .instance_enis(&instance)
                    .iter()
                    .flat_map(|e| e.secondary_ips.iter().copied())
                    .collect();
                let status = self.agent_status(n);
                let pool = status.as_ref().map(|s| s.free_ips + s.assigned_ips);
                if pool != Some(secondaries.len()) {
                    bad.push(format!("{phase}: {}: the cloud holds {} secondary addresses, the agent's pool {pool:?} ({status:?})", node.name, secondaries.len()));
                }
                for a in self.live().iter().filter(|a| a.node == n) {
                    if !a.ip.is_some_and(|ip| secondaries.contains(&ip)) {
                        bad.push(format!("{phase}: {}: live {} has {:?}, not a secondary address of its instance", node.name, a.id, a.ip));
                    }
                }
            }
            let detached: Vec<&String> = cloud
                .enis
                .values()
                .filter(|e| e.attachment.is_none() && e.description.contains("podwire"))
                .filter(|e| !self.leaked_enis.contains(&e.id))
                .map(|e| &e.id)
                .collect();
            if !detached.is_empty() {
                // What the agents said about them (create, attach, delete).
                let now: Vec<String> = self
                    .nodes
                    .iter()
                    .flat_map(|n| {
                        let log = dir.join(&n.name).join("agent.log");
                        let log = std::fs::read_to_string(log).unwrap_or_default();
                        log.lines()
                            .map(|l| format!("{}: {l}", n.name))
                            .collect::<Vec<_>>()
                    })
                    .collect();
                let said: Vec<&String> = self
                    .agent_history
                    .iter()
                    .chain(now.iter())
                    .filter(|l| detached.iter().any(|id| l.contains(id.as_str())))
                    .collect();
                bad.push(format!(
                    "{phase}: unattached podwire ENIs: {detached:?} (not deleted by the agent's sweep within the check's 20 s); agent logs: {said:?}"
                ));
            }
            if bad.is_empty() || Instant::now() >= deadline {
                return bad;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn report(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "soak {} seed {} (replay: PODWIRE_SOAK_SEED={})",
            self.lab.name, self.seed, self.seed
        );
        let _ = writeln!(s, "stats {:?}", self.stats);
        let _ = writeln!(s, "last steps:");
        for l in self
            .log
            .iter()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            let _ = writeln!(s, "  {l}");
        }
        let _ = writeln!(s, "{} finding(s):", self.findings.len());
        for f in &self.findings {
            let _ = writeln!(s, "  {f}");
        }
        s
    }
}

/// What a node looked like before the soak.
struct Baseline {
    routes: BTreeSet<String>,
    wiring: String,
}

/// `ip …` output; empty when it fails (a namespace already gone).
fn ip_out(args: &[&str]) -> String {
    std::process::Command::new("ip")
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// The vpc agent's checkpoint: container id → address.
fn checkpoint(lab: &str, node: &str) -> BTreeMap<String, Ipv4Addr> {
    let p = Path::new("/run/podwire/lab")
        .join(lab)
        .join(node)
        .join("state/ipam.json");
    let Ok(bytes) = std::fs::read(&p) else {
        return BTreeMap::new();
    };
    let v: Value = serde_json::from_slice(&bytes).expect("checkpoint json");
    v["allocations"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            (
                a["key"]["container_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                a["ip"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(Ipv4Addr::UNSPECIFIED),
            )
        })
        .collect()
}

type BlockView = BTreeMap<String, BTreeMap<Ipv4Addr, podwire_ipam::block::Holder>>;

/// The overlay IPAM as the lab's datastore holds it: each block's holders by
/// address, and every key of the handle index.
fn ipam_view(lab: &str) -> (BlockView, Vec<String>) {
    let st = podwire_lab::state::LabState::load(lab).expect("lab.json");
    let store = podwire_lab::datastore::lab_store(&st).expect("the lab's datastore");
    let blocks = store
        .list(podwire_ipam::keys::BLOCKS)
        .expect("list blocks")
        .entries
        .into_iter()
        .map(|e| {
            let b: podwire_ipam::block::Block = serde_json::from_slice(&e.value).expect("block");
            let holders = b
                .allocations
                .iter()
                .map(|(o, h)| (b.addr(*o), h.clone()))
                .collect();
            (b.cidr.to_string(), holders)
        })
        .collect();
    let handles = store
        .list(podwire_ipam::keys::HANDLES)
        .expect("list handles")
        .entries
        .into_iter()
        .map(|e| e.key)
        .collect();
    (blocks, handles)
}

fn soak(mode: &str) {
    if !require_root() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let overlay = mode == "overlay";
    let seed = soak_seed();
    let steps = soak_steps();
    let name = if overlay { "t-soako" } else { "t-soakv" };
    eprintln!("soak {mode}: seed {seed}, {steps} rounds (replay: PODWIRE_SOAK_SEED={seed})");
    let t0 = Instant::now();
    let mut rng = Rng(seed ^ if overlay { 0x6f76_6572 } else { 0x7670_6300 });
    let fault_seed = rng.next() % 1_000_000;
    let fault_seed_arg = fault_seed.to_string();
    let mut extra = vec!["--mode", mode, "--nodes", "2"];
    if overlay {
        extra.extend(["--datastore", "etcd"]);
    } else {
        extra.extend([
            "--error-rate",
            "0.1",
            "--throttle-rate",
            "0.1",
            "--fault-seed",
            &fault_seed_arg,
            // An agent killed between detaching an idle ENI and deleting
            // it leaves it unattached; its successor deletes it once the
            // grace is over, and the books below wait 20 s for that.
            "--eni-gc-grace",
            "5",
        ]);
    }
    let lab = Lab::up(name, &extra);
    let st = lab.status();
    let nodes: Vec<NodeInfo> = (0..2)
        .map(|i| NodeInfo {
            name: format!("node-{}", i + 1),
            ns: lab.node_ns(i + 1),
            socket: st["nodes"][i]["agent_socket"]
                .as_str()
                .expect("socket")
                .to_string(),
        })
        .collect();
    let baseline: Vec<Baseline> = nodes
        .iter()
        .map(|n| Baseline {
            routes: ip_out(&["-n", &n.ns, "-4", "-o", "route", "show", "table", "all"])
                .lines()
                .map(str::to_string)
                .collect(),
            wiring: pod_wiring_snapshot(&n.ns),
        })
        .collect();
    let ipam_before = overlay.then(|| ipam_view(name));
    let mut s = Soak {
        atts: BTreeMap::new(),
        lab,
        overlay,
        nodes,
        rng,
        seed,
        next_id: 0,
        log: Vec::new(),
        findings: Vec::new(),
        stats: BTreeMap::new(),
        agent_exits_on_transient_ec2: BTreeSet::new(),
        agent_history: Vec::new(),
        cloud_rates: (!overlay).then_some((0.1, 0.1, fault_seed)),
        leaked_enis: BTreeSet::new(),
    };
    let t_up = t0.elapsed();

    for round in 0..steps {
        s.round(round);
        // Now and then a quiet moment, with the books checked in whatever
        // state the pool is in; then the faults go on.
        if round % CHECKPOINT_EVERY == CHECKPOINT_EVERY - 1 && round + 1 < steps {
            s.settle(&format!("checkpoint after round {round}"), &baseline);
            s.restore_cloud_faults();
        }
    }
    let t_rounds = t0.elapsed();

    // The runtime's clean-up, with the faults over, and the books.
    s.settle("settled", &baseline);
    let live: Vec<String> = s.live().iter().map(|a| a.id.clone()).collect();
    let t_settled = t0.elapsed();

    // Every pod goes: the nodes and the IPAM look as before the soak.
    s.note(format!("removing the {} live pods", live.len()));
    for id in &live {
        let child = s.spawn(Verb::Del, &s.atts[id]);
        let run = finish_plugin(child, Some(Instant::now() + PLUGIN_GRACE));
        if run.as_ref().is_some_and(|r| r.ok) {
            s.atts.remove(id);
        } else {
            s.finding(format!(
                "removal: DEL of {id} failed: {:?}",
                run.map(|r| r.stdout)
            ));
        }
    }
    for n in 0..2 {
        if !s.gc(n).is_some_and(|r| r.ok) {
            s.finding(format!("removal: GC on node-{} failed", n + 1));
        }
    }
    for b in s.books("empty", &baseline) {
        s.finding(b);
    }
    for (n, b) in baseline.iter().enumerate() {
        let now = pod_wiring_snapshot(&s.nodes[n].ns);
        if now != b.wiring {
            s.finding(format!(
                "empty: node-{} is not as before the soak:\nbefore {}\nafter  {now}",
                n + 1,
                b.wiring
            ));
        }
    }
    if let Some((blocks_before, handles_before)) = &ipam_before {
        let (blocks, handles) = ipam_view(name);
        let used = |v: &BlockView| -> BTreeMap<String, String> {
            v.iter()
                .filter(|(_, h)| !h.is_empty())
                .map(|(c, h)| (c.clone(), format!("{h:?}")))
                .collect()
        };
        if used(&blocks) != used(blocks_before) || &handles != handles_before {
            s.finding(format!(
                "empty: the IPAM is not as before:\nblocks before {:?}\nblocks after  {:?}\nhandles before {handles_before:?}\nhandles after  {handles:?}",
                used(blocks_before),
                used(&blocks)
            ));
        }
    }
    let t_end = t0.elapsed();
    let summary = format!(
        "soak {mode} seed {seed}: up {t_up:.1?}, {steps} rounds {:.1?}, settled+books {:.1?}, empty+books {:.1?}, total {t_end:.1?}; {:?}",
        t_rounds - t_up,
        t_settled - t_rounds,
        t_end - t_settled,
        s.stats
    );
    eprintln!("{summary}");
    assert!(s.findings.is_empty(), "{}", s.report());
}

#[test]
fn soak_vpc_with_agent_kills_plugin_kills_and_cloud_errors() {
    soak("vpc");
}

#[test]
fn soak_overlay_on_etcd_with_agent_kills_plugin_kills_and_etcd_pauses() {
    soak("overlay");
}
