//! CNI spec types, versions, errors, env and config parsing.
