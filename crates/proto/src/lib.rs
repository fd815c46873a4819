//! Plugin <-> agent protocol.
