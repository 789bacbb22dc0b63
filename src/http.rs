//! The HTTP server: routes, body limits and read timeouts, the mapping of errors to
//! responses, and graceful shutdown. It only decodes, calls the library, and encodes.
//!
//! Routes:
//! - `POST /v1/is_authorized`, `POST /v1/batch_is_authorized`: decisions;
//! - `GET /healthz` (the process answers), `GET /readyz` (a snapshot is loaded);
//! - `GET /metrics` (Prometheus text), `GET /v1/policy-set` (what is loaded);
//! - `GET /v1/traces`: the decision log, for those the policies let read it (T3).
//!
//! It listens on TCP or on a Unix-domain socket ([`crate::listen`]), and serves each
//! connection on one of the [`crate::workers`].
//!
//! With a decision log, every decision is in the log before its response is sent;
//! a decision that cannot be logged is answered Deny.
//!
//! A worker serves the decision requests ready on its connections (`POST
//! /v1/is_authorized` with a body of 64 KiB at most) in runs, one phase for all of
//! them after the other: it reads them (`decide_with_the_queued_requests`), decides
//! them, appends their records (`append_in_run`), then writes their responses
//! (`write_with_the_queued_responses`, which every response waits for). Each
//! phase's code and data then stay in the caches from one request to the next.

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cedar_policy::EntityUid;
use chrono::Utc;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{
    HeaderMap, HeaderName, HeaderValue, ALLOW, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE,
    HOST, ORIGIN, TRANSFER_ENCODING,
};
use hyper::http::uri::Authority;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use serde::Serialize;
use serde_json::json;
use serde_json::value::RawValue;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;

use crate::api::{
    AuthzRequest, AuthzResponse, BatchItem, BatchRequest, BatchResponse, ErrorBody, RequestError,
    DEFAULT_MAX_BATCH,
};
use crate::audit::{Ack, AuditError, AuditLog, Decided, Entry};
use crate::diagnostic::with_causes;
use crate::engine;
use crate::listen::Listener;
use crate::metrics::Metrics;
use crate::snapshot::Snapshot;
use crate::store::{ReloadFailure, Store};
use crate::traces::{
    read_requests, TraceQuery, TraceQueryError, AUTHENTICATION_HEADER, CALLER_HEADER,
};
use crate::workers::{self, Workers};

/// Default cap on a request body.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;
/// Default time a request's headers, then its body, may each take to arrive; an
/// idle keep-alive connection is closed after it too (hyper's header timer runs
/// while a connection waits for its next request).
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Default number of `GET /v1/traces` log reads that may run at once (each a
/// blocking thread reading the log): one, so that on a small host the decisions,
/// which are the product, keep a core while a long query (a principal with no
/// record reads six months of log) runs.
pub const DEFAULT_MAX_TRACE_QUERIES: usize = 1;
/// How long in-flight requests may take to finish after a shutdown signal.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body: usize,
    pub max_batch: usize,
    /// A client slower than this (headers, then body) is cut off: a slow or stalled
    /// client cannot hold a connection and its task forever.
    pub read_timeout: Duration,
    /// A request may set the time attribute the sidecar fills (`now`). Off by
    /// default: the sidecar's clock decides, so a caller cannot move a decision to
    /// another day (before a suspension, inside an expired window); tests and
    /// replays turn it on.
    pub trust_request_time: bool,
    /// A request may bring its own principal among its entities. Off by default:
    /// who the principal is, and every group and habilitation it holds, come from
    /// the stored entities, never from the caller.
    pub request_principals: bool,
    /// Host names a request may be addressed to (its `Host` header) besides
    /// `localhost` and IP addresses. A web page whose name its author made resolve to
    /// 127.0.0.1 (DNS rebinding) would otherwise reach the sidecar as its own origin,
    /// free to set the trace headers and read the answers.
    pub allowed_hosts: Vec<String>,
    /// The listener is a Unix-domain socket, which no web page reaches: any `Host`
    /// is accepted (clients put any placeholder name in their URLs), and requests
    /// are not checked for a browser's headers.
    pub local_socket: bool,
    /// `GET /v1/traces` log reads that may run at once; one more gets 429.
    pub max_trace_queries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body: DEFAULT_MAX_BODY,
            max_batch: DEFAULT_MAX_BATCH,
            read_timeout: DEFAULT_READ_TIMEOUT,
            trust_request_time: false,
            request_principals: false,
            allowed_hosts: Vec::new(),
            local_socket: false,
            max_trace_queries: DEFAULT_MAX_TRACE_QUERIES,
        }
    }
}

/// What every request handler shares.
pub struct AppState {
    pub store: Store,
    pub metrics: Metrics,
    pub limits: Limits,
    /// The decision log; `None` when serving with `--no-audit`.
    pub audit: Option<AuditLog>,
    /// One permit for each log read `GET /v1/traces` may run now
    /// (`limits.max_trace_queries`); a read holds its permit until it ends, even
    /// if its client has gone.
    pub trace_queries: Arc<Semaphore>,
    /// One permit for each large body decided now, off the workers
    /// ([`LARGE_BODIES_AT_ONCE`]).
    large_bodies: Arc<Semaphore>,
}

impl AppState {
    pub fn new(limits: Limits) -> Self {
        Self {
            store: Store::new(),
            metrics: Metrics::new(),
            trace_queries: Arc::new(Semaphore::new(limits.max_trace_queries)),
            large_bodies: Arc::new(Semaphore::new(LARGE_BODIES_AT_ONCE)),
            limits,
            audit: None,
        }
    }

    /// The context fields a record keeps, which the request reader keeps as sent.
    fn recorded_context_fields(&self) -> &[String] {
        self.audit.as_ref().map_or(&[], AuditLog::context_fields)
    }

    /// Logs every decision to `audit` before answering it.
    pub fn with_audit(mut self, audit: AuditLog) -> Self {
        self.audit = Some(audit);
        self
    }

    /// Installs a snapshot and publishes its version.
    pub fn install(&self, snapshot: Arc<Snapshot>) -> Option<Arc<Snapshot>> {
        self.metrics.set_policy_version(&snapshot.version);
        self.store.install(snapshot)
    }
}

/// Why a request got no decision; each maps to one status code.
#[derive(Debug, thiserror::Error)]
enum HttpError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("request body is over the limit of {max} bytes")]
    BodyTooLarge { max: usize },
    #[error("cannot read the request body: {0}")]
    BodyRead(String),
    #[error("the request body did not arrive within {0:?}")]
    BodyTimeout(Duration),
    #[error("the request body is encoded ({0}): the sidecar reads plain JSON only")]
    BodyEncoded(String),
    #[error("no policy snapshot is loaded yet")]
    NotReady,
    #[error("no route for {0}")]
    NotFound(String),
    #[error("method {method} is not allowed on {path}: {allow} only")]
    MethodNotAllowed {
        method: Method,
        path: String,
        /// The one method the path answers, sent back in an `Allow` header.
        allow: Method,
    },
    #[error("audit log unavailable: {0}")]
    AuditUnavailable(String),
    #[error("the decision log is off (--no-audit)")]
    AuditOff,
    #[error(transparent)]
    TraceQuery(#[from] TraceQueryError),
    // No reason is given, nor said to be recorded: a partner that has no traces, of
    // which no decision is made, gets the same answer as one the policies refuse.
    #[error("{caller} may not read these traces")]
    Forbidden { caller: String },
    #[error("trace queries are limited to {0} at once (--max-trace-queries), and that many are reading the decision log: retry shortly")]
    TraceQueriesBusy(usize),
    #[error("requests addressed to host `{0}` are refused: localhost, an IP address, or a name given with --allow-host")]
    HostNotAllowed(String),
    #[error("the decision failed: {0}")]
    DecisionFailed(String),
    #[error("the Host header is sent more than once")]
    HostRepeated,
    #[error("requests from a web browser ({0}) are refused: the sidecar answers backends, and a page's request would put a decision nobody asked for in the log")]
    FromBrowser(String),
}

impl HttpError {
    fn status(&self) -> StatusCode {
        match self {
            HttpError::Request(_) | HttpError::BodyRead(_) | HttpError::TraceQuery(_) => {
                StatusCode::BAD_REQUEST
            }
            HttpError::AuditUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            HttpError::AuditOff => StatusCode::NOT_FOUND,
            HttpError::Forbidden { .. }
            | HttpError::HostNotAllowed(_)
            | HttpError::HostRepeated
            | HttpError::FromBrowser(_) => StatusCode::FORBIDDEN,
            HttpError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            HttpError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            HttpError::BodyEncoded(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            HttpError::NotReady => StatusCode::SERVICE_UNAVAILABLE,
            HttpError::DecisionFailed(_) => StatusCode::INTERNAL_SERVER_ERROR,
            HttpError::NotFound(_) => StatusCode::NOT_FOUND,
            HttpError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            HttpError::TraceQueriesBusy(_) => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            HttpError::Request(e) => e.code(),
            HttpError::BodyTooLarge { .. } => "body_too_large",
            HttpError::BodyRead(_) => "body_unreadable",
            HttpError::BodyTimeout(_) => "body_timeout",
            HttpError::BodyEncoded(_) => "body_encoded",
            HttpError::NotReady => "not_ready",
            HttpError::DecisionFailed(_) => "decision_failed",
            HttpError::NotFound(_) => "not_found",
            HttpError::MethodNotAllowed { .. } => "method_not_allowed",
            HttpError::AuditUnavailable(_) => "audit_unavailable",
            HttpError::AuditOff => "audit_off",
            HttpError::TraceQuery(_) => "invalid_trace_query",
            HttpError::Forbidden { .. } => "forbidden",
            HttpError::TraceQueriesBusy(_) => "too_many_trace_queries",
            HttpError::HostNotAllowed(_) | HttpError::HostRepeated => "host_not_allowed",
            HttpError::FromBrowser(_) => "browser_request",
        }
    }
}

/// How long the accept loop waits after an accept failed for want of resources:
/// out of file descriptors, say, the connection waits in the backlog, and an accept
/// tried again at once fails again (a core spun, logging each failure).
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// Whether an accept failed for want of descriptors or memory, which only time
/// frees; other errors (a connection aborted before it was accepted) are the one
/// connection's, and the next accept is tried at once.
fn out_of_resources(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Failed accepts are logged at most once in this long, with how many failed.
const ACCEPT_FAILURE_REPORT_EVERY: Duration = Duration::from_secs(10);

/// Failed accepts since the last one logged.
#[derive(Default)]
struct FailedAccepts {
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl FailedAccepts {
    fn report(&mut self, error: &std::io::Error) {
        self.unlogged += 1;
        if self
            .last_logged
            .is_some_and(|at| at.elapsed() < ACCEPT_FAILURE_REPORT_EVERY)
        {
            return;
        }
        tracing::warn!(
            %error, failed = self.unlogged, retry_ms = ACCEPT_RETRY.as_millis(),
            "accept failed (logged at most every 10 s)"
        );
        self.last_logged = Some(Instant::now());
        self.unlogged = 0;
    }
}

/// Serves connections from `listener` on the threads of `workers` ([`Workers`])
/// until `shutdown` completes, then stops accepting and lets in-flight requests
/// finish (up to a deadline).
pub async fn serve(
    listener: impl Into<Listener>,
    state: Arc<AppState>,
    workers: workers::Plan,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let listener = listener.into();
    let workers = Workers::start(workers)?;
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    let mut failed_accepts = FailedAccepts::default();
    loop {
        tokio::select! {
            accepted = accept(&listener, &state, &workers, &graceful) => {
                if let Err(error) = accepted {
                    failed_accepts.report(&error);
                    if out_of_resources(&error) {
                        tokio::time::sleep(ACCEPT_RETRY).await;
                    }
                }
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_DEADLINE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(deadline = ?DRAIN_DEADLINE, "in-flight requests did not finish in time");
    }
    Ok(())
}

/// Accepts one connection and hands it to a worker. The socket leaves this
/// thread's reactor, to be registered with the worker's.
async fn accept(
    listener: &Listener,
    state: &Arc<AppState>,
    workers: &Workers,
    graceful: &GracefulShutdown,
) -> std::io::Result<()> {
    let state = state.clone();
    let watcher = graceful.watcher();
    match listener {
        Listener::Tcp(tcp) => {
            let (stream, _) = tcp.accept().await?;
            let _ = stream.set_nodelay(true);
            let stream = stream.into_std()?;
            hand_off(
                workers,
                move || tokio::net::TcpStream::from_std(stream),
                state,
                watcher,
            );
        }
        Listener::Unix(unix, _) => {
            let (stream, _) = unix.accept().await?;
            let stream = stream.into_std()?;
            hand_off(
                workers,
                move || tokio::net::UnixStream::from_std(stream),
                state,
                watcher,
            );
        }
    }
    Ok(())
}

/// Serves a connection on a worker, once `register` has registered its socket with
/// that worker's reactor.
fn hand_off<S>(
    workers: &Workers,
    register: impl FnOnce() -> std::io::Result<S> + Send + 'static,
    state: Arc<AppState>,
    watcher: Watcher,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    workers.spawn(async move {
        match register() {
            Ok(stream) => serve_connection(stream, state, watcher).await,
            Err(error) => tracing::warn!(%error, "cannot register a connection"),
        }
    });
}

async fn serve_connection<S>(stream: S, state: Arc<AppState>, watcher: Watcher)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let read_timeout = state.limits.read_timeout;
    let service = service_fn(move |request| handle(state.clone(), request));
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(read_timeout)
        // A client may shut its side down once its request is sent (`nc -N`): it is
        // still answered.
        .half_close(true)
        .serve_connection(TokioIo::new(stream), service);
    if let Err(error) = watcher.watch(connection).await {
        tracing::debug!(%error, "connection ended with an error");
    }
}

async fn handle(
    state: Arc<AppState>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let result = route(&state, request).await;
    write_with_the_queued_responses().await;
    Ok(result.unwrap_or_else(|error| {
        state.metrics.record_error(error.code());
        error_response(&error)
    }))
}

/// The JSON error body, with the `Allow` header RFC 9110 asks of a 405.
fn error_response(error: &HttpError) -> Response<Full<Bytes>> {
    let body = json!({"error": ErrorBody::new(error.code(), error.to_string())});
    let mut response = json_response(error.status(), &body);
    if let HttpError::MethodNotAllowed { allow, .. } = error {
        let allow = HeaderValue::from_str(allow.as_str()).expect("a method is a header value");
        response.headers_mut().insert(ALLOW, allow);
    }
    response
}

/// Waits until the other connections ready on this worker have been decided, so
/// that a worker's responses leave together, as Redis writes its replies just
/// before it waits for events again. On loopback each response wakes the client's
/// thread; woken for one response at a time, the client then preempts a worker
/// about once every two requests (`serve` against oha on two cores). Answering in
/// runs served more requests a second at less CPU each, in 7 of 8 alternated
/// rounds, for the price of a response waiting for the decisions queued with it
/// (BENCHMARKS.md).
async fn write_with_the_queued_responses() {
    // Tokio runs a yielding task again once the worker has run its other ready tasks
    // and polled for new events.
    tokio::task::yield_now().await;
}

/// Waits until the worker's other ready connections have read their requests, so
/// that the worker reads its ready requests one after another, then decides them
/// one after another: the kernel's receive path and hyper's parser, then the
/// decision path, each stay in the caches through the run, where reading and
/// deciding in turns fetched each of them again for every request. Reading before
/// deciding served 7–11% more requests a second at 7–11% less CPU each, and at
/// half that rate lowered the p99 in 10 of 12 alternated rounds (BENCHMARKS.md,
/// session 41).
async fn decide_with_the_queued_requests() {
    tokio::task::yield_now().await;
}

async fn route(
    state: &Arc<AppState>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, HttpError> {
    if !state.limits.local_socket {
        check_host(&state.limits, &request)?;
        check_not_from_a_browser(&request)?;
    }
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    match (&method, path.as_str()) {
        (&Method::POST, "/v1/is_authorized") => {
            let body = read_body(request, &state.limits).await?;
            let pending = if body.len() > INLINE_BODY_BYTES {
                // Decided and logged off the worker: its record is appended there,
                // whether or not its connection waits for it.
                off_the_worker(state, body, decide_one).await?
            } else {
                decide_with_the_queued_requests().await;
                decide_one_in_run(state, &body).await?
            };
            Ok(json_response(StatusCode::OK, &pending.answer(state).await))
        }
        (&Method::POST, "/v1/batch_is_authorized") => {
            let body = read_body(request, &state.limits).await?;
            let items = off_the_worker_if_large(state, body, decide_batch).await?;
            Ok(json_response(
                StatusCode::OK,
                &batch_answers(state, items).await,
            ))
        }
        (&Method::GET, "/healthz") => Ok(json_response(StatusCode::OK, &json!({"status": "ok"}))),
        (&Method::GET, "/readyz") => Ok(readiness(state)),
        (&Method::GET, "/metrics") => Ok(metrics_response(state.metrics.render())),
        (&Method::GET, "/v1/traces") => traces(state, &request).await,
        (&Method::GET, "/v1/policy-set") => {
            let snapshot = state.store.current().ok_or(HttpError::NotReady)?;
            let last_error = state.store.last_error();
            Ok(json_response(
                StatusCode::OK,
                &policy_set(&snapshot, last_error.as_deref()),
            ))
        }
        (_, "/v1/is_authorized" | "/v1/batch_is_authorized") => Err(HttpError::MethodNotAllowed {
            method,
            path,
            allow: Method::POST,
        }),
        (_, "/healthz" | "/readyz" | "/metrics" | "/v1/policy-set" | "/v1/traces") => {
            Err(HttpError::MethodNotAllowed {
                method,
                path,
                allow: Method::GET,
            })
        }
        _ => Err(HttpError::NotFound(path)),
    }
}

/// `/readyz`'s answer: 200 with the version serving, or the 503 of what is missing.
/// A 503 here is the probe's answer, not a request refused, so it is not counted in
/// `request_errors_total` (polled while the model loads, it would swell it).
fn readiness(state: &AppState) -> Response<Full<Bytes>> {
    let Some(snapshot) = state.store.current() else {
        return error_response(&HttpError::NotReady);
    };
    // Probed, not the last append's outcome: without traffic a log directory
    // deleted, or back, would not show.
    if let Some(failure) = state.audit.as_ref().and_then(AuditLog::probe) {
        return error_response(&HttpError::AuditUnavailable(failure));
    }
    // Ready, on the last good model: when a change was refused since, or a reload
    // held back (a writer that does not close, files that keep changing), shows
    // here too, for an operator whose probe reads only this; what it was is in
    // `/v1/policy-set` (it quotes the files, which a probe's logs need not keep).
    json_response(
        StatusCode::OK,
        &json!({
            "status": "ready",
            "policy_version": snapshot.version,
            "reload_error_at": state.store.last_error().map(|failure| failure.at),
        }),
    )
}

/// A body over this many bytes is decided on a blocking thread rather than on its
/// worker. Entities a request brings go through Cedar's JSON reading, about 5 µs a
/// value (a megabyte of them held a worker, and every connection it serves,
/// `/healthz` included, for about 0.3 s); an ordinary request is a few hundred bytes.
const INLINE_BODY_BYTES: usize = 64 * 1024;

/// Large bodies decided at once, off the workers; more wait their turn. Less than a
/// worker's blocking threads (`workers`), so that a trace query finds one.
const LARGE_BODIES_AT_ONCE: usize = 2;

/// `decide` run on `body`: on the worker for an ordinary body, on a blocking thread
/// for a large one, so that the worker serves its other connections meanwhile.
async fn off_the_worker_if_large<T: Send + 'static>(
    state: &Arc<AppState>,
    body: Bytes,
    decide: fn(&AppState, &[u8]) -> Result<T, HttpError>,
) -> Result<T, HttpError> {
    if body.len() <= INLINE_BODY_BYTES {
        return decide(state, &body);
    }
    off_the_worker(state, body, decide).await
}

/// `decide` run on `body` on a blocking thread, [`LARGE_BODIES_AT_ONCE`] at a time.
async fn off_the_worker<T: Send + 'static>(
    state: &Arc<AppState>,
    body: Bytes,
    decide: fn(&AppState, &[u8]) -> Result<T, HttpError>,
) -> Result<T, HttpError> {
    let turn = Arc::clone(&state.large_bodies)
        .acquire_owned()
        .await
        .map_err(|closed| HttpError::DecisionFailed(closed.to_string()))?;
    let state = Arc::clone(state);
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        decide(&state, &body)
    })
    .await
    .map_err(|failed| {
        // The panic's words may quote the request: logged, not sent back.
        tracing::error!(error = %failed, "a large body's decision failed");
        HttpError::DecisionFailed("see the sidecar's log".into())
    })?
}

/// One request decided, its record submitted to the log.
fn decide_one(state: &AppState, body: &[u8]) -> Result<Pending, HttpError> {
    let snapshot = state.store.current().ok_or(HttpError::NotReady)?;
    let request = engine::read_request(&snapshot, body, state.recorded_context_fields())?;
    Ok(decide(state, &snapshot, &request, Filing::ByResource)?)
}

/// One request decided on the worker, its record appended with the worker's run
/// ([`append_in_run`]).
async fn decide_one_in_run(state: &AppState, body: &[u8]) -> Result<Pending, HttpError> {
    let (mut pending, entry) = {
        let snapshot = state.store.current().ok_or(HttpError::NotReady)?;
        let request = engine::read_request(&snapshot, body, state.recorded_context_fields())?;
        decide_unlogged(state, &snapshot, &request, Filing::ByResource)?
    };
    if let Some((log, entry)) = state.audit.as_ref().zip(entry) {
        pending.logged = Some(append_in_run(log, entry).await);
    }
    Ok(pending)
}

/// A record waiting, on this worker, for the run of records it is appended with.
struct Queued {
    /// The log it goes to (the log's address, compared only).
    log: usize,
    entry: Entry,
    ack: Arc<OnceLock<Ack>>,
}

thread_local! {
    /// The records of the decisions this worker has made since it last appended.
    static RUN: RefCell<Vec<Queued>> = const { RefCell::new(Vec::new()) };
}

/// Appends `entry` with the records of the worker's other requests decided in the
/// meantime, and gives its acknowledgement. The worker first decides every request
/// ready on its connections, then the first of them to go on appends all their
/// records under one lock: the decision path's code and data stay in the caches
/// from one request to the next, and the log's from one record to the next, where
/// appending after each decision fetched them again each time (BENCHMARKS.md,
/// session 41). The answer still waits for its record.
async fn append_in_run(log: &AuditLog, entry: Entry) -> Ack {
    let run = Run::join(log, entry);
    // Tokio runs a yielding task again once the worker has run its other ready
    // tasks and polled for new events.
    tokio::task::yield_now().await;
    run.appended()
}

/// One record's place in the worker's run. Dropped unanswered (its connection
/// closed while it waited), it still appends the run: a decision made is logged.
struct Run<'a> {
    log: &'a AuditLog,
    ack: Arc<OnceLock<Ack>>,
}

impl<'a> Run<'a> {
    fn join(log: &'a AuditLog, entry: Entry) -> Self {
        let ack = Arc::new(OnceLock::new());
        RUN.with_borrow_mut(|run| {
            run.push(Queued {
                log: address(log),
                entry,
                ack: Arc::clone(&ack),
            });
        });
        Self { log, ack }
    }

    /// The record's acknowledgement, the run appended first if no other request
    /// of it has appended it yet.
    fn appended(self) -> Ack {
        let ack = Arc::clone(&self.ack);
        drop(self);
        ack.get()
            .cloned()
            .unwrap_or_else(|| Ack::failed(AuditError::Unacknowledged))
    }
}

impl Drop for Run<'_> {
    fn drop(&mut self) {
        if self.ack.get().is_none() {
            append_run(self.log);
        }
    }
}

fn address(log: &AuditLog) -> usize {
    std::ptr::from_ref(log) as usize
}

/// Appends the worker's queued records for `log`, in the order they were decided.
fn append_run(log: &AuditLog) {
    let queued: Vec<Queued> = RUN.with_borrow_mut(|run| {
        run.extract_if(.., |queued| queued.log == address(log))
            .collect()
    });
    let (entries, acks): (Vec<Entry>, Vec<_>) = queued
        .into_iter()
        .map(|queued| (queued.entry, queued.ack))
        .unzip();
    for (ack, given) in acks.iter().zip(log.submit_all(entries)) {
        // Each record is queued once, so its acknowledgement is set once.
        let _ = ack.set(given);
    }
}

/// A batch decided, its records submitted to the log as one group: each item's
/// decision waiting for its record, or the item's error.
fn decide_batch(
    state: &AppState,
    body: &[u8],
) -> Result<Vec<Result<Pending, RequestError>>, HttpError> {
    let snapshot = state.store.current().ok_or(HttpError::NotReady)?;
    let recorded = state.recorded_context_fields();
    let batch = BatchRequest::from_slice(body)?;
    if batch.requests.len() > state.limits.max_batch {
        return Err(RequestError::BatchTooLarge {
            count: batch.requests.len(),
            max: state.limits.max_batch,
        }
        .into());
    }
    let mut decided: Vec<_> = batch
        .requests
        .into_iter()
        .map(|item| {
            read_batch_item(&snapshot, body, item, recorded)
                .and_then(|request| decide_unlogged(state, &snapshot, &request, Filing::ByResource))
        })
        .collect();
    let entries = decided
        .iter_mut()
        .filter_map(|item| item.as_mut().ok().and_then(|(_, entry)| entry.take()))
        .collect();
    let mut acks = state
        .audit
        .as_ref()
        .map(|log| log.submit_all(entries))
        .unwrap_or_default()
        .into_iter();
    // Each decided item has an entry, and the log gives one acknowledgement an
    // entry, in order; an item left without one is answered as unlogged (Deny).
    Ok(decided
        .into_iter()
        .map(|item| {
            item.map(|(mut pending, _)| {
                pending.logged = state.audit.as_ref().map(|_| {
                    acks.next()
                        .unwrap_or_else(|| Ack::failed(AuditError::Unacknowledged))
                });
                pending
            })
        })
        .collect())
}

/// The batch's answers, each once its record is in the log.
async fn batch_answers(
    state: &AppState,
    items: Vec<Result<Pending, RequestError>>,
) -> BatchResponse {
    let mut results = Vec::with_capacity(items.len());
    for item in items {
        results.push(match item {
            Ok(pending) => BatchItem::Decided(pending.answer(state).await),
            Err(error) => {
                state.metrics.record_error(error.code());
                BatchItem::Failed {
                    error: error.body(),
                }
            }
        });
    }
    BatchResponse { results }
}

/// A batch item read as a single request is, a JSON error placed in the whole body.
fn read_batch_item(
    snapshot: &Snapshot,
    body: &[u8],
    item: &RawValue,
    recorded: &[String],
) -> Result<AuthzRequest, RequestError> {
    engine::read_request(snapshot, item.get().as_bytes(), recorded).map_err(|error| {
        match crate::api::offset_in(body, item) {
            Some(start) => error.within(body, start),
            None => error,
        }
    })
}

/// A decision whose record may still be on its way to the log.
struct Pending {
    response: AuthzResponse,
    logged: Option<Ack>,
    /// The action's id, and how long deciding took: the decision is counted by
    /// the answer given, known once the record is in the log.
    action: String,
    latency: Duration,
}

impl Pending {
    /// The reply, once the record is in the log; Deny if it could not be written.
    async fn answer(self, state: &AppState) -> AuthzResponse {
        self.answer_noting_the_log(state).await.0
    }

    /// [`Pending::answer`], and the log's error when the record could not be written.
    async fn answer_noting_the_log(self, state: &AppState) -> (AuthzResponse, Option<AuditError>) {
        let (response, unlogged) = match self.logged {
            None => (self.response, None),
            Some(logged) => match logged.wait().await {
                Ok(()) => (self.response, None),
                Err(error) => {
                    state.metrics.record_audit_failure();
                    (deny_unlogged(self.response, &error), Some(error))
                }
            },
        };
        state
            .metrics
            .record_decision(self.action, response.decision.as_str(), self.latency);
        (response, unlogged)
    }
}

fn deny_unlogged(mut response: AuthzResponse, error: &AuditError) -> AuthzResponse {
    response.decision = crate::api::Outcome::Deny;
    response.diagnostics.reason.clear();
    response.diagnostics.errors = vec![format!("audit log unavailable: {error}")];
    response
}

/// Decides one request on one snapshot, counts it and appends its record.
fn decide(
    state: &AppState,
    snapshot: &Snapshot,
    request: &AuthzRequest,
    filing: Filing,
) -> Result<Pending, RequestError> {
    let (mut pending, entry) = decide_unlogged(state, snapshot, request, filing)?;
    pending.logged = state
        .audit
        .as_ref()
        .zip(entry)
        .map(|(log, e)| log.submit(e));
    Ok(pending)
}

/// Under which partner a record is filed when its principal has none (Caf staff).
#[derive(Clone, Copy, PartialEq)]
enum Filing {
    /// The stored resource's: the partner whose user, habilitation or traces the
    /// request is about.
    ByResource,
    /// The stored resource's when allowed, else none. For the `read_traces`
    /// decisions of an unscoped trace listing: the listing asks about every partner
    /// to find those the caller may read, and a refusal for another Caf's partner
    /// belongs in no partner's traces.
    ByResourceWhenAllowed,
}

/// Decides one request; with a log, also returns its record.
fn decide_unlogged(
    state: &AppState,
    snapshot: &Snapshot,
    request: &AuthzRequest,
    filing: Filing,
) -> Result<(Pending, Option<Entry>), RequestError> {
    let started = Instant::now();
    let now = Utc::now();
    refuse_pinned_time(&state.limits, snapshot, request)?;
    let prepared = engine::prepare(snapshot, request, now)?;
    admit(&state.limits, snapshot, &prepared)?;
    let decision = engine::evaluate(&prepared);
    let latency = started.elapsed();
    let response = decision.response(&snapshot.version);
    let entry = state.audit.as_ref().map(|log| {
        let decided = Decided {
            request,
            decision: &decision,
            response: &response,
            entities: &prepared.entities,
            stored: &snapshot.entities,
            resource_partner: filing == Filing::ByResource
                || decision.outcome == crate::api::Outcome::Allow,
            found: prepared.found(),
            time: now,
            latency_us: u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
        };
        decided.entry(log.context_fields())
    });
    let pending = Pending {
        response,
        logged: None,
        action: decision.action.id().unescaped().to_owned(),
        latency,
    };
    Ok((pending, entry))
}

/// The time the sidecar fills, which a caller over the network may not set unless
/// the sidecar was told to trust it. Checked before the request is prepared, so that
/// a time set is refused as such, whether or not it is a valid time.
fn refuse_pinned_time(
    limits: &Limits,
    snapshot: &Snapshot,
    request: &AuthzRequest,
) -> Result<(), RequestError> {
    let pins_time = request
        .context
        .as_ref()
        .is_some_and(|context| context.contains_key(&snapshot.time_attribute));
    if limits.trust_request_time || !pins_time {
        return Ok(());
    }
    let action = snapshot.type_names.parse("action", &request.action)?;
    if snapshot.fills_time(&action) {
        return Err(RequestError::TimeNotAccepted(
            snapshot.time_attribute.clone(),
        ));
    }
    Ok(())
}

/// What a caller over the network may not bring unless the sidecar was told to
/// trust it: the principal's own entity, or one that stored entities name.
fn admit(
    limits: &Limits,
    snapshot: &Snapshot,
    prepared: &engine::Prepared,
) -> Result<(), RequestError> {
    if !limits.request_principals {
        if !prepared.principal_stored {
            return Err(RequestError::PrincipalNotStored(
                prepared.principal.to_string(),
            ));
        }
        let completes_stored = |uid: &&EntityUid| snapshot.unstored_references.contains_key(*uid);
        if let Some(uid) = prepared.brought.iter().find(completes_stored) {
            return Err(RequestError::CompletesStoredEntities(uid.to_string()));
        }
    }
    Ok(())
}

/// `GET /v1/traces`: authorises the caller per partner with `read_traces`, then
/// queries the log for the partners allowed.
async fn traces(
    state: &AppState,
    request: &Request<Incoming>,
) -> Result<Response<Full<Bytes>>, HttpError> {
    let snapshot = state.store.current().ok_or(HttpError::NotReady)?;
    let log = state.audit.as_ref().ok_or(HttpError::AuditOff)?;
    let query = TraceQuery::parse(
        single_header(request, CALLER_HEADER)?,
        single_header(request, AUTHENTICATION_HEADER)?,
        request.uri().query(),
    )?;
    // The answer must not tell a caller without rights which partners exist, nor
    // how many: a caller that is not stored is refused before any partner is
    // looked at, a partner with no traces gets the 403 of one the caller may not
    // read, and the 403 gives no reasons (one per partner refused would count
    // them). The decision log keeps each refusal's reasons.
    if snapshot.entities.get(&query.caller).is_none() {
        return Err(RequestError::UnknownCaller(query.caller.to_string()).into());
    }
    engine::check_principal_type(&snapshot, &crate::traces::read_traces(), &query.caller)?;
    let filing = if query.partner.is_some() {
        Filing::ByResource
    } else {
        Filing::ByResourceWhenAllowed
    };
    let mut allowed = Vec::new();
    for (partner, read) in read_requests(&snapshot, &query) {
        let (answer, unlogged) = decide(state, &snapshot, &read, filing)?
            .answer_noting_the_log(state)
            .await;
        // A read denied because its record could not be written is the log's
        // failure, which `/readyz` reports to anyone alike, not the caller's.
        if let Some(error) = unlogged {
            return Err(HttpError::AuditUnavailable(error.to_string()));
        }
        if answer.decision == crate::api::Outcome::Allow {
            allowed.push(partner);
        }
    }
    if allowed.is_empty() {
        return Err(HttpError::Forbidden {
            caller: query.caller.to_string(),
        });
    }
    // The query may read for a while: a reload need not wait for it to free the
    // snapshot the authorisation used.
    drop(snapshot);
    let mut filter = query.filter;
    filter.partners.clone_from(&allowed);
    let permit = state
        .trace_queries
        .clone()
        .try_acquire_owned()
        .map_err(|_| HttpError::TraceQueriesBusy(state.limits.max_trace_queries))?;
    let dir = log.dir().to_owned();
    let limit = query.limit;
    let found = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        crate::audit::query::query(&dir, &filter, limit)
    })
    .await
    .map_err(|e| HttpError::AuditUnavailable(e.to_string()))?
    .map_err(|e| HttpError::AuditUnavailable(e.to_string()))?;
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "partners": allowed,
            "records": found.records,
            "truncated": found.truncated,
            "unreadable_lines": found.unreadable,
        }),
    ))
}

/// A header the caller's identity rests on: its one value, or none; sent twice, it is
/// refused rather than read one way here and another way by a proxy.
fn single_header<'r>(
    request: &'r Request<Incoming>,
    name: &'static str,
) -> Result<Option<&'r str>, TraceQueryError> {
    let mut values = request.headers().get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(TraceQueryError::RepeatedHeader(name));
    }
    first
        .map(|value| {
            value
                .to_str()
                .map_err(|_| TraceQueryError::UnreadableHeader(name))
        })
        .transpose()
}

fn policy_set(snapshot: &Snapshot, last_error: Option<&ReloadFailure>) -> serde_json::Value {
    json!({
        "policy_version": snapshot.version,
        "loaded_at": snapshot.loaded_at.to_rfc3339(),
        "policies": snapshot.policy_info,
        "last_reload_error": last_error,
    })
}

/// Refuses a request addressed to a host name other than `localhost` or those of
/// `--allow-host` ([`Limits::allowed_hosts`]), or with a port that is no port; an IP
/// address, or no `Host` (which no browser sends), is the sidecar's own. A request
/// line in absolute form (`GET http://host/path`) names a host too, which HTTP counts
/// before `Host`: both are checked.
fn check_host<B>(limits: &Limits, request: &Request<B>) -> Result<(), HttpError> {
    let refused =
        |host: &[u8]| HttpError::HostNotAllowed(String::from_utf8_lossy(host).into_owned());
    if let Some(authority) = request.uri().authority() {
        if !host_allowed(limits, authority) {
            return Err(refused(authority.as_str().as_bytes()));
        }
    }
    let mut hosts = request.headers().get_all(HOST).iter();
    let Some(host) = hosts.next() else {
        return Ok(());
    };
    if hosts.next().is_some() {
        // Which one would count? A proxy might route by the other.
        return Err(HttpError::HostRepeated);
    }
    let authority: Option<Authority> = host.to_str().ok().and_then(|h| h.parse().ok());
    match authority {
        Some(authority) if host_allowed(limits, &authority) => Ok(()),
        _ => Err(refused(host.as_bytes())),
    }
}

/// Refuses a request a web browser sent on a page's behalf. Any web page may send a
/// "simple" POST to `http://127.0.0.1:8180` (`text/plain`, no preflight): it cannot
/// read the answer, but the decision would be made and logged, a consultation that
/// never happened in the record of who saw what. Browsers add `Origin` to every
/// POST and `Sec-Fetch-Site` to every request, and a page cannot remove or forge
/// either; backends send neither. `Sec-Fetch-Site: none` is a person typing the
/// address (`/healthz`, `/metrics`), which is left alone.
fn check_not_from_a_browser<B>(request: &Request<B>) -> Result<(), HttpError> {
    let headers = request.headers();
    if let Some(origin) = headers.get(ORIGIN) {
        let origin = String::from_utf8_lossy(origin.as_bytes());
        return Err(HttpError::FromBrowser(format!("Origin: {origin}")));
    }
    // Every line counts: `none` then `cross-site` is not a person's own request.
    match headers
        .get_all(SEC_FETCH_SITE)
        .iter()
        .find(|site| site.as_bytes() != b"none")
    {
        Some(site) => Err(HttpError::FromBrowser(format!(
            "Sec-Fetch-Site: {}",
            String::from_utf8_lossy(site.as_bytes())
        ))),
        None => Ok(()),
    }
}

/// A header browsers send with every request: where it comes from relative to the
/// target (`same-origin`, `same-site`, `cross-site`, or `none` for one a person
/// started). `hyper::header` has no constant for it.
const SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");

/// Whether `authority` names the sidecar: `localhost`, an IP address or an
/// `--allow-host` name, with no port or a port from 0 to 65535, and no user name
/// (`evil.example@localhost`).
fn host_allowed(limits: &Limits, authority: &Authority) -> bool {
    let name = authority.host();
    let port_valid = match authority.as_str().strip_prefix(name) {
        Some("") => true,
        Some(port) => port.strip_prefix(':').is_some_and(|port| {
            // `parse` alone would take `+80`.
            port.bytes().all(|b| b.is_ascii_digit())
                && (port.is_empty() || port.parse::<u16>().is_ok())
        }),
        None => false, // a user name before the host
    };
    let address = name.trim_start_matches('[').trim_end_matches(']');
    port_valid
        && (name.eq_ignore_ascii_case("localhost")
            || address.parse::<IpAddr>().is_ok()
            || limits
                .allowed_hosts
                .iter()
                .any(|a| a.eq_ignore_ascii_case(name)))
}

async fn read_body(request: Request<Incoming>, limits: &Limits) -> Result<Bytes, HttpError> {
    let max = limits.max_body;
    // A gzip body would otherwise be refused as malformed JSON, saying nothing useful.
    // hyper undoes `chunked` only: `Transfer-Encoding: gzip, chunked` leaves gzip too.
    for (header, plain) in [
        (CONTENT_ENCODING, "identity"),
        (TRANSFER_ENCODING, "chunked"),
    ] {
        if let Some(coding) = coding_other_than(request.headers(), &header, plain) {
            return Err(HttpError::BodyEncoded(coding));
        }
    }
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|length| length > max) {
        return Err(HttpError::BodyTooLarge { max });
    }
    let collect = Limited::new(request.into_body(), max).collect();
    let collected = tokio::time::timeout(limits.read_timeout, collect)
        .await
        .map_err(|_| HttpError::BodyTimeout(limits.read_timeout))?;
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => {
            Err(HttpError::BodyTooLarge { max })
        }
        // hyper's "error reading a body from connection" says why only in its source.
        Err(error) => Err(HttpError::BodyRead(with_causes(&*error))),
    }
}

/// The first coding `header` lists, over all its lines, other than `plain`: every
/// line and every comma-separated item counts (`identity` on one line and `gzip` on
/// the next is still gzip), but for empty items, which RFC 9110 (5.6.1) has
/// recipients ignore (`identity,`).
fn coding_other_than(headers: &HeaderMap, header: &HeaderName, plain: &str) -> Option<String> {
    headers
        .get_all(header)
        .iter()
        .flat_map(|line| line.as_bytes().split(|&b| b == b','))
        .map(|coding| coding.trim_ascii())
        .find(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case(plain.as_bytes()))
        .map(|coding| String::from_utf8_lossy(coding).into_owned())
}

fn json_response(status: StatusCode, body: &impl Serialize) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).expect("response bodies always serialize");
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// `prometheus_client` writes OpenMetrics text (`_total` samples, `# EOF`), which
/// a scraper must be told: read as Prometheus' older text format, its counters parse
/// as empty families.
fn metrics_response(text: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text)));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::{pin, Pin};
    use std::task::{Context, Poll, Waker};

    use super::*;
    use crate::audit::record::tests::entry;
    use crate::audit::rotate::segments;
    use crate::audit::AuditConfig;

    /// The log's text, once closed: its files', oldest first.
    fn logged_text(dir: &std::path::Path) -> String {
        segments(dir)
            .unwrap()
            .iter()
            .map(|segment| segment.read_text().unwrap())
            .collect()
    }

    /// Records joined in one run are appended together, in order, by the first of
    /// their requests to go on, and each request then reads its own
    /// acknowledgement; a request dropped while it waits (its connection closed)
    /// appends the run all the same, its own record and the others'.
    #[test]
    fn a_run_appends_every_record_it_holds_even_one_whose_request_was_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::start(AuditConfig::new(dir.path())).unwrap();
        let mut waiting = Context::from_waker(Waker::noop());
        let acknowledged = |request: Pin<&mut dyn Future<Output = Ack>>| {
            let mut waiting = Context::from_waker(Waker::noop());
            let Poll::Ready(ack) = request.poll(&mut waiting) else {
                panic!("a run goes on after one yield");
            };
            let appended = pin!(ack.wait()).poll(&mut waiting);
            assert!(matches!(appended, Poll::Ready(Ok(()))), "{appended:?}");
        };

        // Dropped before the run goes on: its drop appends the run.
        let mut first = Box::pin(append_in_run(&log, entry("first")));
        let mut dropped = Box::pin(append_in_run(&log, entry("dropped")));
        assert!(first.as_mut().poll(&mut waiting).is_pending());
        assert!(dropped.as_mut().poll(&mut waiting).is_pending());
        drop(dropped);
        RUN.with_borrow(|run| assert!(run.is_empty()));
        acknowledged(first.as_mut());

        // The first to go on appends the run; the next finds its record appended.
        let mut second = Box::pin(append_in_run(&log, entry("second")));
        let mut third = Box::pin(append_in_run(&log, entry("third")));
        assert!(second.as_mut().poll(&mut waiting).is_pending());
        assert!(third.as_mut().poll(&mut waiting).is_pending());
        acknowledged(second.as_mut());
        RUN.with_borrow(|run| assert!(run.is_empty()));
        acknowledged(third.as_mut());

        // Dropped alone.
        let mut alone = Box::pin(append_in_run(&log, entry("alone")));
        assert!(alone.as_mut().poll(&mut waiting).is_pending());
        drop(alone);
        log.close();
        let text = logged_text(dir.path());
        let order = ["first", "dropped", "second", "third", "alone"];
        let at: Vec<usize> = order
            .iter()
            .map(|id| {
                let field = format!("\"decision_id\":\"{id}\"");
                assert_eq!(text.matches(&field).count(), 1, "{id} once: {text}");
                text.find(&field).unwrap()
            })
            .collect();
        assert!(at.is_sorted(), "in the order decided: {text}");
        RUN.with_borrow(|run| assert!(run.is_empty()));
    }
}
