//! The client against a loopback server that answers what each test
//! scripts: retries, their budget, the ClientToken kept across retries,
//! and the parameters of the new calls as EC2 documents them.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;

use crate::testing::{serve, Answer};

/// A server on 127.0.0.1 answering requests in order with `script` (the
/// last answer repeats); returns the client and the request bodies seen.
fn server(script: Vec<Answer>) -> (Ec2Client, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let endpoint = serve(move |body, n| {
        log.lock()
            .expect("log")
            .push(String::from_utf8_lossy(body).into_owned());
        script[n.min(script.len() - 1)].clone()
    });
    let client = Ec2Client::new(
        &endpoint,
        "us-east-1",
        Credentials {
            access_key_id: "AKIAPWT".into(),
            secret_access_key: "pwt".into(),
            session_token: None,
        },
    )
    .with_retry(RetryPolicy {
        budget: Duration::from_secs(5),
        base: Duration::from_millis(10),
        cap: Duration::from_millis(50),
    });
    (client, seen)
}

fn throttled() -> Answer {
    Answer::Reply(
        503,
        "<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message></Error></Errors></Response>".into(),
    )
}

fn refused(code: &str) -> Answer {
    Answer::Reply(
        400,
        format!("<Response><Errors><Error><Code>{code}</Code><Message>no</Message></Error></Errors></Response>"),
    )
}

const CREATED: &str = "<CreateNetworkInterfaceResponse><networkInterface><networkInterfaceId>eni-1</networkInterfaceId><macAddress>02:00:00:00:00:01</macAddress><privateIpAddress>10.0.1.80</privateIpAddress><privateIpAddressesSet><item><privateIpAddress>10.0.1.80</privateIpAddress><primary>true</primary></item></privateIpAddressesSet><tagSet><item><key>podwire.io/instance-id</key><value>i-1</value></item></tagSet></networkInterface></CreateNetworkInterfaceResponse>";

fn param(body: &str, key: &str) -> Option<String> {
    form_urlencoded::parse(body.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

fn create(c: &Ec2Client, token: &str) -> Result<NetworkInterface, Ec2Error> {
    let tags = vec![
        (TAG_INSTANCE_ID.to_string(), "i-1".to_string()),
        (
            TAG_CREATED_AT.to_string(),
            "2026-11-29T13:00:00Z".to_string(),
        ),
    ];
    c.create_network_interface(&CreateEni {
        subnet_id: "subnet-1",
        description: "podwire-i-1",
        groups: &["sg-1".to_string()],
        addresses: AddressRequest::Prefixes(2),
        tags: &tags,
        client_token: token,
    })
}

#[test]
fn throttling_and_5xx_are_retried_until_an_answer() {
    let (c, seen) = server(vec![
        throttled(),
        Answer::Reply(500, "<Response><Errors><Error><Code>InternalError</Code><Message>x</Message></Error></Errors></Response>".into()),
        Answer::Reply(200, CREATED.into()),
    ]);
    let eni = create(&c, "tok-1").expect("created after two retries");
    assert_eq!(eni.id, "eni-1");
    assert_eq!(eni.tag(TAG_INSTANCE_ID), Some("i-1"));
    assert_eq!(seen.lock().expect("seen").len(), 3);
}

/// A lost reply (the cloud may have created the ENI) is retried with the
/// same ClientToken, so EC2 answers with that ENI instead of a second one.
#[test]
fn a_retry_after_a_lost_reply_sends_the_same_client_token() {
    let (c, seen) = server(vec![Answer::Drop, Answer::Reply(200, CREATED.into())]);
    create(&c, "tok-lost").expect("created");
    let seen = seen.lock().expect("seen");
    assert_eq!(seen.len(), 2, "{seen:?}");
    for body in seen.iter() {
        assert_eq!(param(body, "ClientToken").as_deref(), Some("tok-lost"));
        assert_eq!(param(body, "Ipv4PrefixCount").as_deref(), Some("2"));
        assert_eq!(param(body, "SecondaryPrivateIpAddressCount"), None);
        assert_eq!(
            param(body, "TagSpecification.1.ResourceType").as_deref(),
            Some("network-interface")
        );
        assert_eq!(
            param(body, "TagSpecification.1.Tag.1.Key").as_deref(),
            Some(TAG_INSTANCE_ID)
        );
        assert_eq!(
            param(body, "TagSpecification.1.Tag.1.Value").as_deref(),
            Some("i-1")
        );
        assert_eq!(
            param(body, "TagSpecification.1.Tag.2.Key").as_deref(),
            Some(TAG_CREATED_AT)
        );
    }
}

#[test]
fn a_refusal_on_the_merits_is_not_retried() {
    let (c, seen) = server(vec![refused("InsufficientCidrBlocks")]);
    let e = c
        .assign_addresses("eni-1", AddressRequest::Prefixes(1))
        .expect_err("refused");
    assert_eq!(e.code(), Some("InsufficientCidrBlocks"));
    assert_eq!(seen.lock().expect("seen").len(), 1);
}

#[test]
fn retries_stop_at_the_budget() {
    let (c, _seen) = server(vec![throttled()]);
    let c = c.with_retry(RetryPolicy {
        budget: Duration::from_millis(400),
        base: Duration::from_millis(20),
        cap: Duration::from_millis(100),
    });
    let started = Instant::now();
    let e = c.describe_subnet("subnet-1").expect_err("always throttled");
    assert_eq!(e.code(), Some("RequestLimitExceeded"));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

/// A single operator call (`call`) is one attempt, as before.
#[test]
fn call_is_a_single_attempt() {
    let (c, seen) = server(vec![throttled(), Answer::Reply(200, CREATED.into())]);
    assert!(c.call("CreateNetworkInterface", &[]).is_err());
    assert_eq!(seen.lock().expect("seen").len(), 1);
}

#[test]
fn prefixes_detach_and_subnets_use_ec2_s_parameters() {
    let (c, seen) = server(vec![
        Answer::Reply(200, "<AssignPrivateIpAddressesResponse><assignedIpv4PrefixSet><item><ipv4Prefix>10.0.1.32/28</ipv4Prefix></item></assignedIpv4PrefixSet></AssignPrivateIpAddressesResponse>".into()),
        Answer::Reply(200, "<UnassignPrivateIpAddressesResponse><return>true</return></UnassignPrivateIpAddressesResponse>".into()),
        Answer::Reply(200, "<DetachNetworkInterfaceResponse><return>true</return></DetachNetworkInterfaceResponse>".into()),
        Answer::Reply(200, "<DescribeSubnetsResponse><subnetSet><item><subnetId>subnet-1</subnetId><cidrBlock>10.0.0.0/20</cidrBlock><availableIpAddressCount>4000</availableIpAddressCount></item></subnetSet></DescribeSubnetsResponse>".into()),
    ]);
    let got = c
        .assign_addresses("eni-1", AddressRequest::Prefixes(1))
        .expect("assign");
    assert_eq!(
        got.prefixes,
        vec!["10.0.1.32/28".parse::<Ipv4Net>().expect("net")]
    );
    assert!(got.ips.is_empty());
    c.unassign_ipv4_prefixes("eni-1", &got.prefixes)
        .expect("unassign");
    c.detach_network_interface("eni-attach-1", true)
        .expect("detach");
    let s = c.describe_subnet("subnet-1").expect("subnet");
    assert_eq!(
        (s.cidr.to_string(), s.available),
        ("10.0.0.0/20".into(), 4000)
    );
    let seen = seen.lock().expect("seen");
    assert_eq!(param(&seen[0], "Ipv4PrefixCount").as_deref(), Some("1"));
    assert_eq!(
        param(&seen[1], "Ipv4Prefix.1").as_deref(),
        Some("10.0.1.32/28")
    );
    assert_eq!(
        param(&seen[2], "AttachmentId").as_deref(),
        Some("eni-attach-1")
    );
    assert_eq!(param(&seen[2], "Force").as_deref(), Some("true"));
    assert_eq!(param(&seen[3], "SubnetId.1").as_deref(), Some("subnet-1"));
}

#[test]
fn backoff_ceilings_grow_exponentially_to_the_cap_and_never_overflow() {
    let p = RetryPolicy {
        budget: Duration::from_secs(20),
        base: Duration::from_millis(100),
        cap: Duration::from_secs(5),
    };
    let c: Vec<u128> = (0..8).map(|a| p.ceiling(a).as_millis()).collect();
    assert_eq!(c, vec![100, 200, 400, 800, 1600, 3200, 5000, 5000]);
    assert_eq!(p.ceiling(u32::MAX), Duration::from_secs(5));
    for _ in 0..100 {
        assert!(full_jitter(Duration::from_millis(300)) <= Duration::from_millis(300));
    }
}

#[test]
fn client_tokens_are_unique_and_at_most_64_ascii_characters() {
    let a = client_token(&"i-0123456789abcdef0".repeat(5));
    let b = client_token("i-1");
    assert_ne!(a, b);
    for t in [&a, &b] {
        assert!(t.len() <= 64 && t.is_ascii(), "{t}");
    }
    assert!(b.starts_with("i-1-"));
}
