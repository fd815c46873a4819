//! EC2 Query API + IMDSv2 client and the instance limits table.
