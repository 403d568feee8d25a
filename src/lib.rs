//! usermetadb: a privacy-preserving user metadata database, wire-compatible
//! with the Go `usermetadb` ("user-meta-server").
//!
//! The layers, top to bottom; each calls only the ones below it (a test,
//! `layers::no_module_calls_up`, holds the code to this map):
//!
//! 1. [`server`]: TLS, HTTP/1.1 and HTTP/2, routes, ACL enforcement, the one
//!    error → status mapping, the Windows agents' listener, the background
//!    jobs' start. Calls everything below.
//! 2. [`reports`]: admin reports over a time range, small groups withheld.
//!    [`transfer`]: a whole database as JSON Lines (export, import).
//! 3. [`service`]: the API's behaviour, and the Windows agents' events:
//!    validation, privacy transforms, answers; `now` passed in. Calls the
//!    monitor's rules and the store.
//! 4. [`monitor`]: the login monitor's rules (pure functions run inside the
//!    `add_log` transaction), the alert dispatcher and its sinks, the
//!    sentences. [`retention`]: the background deletion of expired rows.
//! 5. [`client`]: an HTTP/1.1 and HTTP/2 client over TLS (the webhook sink,
//!    the admin tool, the tests). [`privacy`]: quantization, GeoIP country,
//!    user-agent parsing, device-ID sealing.
//! 6. [`store`]: the storage interface in domain terms and its backends
//!    (`store::sqlite`, `store::postgres`); all SQL lives there, each
//!    backend's in its own folder. Inside, the facade (`store/mod.rs`)
//!    dispatches to the backends, which import only the leaves below them
//!    (`store::types`, `store::agents`, `store::pairs`).
//! 7. Leaves, calling nothing of the crate but each other as listed:
//!    [`config`] (the YAML file; uses [`acl`], [`model`]), [`model`] (the
//!    records the layers share; uses [`wire`], [`clock`]), [`tls`]
//!    (certificates, client identities; records into [`metrics`]),
//!    [`crypto`], [`metrics`] (uses [`endpoint`]), [`endpoint`], [`wire`],
//!    [`acl`] (uses [`endpoint`]), [`clock`].

pub mod acl;
pub mod client;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod endpoint;
pub mod metrics;
pub mod model;
pub mod monitor;
pub mod privacy;
pub mod reports;
pub mod retention;
pub mod server;
pub mod service;
pub mod store;
pub mod tls;
pub mod transfer;
pub mod wire;
