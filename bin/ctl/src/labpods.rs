//! `lab namespace …`, `lab pod label`, `lab probe` and `lab
//! external-pod-access`: the lab's Kubernetes metadata, its reachability
//! matrix and its agents' posture.

use std::time::Duration;

use clap::Subcommand;
use podwire_lab::kube;
use podwire_lab::names;
use podwire_lab::ops;
use podwire_lab::reach::{self, ProbeOptions};
use podwire_lab::state::{ExternalPodAccess, LabState};

#[derive(Debug, Subcommand)]
pub enum NamespaceCmd {
    /// Create a namespace (it always carries kubernetes.io/metadata.name=NS).
    Add {
        #[arg(long, default_value = names::DEFAULT_LAB)]
        name: String,
        namespace: String,
        /// Labels: k=v,k2=v2.
        #[arg(long, default_value = "")]
        labels: String,
    },
    /// Change a namespace's labels: k=v adds or changes, k- removes.
    Label {
        #[arg(long, default_value = names::DEFAULT_LAB)]
        name: String,
        namespace: String,
        #[arg(required = true)]
        changes: Vec<String>,
    },
    /// Delete a namespace (refused while pods are in it): its record goes.
    Del {
        #[arg(long, default_value = names::DEFAULT_LAB)]
        name: String,
        namespace: String,
    },
}

fn print_labels(what: &str, labels: &podwire_cluster::records::Labels) {
    let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("{what}  {}", l.join(","));
}

pub fn namespace(cmd: NamespaceCmd) -> anyhow::Result<()> {
    match cmd {
        NamespaceCmd::Add {
            name,
            namespace,
            labels,
        } => {
            let l = ops::namespace_add(&name, &namespace, &kube::parse_labels(&labels)?)?;
            print_labels(&namespace, &l);
        }
        NamespaceCmd::Label {
            name,
            namespace,
            changes,
        } => {
            let edits = kube::parse_label_edits(&changes)?;
            let l = ops::namespace_label(&name, &namespace, &edits)?;
            print_labels(&namespace, &l);
        }
        NamespaceCmd::Del { name, namespace } => {
            ops::namespace_del(&name, &namespace)?;
            println!("lab {name}: namespace {namespace} deleted");
        }
    }
    Ok(())
}

/// `lab pod add`'s arguments past the name and node.
pub fn pod_spec(
    pod: &str,
    node: &str,
    namespace: Option<&str>,
    labels: &str,
    ports: &[String],
    http: bool,
) -> anyhow::Result<ops::PodSpec> {
    // NS/NAME or NAME with --namespace (default: default), not both.
    let (ns, name) = match (pod.split_once('/'), namespace) {
        (Some(_), Some(_)) => {
            anyhow::bail!("give the namespace as NS/NAME or with --namespace, not both")
        }
        (Some((ns, name)), None) => (ns, name),
        (None, ns) => (ns.unwrap_or(names::DEFAULT_NAMESPACE), pod),
    };
    Ok(ops::PodSpec {
        name: name.into(),
        namespace: ns.into(),
        node: node.into(),
        labels: kube::parse_labels(labels)?,
        ports: kube::pod_ports(ports, http)?,
    })
}

/// A pod argument: NS/NAME, or NAME with --namespace folded in as NS/NAME.
pub fn pod_arg(pod: &str, namespace: Option<&str>) -> anyhow::Result<String> {
    Ok(match (pod.contains('/'), namespace) {
        (true, Some(_)) => {
            anyhow::bail!("give the namespace as NS/NAME or with --namespace, not both")
        }
        (false, Some(ns)) => format!("{ns}/{pod}"),
        _ => pod.to_string(),
    })
}

/// `lab pod label NAME [--namespace NS] k=v … k-`.
pub fn pod_label(
    lab: &str,
    pod: &str,
    namespace: Option<&str>,
    changes: &[String],
) -> anyhow::Result<()> {
    let arg = pod_arg(pod, namespace)?;
    let edits = kube::parse_label_edits(changes)?;
    let rec = ops::pod_label(lab, &arg, &edits)?;
    print_labels(&rec.key(), &rec.labels);
    Ok(())
}

/// `lab probe`: prints the matrix; exit status 0 whatever it shows (it is
/// a measurement, not a test).
pub fn probe(lab: &str, port: u16, timeout_ms: u64, json: bool) -> anyhow::Result<()> {
    let st = LabState::load(lab)?;
    let m = reach::probe_all(
        &st,
        ProbeOptions {
            port,
            timeout: Duration::from_millis(timeout_ms.clamp(50, 10_000)),
            ..Default::default()
        },
    )?;
    if json {
        println!("{}", serde_json::to_string_pretty(&m)?);
    } else {
        print!("{}", reach::format_matrix(&m));
    }
    Ok(())
}

pub fn external_pod_access(lab: &str, access: ExternalPodAccess) -> anyhow::Result<()> {
    let restarted = ops::set_external_pod_access(lab, access)?;
    println!(
        "lab {lab}: external pod access {access}; agents restarted on {}",
        if restarted.is_empty() {
            "no node (none running)".to_string()
        } else {
            restarted.join(", ")
        }
    );
    Ok(())
}

/// clap's parser for [`ExternalPodAccess`].
pub fn parse_access(s: &str) -> Result<ExternalPodAccess, String> {
    s.parse()
        .map_err(|e: podwire_cluster::ParseAccessError| e.to_string())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    fn parses(args: &[&str]) -> bool {
        crate::Cli::try_parse_from(std::iter::once("podwirectl").chain(args.iter().copied()))
            .is_ok()
    }

    /// Newuser F4: `lab pod del d --namespace y` was refused (and the tip
    /// pointed at --name, the lab's name).
    #[test]
    fn pod_del_takes_a_namespace() {
        let cli = crate::Cli::try_parse_from([
            "podwirectl",
            "lab",
            "pod",
            "del",
            "d",
            "--namespace",
            "y",
            "--name",
            "nu2",
        ])
        .expect("parses");
        let crate::Top::Lab {
            cmd:
                crate::LabCmd::Pod {
                    cmd:
                        crate::PodCmd::Del {
                            name,
                            pod,
                            namespace,
                        },
                },
        } = cli.cmd
        else {
            panic!("not lab pod del");
        };
        assert_eq!(name, "nu2");
        assert_eq!(
            super::pod_arg(&pod, namespace.as_deref()).expect("arg"),
            "y/d"
        );
        assert_eq!(super::pod_arg("y/d", None).expect("arg"), "y/d");
        assert_eq!(super::pod_arg("d", None).expect("arg"), "d");
        assert!(super::pod_arg("y/d", Some("y")).is_err());
    }

    /// Newuser F11: no `lab namespace del`.
    #[test]
    fn namespace_del_parses() {
        assert!(parses(&["lab", "namespace", "del", "x", "--name", "t"]));
        assert!(!parses(&["lab", "namespace", "del"]));
    }

    #[test]
    fn label_changes_leave_the_lab_flag_to_the_lab() {
        // `--name` after the changes is the lab's name, not a change.
        for cmd in [
            &[
                "lab",
                "namespace",
                "label",
                "y",
                "ns2=updated",
                "k-",
                "--name",
                "t",
            ][..],
            &["lab", "pod", "label", "x/a", "pod-", "--name", "t"],
            &[
                "lab",
                "pod",
                "label",
                "a",
                "--namespace",
                "x",
                "app=web",
                "--name",
                "t",
            ],
        ] {
            assert!(parses(cmd), "{cmd:?}");
        }
        assert!(!parses(&["lab", "namespace", "label", "y"]), "no change");
        let cli = crate::Cli::try_parse_from([
            "podwirectl",
            "lab",
            "namespace",
            "label",
            "y",
            "ns2=updated",
            "--name",
            "t",
        ])
        .expect("parses");
        let crate::Top::Lab {
            cmd:
                crate::LabCmd::Namespace {
                    cmd: super::NamespaceCmd::Label { name, changes, .. },
                },
        } = cli.cmd
        else {
            panic!("not lab namespace label");
        };
        assert_eq!(
            (name.as_str(), changes),
            ("t", vec!["ns2=updated".to_string()])
        );
        let cli = crate::Cli::try_parse_from([
            "podwirectl",
            "lab",
            "pod",
            "label",
            "x/a",
            "pod-",
            "--name",
            "t",
        ])
        .expect("parses");
        let crate::Top::Lab {
            cmd:
                crate::LabCmd::Pod {
                    cmd: crate::PodCmd::Label { name, changes, .. },
                },
        } = cli.cmd
        else {
            panic!("not lab pod label");
        };
        assert_eq!((name.as_str(), changes), ("t", vec!["pod-".to_string()]));
        assert!(parses(&[
            "lab",
            "pod",
            "add",
            "x/a",
            "--node",
            "node-1",
            "--labels",
            "pod=a",
            "--port",
            "serve-80-tcp=80/tcp",
            "--port",
            "serve-81-tcp=81/tcp",
            "--name",
            "t"
        ]));
        assert!(parses(&[
            "lab",
            "up",
            "--mode",
            "vpc",
            "--external-pod-access",
            "allow"
        ]));
        assert!(!parses(&[
            "lab",
            "up",
            "--mode",
            "vpc",
            "--external-pod-access",
            "open"
        ]));
        assert!(parses(&[
            "lab",
            "external-pod-access",
            "deny",
            "--name",
            "t"
        ]));
        assert!(parses(&["policy", "apply", "-f", "p.yaml", "--lab", "t"]));
        assert!(!parses(&[
            "policy",
            "list",
            "--lab",
            "t",
            "--datastore",
            "sqlite:/x.db"
        ]));
    }
}
