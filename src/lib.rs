//! cdap-authz: a policy-as-code authorization sidecar built on Cedar.
//!
//! The crate is a generic Cedar sidecar; the Cdap contract model (schema, policies,
//! demo entities) is only its bundled default. Map of the crate:
//!
//! - [`load`]: reads schema, policy files, entities and derivation rules from disk,
//!   with errors that name the file, line and column.
//! - [`derive`]: data the sidecar computes when a snapshot is built (e.g. the number
//!   of habilitations per bulletin), never typed by hand.
//! - [`snapshot`]: one immutable, fully validated model version plus the indexes the
//!   decision path needs.
//! - [`slice`]: the few stored entities one decision can reach, so that per-request
//!   work does not grow with the store.
//! - [`policy_index`]: policy slicing: only the policies whose scope can match a request
//!   are evaluated.
//! - [`fast_eval`]: a borrowing evaluator for compiled conditions, tried before
//!   Cedar's; it answers only where Cedar would answer the same without error.
//! - [`guard`]: the `path == "literal"` test a policy opens with, so that policies
//!   guarded by another value than the request's are skipped.
//! - [`stored`]: the stored entities by uid (foldhash), sharing Cedar's entities.
//! - [`store`]: the current snapshot behind one `ArcSwap`.
//! - [`reload`]: file watching, debounced rebuilds, last-known-good swaps.
//! - [`context`]: request contexts built by the schema's declared types (fast, precise errors).
//! - [`api`]: the JSON wire contract (requests, responses, errors).
//! - [`strict_json`]: JSON read with every object's keys checked unique.
//! - [`diagnostic`]: Cedar's diagnostics as one line of text.
//! - [`engine`]: one decision: wire request + snapshot → allow/deny and why. Fails closed.
//! - [`suite`]: policy test suites (Cedar `run-tests` JSON): run, judge, coverage.
//! - [`explain`]: why a decision: determining policies and their clauses, closest permits.
//! - [`metrics`]: Prometheus counters and histograms.
//! - [`audit`]: the hash-chained decision log: memory-mapped writer, rotation,
//!   retention, query and verification.
//! - [`traces`]: who may read which partner's traces (`GET /v1/traces`, T3).
//! - [`http`]: the hyper server: routing, body limits, graceful shutdown.
//! - [`workers`]: the threads serving connections, one single-threaded runtime each.
//! - [`listen`]: TCP or Unix-domain socket listeners, and the socket file's lifecycle.
//! - [`diff`]: policy diff for security officers: structural, proven semantic
//!   (cvc5), and replayed decisions.
//! - [`cli`]: the `cdap-authz` command line.

pub mod api;
pub mod audit;
pub mod cli;
pub mod context;
pub mod derive;
pub mod diagnostic;
pub mod diff;
pub mod engine;
pub mod explain;
pub mod fast_eval;
pub mod fast_hash;
pub mod guard;
pub mod http;
pub mod listen;
pub mod load;
pub mod metrics;
pub mod policy_index;
pub mod reload;
pub mod slice;
pub mod snapshot;
pub mod store;
pub mod stored;
pub mod strict_json;
pub mod suite;
pub mod traces;
pub mod typed_request;
pub mod workers;

/// Every program built on this crate (the binary, its tests and benches) allocates
/// with mimalloc: Cedar's evaluator allocates and frees many small values per
/// decision, and mimalloc serves them faster than the system allocator
/// (BENCHMARKS.md: +13% HTTP throughput).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
