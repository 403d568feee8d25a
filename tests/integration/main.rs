//! Integration tests: each starts the real server on 127.0.0.1:0 with the
//! testdata certificates and talks real mutual TLS.
//!
//! - `api`: every endpoint's behaviour, and the golden Go-marshalled bodies.
//! - `errors`: every error status, and that a rejected request writes nothing.
//! - `tls_acl`: certificate failure cases and ACL allow / deny.
//! - `tenants`: clients scoped to tenants by the ACL: their tenants' users
//!   only, listings, alerts and reports (`time_spent` included) of those
//!   tenants only, and unscoped entries as before.
//! - `persistence`: restarts, and `kill -9` of the compiled binary.
//! - `privacy`: GeoIP, user agents, cookies, erasure, retention, and a raw-bytes audit.
//! - `monitor`: detections, alert delivery to a real webhook receiver and SMTP server, summaries.
//! - `config_files`: the shipped configs parse; `check-config` reports problems.
//! - `agents`: Windows login agents over their own protocol: keys, both
//!   field sets, retries, bad keys and bodies, the rate limit, health,
//!   tenants, new computers, time spent from a scripted day.
//! - `admin`: the compiled `user-meta-admin` against a real server: every
//!   subcommand, exit codes, the stale-account job; `db export|import|backup`.
//! - `reports`: the aggregate reports, their small-group suppression, and the
//!   HTML page rendered by headless Chromium.
//! - `hostile`: the hostile-input catalogue as raw bytes: methods, framing,
//!   headers, pipelining, malformed JSON, bad fields, paths against the ACL.
//! - `tls_matrix`: every TLS refusal of the compiled server, its logged reason
//!   and its counter.
//! - `failover`: three servers on a primary and a synchronous standby
//!   through a `kill -9` of the primary and a fenced primary, each followed
//!   by a promotion: acknowledged writes, the device index, retention and
//!   alert delivery on the new primary.
//! - `faults`: `kill -9` during writes (`.ci/crash-test`), a full filesystem,
//!   a read-only database.
//! - `overload`: slow-header clients, idle / half-open connections, the
//!   connection cap, and 503s beyond `max_inflight_requests`.
//! - `h2`: HTTP/2 by ALPN, the ACL per multiplexed request, and frame-level
//!   abuse (rapid resets, CONTINUATION flood, too many streams, oversized
//!   header lists, a window that never opens).
//! - `policy`: the auth policy listener as Dovecot speaks it: the token,
//!   throttling decisions, reports stored, `check_login`, nothing kept.
//! - `security`: names that do not mean what they show, spreadsheet- and
//!   terminal-safe admin output, no log line at info dating a login.
//! - `ops`: the Grafana dashboard and the Prometheus rules in `contrib/`
//!   query only metrics the server exports.
//! - `ui`: the dashboard (`user-meta-admin ui`) driven in headless Chromium
//!   by `tests/ui/dashboard.mjs` (playwright-core).
//! - `dovecot`: a real Dovecot (`dovecot-imapd`) asking the policy listener,
//!   driven by an IMAP client that gives each login a public address in a
//!   PROXY header; a stopped policy server lets logins through.
//! - `pam`: the `pam_exec` hook of `contrib/pam/` in PAM stacks driven by
//!   `pamtester`: logins and failures stored with service and country, a
//!   stopped or silent server never holding up a login.
//! - `properties`: property tests of decoding, validation, timestamps,
//!   cookies, ACLs and config loading.

mod admin;
mod agents;
mod api;
mod common;
mod config_files;
mod dovecot;
mod errors;
mod failover;
mod faults;
mod h2;
mod hostile;
mod mmdb;
mod monitor;
mod ops;
mod overload;
mod pam;
mod persistence;
mod policy;
mod postgres;
mod privacy;
mod properties;
mod receivers;
mod reports;
mod security;
mod tenants;
mod tls_acl;
mod tls_matrix;
mod transparency;
mod ui;
