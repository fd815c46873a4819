//! The client against a fake IMDS on loopback: what a broken or hostile
//! metadata service answers is refused before it is used.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::*;
use crate::imds_answer::MAX_TOKEN;

/// Answers `PUT /latest/api/token` with `token` and `GET
/// /latest/meta-data/<path>` from `answers` (404 otherwise), one request per
/// connection.
struct FakeImds {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn read_head(conn: &mut TcpStream) -> Option<String> {
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
        if conn.read(&mut byte).ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    String::from_utf8(head).ok()
}

impl FakeImds {
    fn start(token: &str, answers: BTreeMap<String, String>) -> FakeImds {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let token = token.to_string();
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                let Some(head) = read_head(&mut conn) else {
                    continue;
                };
                let mut first = head.split_whitespace();
                let (method, path) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
                let answer = match (method, path.strip_prefix("/latest/meta-data/")) {
                    ("PUT", _) if path == "/latest/api/token" => Some(token.clone()),
                    ("GET", Some(p)) => answers.get(p).cloned(),
                    _ => None,
                };
                let (status, body) = match answer {
                    Some(b) => ("200 OK", b),
                    None => ("404 Not Found", "Not Found".to_string()),
                };
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        FakeImds {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for FakeImds {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const MAC: &str = "0e:00:00:00:00:01";

/// A consistent instance with one ENI.
fn instance() -> BTreeMap<String, String> {
    let eni = format!("network/interfaces/macs/{MAC}");
    let mut m = BTreeMap::new();
    for (k, v) in [
        ("mac", MAC.to_string()),
        ("network/interfaces/macs/", format!("{MAC}/")),
        (&format!("{eni}/local-ipv4s"), "10.0.0.10\n10.0.0.11".into()),
        (&format!("{eni}/interface-id"), "eni-0123".into()),
        (&format!("{eni}/device-number"), "0".into()),
        (&format!("{eni}/subnet-id"), "subnet-a".into()),
        (&format!("{eni}/subnet-ipv4-cidr-block"), "10.0.0.0/24".into()),
        (&format!("{eni}/vpc-ipv4-cidr-block"), "10.0.0.0/16".into()),
        (&format!("{eni}/security-group-ids"), "sg-1\nsg-2".into()),
        ("placement/availability-zone", "us-east-1a".into()),
        ("placement/region", "us-east-1".into()),
        ("instance-id", "i-0123456789abcdef0".into()),
        ("instance-type", "m5.large".into()),
        ("local-ipv4", "10.0.0.10".into()),
        ("iam/security-credentials/", "node-role".into()),
        (
            "iam/security-credentials/node-role",
            r#"{"Code":"Success","Type":"AWS-HMAC","AccessKeyId":"AKIDEXAMPLE","SecretAccessKey":"secret","Token":"session","Expiration":"2099-01-01T00:00:00Z"}"#.into(),
        ),
    ] {
        m.insert(k.to_string(), v);
    }
    m
}

fn with(changes: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut m = instance();
    for (k, v) in changes {
        m.insert(k.to_string(), v.to_string());
    }
    m
}

fn is_parse<T: std::fmt::Debug>(r: &Result<T, ImdsError>) -> bool {
    matches!(r, Err(ImdsError::Parse { .. }))
}

#[test]
fn a_consistent_instance_is_read() {
    let fake = FakeImds::start("AQAEAtoken", instance());
    let imds = Imds::connect(&fake.endpoint()).expect("connect");
    let id = imds.identity().expect("identity");
    assert_eq!(id.region, "us-east-1");
    assert_eq!(id.enis.len(), 1);
    assert_eq!(id.enis[0].security_groups, vec!["sg-1", "sg-2"]);
    assert_eq!(id.enis[0].local_ipv4s.len(), 2);
    let c = imds.credentials().expect("credentials");
    assert_eq!(c.session_token.as_deref(), Some("session"));
}

/// The agent builds `https://ec2.<region>.amazonaws.com` and sends it
/// signed requests: a region that is really a host must not pass.
#[test]
fn a_region_that_names_another_host_is_refused() {
    for region in [
        "evil.example/x?",
        "us-east-1.evil.example#",
        "a@b",
        "US-EAST-1",
    ] {
        let fake = FakeImds::start("AQAEAtoken", with(&[("placement/region", region)]));
        let imds = Imds::connect(&fake.endpoint()).expect("connect");
        assert!(is_parse(&imds.identity()), "{region:?}");
    }
}

/// A MAC listing line becomes part of the next paths.
#[test]
fn a_mac_listing_that_is_not_macs_is_refused() {
    let mut answers = with(&[("network/interfaces/macs/", "x/")]);
    for (k, v) in instance() {
        if let Some(rest) = k.strip_prefix(&format!("network/interfaces/macs/{MAC}/")) {
            answers.insert(format!("network/interfaces/macs/x/{rest}"), v);
        }
    }
    let fake = FakeImds::start("AQAEAtoken", answers);
    let imds = Imds::connect(&fake.endpoint()).expect("connect");
    assert!(is_parse(&imds.identity()));
}

#[test]
fn a_mac_listed_twice_is_refused() {
    let fake = FakeImds::start(
        "AQAEAtoken",
        with(&[("network/interfaces/macs/", &format!("{MAC}/\n{MAC}/"))]),
    );
    let imds = Imds::connect(&fake.endpoint()).expect("connect");
    assert!(is_parse(&imds.identity()));
}

/// Device numbers pick route tables (number + 1): u32::MAX - 1 and
/// u32::MAX would share one.
#[test]
fn an_absurd_device_number_is_refused() {
    let key = format!("network/interfaces/macs/{MAC}/device-number");
    for n in ["4294967295", "4294967294", "1024"] {
        let fake = FakeImds::start("AQAEAtoken", with(&[(&key, n)]));
        let imds = Imds::connect(&fake.endpoint()).expect("connect");
        assert!(is_parse(&imds.identity()), "{n}");
    }
}

#[test]
fn empty_security_group_lines_are_skipped() {
    let key = format!("network/interfaces/macs/{MAC}/security-group-ids");
    let fake = FakeImds::start("AQAEAtoken", with(&[(&key, "sg-1\n\n  \nsg-2")]));
    let imds = Imds::connect(&fake.endpoint()).expect("connect");
    let id = imds.identity().expect("identity");
    assert_eq!(id.enis[0].security_groups, vec!["sg-1", "sg-2"]);
}

/// The token goes back as a header.
#[test]
fn a_token_that_is_not_a_header_value_is_refused() {
    for token in ["tok\u{1}en", "two words", "", &"t".repeat(MAX_TOKEN + 1)] {
        let fake = FakeImds::start(token, instance());
        assert!(is_parse(&Imds::connect(&fake.endpoint())), "{token:?}");
    }
}

/// The role name becomes part of the next path.
#[test]
fn a_role_that_is_a_path_is_refused() {
    let doc = instance()["iam/security-credentials/node-role"].clone();
    for role in ["a/b", "..", "role?x"] {
        let fake = FakeImds::start(
            "AQAEAtoken",
            with(&[
                ("iam/security-credentials/", role),
                (&format!("iam/security-credentials/{role}"), &doc),
            ]),
        );
        let imds = Imds::connect(&fake.endpoint()).expect("connect");
        assert!(is_parse(&imds.credentials()), "{role:?}");
    }
}

#[test]
fn failed_or_unusable_credentials_are_refused() {
    for doc in [
        r#"{"Code":"AssumeRoleUnauthorizedAccess","AccessKeyId":"AKID","SecretAccessKey":"s"}"#,
        r#"{"Code":"Success","AccessKeyId":"AK\nID","SecretAccessKey":"s"}"#,
        r#"{"Code":"Success","AccessKeyId":"AKID","SecretAccessKey":"s","Token":"a b"}"#,
        r#"{"Code":"Success","AccessKeyId":"","SecretAccessKey":"s"}"#,
        r#"{"Code":"Success","AccessKeyId":"AKID","SecretAccessKey":7}"#,
    ] {
        let fake = FakeImds::start(
            "AQAEAtoken",
            with(&[("iam/security-credentials/node-role", doc)]),
        );
        let imds = Imds::connect(&fake.endpoint()).expect("connect");
        assert!(is_parse(&imds.credentials()), "{doc}");
    }
}

/// The lab's IMDS sends `"Token": ""` for long-term keys: no token.
#[test]
fn an_empty_session_token_is_none() {
    let fake = FakeImds::start(
        "AQAEAtoken",
        with(&[(
            "iam/security-credentials/node-role",
            r#"{"Code":"Success","AccessKeyId":"AKID","SecretAccessKey":"s","Token":""}"#,
        )]),
    );
    let imds = Imds::connect(&fake.endpoint()).expect("connect");
    assert_eq!(imds.credentials().expect("credentials").session_token, None);
}
