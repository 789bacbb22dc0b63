//! cdap-authz: a policy-as-code authorization sidecar built on Cedar.
//!
//! The crate is a generic Cedar sidecar; the Cdap contract model (schema, policies,
//! demo entities) is only its bundled default. Map of the crate:
//!
//! - [`load`]: reads schema, policy files, entities and derivation rules from disk,
//!   with errors that name the file, line and column.
//! - [`derive`]: data the sidecar computes when a snapshot is built (e.g. the number
//!   of active habilitations per bulletin), never typed by hand.
//! - [`snapshot`]: one immutable, fully validated model version plus the indexes the
//!   decision path needs.
//! - [`slice`]: the few stored entities one decision can reach, so that per-request
//!   work does not grow with the store.
//! - [`store`]: the current snapshot behind one `ArcSwap`.
//! - [`reload`]: file watching, debounced rebuilds, last-known-good swaps.
//! - [`api`]: the JSON wire contract (requests, responses, errors).
//! - [`engine`]: one decision: wire request + snapshot → allow/deny and why. Fails closed.
//! - [`metrics`]: Prometheus counters and histograms.
//! - [`audit`]: the hash-chained decision log: group-commit writer, rotation,
//!   retention, query and verification.
//! - [`traces`]: who may read which partner's traces (`GET /v1/traces`, T3).
//! - [`http`]: the hyper server: routing, body limits, graceful shutdown.
//! - [`cli`]: the `cdap-authz` command line.

pub mod api;
pub mod audit;
pub mod cli;
pub mod derive;
pub mod engine;
pub mod http;
pub mod load;
pub mod metrics;
pub mod reload;
pub mod slice;
pub mod snapshot;
pub mod store;
pub mod traces;
