//! Property tests for the IMDS decoders: arbitrary answers give a value or
//! an `ImdsError`, never a panic, and what passes is safe where it goes (a
//! header, a metadata path, the EC2 endpoint's host).

use std::str::FromStr;

use proptest::collection::{btree_set, vec};
use proptest::prelude::*;
use serde_json::{json, Value};
use ureq::http::{HeaderValue, Uri};

use super::*;

/// Text a decoder might meet: anything, and near misses of what it wants.
fn answer() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[ -~\n]{0,40}",
        "([0-9a-fA-F]{1,3}:){5}[0-9a-fA-F]{1,3}/?",
        "[a-z0-9.\\-/@:#?]{0,24}",
        "[0-9]{1,12}",
        Just("4294967295".to_string()),
        Just("..".to_string()),
    ]
}

fn mac_strategy() -> impl Strategy<Value = String> {
    any::<[u8; 6]>().prop_map(|b| {
        b.iter()
            .map(|x| format!("{x:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    })
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        answer().prop_map(Value::String),
        Just(json!("Success")),
        Just(json!("")),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| vec(inner, 0..4).prop_map(Value::Array))
}

fn credentials_doc() -> impl Strategy<Value = Value> {
    vec(
        (
            prop::sample::select(vec![
                "Code",
                "Type",
                "AccessKeyId",
                "SecretAccessKey",
                "Token",
                "Expiration",
                "Other",
            ]),
            json_value(),
        ),
        0..7,
    )
    .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn a_token_that_passes_is_a_header_value(body in answer()) {
        if let Ok(t) = token(&body) {
            prop_assert!(!t.is_empty() && t.len() <= MAX_TOKEN);
            prop_assert!(HeaderValue::from_str(&t).is_ok());
        }
    }

    #[test]
    fn macs_that_pass_are_macs(body in answer()) {
        if let Ok(m) = mac("mac", &body) {
            prop_assert_eq!(m.len(), 17);
            prop_assert!(m.split(':').all(|p| u8::from_str_radix(p, 16).is_ok()));
        }
    }

    #[test]
    fn mac_listings_never_panic(body in vec(answer(), 0..6).prop_map(|l| l.join("\n"))) {
        if let Ok(macs) = mac_listing("macs", &body) {
            prop_assert!(macs.len() <= MAX_ENIS);
            for m in &macs {
                prop_assert!(mac("m", m).is_ok());
            }
        }
    }

    #[test]
    fn mac_listings_round_trip(
        macs in btree_set(mac_strategy(), 0..8),
        slash in any::<bool>(),
        pad in "[ \t]{0,2}",
    ) {
        let body: String = macs
            .iter()
            .map(|m| format!("{pad}{m}{}{pad}\n", if slash { "/" } else { "" }))
            .collect();
        let got = mac_listing("macs", &body).expect("listing");
        prop_assert_eq!(got, macs.into_iter().collect::<Vec<_>>());
    }

    /// Whatever passes builds an endpoint on AWS's domain.
    #[test]
    fn a_region_that_passes_stays_on_the_endpoint_host(body in answer()) {
        if let Ok(r) = region("region", &body) {
            let host = format!("ec2.{r}.amazonaws.com");
            let uri = Uri::from_str(&format!("https://{host}/")).expect("uri");
            prop_assert_eq!(uri.host(), Some(host.as_str()));
            prop_assert_eq!(uri.port(), None);
        }
    }

    #[test]
    fn a_role_that_passes_is_one_path_segment(body in answer()) {
        if let Ok(r) = role("role", &body) {
            prop_assert!(!r.contains(['/', '?', '#', '%']) && r != "." && r != "..");
            let uri = format!("http://127.0.0.1/latest/meta-data/iam/security-credentials/{r}");
            let parsed = Uri::from_str(&uri).expect("uri");
            prop_assert_eq!(parsed.path(), &uri["http://127.0.0.1".len()..]);
        }
    }

    #[test]
    fn ids_and_numbers_never_panic(body in answer()) {
        if let Ok(i) = id("id", &body) {
            prop_assert!(HeaderValue::from_str(&i).is_ok() && !i.contains('/'));
        }
        if let Ok(n) = device_number("device-number", &body) {
            prop_assert!(n < crate::ec2_reply::MAX_ENIS);
            prop_assert_eq!(Some(n), body.trim().parse::<u32>().ok());
        }
        let _ = ipv4_list("local-ipv4s", &body);
        let _ = value::<ipnet::Ipv4Net>("cidr", &body);
        prop_assert!(list(&body).iter().all(|l| !l.trim().is_empty()));
    }

    #[test]
    fn credentials_that_pass_can_be_sent(doc in credentials_doc(), raw in any::<String>()) {
        let _ = credentials("c", &raw);
        if let Ok(c) = credentials("c", &doc.to_string()) {
            prop_assert!(doc.get("Code").is_none_or(|c| c == "Success"));
            prop_assert!(HeaderValue::from_str(&c.access_key_id).is_ok());
            prop_assert!(!c.secret_access_key.is_empty());
            if let Some(t) = &c.session_token {
                prop_assert!(HeaderValue::from_str(t).is_ok() && !t.is_empty());
            }
        }
    }

    #[test]
    fn credentials_round_trip(
        ak in "[A-Z0-9]{16,20}",
        sk in "[A-Za-z0-9/+]{40}",
        token in proptest::option::of("[A-Za-z0-9/+=]{1,200}"),
    ) {
        let doc = json!({
            "Code": "Success", "Type": "AWS-HMAC", "AccessKeyId": ak,
            "SecretAccessKey": sk, "Token": token, "Expiration": "2099-01-01T00:00:00Z",
        });
        let c = credentials("c", &doc.to_string()).expect("credentials");
        prop_assert_eq!(c, Credentials { access_key_id: ak, secret_access_key: sk, session_token: token });
    }
}
