//! Parsing and validation: each accepted form, the API server's defaults,
//! and each refusal naming its field, with nothing accepted.

use podwire_policy::{parse_documents, NetworkPolicy, PolicyType, PortRef, Protocol};

const BASE: &str = r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: web
  namespace: x
spec:
  podSelector:
    matchLabels:
      app: web
  ingress:
  - from:
    - podSelector:
        matchExpressions:
        - {key: role, operator: In, values: [client]}
      namespaceSelector:
        matchLabels: {team: a}
    - ipBlock:
        cidr: 10.0.0.0/8
        except: [10.1.0.0/16]
    ports:
    - port: 80
    - port: http-alt
      protocol: TCP
    - port: 8000
      endPort: 8080
      protocol: UDP
"#;

fn one(text: &str) -> NetworkPolicy {
    let mut v = parse_documents(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(v.len(), 1);
    v.remove(0)
}

/// The error for `text`, which must name `field` (exactly) and say `why`.
fn refused(text: &str, field: &str, why: &str) {
    match parse_documents(text) {
        Ok(p) => panic!("accepted {p:?}\n{text}"),
        Err(e) => {
            assert_eq!(e.field, field, "{e}");
            assert!(e.to_string().contains(why), "{e} (want {why:?})");
        }
    }
}

#[test]
fn yaml_object_parses_with_defaults() {
    let p = one(BASE);
    assert_eq!((p.namespace.as_str(), p.name.as_str()), ("x", "web"));
    // No policyTypes and no egress: Ingress only, as the API server defaults.
    assert_eq!(p.policy_types, vec![PolicyType::Ingress]);
    let ports = &p.ingress[0].ports;
    assert_eq!(ports[0].protocol, Protocol::TCP, "protocol defaults to TCP");
    assert_eq!(ports[0].port, Some(PortRef::Number(80)));
    assert_eq!(ports[1].port, Some(PortRef::Name("http-alt".into())));
    assert_eq!(
        (ports[2].protocol, ports[2].end_port),
        (Protocol::UDP, Some(8080))
    );
    assert_eq!(p.ingress[0].peers.len(), 2);
}

#[test]
fn policy_types_default_to_egress_when_egress_rules_exist() {
    let p = one("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: e}\nspec:\n  podSelector: {}\n  egress: [{}]\n");
    assert_eq!(p.namespace, "default");
    assert_eq!(
        p.policy_types,
        vec![PolicyType::Ingress, PolicyType::Egress]
    );
    let p = one("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: e}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n");
    assert_eq!(p.policy_types, vec![PolicyType::Egress]);
    // An empty egress list is no egress rule.
    let p = one("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: e}\nspec:\n  podSelector: {}\n  egress: []\n");
    assert_eq!(p.policy_types, vec![PolicyType::Ingress]);
}

#[test]
fn json_lists_and_several_documents() {
    let json = r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"j","namespace":"y"},"spec":{"podSelector":{}}}"#;
    assert_eq!(one(json).key(), "y/j");
    let list = format!(r#"{{"apiVersion":"v1","kind":"List","items":[{json}]}}"#);
    assert_eq!(one(&list).key(), "y/j");
    let typed = format!(
        r#"{{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicyList","items":[{json}]}}"#
    );
    assert_eq!(one(&typed).key(), "y/j");
    let docs = format!(
        "{BASE}---\n{}\n---\n",
        BASE.replace("name: web", "name: web2")
    );
    let v = parse_documents(&docs).expect("two documents");
    assert_eq!(
        v.iter().map(NetworkPolicy::key).collect::<Vec<_>>(),
        ["x/web", "x/web2"]
    );
}

#[test]
fn records_round_trip_and_are_validated() {
    let p = one(BASE);
    let rec = p.to_record();
    assert_eq!(NetworkPolicy::from_record(&rec).expect("round trip"), p);
    let s = String::from_utf8(rec).expect("utf8");
    assert!(s.contains(r#""policyTypes":["Ingress"]"#), "{s}");
    let bad = s.replace("10.1.0.0/16", "11.0.0.0/16");
    let e = NetworkPolicy::from_record(bad.as_bytes()).expect_err("except outside");
    assert_eq!(e.field, "spec.ingress[0].from[1].ipBlock.except[0]");
    assert!(NetworkPolicy::from_record(b"{").is_err());
}

#[test]
fn unknown_fields_are_refused_with_their_path() {
    refused(
        &BASE.replace("    - podSelector:", "    - podSelecter:"),
        "spec.ingress[0].from[0].podSelecter",
        "unknown field `podSelecter`",
    );
    refused(
        &format!("{BASE}status: {{}}\n"),
        "status",
        "unknown field `status`",
    );
    refused(
        &BASE.replace("  namespace: x", "  namespace: x\n  uid: abc"),
        "metadata.uid",
        "unknown field `uid`",
    );
    refused(
        r#"{"apiVersion":"v1","kind":"List","items":[],"extra":1}"#,
        "extra",
        "unknown field",
    );
}

#[test]
fn selectors_that_do_not_parse_are_refused() {
    refused(
        &BASE.replace("operator: In", "operator: Like"),
        "spec.ingress[0].from[0].podSelector.matchExpressions[0].operator",
        "unknown variant `Like`",
    );
    refused(
        &BASE.replace("operator: In, values: [client]", "operator: In"),
        "spec.ingress[0].from[0].podSelector.matchExpressions[0].values",
        "must be specified when `operator` is 'In' or 'NotIn'",
    );
    refused(
        &BASE.replace(
            "operator: In, values: [client]",
            "operator: Exists, values: [x]",
        ),
        "spec.ingress[0].from[0].podSelector.matchExpressions[0].values",
        "may not be specified",
    );
    refused(
        &BASE.replace("key: role", "key: -role"),
        "spec.ingress[0].from[0].podSelector.matchExpressions[0].key",
        "label key",
    );
    refused(
        &BASE.replace("values: [client]", "values: [\"bad value\"]"),
        "spec.ingress[0].from[0].podSelector.matchExpressions[0].values[0]",
        "label value",
    );
    refused(
        &BASE.replace("{team: a}", "{team: \"a b\"}"),
        "spec.ingress[0].from[0].namespaceSelector.matchLabels[\"team\"]",
        "label value",
    );
    refused(
        &BASE.replace("app: web", "app: [web]"),
        "spec.podSelector.matchLabels.app",
        "invalid type",
    );
}

#[test]
fn ports_are_checked_as_the_api_server_does() {
    let e = parse_documents(&BASE.replace("port: http-alt", "port: http-alternative-1"))
        .expect_err("too long");
    assert_eq!(
        e.to_string(),
        "spec.ingress[0].ports[1].port: port name \"http-alternative-1\" is longer than 15"
    );
    refused(
        &BASE.replace("port: http-alt", "port: \"80\""),
        "spec.ingress[0].ports[1].port",
        "at least one letter",
    );
    refused(
        &BASE.replace("port: 80", "port: 0"),
        "spec.ingress[0].ports[0].port",
        "1-65535",
    );
    refused(
        &BASE.replace("port: 80", "port: 65536"),
        "spec.ingress[0].ports[0].port",
        "1-65535",
    );
    refused(
        &BASE.replace("endPort: 8080", "endPort: 7999"),
        "spec.ingress[0].ports[2].endPort",
        "greater than or equal to `port`",
    );
    refused(
        &BASE.replace("port: 8000\n      endPort", "port: web\n      endPort"),
        "spec.ingress[0].ports[2].endPort",
        "non-numeric",
    );
    refused(
        &BASE.replace("    - port: 8000\n      endPort", "    - endPort"),
        "spec.ingress[0].ports[2].endPort",
        "not specified",
    );
    refused(
        &BASE.replace("protocol: UDP", "protocol: udp"),
        "spec.ingress[0].ports[2].protocol",
        "unknown variant `udp`",
    );
}

#[test]
fn ip_blocks_are_checked() {
    refused(
        &BASE.replace("except: [10.1.0.0/16]", "except: [11.1.0.0/16]"),
        "spec.ingress[0].from[1].ipBlock.except[0]",
        "must be a strict subset of `cidr`",
    );
    refused(
        &BASE.replace("except: [10.1.0.0/16]", "except: [10.0.0.0/8]"),
        "spec.ingress[0].from[1].ipBlock.except[0]",
        "strict subset",
    );
    refused(
        &BASE.replace("cidr: 10.0.0.0/8", "cidr: 10.0.0.0/33"),
        "spec.ingress[0].from[1].ipBlock.cidr",
        "not a valid CIDR",
    );
    refused(
        &BASE.replace("    - ipBlock:", "    - podSelector: {}\n      ipBlock:"),
        "spec.ingress[0].from[1]",
        "may not specify both ipBlock and another peer",
    );
    refused(
        &BASE.replace(
            "        cidr: 10.0.0.0/8\n        except: [10.1.0.0/16]",
            "        except: [10.1.0.0/16]",
        ),
        "spec.ingress[0].from[1].ipBlock",
        "missing field `cidr`",
    );
    // Host bits in cidr are accepted, as upstream's e2e suite relies on.
    one(&BASE.replace("cidr: 10.0.0.0/8", "cidr: 10.1.2.3/8"));
}

#[test]
fn peers_types_names_and_kinds_are_checked() {
    refused(
        &BASE.replace("ports:\n    - port: 80", "- {}\n    ports:\n    - port: 80"),
        "spec.ingress[0].from[2]",
        "must specify a peer",
    );
    refused(
        &BASE.replace(
            "spec:\n",
            "spec:\n  policyTypes: [Ingress, Egress, Ingress]\n",
        ),
        "spec.policyTypes",
        "more than two",
    );
    refused(
        &BASE.replace("spec:\n", "spec:\n  policyTypes: [Inbound]\n"),
        "spec.policyTypes[0]",
        "unknown variant",
    );
    refused(
        &BASE.replace("name: web", "name: Web"),
        "metadata.name",
        "Web",
    );
    refused(
        &BASE.replace("namespace: x", "namespace: x.y"),
        "metadata.namespace",
        "x.y",
    );
    refused(
        &BASE.replace("networking.k8s.io/v1", "networking.k8s.io/v1beta1"),
        "apiVersion",
        "v1beta1",
    );
    refused(
        &BASE.replace("kind: NetworkPolicy", "kind: Pod"),
        "kind",
        "Pod",
    );
}

#[test]
fn one_bad_document_fails_the_whole_input() {
    let docs = format!(
        "{BASE}---\n{}",
        BASE.replace("name: web", "name: web2")
            .replace("port: 80", "port: 0")
    );
    let e = parse_documents(&docs).expect_err("second document is bad");
    assert_eq!(e.location.as_deref(), Some("document 2"));
    assert!(
        e.to_string()
            .starts_with("document 2: spec.ingress[0].ports[0].port: "),
        "{e}"
    );
    let e = parse_documents(&format!("{BASE}---\n{BASE}")).expect_err("same name twice");
    assert!(e.reason.contains("x/web appears more than once"), "{e}");
}

#[test]
fn junk_and_oversized_input_is_refused() {
    for junk in [
        "",
        "---\n",
        "{",
        "a: [",
        "- 1\n- 2\n",
        "42",
        "{\"kind\":\"List\",\"items\":{}}",
    ] {
        assert!(parse_documents(junk).is_err(), "{junk:?}");
    }
    let big = "#".repeat(podwire_policy::MAX_INPUT_BYTES + 1);
    assert!(parse_documents(&big)
        .expect_err("too big")
        .reason
        .contains("bytes"));
    // Alias expansion is bounded by the YAML parser (no "billion laughs").
    let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 0..9 {
        let p = (b'a' + i) as char;
        let n = (b'b' + i) as char;
        bomb.push_str(&format!(
            "{n}: &{n} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        ));
    }
    let t = std::time::Instant::now();
    assert!(parse_documents(&bomb).is_err());
    assert!(t.elapsed() < std::time::Duration::from_secs(5));
}
