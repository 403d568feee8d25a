//! Integration tests: each starts the real server on 127.0.0.1:0 with the
//! testdata certificates and talks real mutual TLS.
//!
//! - `api`: every endpoint's behaviour, and the golden Go-marshalled bodies.
//! - `errors`: every error status, and that a rejected request writes nothing.
//! - `tls_acl`: certificate failure cases and ACL allow / deny.
//! - `persistence`: restarts, and `kill -9` of the compiled binary.
//! - `privacy`: GeoIP, user agents, cookies, erasure, retention, and a raw-bytes audit.
//! - `config_files`: the shipped configs parse; `check-config` reports problems.

mod api;
mod common;
mod config_files;
mod errors;
mod mmdb;
mod persistence;
mod privacy;
mod tls_acl;
