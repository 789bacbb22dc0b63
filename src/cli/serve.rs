//! `cdap-authz serve`: the HTTP sidecar, with hot reload and graceful shutdown.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;

use super::ModelArgs;
use crate::api::DEFAULT_MAX_BATCH;
use crate::audit::{
    AuditConfig, AuditLog, DEFAULT_CONTEXT_FIELDS, DEFAULT_DIR, DEFAULT_MAX_FILE_BYTES,
    DEFAULT_RETENTION_DAYS,
};
use crate::http::{
    self, AppState, Limits, DEFAULT_MAX_BODY, DEFAULT_MAX_TRACE_QUERIES, DEFAULT_READ_TIMEOUT,
};
use crate::listen::{ListenAddr, Listener};
use crate::load::LoadError;
use crate::reload::{self, Reloaded, Reloader, WatchHandle, DEFAULT_DEBOUNCE};
use crate::workers;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on: `127.0.0.1:8180`, or `unix:PATH` for a Unix-domain
    /// socket (mode 0660, replaced if stale, removed on shutdown).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8180")]
    pub listen: ListenAddr,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Threads serving connections, each with the connections it was given (by
    /// default one per core).
    #[arg(long, value_name = "N", default_value_t = workers::default_count())]
    pub workers: NonZeroUsize,
    /// Keep each worker on one CPU of those the process may use (the i-th worker on
    /// the i-th), for a sidecar given cores of its own (taskset, a cpuset). On the
    /// 2-core dev VM, sharing its cores with the load generator, it cut the p99 at
    /// half rate by about a seventh, at the same throughput (BENCHMARKS.md). Not
    /// under a CPU quota alone: the CPUs the process may use are then the whole
    /// host's, and a pinned worker cannot leave a core other work keeps busy.
    #[arg(long)]
    pub pin_workers: bool,
    /// Largest request body accepted, in bytes (larger ones get 413).
    #[arg(
        long,
        value_name = "BYTES",
        default_value_t = DEFAULT_MAX_BODY,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
    )]
    pub max_body: usize,
    /// Most requests in one batch.
    #[arg(
        long,
        value_name = "N",
        default_value_t = DEFAULT_MAX_BATCH,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
    )]
    pub max_batch: usize,
    /// `GET /v1/traces` log reads that may run at once (each reads the log on a
    /// thread of its own); one more gets 429 `too_many_trace_queries`.
    #[arg(
        long,
        value_name = "N",
        default_value_t = DEFAULT_MAX_TRACE_QUERIES,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
    )]
    pub max_trace_queries: usize,
    /// Seconds a request's headers, then its body, may each take to arrive (a
    /// slower client is cut off: the body gets 408); an idle keep-alive connection
    /// is closed after it too.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = DEFAULT_READ_TIMEOUT.as_secs(),
        value_parser = clap::value_parser!(u64).range(1..=86_400)
    )]
    pub read_timeout_secs: u64,
    /// Let requests set the time the sidecar otherwise fills (`now`): for tests
    /// and replays; in production the sidecar's clock decides.
    #[arg(long)]
    pub trust_request_time: bool,
    /// Let a request bring its own principal among its entities; by default the
    /// principal must be stored (who it is and what it holds come from the store).
    #[arg(long)]
    pub request_principals: bool,
    /// A host name (without port) requests over TCP may be addressed to (their
    /// `Host` header), besides `localhost` and IP addresses, which always are; repeat
    /// for several. Others get 403: a web page whose name resolves to this host (DNS
    /// rebinding) cannot reach the sidecar as its own origin. On a Unix-domain
    /// socket any host is accepted.
    #[arg(long = "allow-host", value_name = "NAME", value_parser = host_name)]
    pub allowed_hosts: Vec<String>,
    #[command(flatten)]
    pub audit: AuditArgs,
}

/// The smallest `--audit-max-file-bytes`: a file per record or so would bury the
/// log in files.
const MIN_MAX_FILE_BYTES: u64 = 1 << 20;

/// An `--allow-host` name: not empty, and without a port (`Host`'s port is checked
/// apart).
fn host_name(value: &str) -> Result<String, String> {
    if value.is_empty() || value.contains([':', '/', ' ']) {
        return Err("a host name, without port, scheme or path (e.g. cdap-authz.internal)".into());
    }
    Ok(value.to_owned())
}

/// The decision log.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Directory of the decision log (every decision, before its answer).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DIR)]
    pub audit_dir: PathBuf,
    /// Serve without a decision log; decisions then leave no trace (contract T1).
    #[arg(long, conflicts_with = "audit_fsync")]
    pub no_audit: bool,
    /// Acknowledge a record once an fdatasync covers it (one for all the records
    /// appended meanwhile), so an acknowledged record survives power loss.
    #[arg(long)]
    pub audit_fsync: bool,
    /// Size at which a log file is rotated (1 MiB at least).
    #[arg(
        long,
        value_name = "BYTES",
        default_value_t = DEFAULT_MAX_FILE_BYTES,
        value_parser = clap::value_parser!(u64).range(MIN_MAX_FILE_BYTES..)
    )]
    pub audit_max_file_bytes: u64,
    /// Days log files are kept; older files are deleted (T2: six months).
    #[arg(
        long,
        value_name = "DAYS",
        default_value_t = DEFAULT_RETENTION_DAYS,
        value_parser = clap::value_parser!(u32).range(1..=36_500)
    )]
    pub audit_retention_days: u32,
    /// Context fields recorded (comma separated); no other context is written.
    #[arg(long, value_name = "NAMES", value_delimiter = ',', default_values = DEFAULT_CONTEXT_FIELDS)]
    pub audit_context_fields: Vec<String>,
}

impl AuditArgs {
    /// Starts the log, or says loudly that there is none.
    fn start(&self) -> anyhow::Result<Option<AuditLog>> {
        if self.no_audit {
            tracing::warn!("--no-audit: the decision log is OFF; decisions leave no trace (contract T1 not met)");
            return Ok(None);
        }
        let config = AuditConfig {
            fsync: self.audit_fsync,
            max_file_bytes: self.audit_max_file_bytes,
            retention_days: self.audit_retention_days,
            context_fields: self.audit_context_fields.clone(),
            ..AuditConfig::new(&self.audit_dir)
        };
        let log = AuditLog::start(config).with_context(|| {
            format!(
                "cannot open the decision log in {}",
                self.audit_dir.display()
            )
        })?;
        tracing::info!(dir = %self.audit_dir.display(), fsync = self.audit_fsync, "decision log");
        Ok(Some(log))
    }
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    // This runtime accepts connections, reloads and waits for signals; the
    // connections are served on the workers' threads.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = Listener::bind(&args.listen).await?;
        let address = listener.local_addr()?;
        // Caught from now on, instead of killing the process: SIGINT or SIGTERM
        // while the model loads stops the server at once (no decision was made),
        // a SIGHUP is acted on once it has loaded.
        let shutdown = shutdown_signal()?;
        let hangup = hangup_signal()?;
        let mut state = AppState::new(Limits {
            max_body: args.max_body,
            max_batch: args.max_batch,
            read_timeout: Duration::from_secs(args.read_timeout_secs),
            trust_request_time: args.trust_request_time,
            request_principals: args.request_principals,
            allowed_hosts: args.allowed_hosts.clone(),
            local_socket: matches!(args.listen, ListenAddr::Unix(_)),
            max_trace_queries: args.max_trace_queries,
        });
        state.audit = args.audit.start()?;
        let state = Arc::new(state);
        let reloader = Arc::new(Reloader::new(
            args.model.sources(),
            args.model.time_attribute(),
            state.clone(),
        ));
        // Requests are answered while the model loads: 503 `not_ready` (health
        // checks get an answer, and no decision is made without a model).
        tracing::info!(address = %address, "loading the model");
        let loading = first_load(reloader.clone())?;
        let plan = workers::Plan {
            count: args.workers,
            pinned: args.pin_workers,
        };
        let server = http::serve(listener, state.clone(), plan, shutdown);
        tokio::pin!(server);
        tokio::select! {
            loaded = loading => loaded.context("the first load's thread died")??,
            served = &mut server => {
                served?;
                return Ok(stopped(&state));
            }
        };
        let watch = Arc::new(
            reload::watch(reloader, DEFAULT_DEBOUNCE).context("cannot watch the model's files")?,
        );
        // A change made between the first load and the watches is picked up by one
        // more load now (which finds the version unchanged when there was none).
        watch.force_reload();
        tokio::spawn(reload_on_sighup(watch.clone(), hangup));
        let version = state
            .store
            .current()
            .map(|s| s.version.clone())
            .unwrap_or_default();
        tracing::info!(listen = %address, workers = args.workers, pinned = args.pin_workers, policy_version = %version, "serving");
        server.await?;
        Ok(stopped(&state))
    })
}

/// Runs the first load on a thread of its own, not the runtime's blocking pool:
/// a SIGTERM during it stops the server at once, and the runtime, dropped, would
/// wait for a blocking task to finish (logging its snapshot swapped in after
/// "stopped"); the process exits without waiting for this thread.
fn first_load(
    reloader: Arc<Reloader>,
) -> anyhow::Result<tokio::sync::oneshot::Receiver<Result<Reloaded, LoadError>>> {
    let (sender, receiver) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("first-load".into())
        // A result nobody waits for any more (the server stopped) is dropped.
        .spawn(move || drop(sender.send(reloader.reload())))
        .context("cannot start the first load's thread")?;
    Ok(receiver)
}

/// Closes the decision log once the server has stopped.
fn stopped(state: &AppState) -> ExitCode {
    if let Some(log) = &state.audit {
        log.close();
    }
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// SIGHUP, caught from the moment this is called (`None` where there is none).
#[cfg(unix)]
fn hangup_signal() -> anyhow::Result<Option<tokio::signal::unix::Signal>> {
    use tokio::signal::unix::{signal, SignalKind};
    Ok(Some(
        signal(SignalKind::hangup()).context("cannot catch SIGHUP")?,
    ))
}

#[cfg(not(unix))]
fn hangup_signal() -> anyhow::Result<Option<()>> {
    Ok(None)
}

/// Forces a reload on every SIGHUP.
#[cfg(unix)]
async fn reload_on_sighup(watch: Arc<WatchHandle>, hangup: Option<tokio::signal::unix::Signal>) {
    let Some(mut hangup) = hangup else {
        return;
    };
    while hangup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading");
        watch.force_reload();
    }
}

#[cfg(not(unix))]
async fn reload_on_sighup(_watch: Arc<WatchHandle>, _hangup: Option<()>) {}

/// Completes on SIGINT or SIGTERM, caught from the moment this is called.
#[cfg(unix)]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).context("cannot catch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot catch SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        tracing::info!("shutdown signal received: draining");
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown signal received: draining");
    })
}
