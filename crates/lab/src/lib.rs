//! The local emulated VPC.
