//! Property tests for the EC2 reply decoders: arbitrary text, XML-ish trees
//! and mutated real replies give a value or an `Ec2Error`, never a panic;
//! what a decoder accepts is sound (ids present, numbers exact and small
//! enough that the pool's arithmetic cannot wrap).

use proptest::collection::vec;
use proptest::prelude::*;

use super::*;

const DNI: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<DescribeNetworkInterfacesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <requestId>fc45294c-example</requestId>
  <networkInterfaceSet>
    <item>
      <networkInterfaceId>eni-0f7db9a5ea3b2a1c4</networkInterfaceId>
      <subnetId>subnet-0a1b2c3d</subnetId>
      <vpcId>vpc-11112222</vpcId>
      <availabilityZone>us-east-1a</availabilityZone>
      <description>aws-K8S-i-0123456789abcdef0</description>
      <ownerId>123456789012</ownerId>
      <requesterManaged>false</requesterManaged>
      <status>in-use</status>
      <macAddress>02:1a:80:41:52:9c</macAddress>
      <privateIpAddress>10.0.1.17</privateIpAddress>
      <sourceDestCheck>true</sourceDestCheck>
      <groupSet>
        <item><groupId>sg-0123abcd</groupId><groupName>nodes</groupName></item>
      </groupSet>
      <attachment>
        <attachmentId>eni-attach-0e7a1d2b</attachmentId>
        <instanceId>i-0123456789abcdef0</instanceId>
        <instanceOwnerId>123456789012</instanceOwnerId>
        <deviceIndex>1</deviceIndex>
        <status>attached</status>
        <deleteOnTermination>false</deleteOnTermination>
      </attachment>
      <privateIpAddressesSet>
        <item><privateIpAddress>10.0.1.17</privateIpAddress><primary>true</primary></item>
        <item><privateIpAddress>10.0.1.42</privateIpAddress><primary>false</primary></item>
      </privateIpAddressesSet>
      <interfaceType>interface</interfaceType>
    </item>
  </networkInterfaceSet>
</DescribeNetworkInterfacesResponse>"#;

const CREATE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<CreateNetworkInterfaceResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <requestId>8dbe591e-example</requestId>
  <networkInterface>
    <networkInterfaceId>eni-0cb4f1a7d3e2a9b10</networkInterfaceId>
    <subnetId>subnet-0a1b2c3d</subnetId>
    <vpcId>vpc-11112222</vpcId>
    <description>aws-K8S-i-0123456789abcdef0</description>
    <status>pending</status>
    <macAddress>02:74:b0:72:79:61</macAddress>
    <privateIpAddress>10.0.1.80</privateIpAddress>
    <groupSet><item><groupId>sg-0123abcd</groupId></item></groupSet>
    <privateIpAddressesSet>
      <item><privateIpAddress>10.0.1.80</privateIpAddress><primary>true</primary></item>
      <item><privateIpAddress>10.0.1.81</privateIpAddress><primary>false</primary></item>
    </privateIpAddressesSet>
  </networkInterface>
</CreateNetworkInterfaceResponse>"#;

const ASSIGN: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<AssignPrivateIpAddressesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <requestId>d4904fd9-example</requestId>
  <networkInterfaceId>eni-0f7db9a5ea3b2a1c4</networkInterfaceId>
  <assignedPrivateIpAddressesSet>
    <item><privateIpAddress>10.0.1.43</privateIpAddress></item>
    <item><privateIpAddress>10.0.1.44</privateIpAddress></item>
  </assignedPrivateIpAddressesSet>
  <return>true</return>
</AssignPrivateIpAddressesResponse>"#;

const TYPES: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<DescribeInstanceTypesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <requestId>1b2f3c4d-example</requestId>
  <instanceTypeSet>
    <item>
      <instanceType>m5.large</instanceType>
      <hypervisor>nitro</hypervisor>
      <vCpuInfo><defaultVCpus>2</defaultVCpus></vCpuInfo>
      <networkInfo>
        <maximumNetworkInterfaces>3</maximumNetworkInterfaces>
        <ipv4AddressesPerInterface>10</ipv4AddressesPerInterface>
        <defaultNetworkCardIndex>0</defaultNetworkCardIndex>
      </networkInfo>
    </item>
  </instanceTypeSet>
</DescribeInstanceTypesResponse>"#;

const INSTANCES: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <requestId>8f7724cf-example</requestId>
  <reservationSet>
    <item>
      <reservationId>r-1234567890abcdef0</reservationId>
      <instancesSet>
        <item>
          <instanceId>i-0123456789abcdef0</instanceId>
          <instanceType>m5.large</instanceType>
          <privateIpAddress>10.0.1.17</privateIpAddress>
          <subnetId>subnet-0a1b2c3d</subnetId>
          <vpcId>vpc-11112222</vpcId>
          <groupSet><item><groupId>sg-0123abcd</groupId></item></groupSet>
        </item>
      </instancesSet>
    </item>
  </reservationSet>
</DescribeInstancesResponse>"#;

const ATTACH: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<AttachNetworkInterfaceResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <requestId>ace8cd1e-example</requestId>
  <attachmentId>eni-attach-d94b09b0</attachmentId>
</AttachNetworkInterfaceResponse>"#;

/// A DescribeNetworkInterfaces item with a delegated prefix and tags.
const DNI_PREFIXES: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<DescribeNetworkInterfacesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <networkInterfaceSet>
    <item>
      <networkInterfaceId>eni-0f7db9a5ea3b2a1c4</networkInterfaceId>
      <status>in-use</status>
      <macAddress>02:1a:80:41:52:9c</macAddress>
      <privateIpAddress>10.0.1.17</privateIpAddress>
      <attachment>
        <attachmentId>eni-attach-0e7a1d2b</attachmentId>
        <instanceId>i-0123456789abcdef0</instanceId>
        <deviceIndex>1</deviceIndex>
        <status>attached</status>
      </attachment>
      <privateIpAddressesSet>
        <item><privateIpAddress>10.0.1.17</privateIpAddress><primary>true</primary></item>
      </privateIpAddressesSet>
      <ipv4PrefixSet>
        <item><ipv4Prefix>10.0.1.48/28</ipv4Prefix></item>
      </ipv4PrefixSet>
      <tagSet>
        <item><key>podwire.io/instance-id</key><value>i-0123456789abcdef0</value></item>
        <item><key>podwire.io/created-at</key><value>2026-11-29T13:00:00Z</value></item>
      </tagSet>
    </item>
  </networkInterfaceSet>
</DescribeNetworkInterfacesResponse>"#;

const ASSIGN_PREFIX: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<AssignPrivateIpAddressesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <networkInterfaceId>eni-0f7db9a5ea3b2a1c4</networkInterfaceId>
  <assignedIpv4PrefixSet>
    <item><ipv4Prefix>10.0.1.64/28</ipv4Prefix></item>
  </assignedIpv4PrefixSet>
  <return>true</return>
</AssignPrivateIpAddressesResponse>"#;

const SUBNETS: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<DescribeSubnetsResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <subnetSet>
    <item>
      <subnetId>subnet-0a1b2c3d</subnetId>
      <cidrBlock>10.0.0.0/20</cidrBlock>
      <availableIpAddressCount>4087</availableIpAddressCount>
    </item>
  </subnetSet>
</DescribeSubnetsResponse>"#;

const ERROR: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Response><Errors><Error><Code>PrivateIpAddressLimitExceeded</Code><Message>Number of private addresses will exceed limit.</Message></Error></Errors><RequestID>ea966190-example</RequestID></Response>"#;

/// Runs every decoder on `xml`; each may fail, none may panic, and what
/// one accepts must be sound.
fn decode_all(xml: &str) -> Result<(), TestCaseError> {
    if let Ok(enis) = describe_network_interfaces(xml) {
        for e in &enis {
            check_eni(e)?;
        }
    }
    if let Ok(e) = create_network_interface(xml) {
        check_eni(&e)?;
    }
    if let Ok(a) = assign_private_ip_addresses(xml) {
        for p in &a.prefixes {
            check_prefix(p)?;
        }
    }
    if let Ok(s) = describe_subnets(xml, "subnet-0a1b2c3d") {
        prop_assert!(s.cidr.network() == s.cidr.addr());
    }
    let _ = acknowledged("DetachNetworkInterface", xml);
    if let Ok(t) = describe_instance_types(xml, "m5.large") {
        check_type(&t)?;
    }
    if let Ok(i) = describe_instances(xml, "i-0123456789abcdef0") {
        prop_assert!(!i.id.is_empty());
    }
    if let Ok(id) = attach_network_interface(xml) {
        prop_assert!(!id.is_empty());
    }
    check_error(&error_reply("X", 400, xml))?;
    Ok(())
}

fn check_eni(e: &NetworkInterface) -> Result<(), TestCaseError> {
    prop_assert!(!e.id.is_empty(), "an ENI without an id was accepted");
    prop_assert!(
        e.secondary_ips().all(|ip| ip != e.private_ip),
        "the primary address counted as secondary"
    );
    for p in &e.prefixes {
        check_prefix(p)?;
    }
    prop_assert!(e.tags.len() <= MAX_TAGS);
    prop_assert!(e.private_ips.len() <= MAX_ITEMS && e.prefixes.len() <= MAX_ITEMS);
    Ok(())
}

/// A prefix the pool accepts is a /28 on its boundary: 16 addresses.
fn check_prefix(p: &Ipv4Net) -> Result<(), TestCaseError> {
    prop_assert_eq!(p.prefix_len(), 28, "{}", p);
    prop_assert_eq!(p.network(), p.addr(), "{} is not aligned", p);
    Ok(())
}

/// The pool multiplies these (ENIs × secondary addresses per ENI, in u32):
/// what is accepted must not wrap there.
fn check_type(t: &InstanceTypeNetwork) -> Result<(), TestCaseError> {
    prop_assert!(
        t.max_enis
            .checked_mul(t.ipv4_per_eni.saturating_sub(1))
            .is_some(),
        "{} ENIs × {} addresses would wrap",
        t.max_enis,
        t.ipv4_per_eni
    );
    prop_assert!(t.max_enis >= 1 && t.ipv4_per_eni >= 1);
    Ok(())
}

fn check_error(e: &Ec2Error) -> Result<(), TestCaseError> {
    match e {
        Ec2Error::Api { code, message, .. } => {
            prop_assert!(!code.is_empty(), "an error without a code");
            prop_assert!(message.chars().count() <= MAX_ERROR_MESSAGE);
            prop_assert!(code.chars().count() <= MAX_ERROR_MESSAGE);
        }
        other => prop_assert!(false, "not an API error: {other:?}"),
    }
    Ok(())
}

/// Values a decoder gives meaning to, and their edges.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("0".to_string()),
        Just("1".to_string()),
        Just("-1".to_string()),
        Just("4294967295".to_string()),
        Just("4294967296".to_string()),
        Just("4294967297".to_string()),
        Just("18446744073709551617".to_string()),
        Just("65536".to_string()),
        Just("1e3".to_string()),
        Just("true".to_string()),
        Just("10.0.1.17".to_string()),
        Just("10.0.1.48/28".to_string()),
        Just("10.0.1.49/28".to_string()),
        Just("10.0.1.0/24".to_string()),
        Just("10.0.1.48/32".to_string()),
        Just("0.0.0.0/0".to_string()),
        Just("300.0.0.1".to_string()),
        Just("eni-0f7db9a5ea3b2a1c4".to_string()),
        Just("&amp;&lt;".to_string()),
        any::<u32>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        "[ -~]{0,16}",
    ]
}

/// Element names the decoders look for, and others.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "item",
            "networkInterfaceSet",
            "networkInterface",
            "networkInterfaceId",
            "privateIpAddress",
            "privateIpAddressesSet",
            "primary",
            "attachment",
            "attachmentId",
            "deviceIndex",
            "groupSet",
            "groupId",
            "macAddress",
            "assignedPrivateIpAddressesSet",
            "assignedIpv4PrefixSet",
            "ipv4PrefixSet",
            "ipv4Prefix",
            "tagSet",
            "key",
            "subnetSet",
            "subnetId",
            "cidrBlock",
            "availableIpAddressCount",
            "return",
            "instanceTypeSet",
            "instanceType",
            "networkInfo",
            "maximumNetworkInterfaces",
            "ipv4AddressesPerInterface",
            "reservationSet",
            "instancesSet",
            "instanceId",
            "Errors",
            "Error",
            "Code",
            "Message",
        ])
        .prop_map(str::to_string),
        "[a-zA-Z][a-zA-Z0-9]{0,8}",
    ]
}

#[derive(Debug, Clone)]
enum Tree {
    Text(String),
    Element(String, Vec<Tree>),
}

fn tree() -> impl Strategy<Value = Tree> {
    let leaf = prop_oneof![
        value().prop_map(Tree::Text),
        (name(), value()).prop_map(|(n, v)| Tree::Element(n, vec![Tree::Text(v)])),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        (name(), vec(inner, 0..6)).prop_map(|(n, kids)| Tree::Element(n, kids))
    })
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn render(t: &Tree, out: &mut String) {
    match t {
        Tree::Text(s) => out.push_str(&escape(s)),
        Tree::Element(n, kids) => {
            out.push_str(&format!("<{n}>"));
            for k in kids {
                render(k, out);
            }
            out.push_str(&format!("</{n}>"));
        }
    }
}

/// A well-formed document whose root is one of the real answers' roots.
fn xml_tree() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec![
            "DescribeNetworkInterfacesResponse",
            "CreateNetworkInterfaceResponse",
            "AssignPrivateIpAddressesResponse",
            "DescribeInstanceTypesResponse",
            "DescribeInstancesResponse",
            "AttachNetworkInterfaceResponse",
            "DescribeSubnetsResponse",
            "DetachNetworkInterfaceResponse",
            "Response",
        ]),
        vec(tree(), 0..6),
    )
        .prop_map(|(root, kids)| {
            let mut out = String::new();
            render(&Tree::Element(root.to_string(), kids), &mut out);
            out
        })
}

fn real_reply() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        DNI,
        CREATE,
        ASSIGN,
        TYPES,
        INSTANCES,
        ATTACH,
        ERROR,
        DNI_PREFIXES,
        ASSIGN_PREFIX,
        SUBNETS,
    ])
}

#[derive(Debug, Clone)]
enum Mutation {
    /// Cut `len` bytes somewhere.
    Cut(prop::sample::Index, usize),
    /// Insert text somewhere.
    Insert(prop::sample::Index, String),
    /// Replace the text of the n-th element that has only text.
    Value(usize, String),
    /// Drop the n-th element (with its content).
    Drop(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<prop::sample::Index>(), 1usize..40).prop_map(|(at, len)| Mutation::Cut(at, len)),
        (
            any::<prop::sample::Index>(),
            prop_oneof![
                value(),
                Just("<".to_string()),
                Just("</item>".to_string()),
                Just("<item>".to_string()),
                Just("<!DOCTYPE x [<!ENTITY a \"aaaaaaaa\">]>".to_string()),
                Just("&a;".to_string()),
                Just("<![CDATA[x]]>".to_string()),
                Just("\u{0}".to_string()),
            ]
        )
            .prop_map(|(at, s)| Mutation::Insert(at, s)),
        (any::<usize>(), value()).prop_map(|(n, v)| Mutation::Value(n, v)),
        any::<usize>().prop_map(Mutation::Drop),
    ]
}

/// A byte offset in `s` (its end included), moved back to a char boundary.
fn offset(s: &str, at: &prop::sample::Index) -> usize {
    let mut i = at.index(s.len() + 1);
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// (start, end) of each `<tag>text</tag>` element without children.
fn leaf_elements(s: &str) -> Vec<(usize, usize, usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(open) = s.get(i..).and_then(|r| r.find('<')).map(|p| p + i) {
        let rest = &s[open..];
        let Some(gt) = rest.find('>') else { break };
        let tag = &rest[1..gt];
        if !tag.starts_with(['/', '?', '!']) && !tag.contains(' ') {
            let close = format!("</{tag}>");
            let body_start = open + gt + 1;
            if let Some(c) = s[body_start..].find(&close) {
                let body = &s[body_start..body_start + c];
                if !body.contains('<') {
                    out.push((
                        open,
                        body_start,
                        body_start + c,
                        body_start + c + close.len(),
                    ));
                }
            }
        }
        i = open + 1;
    }
    out
}

fn mutate(s: &str, muts: &[Mutation]) -> String {
    let mut s = s.to_string();
    for m in muts {
        match m {
            Mutation::Cut(at, len) => {
                let a = offset(&s, at);
                let mut b = (a + len).min(s.len());
                while !s.is_char_boundary(b) {
                    b -= 1;
                }
                s.replace_range(a..b, "");
            }
            Mutation::Insert(at, t) => {
                let a = offset(&s, at);
                s.insert_str(a, t);
            }
            Mutation::Value(n, v) => {
                let leaves = leaf_elements(&s);
                if !leaves.is_empty() {
                    let (_, b, e, _) = leaves[n % leaves.len()];
                    s.replace_range(b..e, &escape(v));
                }
            }
            Mutation::Drop(n) => {
                let leaves = leaf_elements(&s);
                if !leaves.is_empty() {
                    let (o, _, _, e) = leaves[n % leaves.len()];
                    s.replace_range(o..e, "");
                }
            }
        }
    }
    s
}

/// Replaces the text of every `<tag>` element.
fn set_all(xml: &str, tag: &str, v: &str) -> String {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut out = String::new();
    let mut rest = xml;
    while let Some(a) = rest.find(&open) {
        let body = &rest[a + open.len()..];
        let Some(b) = body.find(&close) else { break };
        out.push_str(&rest[..a + open.len()]);
        out.push_str(&escape(v));
        rest = &body[b..];
    }
    out.push_str(rest);
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_text_gives_an_error_not_a_panic(s in any::<String>()) {
        decode_all(&s)?;
    }

    #[test]
    fn xml_trees_give_an_error_not_a_panic(xml in xml_tree()) {
        decode_all(&xml)?;
    }

    #[test]
    fn mutated_real_replies_give_an_error_not_a_panic(
        reply in real_reply(),
        muts in vec(mutation(), 1..4),
    ) {
        decode_all(&mutate(reply, &muts))?;
    }

    /// Whatever the limits say, the decoder accepts them only if the pool
    /// can compute with them.
    #[test]
    fn instance_type_numbers_never_wrap(enis in value(), ips in value()) {
        let xml = set_all(&set_all(TYPES, "maximumNetworkInterfaces", &enis), "ipv4AddressesPerInterface", &ips);
        match describe_instance_types(&xml, "m5.large") {
            Ok(t) => {
                check_type(&t)?;
                prop_assert_eq!(Some(t.max_enis), enis.trim().parse::<u32>().ok());
                prop_assert_eq!(Some(t.ipv4_per_eni), ips.trim().parse::<u32>().ok());
            }
            Err(e) => prop_assert!(matches!(e, Ec2Error::Parse { .. }), "{e:?}"),
        }
    }

    /// A device index is taken exactly or refused: never read as 0 (the
    /// primary ENI) because it did not parse.
    #[test]
    fn device_indexes_are_exact(v in value()) {
        let xml = set_all(DNI, "deviceIndex", &v);
        if let Ok(enis) = describe_network_interfaces(&xml) {
            let got = enis[0].attachment.as_ref().map(|a| a.device_index);
            let expected = v.trim().parse::<u32>().ok().filter(|n| *n < MAX_ENIS);
            prop_assert_eq!(Some(expected), Some(got), "{:?}", v);
        }
    }

    /// A prefix is taken exactly when it is an aligned /28, else the whole
    /// answer is refused: never a wider range read as a /28, never an
    /// unaligned one.
    #[test]
    fn prefixes_are_aligned_28s_or_refused(v in value()) {
        for xml in [set_all(DNI_PREFIXES, "ipv4Prefix", &v), set_all(ASSIGN_PREFIX, "ipv4Prefix", &v)] {
            let got = describe_network_interfaces(&xml)
                .map(|e| e[0].prefixes.clone())
                .or_else(|_| assign_private_ip_addresses(&xml).map(|a| a.prefixes));
            let want = v.trim().parse::<Ipv4Net>().ok().filter(|n| n.prefix_len() == 28 && n.network() == n.addr());
            match (got, want) {
                (Ok(p), Some(w)) => prop_assert_eq!(p, vec![w]),
                (Err(_), None) => {}
                (got, want) => prop_assert!(false, "{:?}: got {:?}, want {:?}", v, got, want),
            }
        }
    }

    /// The primary address, flagged or not, never counts as secondary.
    #[test]
    fn the_primary_is_never_secondary(flag in prop_oneof![Just("true"), Just("false"), Just(""), Just("TRUE")]) {
        let xml = DNI.replace("<primary>true</primary>", &format!("<primary>{flag}</primary>"));
        if let Ok(enis) = describe_network_interfaces(&xml) {
            prop_assert!(enis[0].secondary_ips().all(|ip| ip != Ipv4Addr::new(10, 0, 1, 17)));
        }
    }

    #[test]
    fn error_replies_are_bounded(status in any::<u16>(), code in value(), msg in "[ -~\u{a0}-\u{d7ff}]{0,3000}") {
        let xml = set_all(&set_all(ERROR, "Code", &code), "Message", &msg);
        let e = error_reply("X", status, &xml);
        check_error(&e)?;
        prop_assert_eq!(e.code().map(str::to_string), Some(if code.trim().is_empty() { format!("HTTP{status}") } else { code.trim().chars().take(MAX_ERROR_MESSAGE).collect() }));
    }
}

#[test]
fn real_replies_decode() {
    let enis = describe_network_interfaces(DNI).expect("dni");
    assert_eq!(enis.len(), 1);
    assert_eq!(enis[0].id, "eni-0f7db9a5ea3b2a1c4");
    assert_eq!(enis[0].attachment.as_ref().map(|a| a.device_index), Some(1));
    assert_eq!(
        enis[0].secondary_ips().collect::<Vec<_>>(),
        vec![Ipv4Addr::new(10, 0, 1, 42)]
    );
    let e = create_network_interface(CREATE).expect("create");
    assert_eq!(e.mac, "02:74:b0:72:79:61");
    assert_eq!(
        assign_private_ip_addresses(ASSIGN).expect("assign").ips,
        vec![Ipv4Addr::new(10, 0, 1, 43), Ipv4Addr::new(10, 0, 1, 44)]
    );
    let p = describe_network_interfaces(DNI_PREFIXES).expect("dni with prefixes");
    assert_eq!(
        p[0].prefixes,
        vec!["10.0.1.48/28".parse::<Ipv4Net>().expect("net")]
    );
    assert_eq!(
        p[0].tag("podwire.io/instance-id"),
        Some("i-0123456789abcdef0")
    );
    assert_eq!(
        assign_private_ip_addresses(ASSIGN_PREFIX)
            .expect("assign prefix")
            .prefixes
            .len(),
        1
    );
    let s = describe_subnets(SUBNETS, "subnet-0a1b2c3d").expect("subnets");
    assert_eq!(
        (s.cidr.to_string(), s.available),
        ("10.0.0.0/20".into(), 4087)
    );
    let t = describe_instance_types(TYPES, "m5.large").expect("types");
    assert_eq!((t.max_enis, t.ipv4_per_eni, t.vcpus), (3, 10, Some(2)));
    let no_vcpus = TYPES.replace("<vCpuInfo><defaultVCpus>2</defaultVCpus></vCpuInfo>", "");
    assert_eq!(
        describe_instance_types(&no_vcpus, "m5.large")
            .expect("types")
            .vcpus,
        None
    );
    let junk = set_all(TYPES, "defaultVCpus", "-2");
    assert!(describe_instance_types(&junk, "m5.large").is_err());
    assert_eq!(
        describe_instances(INSTANCES, "i-0123456789abcdef0")
            .expect("instances")
            .private_ip,
        Ipv4Addr::new(10, 0, 1, 17)
    );
    assert_eq!(
        attach_network_interface(ATTACH).expect("attach"),
        "eni-attach-d94b09b0"
    );
    assert_eq!(
        error_reply("X", 400, ERROR).code(),
        Some("PrivateIpAddressLimitExceeded")
    );
}

/// A 2xx whose body is something else (an error document, another
/// action's answer) is not an empty answer: a missing ENI list would make
/// the agent forget its ENIs, a missing address list leak what was assigned.
#[test]
fn an_answer_to_something_else_is_an_error() {
    for other in [ERROR, TYPES, "<DescribeNetworkInterfacesResponse/>"] {
        assert!(
            describe_network_interfaces(other).is_err(),
            "DNI accepted {other}"
        );
    }
    for other in [ERROR, DNI, "<AssignPrivateIpAddressesResponse/>"] {
        assert!(
            assign_private_ip_addresses(other).is_err(),
            "assign accepted {other}"
        );
    }
    for other in [ERROR, DNI] {
        assert!(
            attach_network_interface(other).is_err(),
            "attach accepted {other}"
        );
        assert!(create_network_interface(other).is_err());
        assert!(describe_instance_types(other, "m5.large").is_err());
    }
}

#[test]
fn an_eni_without_an_id_is_refused() {
    let xml = DNI.replace(
        "<networkInterfaceId>eni-0f7db9a5ea3b2a1c4</networkInterfaceId>",
        "",
    );
    assert!(describe_network_interfaces(&xml).is_err());
}

#[test]
fn a_junk_device_index_is_refused_not_read_as_the_primary() {
    for v in ["4294967297", "4294967295", "1024", "-1", "one", ""] {
        let xml = set_all(DNI, "deviceIndex", v);
        assert!(describe_network_interfaces(&xml).is_err(), "{v:?}");
    }
}

#[test]
fn absurd_instance_type_limits_are_refused() {
    let xml = set_all(
        &set_all(TYPES, "maximumNetworkInterfaces", "65536"),
        "ipv4AddressesPerInterface",
        "65537",
    );
    assert!(describe_instance_types(&xml, "m5.large").is_err());
    let xml = set_all(TYPES, "maximumNetworkInterfaces", "0");
    assert!(describe_instance_types(&xml, "m5.large").is_err());
}

#[test]
fn an_error_without_a_code_names_the_status_and_long_messages_are_cut() {
    let long = "m".repeat(10_000);
    let xml = set_all(&set_all(ERROR, "Code", ""), "Message", &long);
    let e = error_reply("X", 503, &xml);
    assert_eq!(e.code(), Some("HTTP503"));
    let Ec2Error::Api { message, .. } = e else {
        panic!("not an API error")
    };
    assert_eq!(message.len(), MAX_ERROR_MESSAGE);
}

#[test]
fn deep_nesting_is_an_error_or_a_value() {
    let depth = 100_000;
    let xml = format!(
        "<DescribeNetworkInterfacesResponse>{}{}</DescribeNetworkInterfacesResponse>",
        "<a>".repeat(depth),
        "</a>".repeat(depth)
    );
    let _ = describe_network_interfaces(&xml);
    let _ = error_reply("X", 500, &xml);
}

#[test]
fn too_many_items_or_tags_are_refused() {
    let many: String = (0..=MAX_ITEMS)
        .map(|_| "<item><privateIpAddress>10.0.1.42</privateIpAddress></item>")
        .collect();
    let xml = DNI.replace(
        "<item><privateIpAddress>10.0.1.42</privateIpAddress><primary>false</primary></item>",
        &many,
    );
    assert!(describe_network_interfaces(&xml).is_err());
    let tags: String = (0..=MAX_TAGS)
        .map(|i| format!("<item><key>k{i}</key><value>v</value></item>"))
        .collect();
    let xml = DNI_PREFIXES.replace(
        "<item><key>podwire.io/created-at</key><value>2026-11-29T13:00:00Z</value></item>",
        &tags,
    );
    assert!(describe_network_interfaces(&xml).is_err());
    let long_key = DNI_PREFIXES.replace("podwire.io/created-at", &"k".repeat(129));
    assert!(describe_network_interfaces(&long_key).is_err());
}

#[test]
fn an_assign_answer_with_neither_set_and_a_false_return_are_errors() {
    assert!(assign_private_ip_addresses("<AssignPrivateIpAddressesResponse><return>true</return></AssignPrivateIpAddressesResponse>").is_err());
    assert!(acknowledged(
        "DetachNetworkInterface",
        "<DetachNetworkInterfaceResponse><return>false</return></DetachNetworkInterfaceResponse>"
    )
    .is_err());
    assert!(acknowledged("DetachNetworkInterface", DNI).is_err());
    assert!(describe_subnets(SUBNETS, "subnet-other").is_err());
}
