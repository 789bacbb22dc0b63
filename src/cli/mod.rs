//! The `cdap-authz` command line, one file per subcommand: `serve` runs the sidecar,
//! `authorize` decides one request offline, `validate` checks a model, `fmt` formats
//! policy files, `audit` verifies and queries the decision log. All read the model
//! through the same loader as the server.
//!
//! Exit codes follow the Cedar CLI: 0 allow (or success), 2 deny, 3 invalid model,
//! 1 any other failure.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::load::{LoadError, Sources};
use crate::snapshot::{Snapshot, DEFAULT_TIME_ATTRIBUTE};

const EXIT_DENY: u8 = 2;
const EXIT_INVALID: u8 = 3;

mod audit;
mod authorize;
mod fmt;
mod serve;
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
    /// Parse and strictly validate everything the sidecar would load; report every
    /// problem with file, line and column. Exit 0 when valid, 3 when not.
    Validate(validate::ValidateArgs),
    /// Format policy files with Cedar's formatter (`--check`: only report).
    Fmt(fmt::FmtArgs),
    /// Verify (`audit verify [DIR]`) or query (`audit query`) the decision log.
    Audit(audit::AuditArgs),
}

/// Where the model is read from.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// Directory of `.cedar` policy files.
    #[arg(long, value_name = "DIR", default_value = "policies")]
    policies: PathBuf,
    /// Cedar schema (`.cedarschema`, or JSON schema ending in `.json`).
    #[arg(long, value_name = "FILE", default_value = "schema/cdap.cedarschema")]
    schema: PathBuf,
    /// Stored entities (Cedar entity JSON).
    #[arg(long, value_name = "FILE", default_value = "examples/entities.json")]
    entities: PathBuf,
    /// Derivation rules [default: `derived.json` beside the schema, if present].
    #[arg(long, value_name = "FILE")]
    derived: Option<PathBuf>,
    /// Context attribute filled with the current time when an action declares it.
    #[arg(long, value_name = "NAME", default_value = DEFAULT_TIME_ATTRIBUTE)]
    time_attribute: String,
}

impl ModelArgs {
    pub fn sources(&self) -> Sources {
        let beside_schema = self
            .schema
            .parent()
            .unwrap_or(Path::new("."))
            .join("derived.json");
        let derived = self
            .derived
            .clone()
            .or_else(|| beside_schema.exists().then_some(beside_schema));
        Sources {
            policies: self.policies.clone(),
            schema: self.schema.clone(),
            entities: Some(self.entities.clone()),
            derived,
        }
    }

    pub fn load(&self) -> Result<Snapshot, LoadError> {
        Snapshot::load(&self.sources(), &self.time_attribute)
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let outcome = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Authorize(args) => authorize::run(args),
        Command::Validate(args) => validate::run(args),
        Command::Fmt(args) => fmt::run(args),
        Command::Audit(args) => audit::run(args),
    };
    outcome.unwrap_or_else(|error| {
        if let Some(invalid) = error.downcast_ref::<LoadError>() {
            eprintln!("{invalid}");
            return ExitCode::from(EXIT_INVALID);
        }
        eprintln!("error: {error:#}");
        ExitCode::FAILURE
    })
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CDAP_AUTHZ_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
