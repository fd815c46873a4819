//! deploy/ names commands, flags, environment variables and paths of
//! `podwire-agent`; this test fails when one of them no longer exists in
//! the binary (read from its `--help`, which clap generates from the same
//! definition the binary parses with). No cluster, no root.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml::Value;

const AGENT: &str = env!("CARGO_BIN_EXE_podwire-agent");
const AGENT_NAME: &str = "podwire-agent";
/// Read by every podwire binary, not a flag's variable.
const NON_FLAG_ENV: &[&str] = &["PODWIRE_LOG"];

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

/// One option of one (sub)command, from `--help`.
#[derive(Debug, Default, Clone)]
struct Opt {
    env: Option<String>,
    default: Option<String>,
    /// Its help starts with "overlay": a vpc agent never uses it.
    overlay_only: bool,
}

/// What the binary offers: per command (`""` = the agent itself), its
/// options by `--name`.
#[derive(Debug)]
struct Cli {
    commands: BTreeMap<String, BTreeMap<String, Opt>>,
}

fn help(args: &[&str]) -> String {
    let out = Command::new(AGENT)
        .args(args)
        .arg("--help")
        // Values set in this environment would show in the help text.
        .env_clear()
        .output()
        .expect("run podwire-agent --help");
    assert!(out.status.success(), "{args:?} --help failed");
    String::from_utf8(out.stdout).expect("utf-8 help")
}

fn between<'a>(s: &'a str, open: &str, close: char) -> Option<&'a str> {
    let start = s.find(open)? + open.len();
    let len = s[start..].find(close)?;
    Some(&s[start..start + len])
}

fn parse_options(text: &str) -> BTreeMap<String, Opt> {
    let mut opts = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix("--") {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            current = Some(format!("--{name}"));
            opts.insert(format!("--{name}"), Opt::default());
        } else if t.starts_with('-') && t.contains(", --") {
            // `-h, --help`
            current = None;
        }
        if let Some(name) = &current {
            let o = opts.get_mut(name).expect("inserted");
            if t.starts_with("overlay") {
                o.overlay_only = true;
            }
            if let Some(env) = between(t, "[env: ", '=') {
                o.env = Some(env.to_string());
            }
            if let Some(d) = between(t, "[default: ", ']') {
                o.default = Some(d.to_string());
            }
        }
    }
    opts
}

fn cli() -> Cli {
    let top = help(&[]);
    let mut commands = BTreeMap::new();
    commands.insert(String::new(), parse_options(&top));
    let section = top
        .split("Commands:")
        .nth(1)
        .and_then(|s| s.split("Options:").next())
        .expect("a Commands: section");
    for line in section.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        if name != "help" {
            commands.insert(name.to_string(), parse_options(&help(&[name])));
        }
    }
    assert!(commands.contains_key("install-cni"), "{commands:?}");
    Cli { commands }
}

/// Environment variables by name; `None`: the value comes from a Secret.
type Env = BTreeMap<String, Option<String>>;

/// One invocation a manifest makes, with the environment and mounts it
/// runs with.
#[derive(Debug)]
struct Invocation {
    origin: String,
    argv: Vec<String>,
    env: Env,
    /// `None`: the host's filesystem (systemd), no mount check.
    mounts: Option<Vec<String>>,
}

fn under(path: &str, mounts: &[String]) -> bool {
    mounts
        .iter()
        .any(|m| Path::new(path).starts_with(Path::new(m)))
}

impl Cli {
    /// Checks one invocation; returns the command it ran, the mode and
    /// the environment variables its flags read.
    fn check(&self, inv: &Invocation, problems: &mut Vec<String>) -> Checked {
        let o = &inv.origin;
        let mut out = Checked::default();
        let Some(program) = inv.argv.first() else {
            problems.push(format!("{o}: no command"));
            return out;
        };
        if Path::new(program).file_name().and_then(|n| n.to_str()) != Some(AGENT_NAME) {
            problems.push(format!("{o}: runs {program}, not {AGENT_NAME}"));
        }
        let mut rest = inv.argv[1..].iter().peekable();
        let sub = match rest.peek() {
            Some(a) if !a.starts_with('-') => rest.next().cloned().unwrap_or_default(),
            _ => String::new(),
        };
        out.sub = sub.clone();
        let Some(opts) = self.commands.get(&sub) else {
            problems.push(format!("{o}: {AGENT_NAME} has no subcommand {sub:?}"));
            return out;
        };
        // flag -> value (None for a switch), as given on the command line.
        let mut given: BTreeMap<String, Option<String>> = BTreeMap::new();
        while let Some(arg) = rest.next() {
            let Some(flag) = arg.strip_prefix("--").map(|_| arg.as_str()) else {
                problems.push(format!("{o}: stray argument {arg:?}"));
                continue;
            };
            let (flag, inline) = match flag.split_once('=') {
                Some((f, v)) => (f.to_string(), Some(v.to_string())),
                None => (flag.to_string(), None),
            };
            if !opts.contains_key(&flag) {
                problems.push(format!("{o}: {AGENT_NAME} {sub} has no flag {flag}"));
                continue;
            }
            let value = inline.or_else(|| rest.next_if(|v| !v.starts_with("--")).cloned());
            given.insert(flag, value);
        }
        out.env_read = opts.values().filter_map(|x| x.env.clone()).collect();
        // The value each option ends with: flag, else its variable, else the
        // default. A variable whose value comes from a Secret is unknown here.
        let mut effective = BTreeMap::new();
        for (flag, opt) in opts {
            let from_env = opt.env.as_ref().and_then(|e| inv.env.get(e));
            let v = match (given.get(flag), from_env) {
                (Some(v), _) => v.clone(),
                (None, Some(v)) => v.clone(),
                (None, None) => opt.default.clone(),
            };
            if let Some(v) = v {
                effective.insert(flag.clone(), v);
            }
        }
        let mode = effective.get("--mode").cloned();
        if let Some(mounts) = &inv.mounts {
            for (flag, v) in &effective {
                if mode.as_deref() == Some("vpc") && opts[flag].overlay_only {
                    continue;
                }
                // Every absolute path the command will use must be mounted
                // (an sqlite:/ datastore path too).
                let path = v.strip_prefix("sqlite:").unwrap_or(v);
                if path.starts_with('/') && !under(path, mounts) {
                    problems.push(format!(
                        "{o}: {flag} = {path} is not under a mounted path ({mounts:?})"
                    ));
                }
            }
        }
        out.mode = mode;
        out
    }
}

#[derive(Debug, Default)]
struct Checked {
    sub: String,
    mode: Option<String>,
    env_read: BTreeSet<String>,
}

/// Each variable given to a group of invocations (one container and its
/// probe, one unit's Exec lines) must be read by a flag of one of them.
fn check_env(
    origin: &str,
    given: &BTreeMap<String, Option<String>>,
    read: &BTreeSet<String>,
    problems: &mut Vec<String>,
) {
    for name in given.keys() {
        if !read.contains(name) && !NON_FLAG_ENV.contains(&name.as_str()) {
            problems.push(format!(
                "{origin}: environment variable {name} is read by no flag of {AGENT_NAME}"
            ));
        }
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The invocations of one DaemonSet's pod: init containers, containers and
/// their exec probes.
fn daemonset_invocations(file: &str, doc: &Value, problems: &mut Vec<String>) -> Vec<Invocation> {
    let spec = &doc["spec"]["template"]["spec"];
    if spec["hostNetwork"].as_bool() != Some(true) {
        problems.push(format!("{file}: the DaemonSet is not hostNetwork"));
    }
    let tolerates_all = spec["tolerations"].as_sequence().is_some_and(|t| {
        t.iter()
            .any(|t| t["operator"] == "Exists" && t.get("key").is_none())
    });
    if !tolerates_all {
        problems.push(format!("{file}: no toleration for every taint"));
    }
    // volume name -> host path (hostPath volumes) or None (others).
    let mut volumes: BTreeMap<String, Option<String>> = BTreeMap::new();
    for v in spec["volumes"].as_sequence().into_iter().flatten() {
        let name = v["name"].as_str().unwrap_or_default().to_string();
        volumes.insert(name, v["hostPath"]["path"].as_str().map(str::to_string));
    }
    let mut out = Vec::new();
    for kind in ["initContainers", "containers"] {
        for c in spec[kind].as_sequence().into_iter().flatten() {
            let cname = c["name"].as_str().unwrap_or("?");
            let origin = format!("{file}: {kind} {cname}");
            let mut mounts = Vec::new();
            for m in c["volumeMounts"].as_sequence().into_iter().flatten() {
                let (name, at) = (
                    m["name"].as_str().unwrap_or(""),
                    m["mountPath"].as_str().unwrap_or(""),
                );
                match volumes.get(name) {
                    None => problems.push(format!("{origin}: mounts undeclared volume {name}")),
                    // Same path inside as on the host: what install-cni
                    // records and the conflist names are host paths.
                    Some(Some(host)) if host != at => problems.push(format!(
                        "{origin}: host {host} mounted at {at}: paths must be the same"
                    )),
                    _ => {}
                }
                mounts.push(at.to_string());
            }
            let mut env = BTreeMap::new();
            for e in c["env"].as_sequence().into_iter().flatten() {
                let name = e["name"].as_str().unwrap_or("").to_string();
                env.insert(name, e["value"].as_str().map(str::to_string));
            }
            let mut argv = strings(&c["command"]);
            argv.extend(strings(&c["args"]));
            out.push(Invocation {
                origin: origin.clone(),
                argv,
                env: env.clone(),
                mounts: Some(mounts.clone()),
            });
            if kind == "containers" {
                let probe = strings(&c["readinessProbe"]["exec"]["command"]);
                if probe.is_empty() {
                    problems.push(format!("{origin}: no exec readiness probe"));
                } else {
                    out.push(Invocation {
                        origin: format!("{origin} readinessProbe"),
                        argv: probe,
                        env,
                        mounts: Some(mounts),
                    });
                }
                if c["resources"]["requests"].is_null() {
                    problems.push(format!("{origin}: no resource requests"));
                }
            }
        }
    }
    out
}

fn check_manifest(cli: &Cli, file: &str, mode: &str, problems: &mut Vec<String>) {
    let text = std::fs::read_to_string(deploy_dir().join(file)).expect("manifest");
    let mut daemonsets = 0;
    for de in serde_yaml::Deserializer::from_str(&text) {
        let doc = Value::deserialize(de).expect("valid YAML");
        if doc["kind"] != "DaemonSet" {
            continue;
        }
        daemonsets += 1;
        let mut ran = BTreeSet::new();
        // Per container (the probe shares its env): what its flags read.
        let mut read: BTreeMap<String, (Env, BTreeSet<String>)> = BTreeMap::new();
        for inv in daemonset_invocations(file, &doc, problems) {
            let c = cli.check(&inv, problems);
            if (c.sub.is_empty() || c.sub == "install-cni") && c.mode.as_deref() != Some(mode) {
                problems.push(format!(
                    "{}: mode {:?}, the file is for {mode}",
                    inv.origin, c.mode
                ));
            }
            let container = inv.origin.trim_end_matches(" readinessProbe").to_string();
            let entry = read
                .entry(container)
                .or_insert_with(|| (inv.env.clone(), BTreeSet::new()));
            entry.1.extend(c.env_read);
            ran.insert(c.sub);
        }
        for (container, (env, names)) in &read {
            check_env(container, env, names, problems);
        }
        for want in ["", "install-cni", "status"] {
            if !ran.contains(want) {
                problems.push(format!("{file}: nothing runs {AGENT_NAME} {want}"));
            }
        }
    }
    assert_eq!(daemonsets, 1, "{file}: one DaemonSet");
}

use serde::Deserialize as _;

#[test]
fn the_manifests_name_only_commands_flags_env_vars_and_paths_that_exist() {
    let cli = cli();
    let mut problems = Vec::new();
    check_manifest(&cli, "podwire-vpc.yaml", "vpc", &mut problems);
    check_manifest(&cli, "podwire-overlay.yaml", "overlay", &mut problems);
    assert!(
        problems.is_empty(),
        "deploy/ is out of date:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_systemd_unit_and_its_env_file_name_only_what_exists() {
    let cli = cli();
    let mut problems = Vec::new();
    let env_text = std::fs::read_to_string(deploy_dir().join("podwire-agent.env")).expect("env");
    let mut env = BTreeMap::new();
    for line in env_text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line.split_once('=').expect("KEY=value");
        env.insert(k.to_string(), Some(v.to_string()));
    }
    let unit = std::fs::read_to_string(deploy_dir().join("podwire-agent.service")).expect("unit");
    let mut ran = BTreeSet::new();
    let mut read = BTreeSet::new();
    for line in unit.lines() {
        let Some((key, cmd)) = line.split_once('=') else {
            continue;
        };
        if !key.starts_with("Exec") {
            continue;
        }
        let argv: Vec<String> = cmd.split_whitespace().map(str::to_string).collect();
        let inv = Invocation {
            origin: format!("podwire-agent.service {key}"),
            argv,
            env: env.clone(),
            mounts: None,
        };
        let c = cli.check(&inv, &mut problems);
        read.extend(c.env_read);
        ran.insert(c.sub);
    }
    check_env("podwire-agent.env", &env, &read, &mut problems);
    assert!(ran.contains("") && ran.contains("install-cni"), "{ran:?}");
    assert!(unit.contains("EnvironmentFile=-/etc/podwire/agent.env"));
    assert!(
        problems.is_empty(),
        "deploy/ is out of date:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_checker_catches_what_it_is_for() {
    // A manifest naming a flag, a variable, a subcommand and an unmounted
    // path that do not exist is caught on each.
    let cli = cli();
    let mut problems = Vec::new();
    let inv = Invocation {
        origin: "t".into(),
        argv: ["podwire-agent", "--mode", "vpc", "--max-eni", "1"]
            .map(String::from)
            .to_vec(),
        env: BTreeMap::from([("MAX_ENI".to_string(), Some("1".to_string()))]),
        // /run/podwire (socket, state dir) not mounted.
        mounts: Some(vec!["/etc/cni/net.d".into()]),
    };
    let c = cli.check(&inv, &mut problems);
    check_env("t", &inv.env, &c.env_read, &mut problems);
    let all = problems.join("\n");
    for want in ["--max-eni", "MAX_ENI", "--socket", "--state-dir"] {
        assert!(all.contains(want), "{want} not caught:\n{all}");
    }
    let mut problems = Vec::new();
    let inv = Invocation {
        origin: "t".into(),
        argv: ["podwire-agent", "install-plugin"]
            .map(String::from)
            .to_vec(),
        env: BTreeMap::new(),
        mounts: None,
    };
    cli.check(&inv, &mut problems);
    assert!(
        problems.join("\n").contains("no subcommand"),
        "{problems:?}"
    );
}
