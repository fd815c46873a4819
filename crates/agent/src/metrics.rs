//! The agent's Prometheus metrics. One [`Metrics`] per agent, shared by the
//! socket server, the mode's handlers and its background loop; scraped as
//! text by [`crate::endpoint`]. The names are listed in docs/METRICS.md and
//! are stable: dashboards and the capacity planner read them.
//!
//! Counters and histograms move where the work happens; the address and
//! ENI gauges are set from the agent's state at each scrape
//! ([`Metrics::render`]), so they can never drift from what the agent holds.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use serde::Serialize;

use crate::introspect::NodeState;

/// Latency buckets (seconds): a cached ADD takes a millisecond, one that
/// waits for the cloud seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How many recent failures `/v1/state` shows.
pub const LAST_ERRORS: usize = 16;
/// A failure's message is cut to this many bytes (cloud answers can be long).
const ERROR_MESSAGE_MAX: usize = 512;

/// The EC2 error codes that mean "slow down" (counted apart from errors).
const THROTTLE_CODES: [&str; 3] = ["RequestLimitExceeded", "Throttling", "ThrottlingException"];

/// One failure the agent met, for `/v1/state`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LastError {
    /// What failed (`ec2:AssignPrivateIpAddresses`, `datastore:list`, …).
    pub what: String,
    pub message: String,
    /// Seconds since the Unix epoch.
    pub at: u64,
}

/// Every metric of the agent.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    cni_requests: IntCounterVec,
    cni_duration: HistogramVec,
    no_address: IntCounterVec,
    addresses: IntGaugeVec,
    enis_attached: IntGauge,
    enis_allowed: IntGauge,
    ready: IntGauge,
    ec2_requests: IntCounterVec,
    ec2_duration: HistogramVec,
    imds_errors: IntCounterVec,
    datastore_duration: HistogramVec,
    datastore_errors: IntCounterVec,
    peers: IntGauge,
    convergence_lag: HistogramVec,
    reconcile_runs: IntCounterVec,
    reconcile_changes: IntCounterVec,
    pool_lost: IntCounter,
    capacity_ips: IntGaugeVec,
    capacity_enis: IntGaugeVec,
    capacity_max_pods: IntGauge,
    capacity_prefixes: IntGauge,
    subnet_available: IntGauge,
    last_errors: Mutex<VecDeque<LastError>>,
}

/// Registers `m` and hands it back. The names are fixed strings of this
/// module, so a registration failure is a bug caught by the unit tests;
/// should one happen anyway, the metric still works, it is only not scraped.
fn reg<M: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: M) -> M {
    if let Err(e) = r.register(Box::new(m.clone())) {
        tracing::error!("metric not registered: {e}");
    }
    m
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    // Only fails on invalid names/labels: fixed strings of this module.
    match IntCounterVec::new(Opts::new(name, help), labels) {
        Ok(m) => reg(r, m),
        Err(e) => unreachable_metric(name, e),
    }
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    match IntGaugeVec::new(Opts::new(name, help), labels) {
        Ok(m) => reg(r, m),
        Err(e) => unreachable_metric(name, e),
    }
}

fn plain_counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    match IntCounter::new(name, help) {
        Ok(m) => reg(r, m),
        Err(e) => unreachable_metric(name, e),
    }
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    match IntGauge::new(name, help) {
        Ok(m) => reg(r, m),
        Err(e) => unreachable_metric(name, e),
    }
}

fn histogram(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
    match HistogramVec::new(opts, labels) {
        Ok(m) => reg(r, m),
        Err(e) => unreachable_metric(name, e),
    }
}

#[allow(clippy::panic)]
fn unreachable_metric(name: &str, e: prometheus::Error) -> ! {
    // The definitions are constants; `definitions_are_valid` exercises all.
    panic!("metric {name} is defined wrongly: {e}")
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The `result` label of an answer: `ok` or the error kind's wire name.
pub fn result_label(resp: &podwire_proto::Response) -> String {
    match resp {
        podwire_proto::Response::Error { kind, .. } => serde_json::to_value(kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| "error".into()),
        _ => "ok".into(),
    }
}

/// The `verb` label of a request.
pub fn verb_label(req: &podwire_proto::Request) -> &'static str {
    match req {
        podwire_proto::Request::Add(_) => "add",
        podwire_proto::Request::Del { .. } => "del",
        podwire_proto::Request::Get { .. } => "get",
        podwire_proto::Request::Status => "status",
        podwire_proto::Request::Gc { .. } => "gc",
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        Metrics {
            cni_requests: counter(
                &r,
                "podwire_cni_requests_total",
                "Plugin requests answered, by verb and result (ok or the error kind).",
                &["verb", "result"],
            ),
            cni_duration: histogram(
                &r,
                "podwire_cni_request_duration_seconds",
                "Time the agent took to answer a plugin request, by verb and result.",
                &["verb", "result"],
            ),
            no_address: counter(
                &r,
                "podwire_no_address_available_total",
                "ADDs that found no free address when they arrived (they waited or failed), by outcome.",
                &["outcome"],
            ),
            addresses: gauge_vec(
                &r,
                "podwire_addresses",
                "Pod addresses per ENI (vpc) or block (overlay), by state: total, assigned, free, cooling.",
                &["scope", "id", "state"],
            ),
            enis_attached: gauge(&r, "podwire_enis_attached", "ENIs attached to this instance (vpc)."),
            enis_allowed: gauge(
                &r,
                "podwire_enis_allowed",
                "ENIs the instance type allows (vpc).",
            ),
            ready: gauge(
                &r,
                "podwire_agent_ready",
                "1 when the agent can serve an ADD now, else 0 (what /healthz answers).",
            ),
            ec2_requests: counter(
                &r,
                "podwire_ec2_requests_total",
                "EC2 API calls by action and result: ok, error, throttled.",
                &["action", "result"],
            ),
            ec2_duration: histogram(
                &r,
                "podwire_ec2_request_duration_seconds",
                "EC2 API call latency by action.",
                &["action"],
            ),
            imds_errors: counter(
                &r,
                "podwire_imds_errors_total",
                "Failed instance metadata (IMDS) requests, by call.",
                &["call"],
            ),
            datastore_duration: histogram(
                &r,
                "podwire_datastore_operation_duration_seconds",
                "Datastore operation latency (overlay), by operation.",
                &["op"],
            ),
            datastore_errors: counter(
                &r,
                "podwire_datastore_errors_total",
                "Failed datastore operations (overlay), by operation.",
                &["op"],
            ),
            peers: gauge(
                &r,
                "podwire_overlay_peers",
                "Other nodes programmed into this node's VXLAN device (overlay).",
            ),
            convergence_lag: histogram(
                &r,
                "podwire_overlay_convergence_lag_seconds",
                "From a datastore change reaching the agent to the kernel matching it (overlay), by kind: delta, resync.",
                &["kind"],
            ),
            reconcile_runs: counter(
                &r,
                "podwire_reconcile_runs_total",
                "Runs of the background loops, by loop: pool, sweep (vpc); resync, delta, block_gc (overlay).",
                &["loop"],
            ),
            reconcile_changes: counter(
                &r,
                "podwire_reconcile_changes_total",
                "What the background loops changed, by loop and change.",
                &["loop", "change"],
            ),
            pool_lost: plain_counter(
                &r,
                "podwire_pool_lost_addresses_total",
                "Addresses pods held that the cloud no longer lists (or that are an ENI's primary): those pods have no working address (vpc).",
            ),
            capacity_ips: gauge_vec(
                &r,
                "podwire_capacity_ips",
                "Pod addresses by state: in_use (held by pods), warm (in the pool, not held), possible (still obtainable within the instance's limits) (vpc).",
                &["state"],
            ),
            capacity_enis: gauge_vec(
                &r,
                "podwire_capacity_enis",
                "ENIs by state: used (attached), allowed (the instance type's limit) (vpc).",
                &["state"],
            ),
            capacity_max_pods: gauge(
                &r,
                "podwire_capacity_max_pods",
                "Pods this node can hold: ENIs x (IPv4 per ENI - 1) (x 16 with prefixes, capped) + 2 (vpc).",
            ),
            capacity_prefixes: gauge(
                &r,
                "podwire_capacity_prefixes",
                "/28 prefixes the node holds (vpc, prefix delegation).",
            ),
            subnet_available: gauge(
                &r,
                "podwire_subnet_available_ips",
                "Free addresses in the node's subnet at the last reconcile (DescribeSubnets) (vpc).",
            ),
            last_errors: Mutex::new(VecDeque::new()),
            registry: r,
        }
    }

    /// One plugin request answered.
    pub fn cni_request(&self, verb: &str, result: &str, took: Duration) {
        self.cni_requests.with_label_values(&[verb, result]).inc();
        self.cni_duration
            .with_label_values(&[verb, result])
            .observe(secs(took));
    }

    /// An ADD found no free address (`outcome`: waited, exhausted, timed_out).
    pub fn no_address(&self, outcome: &str) {
        self.no_address.with_label_values(&[outcome]).inc();
    }

    /// Runs one EC2 call, counting and timing it by `action`.
    pub fn ec2<T>(
        &self,
        action: &str,
        call: impl FnOnce() -> Result<T, podwire_cloud::Ec2Error>,
    ) -> Result<T, podwire_cloud::Ec2Error> {
        let started = Instant::now();
        let r = call();
        self.ec2_duration
            .with_label_values(&[action])
            .observe(secs(started.elapsed()));
        let result = match &r {
            Ok(_) => "ok",
            Err(e) if e.code().is_some_and(|c| THROTTLE_CODES.contains(&c)) => "throttled",
            Err(_) => "error",
        };
        self.ec2_requests.with_label_values(&[action, result]).inc();
        if let Err(e) = &r {
            self.note_error(&format!("ec2:{action}"), &e.to_string());
        }
        r
    }

    /// Addresses pods held that the cloud no longer lists.
    pub fn lost_addresses(&self, n: u64) {
        self.pool_lost.inc_by(n);
    }

    /// Runs one IMDS call, counting its failure by `call`.
    pub fn imds<T, E: std::fmt::Display>(
        &self,
        call_name: &str,
        call: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        let r = call();
        if let Err(e) = &r {
            self.imds_errors.with_label_values(&[call_name]).inc();
            self.note_error(&format!("imds:{call_name}"), &e.to_string());
        }
        r
    }

    /// Runs one datastore operation (a store call or an IPAM call that goes
    /// to the store), timing it and counting its failure by `op`.
    pub fn datastore<T, E: std::fmt::Display>(
        &self,
        op: &str,
        call: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        let started = Instant::now();
        let r = call();
        self.datastore_duration
            .with_label_values(&[op])
            .observe(secs(started.elapsed()));
        if let Err(e) = &r {
            self.datastore_errors.with_label_values(&[op]).inc();
            self.note_error(&format!("datastore:{op}"), &e.to_string());
        }
        r
    }

    /// A datastore failure whose operation was timed elsewhere (an
    /// error arriving on a watch).
    pub fn datastore_error(&self, op: &str, message: &str) {
        self.datastore_errors.with_label_values(&[op]).inc();
        self.note_error(&format!("datastore:{op}"), message);
    }

    /// One run of a background loop and what it changed.
    pub fn reconcile(&self, loop_name: &str, changes: &[(&str, u64)]) {
        self.reconcile_runs.with_label_values(&[loop_name]).inc();
        for (change, n) in changes {
            if *n > 0 {
                self.reconcile_changes
                    .with_label_values(&[loop_name, change])
                    .inc_by(*n);
            }
        }
    }

    /// overlay: the kernel now matches a change first seen `lag` ago.
    pub fn converged(&self, kind: &str, lag: Duration, peers: usize) {
        self.convergence_lag
            .with_label_values(&[kind])
            .observe(secs(lag));
        self.peers.set(i64::try_from(peers).unwrap_or(i64::MAX));
    }

    /// Remembers a failure for `/v1/state` (the last [`LAST_ERRORS`]).
    pub fn note_error(&self, what: &str, message: &str) {
        let mut message = message.to_string();
        if message.len() > ERROR_MESSAGE_MAX {
            let mut cut = ERROR_MESSAGE_MAX;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let mut q = self.last_errors.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() == LAST_ERRORS {
            q.pop_front();
        }
        q.push_back(LastError {
            what: what.to_string(),
            message,
            at: now_unix(),
        });
    }

    /// The remembered failures, oldest first.
    pub fn last_errors(&self) -> Vec<LastError> {
        self.last_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Sets the gauges from `state` and renders every metric as
    /// Prometheus text (format 0.0.4).
    pub fn render(&self, state: &NodeState) -> String {
        self.set_gauges(state);
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!("encoding metrics: {e}");
        }
        String::from_utf8(out).unwrap_or_default()
    }

    fn set_gauges(&self, s: &NodeState) {
        let n = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        // ENIs and blocks come and go: start from nothing each scrape.
        self.addresses.reset();
        for e in &s.enis {
            let c = e.counts();
            for (state, v) in c.labelled() {
                self.addresses
                    .with_label_values(&["eni", &e.id, state])
                    .set(n(v));
            }
        }
        for b in &s.blocks {
            for (state, v) in b.counts.labelled() {
                self.addresses
                    .with_label_values(&["block", &b.cidr, state])
                    .set(n(v));
            }
        }
        if let Some(limit) = s.eni_limit {
            self.enis_attached.set(n(s.enis.len()));
            self.enis_allowed.set(i64::from(limit));
        }
        self.ready.set(i64::from(s.ready));
        if let Some(c) = &s.capacity {
            for (state, v) in [
                ("in_use", c.ips_in_use),
                ("warm", c.ips_warm),
                ("possible", c.ips_possible),
            ] {
                self.capacity_ips
                    .with_label_values(&[state])
                    .set(i64::from(v));
            }
            self.capacity_enis
                .with_label_values(&["used"])
                .set(i64::from(c.enis_used));
            self.capacity_enis
                .with_label_values(&["allowed"])
                .set(i64::from(c.enis_allowed));
            self.capacity_max_pods.set(i64::from(c.max_pods));
            self.capacity_prefixes.set(i64::from(c.prefixes));
            if let Some(sub) = &c.subnet {
                self.subnet_available.set(i64::from(sub.available));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_are_valid_and_names_follow_prometheus_conventions() {
        let m = Metrics::new();
        // Touch every vector once so each family is gathered.
        m.cni_request("add", "ok", Duration::from_millis(3));
        m.no_address("waited");
        let _ = m.ec2("DescribeNetworkInterfaces", || {
            Ok::<_, podwire_cloud::Ec2Error>(())
        });
        let _ = m.imds("token", || Err::<(), _>("refused"));
        let _ = m.datastore("list", || Ok::<_, String>(()));
        m.datastore_error("watch", "gone");
        m.reconcile("pool", &[("assigned", 2)]);
        m.converged("delta", Duration::from_millis(5), 2);
        let text = m.render(&NodeState::default());
        for fam in m.registry.gather() {
            let name = fam.name();
            assert!(name.starts_with("podwire_"), "{name}");
            match fam.get_field_type() {
                prometheus::proto::MetricType::COUNTER => {
                    assert!(name.ends_with("_total"), "{name}")
                }
                prometheus::proto::MetricType::HISTOGRAM => {
                    assert!(name.ends_with("_seconds"), "{name}")
                }
                _ => assert!(!name.ends_with("_total"), "{name}"),
            }
        }
        assert!(text.contains("podwire_cni_requests_total{result=\"ok\",verb=\"add\"} 1"));
        assert!(
            text.contains("podwire_reconcile_changes_total{change=\"assigned\",loop=\"pool\"} 2")
        );
    }

    #[test]
    fn every_metric_is_documented() {
        let doc = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/METRICS.md"),
        )
        .expect("docs/METRICS.md");
        let m = Metrics::new();
        m.cni_request("add", "ok", Duration::ZERO);
        m.no_address("waited");
        let _ = m.ec2("X", || Ok::<_, podwire_cloud::Ec2Error>(()));
        let _ = m.imds("x", || Err::<(), _>("x"));
        let _ = m.datastore("x", || Ok::<_, String>(()));
        m.reconcile("x", &[("x", 1)]);
        m.converged("x", Duration::ZERO, 0);
        m.lost_addresses(1);
        let st = NodeState {
            eni_limit: Some(3),
            enis: vec![crate::introspect::EniState::default()],
            capacity: Some(crate::introspect::Capacity {
                prefix_delegation: false,
                max_pods: 29,
                ips_in_use: 1,
                ips_warm: 2,
                ips_possible: 3,
                enis_used: 1,
                enis_allowed: 3,
                prefixes: 0,
                subnet: Some(crate::introspect::SubnetCapacity {
                    id: "subnet-1".into(),
                    cidr: "10.0.0.0/20".parse().expect("cidr"),
                    available: 4000,
                }),
            }),
            ..NodeState::default()
        };
        let _ = m.render(&st);
        for fam in m.registry.gather() {
            let row = format!("| `{}` |", fam.name());
            assert!(doc.contains(&row), "docs/METRICS.md has no row {row}");
        }
    }

    #[test]
    fn throttling_is_counted_apart_from_errors() {
        let m = Metrics::new();
        let api = |code: &str| podwire_cloud::Ec2Error::Api {
            action: "AssignPrivateIpAddresses".into(),
            code: code.into(),
            message: "m".into(),
            status: 400,
        };
        let _ = m.ec2("AssignPrivateIpAddresses", || {
            Err::<(), _>(api("RequestLimitExceeded"))
        });
        let _ = m.ec2("AssignPrivateIpAddresses", || {
            Err::<(), _>(api("InvalidParameterValue"))
        });
        let _ = m.ec2("AssignPrivateIpAddresses", || Ok(()));
        let get = |r: &str| {
            m.ec2_requests
                .with_label_values(&["AssignPrivateIpAddresses", r])
                .get()
        };
        assert_eq!((get("ok"), get("error"), get("throttled")), (1, 1, 1));
        let errs = m.last_errors();
        assert_eq!(errs.len(), 2);
        assert_eq!(errs[0].what, "ec2:AssignPrivateIpAddresses");
    }

    #[test]
    fn last_errors_are_bounded_and_cut() {
        let m = Metrics::new();
        for i in 0..(LAST_ERRORS + 5) {
            m.note_error("x", &format!("{i}{}", "é".repeat(1000)));
        }
        let errs = m.last_errors();
        assert_eq!(errs.len(), LAST_ERRORS);
        assert!(errs[0].message.starts_with("5"), "oldest kept is #5");
        assert!(errs
            .iter()
            .all(|e| e.message.len() <= ERROR_MESSAGE_MAX + 3));
    }
}
