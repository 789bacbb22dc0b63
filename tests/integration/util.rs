//! A sidecar on a port-0 listener, with a small blocking HTTP client.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;

use cdap_authz::http::{self, AppState, Limits};
use cdap_authz::load::Sources;
use cdap_authz::snapshot::{Snapshot, DEFAULT_TIME_ATTRIBUTE};
use cdap_authz::workers;
use serde_json::{json, Value};

/// The instant the rule tests pin as "now".
pub const NOW: &str = "2026-11-22T10:00:00Z";

pub fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

pub fn bundled_sources() -> Sources {
    Sources {
        policies: repo("policies"),
        schema: repo("schema/cdap.cedarschema"),
        entities: Some(repo("examples/entities.json")),
        derived: Some(repo("schema/derived.json")),
    }
}

pub struct Server {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Serves the bundled model.
    pub fn start() -> Self {
        Self::start_with(pinned_time())
    }

    pub fn start_with(limits: Limits) -> Self {
        let snapshot = Snapshot::load(&bundled_sources(), DEFAULT_TIME_ATTRIBUTE)
            .expect("bundled model loads");
        let state = Arc::new(AppState::new(limits));
        state.install(Arc::new(snapshot));
        Self::serve(state)
    }

    /// Serves `state` as it is (possibly with no snapshot installed).
    pub fn serve(state: Arc<AppState>) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            runtime
                .block_on(http::serve(
                    listener,
                    state,
                    workers::Plan::default(),
                    async {
                        let _ = stopped.await;
                    },
                ))
                .unwrap();
        });
        Self {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// POSTs a raw body; returns the status and the JSON reply.
    pub fn post_raw(&self, path: &str, body: &str) -> (u16, Value) {
        self.post_bytes(path, body.as_bytes())
    }

    /// POSTs a body of any bytes (not necessarily UTF-8).
    pub fn post_bytes(&self, path: &str, body: &[u8]) -> (u16, Value) {
        let reply = ureq::post(&self.url(path))
            .set("content-type", "application/json")
            .send_bytes(body);
        status_and_json(reply)
    }

    /// Sends `request` as written on a new connection (for what an HTTP client
    /// would not send, such as a header twice); the whole response as text.
    pub fn exchange_raw(&self, request: &str) -> String {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(self.addr).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_raw(path, &body.to_string())
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        match ureq::get(&self.url(path)).call() {
            Ok(r) => (r.status(), r.into_string().unwrap()),
            Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
            Err(e) => panic!("GET {path}: {e}"),
        }
    }

    /// Decides one request that must be well formed.
    pub fn decide(&self, request: &Value) -> Decision {
        let (status, body) = self.post("/v1/is_authorized", request);
        assert_eq!(status, 200, "request {request} got {body}");
        Decision::from_json(&body)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The status and JSON body of a reply, error statuses included.
pub fn status_and_json(reply: Result<ureq::Response, ureq::Error>) -> (u16, Value) {
    match reply {
        Ok(r) => (r.status(), r.into_json().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap()),
        Err(e) => panic!("transport error: {e}"),
    }
}

#[derive(Debug)]
pub struct Decision {
    pub allowed: bool,
    pub reason: Vec<String>,
    pub errors: Vec<String>,
}

impl Decision {
    pub fn from_json(body: &Value) -> Self {
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_owned())
                .collect()
        };
        let allowed = match body["decision"].as_str() {
            Some("Allow") => true,
            Some("Deny") => false,
            other => panic!("no decision in {body}: {other:?}"),
        };
        Self {
            allowed,
            reason: strings(&body["diagnostics"]["reason"]),
            errors: strings(&body["diagnostics"]["errors"]),
        }
    }

    #[track_caller]
    pub fn assert_allowed_by(&self, policy: &str) {
        assert!(self.allowed, "expected Allow by {policy}, got {self:?}");
        assert!(
            self.reason.iter().any(|r| r == policy),
            "expected {policy} in {self:?}"
        );
    }

    #[track_caller]
    pub fn assert_denied_by(&self, policy: &str) {
        assert!(!self.allowed, "expected Deny by {policy}, got {self:?}");
        assert!(
            self.reason.iter().any(|r| r == policy),
            "expected {policy} in {self:?}"
        );
    }

    /// Denied because no permit applies (default deny), without errors.
    #[track_caller]
    pub fn assert_denied_by_default(&self) {
        assert!(!self.allowed, "expected Deny, got {self:?}");
        assert!(
            self.reason.is_empty() && self.errors.is_empty(),
            "expected a default deny, got {self:?}"
        );
    }
}

/// The limits the tests' servers run with: the defaults, except that requests may
/// pin `now` (the demo data's dates are fixed, and the tests pin the time as a
/// replay would). Tests of the defaults themselves use `Limits::default()`.
pub fn pinned_time() -> Limits {
    Limits {
        trust_request_time: true,
        ..Limits::default()
    }
}

/// A Cdap consultation by `principal` under `habilitation`, for `mission`.
pub fn consult(
    principal: &str,
    habilitation: &str,
    mission: &str,
    categories: &[&str],
    file: &str,
) -> Value {
    json!({
        "principal": {"type": "User", "id": principal},
        "action": "Action::\"consult_file\"",
        "resource": {"type": "File", "id": file},
        "context": {
            "authentication": "password",
            "habilitation": {"type": "Habilitation", "id": habilitation},
            "mission": {"type": "Mission", "id": mission},
            "categories": categories,
            "now": NOW
        }
    })
}

/// A consultation the bundled policies allow (T2, quotient familial).
pub fn allowed_consultation() -> Value {
    consult(
        "mau-t2",
        "mau-t2-01",
        "maubeuge-centre-loisirs-qf",
        &["quotient_familial"],
        "dossier-59-0004",
    )
}

/// Any other action, with a Session context.
pub fn act(principal: &str, action: &str, resource: Value) -> Value {
    json!({
        "principal": {"type": "User", "id": principal},
        "action": {"type": "Action", "id": action},
        "resource": resource,
        "context": {"authentication": "password", "now": NOW}
    })
}

pub fn entity(type_name: &str, id: &str) -> Value {
    json!({"type": type_name, "id": id})
}

/// A spawned `cdap-authz serve`, killed (SIGKILL) when dropped if it still runs: a
/// test that fails before stopping it leaves no server behind, holding the test
/// run's output open.
pub struct ServeChild(pub Child);

impl std::ops::Deref for ServeChild {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for ServeChild {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for ServeChild {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Runs `cdap-authz serve --listen 127.0.0.1:0 ARGS…` from the repository root and
/// returns the process, its stderr (still piped, so its writes never block) and the
/// address it listens on.
pub fn spawn_serve<S: AsRef<std::ffi::OsStr>>(
    args: &[S],
) -> (ServeChild, BufReader<ChildStderr>, String) {
    spawn_serve_on("127.0.0.1:0", args)
}

/// [`spawn_serve`] with another `--listen` value.
pub fn spawn_serve_on<S: AsRef<std::ffi::OsStr>>(
    listen: &str,
    args: &[S],
) -> (ServeChild, BufReader<ChildStderr>, String) {
    let mut child = ServeChild(
        Command::new(env!("CARGO_BIN_EXE_cdap-authz"))
            .current_dir(repo("."))
            .args(["serve", "--listen", listen, "--trust-request-time"])
            .args(args)
            .env("CDAP_AUTHZ_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "serve exited before serving"
        );
        if let Some(rest) = line.split("listen=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    (child, stderr, addr)
}

/// Sends SIGTERM to `child` and waits (up to 10 s) for it to exit; its exit status.
pub fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Some(exit) = child.try_wait().unwrap() {
            return exit;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "serve did not stop within 10 s of SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
