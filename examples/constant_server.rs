//! The load-test baseline: a minimal hyper server on the same stack as the sidecar
//! (hyper 1, tokio multi-thread, HTTP/1.1 keep-alive) that reads the request body
//! and answers a constant decision. `benches/load.sh` compares the sidecar's
//! throughput with this one's.
//!
//! With a second argument, it also keeps the CPU busy for that many microseconds per
//! request before answering: what a handler of a given cost can reach on the same
//! machine and load, with nothing else of the sidecar's.
//!
//! `cargo run --release --example constant_server -- 127.0.0.1:8181 [BUSY_MICROSECONDS]`

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

const BODY: &[u8] = br#"{"decision":"Allow","diagnostics":{"reason":["P6-T18-contentieux-rsa"],"errors":[]},"policy_version":"constant","decision_id":"constant"}"#;

async fn answer(
    request: Request<Incoming>,
    busy: Duration,
) -> Result<Response<Full<Bytes>>, Infallible> {
    // Read the body as the sidecar does, so both do the same socket work.
    let _ = request.into_body().collect().await;
    let started = Instant::now();
    while started.elapsed() < busy {
        std::hint::spin_loop();
    }
    let mut response = Response::new(Full::new(Bytes::from_static(BODY)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8181".into())
        .parse()
        .expect("an address like 127.0.0.1:8181");
    let busy = Duration::from_micros(
        std::env::args()
            .nth(2)
            .map_or(0, |v| v.parse().expect("a whole number of microseconds")),
    );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!("listen={}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(
                    TokioIo::new(stream),
                    service_fn(move |request| answer(request, busy)),
                )
                .await;
        });
    }
}
