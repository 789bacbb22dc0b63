//! The `cdap-authz` command line, one file per subcommand: `serve` runs the sidecar,
//! `authorize` decides one request offline, `explain` says why, `validate` checks a
//! model, `fmt` formats policy files, `test` runs policy test suites, `diff` compares
//! two policy versions, `audit` verifies and queries the decision log. All read the
//! model through the same loader as the server.
//!
//! Exit codes follow the Cedar CLI: 0 allow (or success), 2 deny, 3 invalid model,
//! 1 any other failure; 4 when a `diff --fail-on` gate is triggered; 141, with no
//! message, when the reader of the output went away (`| head`), as for a filter that
//! SIGPIPE ends.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::api::AuthzRequest;

use crate::load::{self, LoadError, Model, Sources};
use crate::snapshot::{Snapshot, DEFAULT_TIME_ATTRIBUTE};

const EXIT_DENY: u8 = 2;
const EXIT_INVALID: u8 = 3;
/// What a shell reports for a process that SIGPIPE ended (128 + 13).
const EXIT_OUTPUT_CLOSED: u8 = 141;

/// The reader of stdout went away (`cdap-authz test | head`).
#[derive(Debug, thiserror::Error)]
#[error("stdout closed")]
struct OutputClosed;

/// Writes to stdout: [`OutputClosed`] when its reader went away, where `print!`
/// would panic (Rust ignores SIGPIPE, so the write fails instead of ending the
/// process); any other failure as it is.
fn write_out(text: std::fmt::Arguments) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_fmt(text).and_then(|()| out.flush()) {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Err(OutputClosed.into()),
        written => written.context("cannot write to stdout"),
    }
}

/// `print!` that fails instead of panicking ([`write_out`]).
macro_rules! out {
    ($($arg:tt)*) => { $crate::cli::write_out(format_args!($($arg)*)) };
}

/// `println!` that fails instead of panicking ([`write_out`]).
macro_rules! outln {
    ($($arg:tt)*) => { $crate::cli::write_out(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `eprintln!` that never panics: with stderr gone (`2>&1 | head`), there is no one
/// left to tell, and the command ends as it would have.
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod audit;
mod authorize;
mod diff;
mod explain;
mod fmt;
mod serve;
mod test;
mod validate;

/// Policy-as-code authorization sidecar for Cdap, built on Cedar.
#[derive(Debug, Parser)]
#[command(name = "cdap-authz", version)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve decisions over HTTP (run from the repository root, it serves the
    /// bundled policies, schema and demo entities).
    Serve(serve::ServeArgs),
    /// Decide one request offline; exit 0 on allow, 2 on deny.
    Authorize(authorize::AuthorizeArgs),
    /// Decide one request and say why: the determining policies and their clauses,
    /// and for a default deny the permits that came closest. Exit 0 on allow, 2 on deny.
    Explain(explain::ExplainArgs),
    /// Parse and strictly validate everything the sidecar would load; report every
    /// problem with file, line and column. Exit 0 when valid, 3 when not.
    Validate(validate::ValidateArgs),
    /// Format policy files with Cedar's formatter (`--check`: only report).
    Fmt(fmt::FmtArgs),
    /// Run policy test suites (Cedar `run-tests` JSON) through the decision path;
    /// exit 1 when a case fails or coverage is below `--min-coverage`.
    Test(test::TestArgs),
    /// Compare two versions of the policies: structural changes, what is newly
    /// allowed or denied (proven with cvc5), replayed decisions that flip. Exit 0,
    /// or 4 when the `--fail-on` gate is triggered.
    Diff(diff::DiffArgs),
    /// Verify (`audit verify [DIR]`) or query (`audit query`) the decision log.
    Audit(audit::AuditArgs),
}

/// Where the policies and schema are read from.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// Directory of `.cedar` policy files.
    #[arg(long, value_name = "DIR", default_value = load::POLICIES_DIR)]
    policies: PathBuf,
    /// Cedar schema (`.cedarschema`, or JSON schema ending in `.json`).
    #[arg(long, value_name = "FILE", default_value = load::SCHEMA_FILE)]
    schema: PathBuf,
    /// Derivation rules [default: `derived.json` beside the schema, if present].
    #[arg(long, value_name = "FILE")]
    derived: Option<PathBuf>,
    /// Context attribute filled with the current time when an action declares it.
    #[arg(long, value_name = "NAME", default_value = DEFAULT_TIME_ATTRIBUTE)]
    time_attribute: String,
}

impl PolicyArgs {
    pub fn sources(&self, entities: Option<PathBuf>) -> Sources {
        let beside_schema = self
            .schema
            .parent()
            .unwrap_or(Path::new("."))
            .join(load::DERIVED_FILE_NAME);
        let derived = self
            .derived
            .clone()
            .or_else(|| beside_schema.exists().then_some(beside_schema));
        Sources {
            policies: self.policies.clone(),
            schema: self.schema.clone(),
            entities,
            derived,
        }
    }

    /// The policies and schema, with no stored entities.
    pub fn load_model(&self) -> Result<Model, LoadError> {
        load::load(&self.sources(None))
    }
}

/// Where the model is read from: policies, schema and stored entities.
#[derive(Debug, Args)]
pub struct ModelArgs {
    #[command(flatten)]
    policy: PolicyArgs,
    /// Stored entities (Cedar entity JSON).
    #[arg(long, value_name = "FILE", default_value = load::ENTITIES_FILE)]
    entities: PathBuf,
}

impl ModelArgs {
    pub fn sources(&self) -> Sources {
        self.policy.sources(Some(self.entities.clone()))
    }

    pub fn time_attribute(&self) -> &str {
        &self.policy.time_attribute
    }

    pub fn load(&self) -> Result<Snapshot, LoadError> {
        Snapshot::load(&self.sources(), self.time_attribute())
    }
}

/// Reads a decision request in the JSON body format of `POST /v1/is_authorized`.
fn read_request(path: &Path) -> anyhow::Result<AuthzRequest> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    AuthzRequest::from_slice(&bytes).with_context(|| path.display().to_string())
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let outcome = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Authorize(args) => authorize::run(args),
        Command::Explain(args) => explain::run(args),
        Command::Validate(args) => validate::run(args),
        Command::Fmt(args) => fmt::run(args),
        Command::Test(args) => test::run(args),
        Command::Diff(args) => diff::run(args),
        Command::Audit(args) => audit::run(args),
    };
    outcome.unwrap_or_else(|error| {
        if error.is::<OutputClosed>() {
            return ExitCode::from(EXIT_OUTPUT_CLOSED);
        }
        if let Some(invalid) = error.downcast_ref::<LoadError>() {
            errln!("{invalid}");
            return ExitCode::from(EXIT_INVALID);
        }
        errln!("error: {}", crate::diagnostic::with_causes(error.as_ref()));
        ExitCode::FAILURE
    })
}

/// The log filter unless `CDAP_AUTHZ_LOG` sets one: the file watcher's own lines
/// are left out but for errors (a ConfigMap update logged two, a warning among them,
/// for the directory it deletes; the sidecar logs what it cannot watch itself).
const DEFAULT_LOG_FILTER: &str = "info,notify=error";

/// Logs to stderr; a log line that cannot be written is dropped.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CDAP_AUTHZ_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A closed stderr must not stop the sidecar: tracing-subscriber would report
        // the failed write with `eprint!`, which panics when stderr is gone.
        .log_internal_errors(false)
        .init();
}
