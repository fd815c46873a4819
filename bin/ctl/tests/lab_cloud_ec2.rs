//! The lab cloud's EC2 of issue 9 and issue 10 §3, end to end through
//! `podwirectl lab ec2` (one signed call each): tags and tag filters,
//! detach, prefixes that the fabric delivers, EC2's timing, the `all`
//! Assign reply, and security groups with ports. Out-of-band changes go to
//! the external host's instance, which no agent manages.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{eventually, ping, require_root, Lab};

fn between<'a>(s: &'a str, a: &str, b: &str) -> Option<&'a str> {
    let i = s.find(a)? + a.len();
    let j = s[i..].find(b)? + i;
    Some(&s[i..j])
}

fn all_between<'a>(s: &'a str, a: &str, b: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find(a) {
        let from = i + a.len();
        let Some(j) = rest[from..].find(b) else { break };
        out.push(&rest[from..from + j]);
        rest = &rest[from + j..];
    }
    out
}

/// `lab ec2 ACTION K=V ...`: the XML reply (the call must succeed).
fn ec2(lab: &Lab, action: &str, params: &[String]) -> String {
    let mut a = vec!["lab", "ec2", action];
    a.extend(params.iter().map(String::as_str));
    lab.ctl_ok(&a)
}

/// `lab ec2` that must fail: its stderr (which names EC2's error code).
fn ec2_err(lab: &Lab, action: &str, params: &[String]) -> String {
    let mut a = vec!["lab", "ec2", action];
    a.extend(params.iter().map(String::as_str));
    let o = lab.ctl(&a);
    assert_eq!(o.status.code(), Some(1), "{action} {params:?} should fail");
    assert!(o.stdout.is_empty(), "no reply printed for an error");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn kv(pairs: &[(&str, &str)]) -> Vec<String> {
    pairs.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

fn link_exists(netns: &str, dev: &str) -> bool {
    Command::new("ip")
        .args(["-n", netns, "link", "show", "dev", dev])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

struct Ids {
    subnet: String,
    external: String,
    external_ns: String,
    external_ip: String,
    external_sg: String,
    external_eni: String,
}

fn ids(lab: &Lab) -> Ids {
    let st = lab.status();
    let subnets = ec2(lab, "DescribeSubnets", &[]);
    let external = st["external"]["instance_id"]
        .as_str()
        .expect("ext")
        .to_string();
    let enis = ec2(
        lab,
        "DescribeNetworkInterfaces",
        &kv(&[
            ("Filter.1.Name", "attachment.instance-id"),
            ("Filter.1.Value.1", &external),
        ]),
    );
    Ids {
        subnet: between(&subnets, "<subnetId>", "<")
            .expect("subnet")
            .to_string(),
        external_ns: st["external"]["netns"].as_str().expect("ns").to_string(),
        external_ip: st["external"]["ip"].as_str().expect("ip").to_string(),
        external_sg: st["external_security_group"]
            .as_str()
            .expect("sg")
            .to_string(),
        external_eni: between(&enis, "<networkInterfaceId>", "<")
            .expect("eni")
            .to_string(),
        external,
    }
}

#[test]
fn tags_detach_timing_and_the_all_reply_through_lab_ec2() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("t-ec2", &["--nodes", "1"]);
    let id = ids(&lab);
    // Tags at creation, found by tag filters.
    let created = ec2(
        &lab,
        "CreateNetworkInterface",
        &kv(&[
            ("SubnetId", &id.subnet),
            ("Description", "podwire-test"),
            ("ClientToken", "t-ec2-1"),
            ("TagSpecification.1.ResourceType", "network-interface"),
            ("TagSpecification.1.Tag.1.Key", "podwire.io/instance-id"),
            ("TagSpecification.1.Tag.1.Value", &id.external),
            ("TagSpecification.1.Tag.2.Key", "podwire.io/created-at"),
            ("TagSpecification.1.Tag.2.Value", "2026-11-29T13:00:00Z"),
        ]),
    );
    let eni = between(&created, "<networkInterfaceId>", "<")
        .expect("id")
        .to_string();
    assert!(created.contains("<status>available</status>"), "{created}");
    let found = ec2(
        &lab,
        "DescribeNetworkInterfaces",
        &kv(&[
            ("Filter.1.Name", "tag:podwire.io/instance-id"),
            ("Filter.1.Value.1", &id.external),
            ("Filter.2.Name", "tag-key"),
            ("Filter.2.Value.1", "podwire.io/created-at"),
        ]),
    );
    assert_eq!(
        all_between(&found, "<networkInterfaceId>", "<"),
        [eni.as_str()],
        "{found}"
    );
    assert!(found.contains("<key>podwire.io/created-at</key><value>2026-11-29T13:00:00Z</value>"));
    let err = ec2_err(
        &lab,
        "DescribeNetworkInterfaces",
        &kv(&[("Filter.1.Name", "tag-colour"), ("Filter.1.Value.1", "x")]),
    );
    assert!(err.contains("InvalidParameterValue"), "{err}");

    // EC2's timing, changed on the running lab; flags left out stay.
    lab.ctl_ok(&["lab", "faults", "--attach-delay", "1500"]);
    lab.ctl_ok(&["lab", "faults", "--ec2-latency", "300"]);
    let faults = &lab.status()["cloud_faults"];
    assert_eq!(faults["attach_delay_ms"], 1500, "{faults}");
    assert_eq!(faults["ec2_latency_ms"], 300, "{faults}");
    let t = Instant::now();
    ec2(&lab, "DescribeSubnets", &[]);
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );

    // Attach: `attaching`, no link in the instance, then both appear.
    let att = ec2(
        &lab,
        "AttachNetworkInterface",
        &kv(&[
            ("NetworkInterfaceId", &eni),
            ("InstanceId", &id.external),
            ("DeviceIndex", "1"),
        ]),
    );
    let attached_at = Instant::now();
    let att = between(&att, "<attachmentId>", "<")
        .expect("attachment")
        .to_string();
    let d = ec2(
        &lab,
        "DescribeNetworkInterfaces",
        &kv(&[("NetworkInterfaceId.1", &eni)]),
    );
    assert!(d.contains("<status>attaching</status>"), "{d}");
    assert!(
        !link_exists(&id.external_ns, "eth1"),
        "the link came before the delay"
    );
    eventually(10, "eth1 in the external host", || {
        link_exists(&id.external_ns, "eth1")
    });
    assert!(
        attached_at.elapsed() >= Duration::from_millis(1_000),
        "{:?}",
        attached_at.elapsed()
    );
    let d = ec2(
        &lab,
        "DescribeNetworkInterfaces",
        &kv(&[("NetworkInterfaceId.1", &eni)]),
    );
    assert!(
        d.contains("<status>attached</status>") && d.contains("<status>in-use</status>"),
        "{d}"
    );
    lab.ctl_ok(&["lab", "faults", "--attach-delay", "0", "--ec2-latency", "0"]);

    // `--ec2-assign-reply all`: the reply lists the primary too (the
    // external host is a t3.micro: two addresses per ENI).
    let primary = between(&d, "<privateIpAddress>", "<")
        .expect("primary")
        .to_string();
    let assign = kv(&[
        ("NetworkInterfaceId", &eni),
        ("SecondaryPrivateIpAddressCount", "1"),
    ]);
    lab.ctl_ok(&["lab", "faults", "--ec2-assign-reply", "all"]);
    let all = ec2(&lab, "AssignPrivateIpAddresses", &assign);
    let listed = all_between(&all, "<privateIpAddress>", "<");
    assert_eq!(listed.len(), 2, "{all}");
    assert!(listed.contains(&primary.as_str()), "{all}");
    let secondary = listed
        .iter()
        .find(|ip| **ip != primary)
        .expect("new")
        .to_string();
    let err = ec2_err(&lab, "AssignPrivateIpAddresses", &assign);
    assert!(err.contains("PrivateIpAddressLimitExceeded"), "{err}");
    ec2(
        &lab,
        "UnassignPrivateIpAddresses",
        &kv(&[
            ("NetworkInterfaceId", &eni),
            ("PrivateIpAddress.1", &secondary),
        ]),
    );
    lab.ctl_ok(&["lab", "faults", "--ec2-assign-reply", "new"]);
    let new = ec2(&lab, "AssignPrivateIpAddresses", &assign);
    assert_eq!(
        all_between(&new, "<privateIpAddress>", "<").len(),
        1,
        "{new}"
    );
    assert!(!new.contains(&format!(">{primary}<")), "{new}");

    // Detach: the link goes, the ENI is available and can be deleted.
    let err = ec2_err(
        &lab,
        "DetachNetworkInterface",
        &kv(&[("AttachmentId", "eni-attach-0nope")]),
    );
    assert!(err.contains("InvalidAttachmentID.NotFound"), "{err}");
    ec2(
        &lab,
        "DetachNetworkInterface",
        &kv(&[("AttachmentId", &att), ("Force", "true")]),
    );
    eventually(5, "eth1 gone", || !link_exists(&id.external_ns, "eth1"));
    let d = ec2(
        &lab,
        "DescribeNetworkInterfaces",
        &kv(&[("NetworkInterfaceId.1", &eni)]),
    );
    assert!(
        d.contains("<status>available</status>") && !d.contains("<attachment>"),
        "{d}"
    );
    ec2(
        &lab,
        "DeleteNetworkInterface",
        &kv(&[("NetworkInterfaceId", &eni)]),
    );
}

#[test]
fn prefixes_are_delivered_and_security_groups_enforce_ports() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("t-ec2sg", &["--nodes", "1"]);
    let id = ids(&lab);
    // A prefix on the external host's primary ENI; one address of it on
    // its eth0. Unrouted before, delivered (and let out) after.
    let bad = ec2_err(
        &lab,
        "AssignPrivateIpAddresses",
        &kv(&[
            ("NetworkInterfaceId", &id.external_eni),
            ("Ipv4Prefix.1", "10.0.0.8/28"),
        ]),
    );
    assert!(bad.contains("InvalidParameterValue"), "{bad}");
    let bad = ec2_err(
        &lab,
        "AssignPrivateIpAddresses",
        &kv(&[
            ("NetworkInterfaceId", &id.external_eni),
            ("Ipv4PrefixCount", "0"),
        ]),
    );
    assert!(bad.contains("InvalidParameterValue"), "{bad}");
    let got = ec2(
        &lab,
        "AssignPrivateIpAddresses",
        &kv(&[
            ("NetworkInterfaceId", &id.external_eni),
            ("Ipv4PrefixCount", "1"),
        ]),
    );
    let prefix: ipnet::Ipv4Net = between(&got, "<ipv4Prefix>", "<")
        .expect("prefix")
        .parse()
        .expect("a /28");
    assert_eq!(prefix.prefix_len(), 28);
    let inside = std::net::Ipv4Addr::from(u32::from(prefix.network()) + 5).to_string();
    common::ip(&[
        "-n",
        &id.external_ns,
        "addr",
        "add",
        &format!("{inside}/32"),
        "dev",
        "eth0",
    ]);
    eventually(5, "the prefix's address answers", || {
        ping(&lab, "node-1", &inside)
    });
    ec2(
        &lab,
        "UnassignPrivateIpAddresses",
        &kv(&[
            ("NetworkInterfaceId", &id.external_eni),
            ("Ipv4Prefix.1", &prefix.to_string()),
        ]),
    );
    assert!(
        !ping(&lab, "node-1", &inside),
        "an unassigned prefix is still delivered"
    );
    common::ip(&[
        "-n",
        &id.external_ns,
        "addr",
        "del",
        &format!("{inside}/32"),
        "dev",
        "eth0",
    ]);

    // A web server on the external host; its group admits the VPC.
    let ctl = common::podwirectl();
    let _web = KillOnDrop(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &id.external_ns,
                ctl,
                "lab",
                "_http",
                "--dir",
                "/tmp",
                "--pod",
                "web",
                "--namespace",
                "t",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("web server"),
    );
    let curl = |lab: &Lab| {
        lab.ctl(&["lab", "curl", "node-1", "external"])
            .status
            .success()
    };
    eventually(10, "the web server answers", || curl(&lab));
    assert!(ping(&lab, "node-1", &id.external_ip));
    let vpc = ("IpPermissions.1.IpRanges.1.CidrIp", "10.0.0.0/16");
    let all = kv(&[
        ("GroupId", &id.external_sg),
        ("IpPermissions.1.IpProtocol", "-1"),
        vpc,
    ]);
    ec2(&lab, "RevokeSecurityGroupIngress", &all);
    assert!(
        !curl(&lab) && !ping(&lab, "node-1", &id.external_ip),
        "closed group still admits"
    );
    let tcp = |from: &str, to: &str| {
        kv(&[
            ("GroupId", &id.external_sg),
            ("IpPermissions.1.IpProtocol", "tcp"),
            ("IpPermissions.1.FromPort", from),
            ("IpPermissions.1.ToPort", to),
            vpc,
        ])
    };
    ec2(&lab, "AuthorizeSecurityGroupIngress", &tcp("81", "81"));
    assert!(!curl(&lab), "port 81 opened port 80");
    ec2(&lab, "AuthorizeSecurityGroupIngress", &tcp("80", "80"));
    assert!(curl(&lab), "port 80 open");
    assert!(
        !ping(&lab, "node-1", &id.external_ip),
        "a TCP rule let ICMP in"
    );
    let icmp = kv(&[
        ("GroupId", &id.external_sg),
        ("IpPermissions.1.IpProtocol", "icmp"),
        ("IpPermissions.1.FromPort", "8"),
        ("IpPermissions.1.ToPort", "-1"),
        vpc,
    ]);
    ec2(&lab, "AuthorizeSecurityGroupIngress", &icmp);
    assert!(ping(&lab, "node-1", &id.external_ip));
    let described = ec2(
        &lab,
        "DescribeSecurityGroups",
        &kv(&[("GroupId.1", &id.external_sg)]),
    );
    assert!(
        described
            .contains("<ipProtocol>tcp</ipProtocol><fromPort>80</fromPort><toPort>80</toPort>"),
        "{described}"
    );
    assert!(
        described
            .contains("<ipProtocol>icmp</ipProtocol><fromPort>8</fromPort><toPort>-1</toPort>"),
        "{described}"
    );
    let dup = ec2_err(&lab, "AuthorizeSecurityGroupIngress", &tcp("80", "80"));
    assert!(dup.contains("InvalidPermission.Duplicate"), "{dup}");
    let bad = ec2_err(&lab, "AuthorizeSecurityGroupIngress", &tcp("90", "70000"));
    assert!(bad.contains("InvalidParameterValue"), "{bad}");
    ec2(&lab, "RevokeSecurityGroupIngress", &tcp("80", "80"));
    assert!(!curl(&lab), "revoked port 80 still open");
    // `lab allow-external` keeps working and is idempotent.
    for state in ["on", "on", "off", "off"] {
        lab.ctl_ok(&["lab", "allow-external", state]);
    }
}

/// A process of the test, ended by its own PID when the test ends (also
/// when it fails).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
