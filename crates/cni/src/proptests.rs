//! Property tests for every parser of outside input in this crate: the
//! network config on stdin, the environment and CNI_ARGS, prevResult and
//! cniVersion. Arbitrary input gives a CNI error with a code the parser is
//! documented to use, never a panic; results round-trip through every
//! version's shape, losing only what that version cannot carry.

use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::os::unix::ffi::OsStringExt;

use ipnet::Ipv4Net;
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

use crate::config::{requested_version, PODWIRE_KEYS, SPEC_KEYS};
use crate::env::parse_cni_args;
use crate::result::Dns;
use crate::version::SUPPORTED;
use crate::{CniResult, Interface, Invocation, IpConfig, NetConf, RouteEntry, Version};

/// Any JSON value, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop::num::f64::NORMAL.prop_map(Value::from),
        any::<String>().prop_map(Value::String),
        interesting_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            btree_map(key(), inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Strings a parser gives meaning to, so the properties reach past the
/// first type check.
fn interesting_string() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("1.1.0".to_string()),
        Just("0.3.0".to_string()),
        Just("vpc".to_string()),
        Just("overlay".to_string()),
        Just("/run/podwire/agent.sock".to_string()),
        Just("10.0.0.1/32".to_string()),
        Just("eni".to_string()),
        "[a-z0-9./:-]{0,12}",
    ]
}

/// Object keys: the ones the config parser knows, and others.
fn key() -> impl Strategy<Value = String> {
    let known: Vec<String> = SPEC_KEYS
        .iter()
        .chain(PODWIRE_KEYS)
        .chain(&["cni.dev/valid-attachments", "cni.dev/attachments"])
        .map(|k| k.to_string())
        .collect();
    prop_oneof![
        3 => prop::sample::select(known),
        1 => any::<String>(),
    ]
}

fn ipv4net() -> impl Strategy<Value = Ipv4Net> {
    (any::<u32>(), 0u8..=32)
        .prop_map(|(a, p)| Ipv4Net::new(Ipv4Addr::from(a), p).unwrap_or_default())
}

fn cni_result() -> impl Strategy<Value = CniResult> {
    let iface = (
        any::<String>(),
        any::<String>(),
        proptest::option::of(any::<u32>()),
        any::<String>(),
    )
        .prop_map(|(name, mac, mtu, sandbox)| Interface {
            name,
            mac,
            mtu,
            sandbox,
        });
    let ip = (
        ipv4net(),
        proptest::option::of(any::<u32>().prop_map(Ipv4Addr::from)),
        proptest::option::of(0usize..64),
    )
        .prop_map(|(address, gateway, interface)| IpConfig {
            address,
            gateway,
            interface,
        });
    let route = (
        ipv4net(),
        proptest::option::of(any::<u32>().prop_map(Ipv4Addr::from)),
        proptest::option::of(any::<u8>()),
    )
        .prop_map(|(dst, gw, scope)| RouteEntry { dst, gw, scope });
    let dns = (
        vec(any::<String>(), 0..3),
        proptest::option::of(any::<String>()),
        vec(any::<String>(), 0..3),
        vec(any::<String>(), 0..3),
    )
        .prop_map(|(nameservers, domain, search, options)| Dns {
            nameservers,
            domain,
            search,
            options,
        });
    (vec(iface, 0..4), vec(ip, 0..4), vec(route, 0..4), dns).prop_map(
        |(interfaces, ips, routes, dns)| CniResult {
            interfaces,
            ips,
            routes,
            dns,
        },
    )
}

fn version() -> impl Strategy<Value = Version> {
    prop::sample::select(SUPPORTED.to_vec())
}

/// A config that passes the required-field checks, with arbitrary values
/// under known and unknown keys, so every later check is reached.
fn near_valid_config() -> impl Strategy<Value = Value> {
    (
        version(),
        btree_map(key(), json_value(), 0..6),
        proptest::option::of((cni_result(), version())),
    )
        .prop_map(|(v, extra, prev)| {
            let mut obj: Map<String, Value> = extra.into_iter().collect();
            obj.insert("cniVersion".into(), json!(v.to_string()));
            obj.insert("name".into(), json!("pw"));
            obj.insert("type".into(), json!("podwire"));
            if let Some((r, rv)) = prev {
                obj.insert("prevResult".into(), r.to_value(rv));
            }
            Value::Object(obj)
        })
}

/// The codes NetConf::parse documents (docs/ERRORS.md).
const CONFIG_CODES: [u32; 4] = [1, 2, 6, 7];

/// Bytes for the environment: empty, ASCII, placeholders, non-UTF-8.
fn env_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        Just(b"dummy".to_vec()),
        Just(b"ADD".to_vec()),
        Just(b"DEL".to_vec()),
        Just(b"CHECK".to_vec()),
        Just(b"VERSION".to_vec()),
        Just(b"/run/netns/x".to_vec()),
        "[ -~]{0,20}".prop_map(String::into_bytes),
        vec(any::<u8>(), 0..24),
    ]
}

fn env_key() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "CNI_COMMAND",
            "CNI_CONTAINERID",
            "CNI_NETNS",
            "CNI_IFNAME",
            "CNI_ARGS",
            "CNI_PATH",
            "PATH",
        ])
        .prop_map(|k| k.as_bytes().to_vec()),
        1 => vec(any::<u8>(), 0..12),
    ]
}

/// CNI_ARGS made of pairs, keys from podwire's set and others, values any
/// bytes but `;`.
fn cni_args() -> impl Strategy<Value = Vec<u8>> {
    let k = prop_oneof![
        prop::sample::select(vec![
            "K8S_POD_NAMESPACE",
            "K8S_POD_NAME",
            "K8S_POD_UID",
            "K8S_POD_INFRA_CONTAINER_ID",
            "IgnoreUnknown",
        ])
        .prop_map(|k| k.as_bytes().to_vec()),
        vec(any::<u8>(), 0..8),
    ];
    vec((k, vec(any::<u8>(), 0..12)), 0..6).prop_map(|pairs| {
        let mut out = Vec::new();
        for (k, v) in pairs {
            out.extend(k);
            out.push(b'=');
            out.extend(v.into_iter().filter(|b| *b != b';'));
            out.push(b';');
        }
        out
    })
}

proptest! {
    #[test]
    fn config_from_arbitrary_bytes_is_an_error_not_a_panic(bytes in vec(any::<u8>(), 0..512)) {
        if let Err(e) = NetConf::parse(&bytes) {
            prop_assert!(CONFIG_CODES.contains(&e.code), "{e:?}");
        }
        let _ = requested_version(&bytes);
    }

    #[test]
    fn config_from_arbitrary_json_is_an_error_not_a_panic(v in json_value()) {
        let bytes = v.to_string().into_bytes();
        if let Err(e) = NetConf::parse(&bytes) {
            prop_assert!(CONFIG_CODES.contains(&e.code), "{e:?}");
        }
        let _ = requested_version(&bytes);
    }

    #[test]
    fn near_valid_configs_parse_or_fail_with_a_config_code(v in near_valid_config()) {
        match NetConf::parse(v.to_string().as_bytes()) {
            Ok(c) => {
                prop_assert_eq!(c.name, "pw");
                if let Some(m) = c.mtu {
                    prop_assert!((576..=9001).contains(&m));
                }
                prop_assert!(c.agent_socket.is_absolute());
            }
            Err(e) => {
                prop_assert!(CONFIG_CODES.contains(&e.code), "{e:?}");
                prop_assert!(e.msg.len() < 2048, "message echoes too much: {}", e.msg.len());
            }
        }
    }

    #[test]
    fn env_from_arbitrary_os_strings_is_code_4_or_valid(
        vars in vec((env_key(), env_bytes()), 0..10)
    ) {
        let vars: Vec<(OsString, OsString)> = vars
            .into_iter()
            .map(|(k, v)| (OsString::from_vec(k), OsString::from_vec(v)))
            .collect();
        match Invocation::from_vars(vars) {
            Ok(inv) => {
                if let Some(ns) = &inv.netns {
                    prop_assert!(ns.is_absolute());
                }
            }
            Err(e) => prop_assert_eq!(e.code, 4, "{:?}", e),
        }
    }

    /// A valid call of each verb with a few variables replaced by arbitrary
    /// bytes: still valid, or code 4 naming a variable the verb reads.
    #[test]
    fn valid_env_with_arbitrary_overrides_is_code_4_naming_a_variable(
        verb in prop::sample::select(vec!["ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION"]),
        overrides in vec((env_key(), env_bytes()), 0..3)
    ) {
        let mut vars: Vec<(OsString, OsString)> = [
            ("CNI_COMMAND", verb),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/run/netns/p"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=p"),
        ]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
        for (k, v) in overrides {
            let k = OsString::from_vec(k);
            vars.retain(|(old, _)| *old != k);
            vars.push((k, OsString::from_vec(v)));
        }
        if let Err(e) = Invocation::from_vars(vars) {
            prop_assert_eq!(e.code, 4);
            prop_assert!(e.msg.contains("CNI_"), "{}", e.msg);
        }
    }

    #[test]
    fn cni_args_from_arbitrary_bytes_is_code_4_or_pod_args(raw in vec(any::<u8>(), 0..256)) {
        if let Err(e) = parse_cni_args(&OsString::from_vec(raw)) {
            prop_assert_eq!(e.code, 4);
        }
    }

    #[test]
    fn cni_args_pairs_give_the_last_utf8_value_of_each_key(raw in cni_args()) {
        let parsed = parse_cni_args(&OsString::from_vec(raw.clone()));
        // Model: the last K8S_POD_NAME pair wins; any K8S_ value that is
        // not UTF-8 fails the whole call.
        let mut name = None;
        let mut bad = false;
        for pair in raw.split(|b| *b == b';') {
            let Some(eq) = pair.iter().position(|b| *b == b'=') else { continue };
            let (k, v) = (&pair[..eq], &pair[eq + 1..]);
            if k.starts_with(b"K8S_POD_") && matches!(k, b"K8S_POD_NAMESPACE" | b"K8S_POD_NAME" | b"K8S_POD_UID" | b"K8S_POD_INFRA_CONTAINER_ID") {
                match std::str::from_utf8(v) {
                    Ok(s) if k == b"K8S_POD_NAME" => name = Some(s.to_string()).filter(|s| !s.is_empty()),
                    Ok(_) => {}
                    Err(_) => bad = true,
                }
            }
        }
        match parsed {
            Ok(p) => {
                prop_assert!(!bad);
                prop_assert_eq!(p.name, name);
            }
            Err(e) => {
                prop_assert!(bad);
                prop_assert_eq!(e.code, 4);
            }
        }
    }

    #[test]
    fn prev_result_from_arbitrary_json_is_code_6_or_a_result(v in json_value()) {
        if let Err(e) = CniResult::from_value(&v) {
            prop_assert_eq!(e.code, 6);
        }
    }

    #[test]
    fn version_from_arbitrary_string_is_code_1_or_supported(s in any::<String>()) {
        match s.parse::<Version>() {
            Ok(v) => prop_assert!(SUPPORTED.contains(&v)),
            Err(e) => prop_assert_eq!(e.code, 1),
        }
    }

    /// Every version's shape parses back to the result, less what that
    /// version cannot carry (interface mtu and route scope before 1.1.0).
    #[test]
    fn results_round_trip_through_every_version(r in cni_result(), v in version()) {
        let back = CniResult::from_value(&r.to_value(v));
        prop_assert!(back.is_ok(), "{:?}", back);
        let mut expected = r.clone();
        if v < Version::new(1, 1, 0) {
            expected.interfaces.iter_mut().for_each(|i| i.mtu = None);
            expected.routes.iter_mut().for_each(|r| r.scope = None);
        }
        prop_assert_eq!(back.ok(), Some(expected));
    }

    /// Converting down and back up is stable: what a newer runtime reads as
    /// prevResult from an older one's cache is what that version showed.
    #[test]
    fn version_conversion_is_idempotent(r in cni_result(), a in version(), b in version()) {
        let once = CniResult::from_value(&r.to_value(a)).map_err(|e| e.to_string());
        let once = once.map_err(TestCaseError::fail)?;
        let twice = CniResult::from_value(&once.to_value(b)).map_err(|e| e.to_string());
        let twice = twice.map_err(TestCaseError::fail)?;
        let direct = CniResult::from_value(&r.to_value(a.min(b))).map_err(|e| e.to_string());
        prop_assert_eq!(Ok(twice), direct);
    }
}
