//! Prometheus metrics of the sidecar: decisions by action and outcome, decision
//! latency, request errors by code, the loaded policy version, and decision-log
//! write failures.

use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    action: String,
    decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: String,
}

pub struct Metrics {
    registry: Registry,
    decisions: Family<DecisionLabels, Counter>,
    latency: Histogram,
    errors: Family<ErrorLabels, Counter>,
    policy_version: Family<VersionLabels, Gauge>,
    reloads: Family<ReloadLabels, Counter>,
    last_reload_success: Gauge,
    audit_failures: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("cdap_authz");
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "decisions",
            "Decisions by action and outcome",
            decisions.clone(),
        );
        // 1 µs … ~16 ms
        let latency = Histogram::new(exponential_buckets(1e-6, 2.0, 15));
        registry.register(
            "decision_latency_seconds",
            "Time to decide one request, from parsed body to decision",
            latency.clone(),
        );
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "request_errors",
            "Requests refused, by error code",
            errors.clone(),
        );
        let policy_version = Family::<VersionLabels, Gauge>::default();
        registry.register(
            "policy_version",
            "The loaded policy version (value 1)",
            policy_version.clone(),
        );
        let reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "reloads",
            "Reloads by outcome: success, unchanged, failure",
            reloads.clone(),
        );
        let last_reload_success = Gauge::default();
        registry.register(
            "last_reload_success_timestamp_seconds",
            "Unix time of the last snapshot swapped in",
            last_reload_success.clone(),
        );
        let audit_failures = Counter::default();
        registry.register(
            "audit_write_failures",
            "Decisions answered Deny because the decision log could not be written",
            audit_failures.clone(),
        );
        Self {
            registry,
            audit_failures,
            reloads,
            last_reload_success,
            decisions,
            latency,
            errors,
            policy_version,
        }
    }

    /// A decision answered, by its action's id and the answer given.
    pub fn record_decision(&self, action: String, decision: &'static str, elapsed: Duration) {
        self.decisions
            .get_or_create(&DecisionLabels { action, decision })
            .inc();
        self.latency.observe(elapsed.as_secs_f64());
    }

    /// A decision answered Deny because its record could not be written.
    pub fn record_audit_failure(&self) {
        self.audit_failures.inc();
    }

    pub fn record_error(&self, code: &'static str) {
        self.errors.get_or_create(&ErrorLabels { code }).inc();
    }

    pub fn set_policy_version(&self, version: &str) {
        self.policy_version.clear();
        self.policy_version
            .get_or_create(&VersionLabels {
                version: version.to_owned(),
            })
            .set(1);
        self.last_reload_success.set(chrono::Utc::now().timestamp());
    }

    pub fn record_reload(&self, outcome: &'static str) {
        self.reloads.get_or_create(&ReloadLabels { outcome }).inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
