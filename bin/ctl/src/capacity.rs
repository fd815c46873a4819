//! `podwirectl capacity`: max pods per instance type, a subnet planner for
//! a node group, and the live figures of running agents. The arithmetic is
//! in the podwire-capacity crate; this module asks the questions and
//! fetches the agents' `/v1/state`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use ipnet::Ipv4Net;
use podwire_capacity::{instance, live, plan, warm::WarmFlags};
use podwire_cloud::LimitsTable;
use podwire_lab::{ops, procs, state::LabState};

/// How long one agent may take to answer.
const AGENT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("question").required(true).args(["instance_type", "live"])))]
pub struct CapacityArgs {
    /// The EC2 instance type (e.g. m5.large): its max pods, or the node
    /// type of the group with --subnet.
    #[arg(long)]
    instance_type: Option<String>,
    /// Prefix delegation (/28 prefixes instead of secondary IPs).
    #[arg(long, conflicts_with = "live")]
    prefix_delegation: bool,
    /// A node group in this subnet (needs --instance-type and --nodes).
    #[arg(long, requires_all = ["instance_type", "nodes"])]
    subnet: Option<Ipv4Net>,
    /// Nodes in the group.
    #[arg(long, requires = "subnet")]
    nodes: Option<u32>,
    /// WARM_ENI_TARGET (default 1 with secondary IPs).
    #[arg(long, requires = "subnet", conflicts_with_all = ["warm_ip_target", "minimum_ip_target", "warm_prefix_target"])]
    warm_eni_target: Option<u32>,
    /// WARM_IP_TARGET (overrides the ENI and prefix targets).
    #[arg(long, requires = "subnet", conflicts_with = "warm_prefix_target")]
    warm_ip_target: Option<u32>,
    /// MINIMUM_IP_TARGET (with or without --warm-ip-target).
    #[arg(long, requires = "subnet", conflicts_with = "warm_prefix_target")]
    minimum_ip_target: Option<u32>,
    /// WARM_PREFIX_TARGET (default 1 with prefix delegation).
    #[arg(long, requires_all = ["subnet", "prefix_delegation"])]
    warm_prefix_target: Option<u32>,
    /// The running agents' figures: the lab's (--lab), the given agents'
    /// (--agent), or this node's agent (http://127.0.0.1:61678).
    #[arg(long, conflicts_with_all = ["instance_type", "subnet"])]
    live: bool,
    /// With --live: every node of this lab (`--name` works too).
    #[arg(
        long,
        visible_alias = "name",
        requires = "live",
        conflicts_with = "agent"
    )]
    lab: Option<String>,
    /// With --live: an agent's metrics endpoint, http://IP:PORT (repeat
    /// for several).
    #[arg(long, requires = "live")]
    agent: Vec<String>,
    /// JSON instead of text (every field in docs/CAPACITY.md).
    #[arg(long)]
    json: bool,
}

pub fn run(a: CapacityArgs) -> anyhow::Result<ExitCode> {
    if a.live {
        return live(&a);
    }
    let table = LimitsTable::builtin().context("the built-in instance tables")?;
    let ty = a.instance_type.as_deref().unwrap_or_default();
    let mut code = ExitCode::SUCCESS;
    let out = match (a.subnet, a.nodes) {
        (Some(subnet), Some(nodes)) => {
            let r = plan::plan(
                &table,
                &plan::PlanInput {
                    subnet,
                    instance_type: ty,
                    nodes,
                    prefix_delegation: a.prefix_delegation,
                    warm: WarmFlags {
                        warm_eni_target: a.warm_eni_target,
                        warm_ip_target: a.warm_ip_target,
                        minimum_ip_target: a.minimum_ip_target,
                        warm_prefix_target: a.warm_prefix_target,
                    },
                },
            )?;
            // A group that cannot even start is a failed plan (docs/CAPACITY.md).
            if !r.fits() {
                code = ExitCode::FAILURE;
            }
            if a.json {
                serde_json::to_string_pretty(&r)? + "\n"
            } else {
                plan::render(&r)
            }
        }
        _ => {
            let r = instance::report(&table, ty, a.prefix_delegation)?;
            if a.json {
                serde_json::to_string_pretty(&r)? + "\n"
            } else {
                instance::render(&r)
            }
        }
    };
    print!("{out}");
    Ok(code)
}

/// `/v1/state` of the agent at `endpoint`: its body, or why there is none.
fn fetch(endpoint: &str) -> Result<String, String> {
    // The lab crate files a failed GET under "lab state"; no lab was asked.
    let a = ops::http_get(endpoint, "/v1/state", AGENT_TIMEOUT).map_err(|e| match e {
        podwire_lab::LabError::State(m) => m,
        e => e.to_string(),
    })?;
    if a.status != 200 {
        return Err(format!(
            "{endpoint}/v1/state answered {}: {}",
            a.status,
            a.body.trim()
        ));
    }
    Ok(a.body)
}

/// Every node of a lab: its agent serves on loopback inside the node's
/// own namespace, so the request is made from there.
fn lab_answers(lab: &str) -> anyhow::Result<Vec<(String, Result<String, String>)>> {
    let st = LabState::load(lab)?;
    let endpoint = format!("http://{}", ops::AGENT_METRICS_ADDRESS);
    Ok(st
        .nodes
        .iter()
        .map(|n| {
            let ep = endpoint.clone();
            let body =
                podwire_netlink::netns::run_in(&procs::netns_path(&n.netns), move || fetch(&ep))
                    .map_err(|e| format!("enter {}: {e}", n.netns))
                    .and_then(|r| r);
            (n.name.clone(), body)
        })
        .collect())
}

/// Neither --lab nor --agent, and this node's agent does not answer: say
/// what was tried and what else to ask.
fn no_local_agent(endpoint: &str, e: &str) -> String {
    format!(
        "no answer from this node's agent ({e}); without --lab or --agent, \
         --live asks {endpoint}: give --lab NAME for a lab's agents, or --agent http://IP:PORT"
    )
}

fn live(a: &CapacityArgs) -> anyhow::Result<ExitCode> {
    let answers = match (&a.lab, a.agent.as_slice()) {
        (Some(lab), _) => lab_answers(lab)?,
        (None, []) => {
            let ep = format!("http://{}", ops::AGENT_METRICS_ADDRESS);
            let got = fetch(&ep).map_err(|e| no_local_agent(&ep, &e));
            vec![(ep, got)]
        }
        (None, agents) => agents.iter().map(|ep| (ep.clone(), fetch(ep))).collect(),
    };
    let r = live::report(answers);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", live::render(&r));
    }
    // Warnings are figures; a node that did not answer is a failure.
    Ok(if r.has_errors() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    /// Newuser F3: `--name` (the lab commands' spelling) was refused.
    #[test]
    fn name_is_an_alias_of_lab() {
        for args in [
            &["capacity", "--live", "--name", "nu1"][..],
            &["policy", "apply", "-f", "p.yaml", "--name", "nu1"],
            &["policy", "list", "--name", "nu1"],
            &["policy", "delete", "x/p", "--name", "nu1"],
            &["audit", "--name", "nu1"],
        ] {
            let r = crate::Cli::try_parse_from(
                std::iter::once("podwirectl").chain(args.iter().copied()),
            );
            assert!(r.is_ok(), "{args:?}: {r:?}");
        }
        let cli = crate::Cli::try_parse_from(["podwirectl", "capacity", "--live", "--name", "nu1"])
            .expect("parses");
        let crate::Top::Capacity(a) = cli.cmd else {
            panic!("not capacity");
        };
        assert_eq!(a.lab.as_deref(), Some("nu1"));
    }

    /// Newuser F8: `capacity --live` alone said "lab state" and no next step.
    #[test]
    fn live_without_a_source_says_what_it_tried() {
        let m = super::no_local_agent("http://127.0.0.1:61678", "GET …: Connection refused");
        assert!(m.contains("asks http://127.0.0.1:61678"), "{m}");
        assert!(
            m.contains("--lab NAME") && m.contains("--agent http://IP:PORT"),
            "{m}"
        );
        assert!(!m.contains("lab state"), "{m}");
    }
}
