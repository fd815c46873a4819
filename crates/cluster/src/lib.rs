//! Cluster records: namespaces, pods, endpoints (filled in below).
