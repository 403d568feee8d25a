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
//! - [`monitor`]: the login monitor: detection rules run inside the
//!   `add_log` transaction, the alert outbox and its dispatcher, summaries.
//! - [`privacy`]: quantization, GeoIP country, user-agent parsing, device-ID
//!   sealing (with [`crypto`]).
//! - [`retention`]: the background deletion of expired rows.
//! - [`metrics`]: process-wide atomic counters for `GET /metrics`; any layer
//!   records into it, it calls nothing.
//! - [`reports`]: admin reports over a time range, small groups withheld;
//!   called by the server, calls the store.
//! - [`wire`]: the JSON types, no I/O. [`config`]: the YAML file. [`acl`]: the
//!   access rules.

pub mod acl;
pub mod client;
pub mod config;
pub mod crypto;
pub mod metrics;
pub mod monitor;
pub mod privacy;
pub mod reports;
pub mod retention;
pub mod server;
pub mod service;
pub mod store;
pub mod wire;
