//! usermetadb: a privacy-preserving user metadata database, wire-compatible
//! with the Go `usermetadb` ("user-meta-server").
//!
//! The layers, each calling only the ones below it:
//!
//! - [`server`]: TLS, HTTP, routes ([`server::endpoint::Endpoint`]), ACL
//!   enforcement, the one error → status mapping. Calls the service.
//! - [`service`]: the API's behaviour: validation, privacy transforms, answers.
//!   Pure logic with `now` passed in; calls the store.
//! - [`store`]: all SQL. A writer thread with group commit, reader threads.
//! - [`privacy`]: quantization, GeoIP country, user-agent parsing, device-ID
//!   sealing (with [`crypto`]).
//! - [`retention`]: the background deletion of expired rows.
//! - [`wire`]: the JSON types, no I/O. [`config`]: the YAML file. [`acl`]: the
//!   access rules.

pub mod acl;
pub mod client;
pub mod config;
pub mod crypto;
pub mod privacy;
pub mod retention;
pub mod server;
pub mod service;
pub mod store;
pub mod wire;
