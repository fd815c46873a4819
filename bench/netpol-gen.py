#!/usr/bin/env python3
"""Writes the NetworkPolicy benchmark's 200 policies (bench/netpol.sh) as
JSON Lists of at most 50 (`policy apply` takes 64 at once): OUTDIR/pol-K.json.

A realistic mix in 10 namespaces ns-0..ns-9, 20 policies each: podSelector
peers with named ports, namespaceSelector AND podSelector peers with
matchExpressions, ipBlock with except and endPort ranges, egress with
named ports, and a namespace-wide allow of TCP 5201 (iperf3) both ways so
the throughput pods stay reachable."""
import json
import sys

out = sys.argv[1]
NS = 10
PER_NS = 20


def pol(ns, name, selector, types, ingress=None, egress=None):
    spec = {"podSelector": selector, "policyTypes": types}
    if ingress is not None:
        spec["ingress"] = ingress
    if egress is not None:
        spec["egress"] = egress
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"namespace": ns, "name": name}, "spec": spec}


def policies():
    for n in range(NS):
        ns = f"ns-{n}"
        for j in range(PER_NS):
            app = f"app-{j % 6}"
            name = f"np-{j:02d}"
            k = j % 5
            if j == PER_NS - 1:
                # iperf3 between any two pods of the namespace.
                yield pol(ns, name, {}, ["Ingress", "Egress"],
                          ingress=[{"from": [{"podSelector": {}}],
                                    "ports": [{"protocol": "TCP", "port": 5201}]}],
                          egress=[{"to": [{"podSelector": {}}],
                                   "ports": [{"protocol": "TCP", "port": 5201}]}])
            elif k == 0:
                yield pol(ns, name, {"matchLabels": {"app": app}}, ["Ingress"],
                          ingress=[{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                                    "ports": [{"port": "http"}]}])
            elif k == 1:
                yield pol(ns, name,
                          {"matchExpressions": [{"key": "app", "operator": "In",
                                                 "values": [app, f"app-{(j + 1) % 6}"]}]},
                          ["Ingress"],
                          ingress=[{"from": [{"namespaceSelector": {"matchLabels": {"team": f"t{(n + j) % 3}"}},
                                              "podSelector": {"matchLabels": {"role": "client"}}}],
                                    "ports": [{"protocol": "TCP", "port": 80}, {"protocol": "TCP", "port": 81}]}])
            elif k == 2:
                yield pol(ns, name, {"matchLabels": {"role": "server"}}, ["Ingress"],
                          ingress=[{"from": [{"ipBlock": {"cidr": "10.0.0.0/8",
                                                          "except": [f"10.{j}.0.0/16", "10.0.5.0/24"]}}],
                                    "ports": [{"protocol": "TCP", "port": 8080, "endPort": 8090}]}])
            elif k == 3:
                yield pol(ns, name, {"matchLabels": {"role": "client"}}, ["Egress"],
                          egress=[{"to": [{"namespaceSelector": {"matchExpressions": [
                                      {"key": "env", "operator": "In", "values": ["prod"]}]}}],
                                   "ports": [{"port": "http"}]},
                                  {"to": [{"ipBlock": {"cidr": "10.0.0.0/16"}}],
                                   "ports": [{"protocol": "UDP", "port": 53}]}])
            else:
                yield pol(ns, name, {"matchLabels": {"app": app}}, ["Ingress"],
                          ingress=[{"from": [{"namespaceSelector": {}},
                                             {"podSelector": {"matchExpressions": [
                                                 {"key": "tier", "operator": "NotIn", "values": ["db"]}]}}],
                                    "ports": [{"protocol": "TCP", "port": 9000, "endPort": 9100}]}])


all_p = list(policies())
for i in range(0, len(all_p), 50):
    with open(f"{out}/pol-{i // 50}.json", "w") as f:
        json.dump({"apiVersion": "v1", "kind": "List", "items": all_p[i:i + 50]}, f)
with open(f"{out}/names.txt", "w") as f:
    for p in all_p:
        f.write(f"{p['metadata']['namespace']}/{p['metadata']['name']}\n")
print(len(all_p))
