//! Kubernetes NetworkPolicy: parsing, semantics and nftables rendering.
