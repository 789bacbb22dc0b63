//! `serve --listen unix:PATH`: decisions over a real Unix-domain socket, and the
//! socket file's lifecycle (mode, stale file replaced, live socket and other files
//! left alone, removed on SIGTERM).

use std::io::{BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{ChildStderr, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::util::{allowed_consultation, repo, spawn_serve_on, terminate, ServeChild};

/// One HTTP/1.1 POST over the socket; the status code and the JSON body.
/// POSTs `body` with the header lines `headers` (`host: …`, the name a client puts
/// in its URL, and any others).
fn post(socket: &Path, headers: &str, path: &str, body: &str) -> (u16, Value) {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\n{headers}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap())
}

/// Serves on `socket`; the process and its stderr (kept open while the test runs).
fn serve_on(socket: &Path) -> (ServeChild, BufReader<ChildStderr>) {
    let (child, stderr, addr) =
        spawn_serve_on(&format!("unix:{}", socket.display()), &["--no-audit"]);
    assert_eq!(addr, format!("unix:{}", socket.display()));
    (child, stderr)
}

fn stop(mut child: ServeChild) {
    let exit = terminate(&mut child);
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn decisions_are_served_over_a_unix_socket_and_the_file_is_removed_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("authz.sock");
    let (child, _stderr) = serve_on(&socket);

    let metadata = std::fs::metadata(&socket).unwrap();
    assert!(metadata.file_type().is_socket());
    assert_eq!(metadata.permissions().mode() & 0o777, 0o660);
    let beside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        beside,
        ["authz.sock"],
        "the private staging directory is gone"
    );

    // No web page reaches a Unix socket: any placeholder host is served, and a
    // browser's header, passed on by a backend, is not looked for.
    for headers in [
        "host: localhost",
        "host: cdap-authz",
        "host: localhost\r\norigin: https://cdap.caf.fr",
    ] {
        let (status, reply) = post(
            &socket,
            headers,
            "/v1/is_authorized",
            &allowed_consultation().to_string(),
        );
        assert_eq!(status, 200, "{headers}: {reply}");
        assert_eq!(reply["decision"], "Allow", "{reply}");
    }
    let (status, reply) = post(&socket, "host: localhost", "/v1/is_authorized", "{not json");
    assert_eq!(status, 400, "{reply}");

    stop(child);
    assert!(!socket.exists(), "the socket file outlived the sidecar");
}

#[test]
fn a_stale_socket_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("authz.sock");
    drop(UnixListener::bind(&socket).unwrap()); // leaves the file, nobody listening
    let (child, _stderr) = serve_on(&socket);
    let (status, reply) = post(
        &socket,
        "host: localhost",
        "/v1/is_authorized",
        &allowed_consultation().to_string(),
    );
    assert_eq!((status, &reply["decision"]), (200, &"Allow".into()));
    stop(child);
}

/// Runs serve on `socket`, expecting it to refuse to start; returns its stderr.
fn refused(socket: &Path) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_cdap-authz"))
        .current_dir(repo("."))
        .args(["serve", "--no-audit", "--listen"])
        .arg(format!("unix:{}", socket.display()))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success(), "serve started on {socket:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_live_socket_and_a_regular_file_are_never_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live.sock");
    let _listening = UnixListener::bind(&live).unwrap();
    assert!(refused(&live).contains("already listens"));
    assert!(
        UnixStream::connect(&live).is_ok(),
        "the live socket was taken"
    );

    let file = dir.path().join("notes.txt");
    std::fs::write(&file, "keep me").unwrap();
    assert!(refused(&file).contains("not a socket"));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}
