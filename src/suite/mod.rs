//! Policy test suites: reading them, running them through the decision engine, and
//! measuring what they cover.
//!
//! A suite file is the Cedar CLI's `run-tests` JSON, read as is: an array of cases,
//! each with an optional `name`, a `request` (`principal`, `action`, `resource`,
//! `context`), `entities` (an array, or the path of an entities file relative to the
//! suite), the expected `decision` (`allow`/`deny`), and optionally the expected
//! `reason` (policy ids, compared as a set) and `num_errors` (`has_error: true` in
//! older files: one or more). A case without either expects no error.
//!
//! Two extensions, both optional:
//! - a suite may be an object `{"entities": "base.json", "now": "…", "tests": [...]}`:
//!   every case starts from the base entities file, and a case's `entities` array
//!   adds to it (an entity with the uid of a base entity replaces it). `now` pins the
//!   time the sidecar fills in when a request leaves its time attribute out;
//! - a case may carry `rules`: the DOMAIN.md rule ids it exercises, for coverage.
//!
//! Cases run through [`crate::engine::decide`], the sidecar's own decision path, on a
//! snapshot whose stored entities are the case's (with derived data computed).

mod coverage;
mod format;
mod run;

pub use coverage::{rule_of, Coverage, RuleCoverage};
pub use format::{
    discover, load_suite, Case, Expected, ExpectedDecision, ExpectedErrors, Suite, SuiteError,
};
pub use run::{run, CaseResult, Verdict};
