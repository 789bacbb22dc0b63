//! The `cdap-authz` command line: `serve` runs the sidecar, `authorize` decides one
//! request offline. Both read the model through the same loader as the server.
//!
//! Exit codes follow the Cedar CLI: 0 allow (or success), 2 deny, 3 invalid model,
//! 1 any other failure.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::api::{AuthzRequest, AuthzResponse, Outcome, DEFAULT_MAX_BATCH};
use crate::engine;
use crate::http::{self, AppState, Limits, DEFAULT_MAX_BODY};
use crate::load::{LoadError, Sources};
use crate::reload::{self, Reloader, WatchHandle, DEFAULT_DEBOUNCE};
use crate::snapshot::{Snapshot, DEFAULT_TIME_ATTRIBUTE};

const EXIT_DENY: u8 = 2;
const EXIT_INVALID: u8 = 3;

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
    Serve(ServeArgs),
    /// Decide one request offline; exit 0 on allow, 2 on deny.
    Authorize(AuthorizeArgs),
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

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8180")]
    listen: SocketAddr,
    #[command(flatten)]
    model: ModelArgs,
    /// Largest request body accepted, in bytes (larger ones get 413).
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_BODY)]
    max_body: usize,
    /// Most requests in one batch.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_BATCH)]
    max_batch: usize,
}

#[derive(Debug, Args)]
struct AuthorizeArgs {
    /// The request, in the JSON body format of `POST /v1/is_authorized`.
    #[arg(long, value_name = "FILE")]
    request: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let outcome = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Authorize(args) => authorize(args),
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

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let state = Arc::new(AppState::new(Limits {
            max_body: args.max_body,
            max_batch: args.max_batch,
        }));
        let reloader = Arc::new(Reloader::new(
            args.model.sources(),
            &args.model.time_attribute,
            state.clone(),
        ));
        let first = reloader.clone();
        tokio::task::spawn_blocking(move || first.reload()).await??;
        let watch = Arc::new(
            reload::watch(reloader, DEFAULT_DEBOUNCE).context("cannot watch the model's files")?,
        );
        tokio::spawn(reload_on_sighup(watch.clone()));
        let version = state
            .store
            .current()
            .map(|s| s.version.clone())
            .unwrap_or_default();
        tracing::info!(listen = %listener.local_addr()?, policy_version = %version, "serving");
        http::serve(listener, state, shutdown_signal()).await?;
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// Forces a reload on every SIGHUP.
async fn reload_on_sighup(watch: Arc<WatchHandle>) {
    #[cfg(unix)]
    {
        let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            tracing::warn!("cannot install a SIGHUP handler");
            return;
        };
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading");
            watch.force_reload();
        }
    }
    #[cfg(not(unix))]
    let _ = watch;
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("shutdown signal received: draining");
}

fn authorize(args: AuthorizeArgs) -> anyhow::Result<ExitCode> {
    let snapshot = args.model.load()?;
    let bytes = std::fs::read(&args.request)
        .with_context(|| format!("cannot read {}", args.request.display()))?;
    let request =
        AuthzRequest::from_slice(&bytes).with_context(|| args.request.display().to_string())?;
    let decision = engine::decide(&snapshot, &request, chrono::Utc::now())
        .with_context(|| args.request.display().to_string())?;
    let response = AuthzResponse {
        decision: decision.outcome,
        diagnostics: decision.diagnostics,
        policy_version: snapshot.version.clone(),
        decision_id: uuid::Uuid::now_v7().to_string(),
    };
    println!("{}", serde_json::to_string_pretty(&response)?);
    Ok(match response.decision {
        Outcome::Allow => ExitCode::SUCCESS,
        Outcome::Deny => ExitCode::from(EXIT_DENY),
    })
}
