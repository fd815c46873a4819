//! The EC2 actions of issue 9 through `dispatch`, with the wire's own
//! parameter names (as a form-encoded body decodes): tags, filters, detach,
//! idempotency, subnets, prefixes, reply shapes; hostile input changes
//! nothing.

use std::collections::BTreeMap;

use podwire_cloud::LimitsTable;

use super::api::{dispatch, Effect};
use super::faults::{AssignReply, CloudFaults};
use super::model::{Cloud, Instance, Subnet};
use super::scope::LabScope;

fn params(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

struct Lab {
    cloud: Cloud,
    limits: LimitsTable,
    scope: LabScope,
}

impl Lab {
    /// A /24 subnet and instances i-nitro (m5.large) and i-xen (t2.medium),
    /// each with a primary ENI.
    fn new() -> Lab {
        let mut c = Cloud {
            region: "us-east-1".into(),
            vpc_id: "vpc-1".into(),
            ..Default::default()
        };
        c.subnets.insert(
            "subnet-a".into(),
            Subnet {
                id: "subnet-a".into(),
                cidr: "10.0.0.0/24".parse().expect("cidr"),
                availability_zone: "us-east-1a".into(),
            },
        );
        let limits = LimitsTable::builtin().expect("limits");
        for (id, t) in [("i-nitro", "m5.large"), ("i-xen", "t2.medium")] {
            c.instances.insert(
                id.into(),
                Instance {
                    id: id.into(),
                    host: id.into(),
                    netns: id.into(),
                    instance_type: t.into(),
                    subnet_id: "subnet-a".into(),
                },
            );
            let e = c
                .create_eni("subnet-a", "primary", vec![], 0, None)
                .expect("eni");
            c.attach(&limits, &e, id, 0).expect("attach");
        }
        Lab {
            cloud: c,
            limits,
            scope: LabScope::default(),
        }
    }

    fn call(&mut self, kv: &[(&str, &str)]) -> Result<String, String> {
        dispatch(&mut self.cloud, &self.limits, &self.scope, &params(kv))
            .map(|(x, _)| x)
            .map_err(|e| e.code)
    }

    /// As the cloud process runs a call: a failed one leaves nothing.
    fn call_atomic(&mut self, kv: &[(&str, &str)]) -> Result<String, String> {
        let before = self.cloud.clone();
        let r = self.call(kv);
        if r.is_err() {
            self.cloud = before;
        }
        r
    }

    fn snapshot(&self) -> String {
        let mut c = self.cloud.clone();
        c.next_id = 0;
        serde_json::to_string(&c).expect("json")
    }

    fn create(&mut self, extra: &[(&str, &str)]) -> String {
        let mut kv = vec![
            ("Action", "CreateNetworkInterface"),
            ("SubnetId", "subnet-a"),
        ];
        kv.extend_from_slice(extra);
        let x = self.call(&kv).expect("create");
        between(&x, "<networkInterfaceId>", "</networkInterfaceId>")
            .expect("id")
            .to_string()
    }
}

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

const TAGGED: &[(&str, &str)] = &[
    ("TagSpecification.1.ResourceType", "network-interface"),
    ("TagSpecification.1.Tag.1.Key", "podwire.io/instance-id"),
    ("TagSpecification.1.Tag.1.Value", "i-nitro"),
    ("TagSpecification.1.Tag.2.Key", "podwire.io/created-at"),
    ("TagSpecification.1.Tag.2.Value", "2026-11-29T13:00:00Z"),
];

#[test]
fn created_enis_carry_tags_and_tag_filters_find_them() {
    let mut lab = Lab::new();
    let mine = lab.create(TAGGED);
    let other = lab.create(&[]);
    let x = lab
        .call(&[
            ("Action", "DescribeNetworkInterfaces"),
            ("NetworkInterfaceId.1", &mine),
        ])
        .expect("describe");
    assert!(
        x.contains("<tagSet><item><key>podwire.io/created-at</key><value>2026-11-29T13:00:00Z</value></item><item><key>podwire.io/instance-id</key><value>i-nitro</value></item></tagSet>"),
        "{x}"
    );
    let ids = |lab: &mut Lab, f: &[(&str, &str)]| -> Vec<String> {
        let mut kv = vec![("Action", "DescribeNetworkInterfaces")];
        kv.extend_from_slice(f);
        let x = lab.call(&kv).expect("describe");
        all_between(&x, "<networkInterfaceId>", "</networkInterfaceId>")
            .into_iter()
            .map(String::from)
            .collect()
    };
    assert_eq!(
        ids(
            &mut lab,
            &[
                ("Filter.1.Name", "tag:podwire.io/instance-id"),
                ("Filter.1.Value.1", "i-nitro")
            ]
        ),
        vec![mine.clone()]
    );
    assert!(ids(
        &mut lab,
        &[
            ("Filter.1.Name", "tag:podwire.io/instance-id"),
            ("Filter.1.Value.1", "i-xen")
        ]
    )
    .is_empty());
    assert_eq!(
        ids(
            &mut lab,
            &[
                ("Filter.1.Name", "tag-key"),
                ("Filter.1.Value.1", "podwire.io/created-at")
            ]
        ),
        vec![mine.clone()]
    );
    // Wildcards, several filters (AND), several values (OR).
    assert_eq!(
        ids(
            &mut lab,
            &[
                ("Filter.1.Name", "tag:podwire.io/instance-id"),
                ("Filter.1.Value.1", "i-n*"),
                ("Filter.2.Name", "status"),
                ("Filter.2.Value.1", "in-use"),
                ("Filter.2.Value.2", "available"),
            ]
        ),
        vec![mine.clone()]
    );
    let avail = ids(
        &mut lab,
        &[
            ("Filter.1.Name", "status"),
            ("Filter.1.Value.1", "available"),
        ],
    );
    assert_eq!(avail.len(), 2, "{avail:?}");
    assert!(avail.contains(&other));
    // Unknown filters, filters without values, too many values: refused.
    for (f, code) in [
        (
            vec![("Filter.1.Name", "tag-color"), ("Filter.1.Value.1", "x")],
            "InvalidParameterValue",
        ),
        (vec![("Filter.1.Name", "status")], "InvalidParameterValue"),
    ] {
        let mut kv = vec![("Action", "DescribeNetworkInterfaces")];
        kv.extend(f);
        assert_eq!(lab.call(&kv).expect_err("bad filter"), code);
    }
    let mut kv: Vec<(String, String)> = vec![
        ("Action".into(), "DescribeNetworkInterfaces".into()),
        ("Filter.1.Name".into(), "status".into()),
    ];
    for i in 1..=201 {
        kv.push((format!("Filter.1.Value.{i}"), "x".into()));
    }
    let kv: Vec<(&str, &str)> = kv.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(lab.call(&kv).expect_err("201"), "FilterLimitExceeded");
}

#[test]
fn hostile_creates_change_nothing() {
    let mut lab = Lab::new();
    let before = lab.snapshot();
    let long = "d".repeat(256);
    let long_token = "t".repeat(65);
    let bad: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (
            vec![("Description", long.as_str())],
            "InvalidParameterValue",
        ),
        (
            vec![("ClientToken", long_token.as_str())],
            "InvalidParameterValue",
        ),
        (
            vec![("SecondaryPrivateIpAddressCount", "0")],
            "InvalidParameterValue",
        ),
        (
            vec![("SecondaryPrivateIpAddressCount", "-1")],
            "InvalidParameterValue",
        ),
        (vec![("Ipv4PrefixCount", "x")], "InvalidParameterValue"),
        (
            vec![
                ("Ipv4PrefixCount", "1"),
                ("SecondaryPrivateIpAddressCount", "1"),
            ],
            "InvalidParameterCombination",
        ),
        (
            vec![("Ipv4PrefixCount", "4294967295")],
            "InsufficientCidrBlocks",
        ),
        (
            vec![("SecondaryPrivateIpAddressCount", "4294967295")],
            "InsufficientFreeAddressesInSubnet",
        ),
        (
            vec![
                ("TagSpecification.1.ResourceType", "instance"),
                ("TagSpecification.1.Tag.1.Key", "a"),
            ],
            "InvalidParameterValue",
        ),
        (
            vec![
                ("TagSpecification.1.ResourceType", "network-interface"),
                ("TagSpecification.1.Tag.1.Key", "aws:owner"),
            ],
            "InvalidParameterValue",
        ),
    ];
    for (extra, code) in bad {
        let mut kv = vec![
            ("Action", "CreateNetworkInterface"),
            ("SubnetId", "subnet-a"),
        ];
        kv.extend_from_slice(&extra);
        assert_eq!(lab.call_atomic(&kv).expect_err("bad"), code, "{extra:?}");
        assert_eq!(lab.snapshot(), before, "{extra:?} changed the cloud");
    }
}

#[test]
fn a_client_token_makes_create_idempotent() {
    let mut lab = Lab::new();
    let args: Vec<(&str, &str)> = [("ClientToken", "tok-1"), ("Description", "d")]
        .into_iter()
        .chain(TAGGED.iter().copied())
        .collect();
    let first = lab.create(&args);
    let n = lab.cloud.enis.len();
    assert_eq!(lab.create(&args), first, "a retry gets the same ENI");
    assert_eq!(lab.cloud.enis.len(), n, "and no second one");
    let mut changed = args.clone();
    changed[1] = ("Description", "other");
    let mut kv = vec![
        ("Action", "CreateNetworkInterface"),
        ("SubnetId", "subnet-a"),
    ];
    kv.extend_from_slice(&changed);
    assert_eq!(
        lab.call(&kv).expect_err("mismatch"),
        "IdempotentParameterMismatch"
    );
    assert_eq!(lab.cloud.enis.len(), n);
    assert_ne!(lab.create(&[("ClientToken", "tok-2")]), first);
}

#[test]
fn detach_returns_an_eni_to_available() {
    let mut lab = Lab::new();
    let eni = lab.create(&[]);
    let x = lab
        .call(&[
            ("Action", "AttachNetworkInterface"),
            ("NetworkInterfaceId", &eni),
            ("InstanceId", "i-nitro"),
            ("DeviceIndex", "1"),
        ])
        .expect("attach");
    let att = between(&x, "<attachmentId>", "</attachmentId>")
        .expect("att")
        .to_string();
    assert_eq!(lab.cloud.enis[&eni].status(), "in-use");
    assert_eq!(
        lab.call(&[
            ("Action", "DetachNetworkInterface"),
            ("AttachmentId", &att),
            ("Force", "maybe")
        ])
        .expect_err("force"),
        "InvalidParameterValue"
    );
    assert_eq!(
        lab.call(&[
            ("Action", "DetachNetworkInterface"),
            ("AttachmentId", "eni-attach-nope")
        ])
        .expect_err("unknown"),
        "InvalidAttachmentID.NotFound"
    );
    let primary_att = lab.cloud.instance_enis("i-nitro")[0]
        .attachment
        .as_ref()
        .map(|a| a.attachment_id.clone())
        .expect("primary");
    assert_eq!(
        lab.call(&[
            ("Action", "DetachNetworkInterface"),
            ("AttachmentId", &primary_att)
        ])
        .expect_err("primary"),
        "OperationNotPermitted"
    );
    lab.call(&[
        ("Action", "DetachNetworkInterface"),
        ("AttachmentId", &att),
        ("Force", "true"),
    ])
    .expect("detach");
    assert_eq!(lab.cloud.enis[&eni].status(), "available");
    assert!(lab.cloud.enis[&eni].attachment.is_none());
    assert_eq!(
        lab.call(&[("Action", "DetachNetworkInterface"), ("AttachmentId", &att)])
            .expect_err("twice"),
        "InvalidAttachmentID.NotFound"
    );
    lab.call(&[
        ("Action", "DeleteNetworkInterface"),
        ("NetworkInterfaceId", &eni),
    ])
    .expect("delete after detach");
}

#[test]
fn describe_subnets_counts_free_addresses() {
    let mut lab = Lab::new();
    // 256 - 5 reserved - 2 primaries.
    let count = |lab: &mut Lab| -> u64 {
        let x = lab
            .call(&[("Action", "DescribeSubnets"), ("SubnetId.1", "subnet-a")])
            .expect("subnets");
        assert!(x.contains("<cidrBlock>10.0.0.0/24</cidrBlock>"), "{x}");
        between(&x, "<availableIpAddressCount>", "<")
            .and_then(|n| n.parse().ok())
            .expect("count")
    };
    assert_eq!(count(&mut lab), 249);
    lab.create(&[("SecondaryPrivateIpAddressCount", "3")]);
    assert_eq!(count(&mut lab), 245);
    lab.create(&[("Ipv4PrefixCount", "2")]);
    assert_eq!(count(&mut lab), 245 - 1 - 32);
    assert_eq!(
        lab.call(&[("Action", "DescribeSubnets"), ("SubnetId.1", "subnet-x")])
            .expect_err("unknown"),
        "InvalidSubnetID.NotFound"
    );
    assert_eq!(
        lab.call(&[
            ("Action", "DescribeSubnets"),
            ("Filter.1.Name", "owner"),
            ("Filter.1.Value.1", "x")
        ])
        .expect_err("filter"),
        "InvalidParameterValue"
    );
}

fn attached_eni(lab: &mut Lab, instance: &str, device: &str) -> String {
    let eni = lab.create(&[]);
    lab.call(&[
        ("Action", "AttachNetworkInterface"),
        ("NetworkInterfaceId", &eni),
        ("InstanceId", instance),
        ("DeviceIndex", device),
    ])
    .expect("attach");
    eni
}

#[test]
fn prefixes_are_aligned_unique_28s_that_take_one_slot_each() {
    let mut lab = Lab::new();
    let eni = attached_eni(&mut lab, "i-nitro", "1");
    let x = lab
        .call(&[
            ("Action", "AssignPrivateIpAddresses"),
            ("NetworkInterfaceId", &eni),
            ("Ipv4PrefixCount", "3"),
        ])
        .expect("prefixes");
    let got: Vec<ipnet::Ipv4Net> = all_between(&x, "<ipv4Prefix>", "</ipv4Prefix>")
        .iter()
        .map(|p| p.parse().expect("prefix"))
        .collect();
    assert_eq!(got.len(), 3, "{x}");
    assert!(
        x.contains("<assignedPrivateIpAddressesSet></assignedPrivateIpAddressesSet>"),
        "{x}"
    );
    let used: Vec<std::net::Ipv4Addr> = lab
        .cloud
        .enis
        .values()
        .flat_map(|e| e.all_ips().collect::<Vec<_>>())
        .collect();
    for p in &got {
        assert_eq!(p.prefix_len(), 28);
        assert_eq!(p.addr(), p.network(), "aligned");
        assert!(p.network() != "10.0.0.0".parse::<std::net::Ipv4Addr>().expect("ip"));
        assert!(p.network() != "10.0.0.240".parse::<std::net::Ipv4Addr>().expect("ip"));
        assert!(
            used.iter().all(|ip| !p.contains(ip)),
            "{p} overlaps an address"
        );
    }
    // Describe lists them; the addresses inside belong to the ENI.
    let d = lab
        .call(&[
            ("Action", "DescribeNetworkInterfaces"),
            ("NetworkInterfaceId.1", &eni),
        ])
        .expect("describe");
    assert_eq!(
        all_between(&d, "<ipv4Prefix>", "</ipv4Prefix>").len(),
        3,
        "{d}"
    );
    let inside = super::prefix::addresses(got[0]).nth(5).expect("addr");
    assert_eq!(
        lab.cloud.owner_of(inside).map(|(e, _)| e.id.clone()),
        Some(eni.clone())
    );
    // New single addresses never land in a prefix.
    let x = lab
        .call(&[
            ("Action", "AssignPrivateIpAddresses"),
            ("NetworkInterfaceId", &eni),
            ("SecondaryPrivateIpAddressCount", "5"),
        ])
        .expect("ips");
    for ip in all_between(&x, "<privateIpAddress>", "</privateIpAddress>") {
        let ip: std::net::Ipv4Addr = ip.parse().expect("ip");
        assert!(got.iter().all(|p| !p.contains(&ip)));
    }
    // m5.large: 10 slots = primary + 3 prefixes + 5 addresses + 1 left.
    assert_eq!(
        lab.call(&[
            ("Action", "AssignPrivateIpAddresses"),
            ("NetworkInterfaceId", &eni),
            ("Ipv4PrefixCount", "2")
        ])
        .expect_err("slots"),
        "PrivateIpAddressLimitExceeded"
    );
    // Unassign one, ask for it back by name, and refuse someone else's.
    let p0 = got[0].to_string();
    lab.call(&[
        ("Action", "UnassignPrivateIpAddresses"),
        ("NetworkInterfaceId", &eni),
        ("Ipv4Prefix.1", &p0),
    ])
    .expect("unassign");
    assert_eq!(lab.cloud.enis[&eni].prefixes.len(), 2);
    lab.call(&[
        ("Action", "AssignPrivateIpAddresses"),
        ("NetworkInterfaceId", &eni),
        ("Ipv4Prefix.1", &p0),
    ])
    .expect("explicit");
    let other = attached_eni(&mut lab, "i-nitro", "2");
    let p1 = got[1].to_string();
    assert_eq!(
        lab.call(&[
            ("Action", "AssignPrivateIpAddresses"),
            ("NetworkInterfaceId", &other),
            ("Ipv4Prefix.1", &p1)
        ])
        .expect_err("taken"),
        "InvalidParameterValue"
    );
    assert_eq!(
        lab.call(&[
            ("Action", "UnassignPrivateIpAddresses"),
            ("NetworkInterfaceId", &other),
            ("Ipv4Prefix.1", &p1)
        ])
        .expect_err("not its own"),
        "InvalidParameterValue"
    );
}

#[test]
fn hostile_prefix_requests_change_nothing() {
    let mut lab = Lab::new();
    let eni = attached_eni(&mut lab, "i-nitro", "1");
    let xen = attached_eni(&mut lab, "i-xen", "1");
    let before = lab.snapshot();
    let a = "AssignPrivateIpAddresses";
    let u = "UnassignPrivateIpAddresses";
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            a,
            &eni,
            vec![("Ipv4PrefixCount", "0")],
            "InvalidParameterValue",
        ),
        (
            a,
            &eni,
            vec![("Ipv4PrefixCount", "-2")],
            "InvalidParameterValue",
        ),
        (
            a,
            &eni,
            vec![("Ipv4PrefixCount", "99999999999")],
            "InvalidParameterValue",
        ),
        (
            a,
            &eni,
            vec![("Ipv4PrefixCount", "4294967295")],
            "PrivateIpAddressLimitExceeded",
        ),
        (
            a,
            &eni,
            vec![("Ipv4Prefix.1", "10.0.0.17/28")],
            "InvalidParameterValue",
        ),
        (
            a,
            &eni,
            vec![("Ipv4Prefix.1", "10.0.0.16/27")],
            "InvalidParameterValue",
        ),
        (
            a,
            &eni,
            vec![("Ipv4Prefix.1", "10.0.0.0/28")],
            "InvalidParameterValue",
        ),
        (
            a,
            &eni,
            vec![("Ipv4Prefix.1", "10.0.0.240/28")],
            "InvalidParameterValue",
        ),
        (
            a,
            &eni,
            vec![("Ipv4Prefix.1", "10.0.9.16/28")],
            "InvalidParameterValue",
        ),
        (
            a,
            &eni,
            vec![
                ("Ipv4Prefix.1", "10.0.0.16/28"),
                ("Ipv4Prefix.2", "10.0.0.16/28"),
            ],
            "InvalidParameterValue",
        ),
        (
            a,
            &eni,
            vec![("Ipv4Prefix.1", "10.0.0.16/28"), ("Ipv4PrefixCount", "1")],
            "InvalidParameterCombination",
        ),
        (
            a,
            &eni,
            vec![
                ("Ipv4PrefixCount", "1"),
                ("SecondaryPrivateIpAddressCount", "1"),
            ],
            "InvalidParameterCombination",
        ),
        (a, &eni, vec![], "MissingParameter"),
        (
            a,
            &xen,
            vec![("Ipv4PrefixCount", "1")],
            "InvalidParameterCombination",
        ),
        (
            a,
            "eni-nope",
            vec![("Ipv4PrefixCount", "1")],
            "InvalidNetworkInterfaceID.NotFound",
        ),
        (
            u,
            &eni,
            vec![("Ipv4Prefix.1", "10.0.0.16/28")],
            "InvalidParameterValue",
        ),
        (
            u,
            &eni,
            vec![("Ipv4Prefix.1", "garbage")],
            "InvalidParameterValue",
        ),
        (u, &eni, vec![], "MissingParameter"),
    ];
    for (action, id, extra, code) in cases {
        let mut kv = vec![("Action", action), ("NetworkInterfaceId", id)];
        kv.extend_from_slice(&extra);
        assert_eq!(
            lab.call_atomic(&kv).expect_err("bad"),
            code,
            "{action} {extra:?}"
        );
        assert_eq!(
            lab.snapshot(),
            before,
            "{action} {extra:?} changed the cloud"
        );
    }
}

#[test]
fn no_free_aligned_28_is_insufficient_cidr_blocks() {
    let mut lab = Lab::new();
    // A /24 has 14 candidate /28s; addresses scattered into each leave none.
    let eni = lab.create(&[]);
    for p in super::prefix::candidates("10.0.0.0/24".parse().expect("cidr")) {
        let ip = super::prefix::addresses(p).nth(7).expect("ip");
        if lab.cloud.claim("subnet-a", ip).is_ok() {
            if let Some(e) = lab.cloud.enis.get_mut(&eni) {
                e.secondary_ips.push(ip);
            }
        }
    }
    let free = lab.create(&[]);
    let before = lab.snapshot();
    assert_eq!(
        lab.call_atomic(&[
            ("Action", "AssignPrivateIpAddresses"),
            ("NetworkInterfaceId", &free),
            ("Ipv4PrefixCount", "1")
        ])
        .expect_err("fragmented"),
        "InsufficientCidrBlocks"
    );
    assert_eq!(lab.snapshot(), before);
    // ...while single addresses are still there.
    lab.call(&[
        ("Action", "AssignPrivateIpAddresses"),
        ("NetworkInterfaceId", &free),
        ("SecondaryPrivateIpAddressCount", "2"),
    ])
    .expect("addresses still fit");
}

#[test]
fn assign_replies_list_new_addresses_or_everything() {
    let mut lab = Lab::new();
    let eni = attached_eni(&mut lab, "i-nitro", "1");
    lab.call(&[
        ("Action", "AssignPrivateIpAddresses"),
        ("NetworkInterfaceId", &eni),
        ("SecondaryPrivateIpAddressCount", "2"),
    ])
    .expect("first");
    let primary = lab.cloud.enis[&eni].primary_ip.to_string();
    let x = lab
        .call(&[
            ("Action", "AssignPrivateIpAddresses"),
            ("NetworkInterfaceId", &eni),
            ("SecondaryPrivateIpAddressCount", "1"),
        ])
        .expect("new");
    let listed = all_between(&x, "<privateIpAddress>", "</privateIpAddress>");
    assert_eq!(listed.len(), 1, "{x}");
    assert!(!listed.contains(&primary.as_str()));
    lab.scope.faults = CloudFaults::default().with_assign_reply(AssignReply::All);
    let x = lab
        .call(&[
            ("Action", "AssignPrivateIpAddresses"),
            ("NetworkInterfaceId", &eni),
            ("SecondaryPrivateIpAddressCount", "1"),
        ])
        .expect("all");
    let listed = all_between(&x, "<privateIpAddress>", "</privateIpAddress>");
    assert_eq!(listed.len(), 5, "primary + 4 secondaries: {x}");
    assert!(listed.contains(&primary.as_str()));
}

#[test]
fn a_delayed_attachment_is_attaching_until_due() {
    let mut lab = Lab::new();
    lab.scope.faults = CloudFaults::default()
        .with_timing(0, 5_000)
        .expect("timing");
    let eni = attached_eni(&mut lab, "i-nitro", "1");
    let d = lab
        .call(&[
            ("Action", "DescribeNetworkInterfaces"),
            ("NetworkInterfaceId.1", &eni),
        ])
        .expect("describe");
    assert!(d.contains("<status>attaching</status>"), "{d}");
    let due = lab.cloud.next_attachment_due().expect("due");
    let now = super::api::now_ms();
    assert!((now + 4_000..=now + 5_000).contains(&due), "{due} vs {now}");
    assert!(!lab.cloud.settle_attachments(now));
    assert!(lab.cloud.settle_attachments(due));
    let d = lab
        .call(&[
            ("Action", "DescribeNetworkInterfaces"),
            ("NetworkInterfaceId.1", &eni),
            ("Filter.1.Name", "attachment.status"),
            ("Filter.1.Value.1", "attached"),
        ])
        .expect("describe");
    assert!(d.contains(&eni), "{d}");
    assert!(lab.cloud.next_attachment_due().is_none());
}

#[test]
fn read_only_actions_say_so() {
    let mut lab = Lab::new();
    let (_, eff) = dispatch(
        &mut lab.cloud,
        &lab.limits,
        &lab.scope,
        &params(&[("Action", "DescribeSubnets")]),
    )
    .expect("subnets");
    assert_eq!(eff, Effect::ReadOnly);
}

fn with_groups(lab: &mut Lab) {
    use super::model::SecurityGroup;
    for id in ["sg-nodes", "sg-ext"] {
        lab.cloud.groups.insert(
            id.into(),
            SecurityGroup {
                id: id.into(),
                name: format!("{id}-name"),
                description: "d".into(),
                ingress: Default::default(),
            },
        );
    }
}

#[test]
fn security_group_rules_have_protocols_and_ports() {
    let mut lab = Lab::new();
    with_groups(&mut lab);
    let web = [
        ("Action", "AuthorizeSecurityGroupIngress"),
        ("GroupId", "sg-nodes"),
        ("IpPermissions.1.IpProtocol", "tcp"),
        ("IpPermissions.1.FromPort", "80"),
        ("IpPermissions.1.ToPort", "81"),
        ("IpPermissions.1.IpRanges.1.CidrIp", "192.168.0.0/24"),
        ("IpPermissions.1.Groups.1.GroupId", "sg-ext"),
        ("IpPermissions.2.IpProtocol", "icmp"),
        ("IpPermissions.2.FromPort", "8"),
        ("IpPermissions.2.ToPort", "-1"),
        ("IpPermissions.2.IpRanges.1.CidrIp", "10.0.0.0/16"),
    ];
    lab.call(&web).expect("authorize");
    assert_eq!(lab.cloud.groups["sg-nodes"].ingress.len(), 3);
    let x = lab
        .call(&[
            ("Action", "DescribeSecurityGroups"),
            ("GroupId.1", "sg-nodes"),
        ])
        .expect("describe");
    assert!(x.contains("<item><ipProtocol>tcp</ipProtocol><fromPort>80</fromPort><toPort>81</toPort><groups><item><userId>000000000000</userId><groupId>sg-ext</groupId></item></groups><ipRanges><item><cidrIp>192.168.0.0/24</cidrIp></item></ipRanges>"), "{x}");
    assert!(
        x.contains("<ipProtocol>icmp</ipProtocol><fromPort>8</fromPort><toPort>-1</toPort>"),
        "{x}"
    );
    assert!(!x.contains("sg-ext-name"), "only the asked group: {x}");
    let by_name = lab
        .call(&[
            ("Action", "DescribeSecurityGroups"),
            ("Filter.1.Name", "group-name"),
            ("Filter.1.Value.1", "sg-ext-*"),
        ])
        .expect("filter");
    assert!(
        by_name.contains("<groupId>sg-ext</groupId>")
            && !by_name.contains("<groupId>sg-nodes</groupId><groupName>"),
        "{by_name}"
    );
    // The same rule again fails whole; so does revoking one that is not there.
    let before = lab.snapshot();
    assert_eq!(
        lab.call_atomic(&web).expect_err("dup"),
        "InvalidPermission.Duplicate"
    );
    assert_eq!(lab.snapshot(), before);
    let gone = [
        ("Action", "RevokeSecurityGroupIngress"),
        ("GroupId", "sg-nodes"),
        ("IpPermissions.1.IpProtocol", "tcp"),
        ("IpPermissions.1.FromPort", "80"),
        ("IpPermissions.1.ToPort", "80"),
        ("IpPermissions.1.IpRanges.1.CidrIp", "192.168.0.0/24"),
    ];
    assert_eq!(
        lab.call_atomic(&gone).expect_err("absent"),
        "InvalidPermission.NotFound"
    );
    assert_eq!(lab.snapshot(), before);
    for (kv, code) in [
        (
            vec![
                ("GroupId", "sg-nope"),
                ("IpPermissions.1.IpProtocol", "-1"),
                ("IpPermissions.1.IpRanges.1.CidrIp", "10.0.0.0/8"),
            ],
            "InvalidGroup.NotFound",
        ),
        (
            vec![
                ("GroupId", "sg-nodes"),
                ("IpPermissions.1.IpProtocol", "tcp"),
                ("IpPermissions.1.FromPort", "1"),
                ("IpPermissions.1.ToPort", "70000"),
                ("IpPermissions.1.IpRanges.1.CidrIp", "10.0.0.0/8"),
            ],
            "InvalidParameterValue",
        ),
        (
            vec![
                ("GroupId", "sg-nodes"),
                ("IpPermissions.1.IpProtocol", "-1"),
                ("IpPermissions.1.IpRanges.1.CidrIp", "10.0.0.0/8"),
                ("IpPermissions.2.IpProtocol", "bogus"),
                ("IpPermissions.2.IpRanges.1.CidrIp", "10.0.0.0/8"),
            ],
            "InvalidParameterValue",
        ),
    ] {
        let mut call = vec![("Action", "AuthorizeSecurityGroupIngress")];
        call.extend(kv);
        assert_eq!(lab.call_atomic(&call).expect_err("bad"), code, "{call:?}");
        assert_eq!(lab.snapshot(), before, "{call:?}");
    }
    assert_eq!(
        lab.call(&[
            ("Action", "DescribeSecurityGroups"),
            ("GroupId.1", "sg-nope")
        ])
        .expect_err("nf"),
        "InvalidGroup.NotFound"
    );
    // The quota: 60 inbound rules.
    let cidrs: Vec<String> = (0..61).map(|i| format!("172.16.{i}.0/24")).collect();
    let mut many = vec![
        (
            "Action".to_string(),
            "AuthorizeSecurityGroupIngress".to_string(),
        ),
        ("GroupId".into(), "sg-ext".into()),
        ("IpPermissions.1.IpProtocol".into(), "udp".into()),
        ("IpPermissions.1.FromPort".into(), "53".into()),
        ("IpPermissions.1.ToPort".into(), "53".into()),
    ];
    for (i, c) in cidrs.iter().enumerate() {
        many.push((
            format!("IpPermissions.1.IpRanges.{}.CidrIp", i + 1),
            c.clone(),
        ));
    }
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(
        lab.call_atomic(&many).expect_err("quota"),
        "RulesPerSecurityGroupLimitExceeded"
    );
    lab.call(
        &gone[..2]
            .iter()
            .copied()
            .chain([
                ("IpPermissions.1.IpProtocol", "tcp"),
                ("IpPermissions.1.FromPort", "80"),
                ("IpPermissions.1.ToPort", "81"),
                ("IpPermissions.1.IpRanges.1.CidrIp", "192.168.0.0/24"),
            ])
            .collect::<Vec<_>>(),
    )
    .expect("revoke");
    assert_eq!(lab.cloud.groups["sg-nodes"].ingress.len(), 2);
}

#[test]
fn the_fabric_enforces_ports_and_knows_prefixes() {
    let mut lab = Lab::new();
    with_groups(&mut lab);
    let eni = lab.create(&[("SecurityGroupId.1", "sg-nodes")]);
    lab.call(&[
        ("Action", "AttachNetworkInterface"),
        ("NetworkInterfaceId", &eni),
        ("InstanceId", "i-nitro"),
        ("DeviceIndex", "1"),
    ])
    .expect("attach");
    lab.call(&[
        ("Action", "AssignPrivateIpAddresses"),
        ("NetworkInterfaceId", &eni),
        ("Ipv4Prefix.1", "10.0.0.64/28"),
    ])
    .expect("prefix");
    lab.call(&[
        ("Action", "AuthorizeSecurityGroupIngress"),
        ("GroupId", "sg-nodes"),
        ("IpPermissions.1.IpProtocol", "tcp"),
        ("IpPermissions.1.FromPort", "80"),
        ("IpPermissions.1.ToPort", "80"),
        ("IpPermissions.1.IpRanges.1.CidrIp", "192.168.1.0/24"),
        ("IpPermissions.2.IpProtocol", "udp"),
        ("IpPermissions.2.FromPort", "1000"),
        ("IpPermissions.2.ToPort", "2000"),
        ("IpPermissions.2.Groups.1.GroupId", "sg-nodes"),
        ("IpPermissions.3.IpProtocol", "icmp"),
        ("IpPermissions.3.FromPort", "8"),
        ("IpPermissions.3.ToPort", "0"),
        ("IpPermissions.3.IpRanges.1.CidrIp", "0.0.0.0/0"),
    ])
    .expect("rules");
    let r = super::fabric::ruleset(&lab.cloud);
    let dev = super::fabric::fabric_ifname("i-nitro", 1);
    assert!(
        r.contains(&format!(
            "oifname \"{dev}\" ip saddr 192.168.1.0/24 tcp dport 80 accept"
        )),
        "{r}"
    );
    assert!(
        r.contains(&format!(
            "oifname \"{dev}\" ip saddr 0.0.0.0/0 meta l4proto icmp icmp type 8 icmp code 0 accept"
        )),
        "{r}"
    );
    // Group members include every address inside the prefix.
    let udp = r
        .lines()
        .find(|l| l.contains("udp dport 1000-2000"))
        .expect("udp rule");
    assert!(
        udp.contains("10.0.0.64") && udp.contains("10.0.0.79"),
        "{udp}"
    );
    // Source/dest check lets the prefix's addresses out.
    let sdc = r
        .lines()
        .find(|l| l.contains(&format!("iifname \"{dev}\"")))
        .expect("source/dest check");
    assert!(sdc.contains("10.0.0.64/28"), "{sdc}");
    // nftables takes it (`-c`: checked, nothing applied).
    if let Ok(mut child) = std::process::Command::new("nft")
        .args(["-c", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        use std::io::Write;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(r.as_bytes()).expect("write ruleset");
        }
        let out = child.wait_with_output().expect("nft");
        assert!(
            out.status.success(),
            "nft -c refused:\n{r}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // No rule opens all ports to the CIDR that only has port 80.
    assert!(
        !r.lines()
            .any(|l| l.contains("192.168.1.0/24") && !l.contains("dport 80")),
        "{r}"
    );
}
