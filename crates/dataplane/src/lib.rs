//! Pod and node kernel programming.
