//! The management endpoint: a tiny HTTP/1.1 server on a loopback address, separate from the
//! replica port (which speaks only the authenticated Noise protocol and refuses anything else).
//!
//! - `GET /status` — JSON [`StatusSnapshot`]: id, incarnation, delivered rounds and requests,
//!   digest-chain head, current round, pending requests, peers connected, evidence per peer and
//!   kind.
//! - `GET /metrics` — Prometheus text format.
//! - `POST /submit` — the body is one request to order (at most `ordering.max_request_size`
//!   bytes; larger is `413`). `200` once the request is logged and queued for ordering, `503`
//!   when the replica's queue is full or its links to more than `f` peers are congested (retry
//!   later), `409` when it is refused (duplicate).
//!
//! Bounded: request heads up to [`MAX_HEAD`] bytes, bodies up to the request limit, a
//! [`IO_TIMEOUT`] per connection and at most [`MAX_CONNECTIONS`] connections at once. Every
//! response closes the connection. It is meant for local tools and tests, not for clients
//! (issue 6 adds the client port).
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

/// Largest request head (request line and headers).
pub const MAX_HEAD: usize = 8 * 1024;
/// Deadline for reading a request and writing its response.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Most management connections served at once; more wait in the accept queue.
pub const MAX_CONNECTIONS: usize = 64;

/// What `GET /status` returns.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusSnapshot {
    pub id: u16,
    pub incarnation: u64,
    /// Deliveries (atomic broadcast rounds) so far.
    pub delivered_rounds: u64,
    /// Requests in those deliveries.
    pub delivered_requests: u64,
    /// Hex of the head of the delivery digest chain.
    pub chain_head: String,
    /// The ordering mode (`ckps01` or `high_throughput`).
    pub mode: String,
    /// The round (CKPS01) or epoch (high throughput) being ordered.
    pub round: u64,
    /// Requests waiting in this replica's queue.
    pub pending: u64,
    pub logged_events: u64,
    /// Peers with both link directions up.
    pub peers_connected: usize,
    pub refused_handshakes: u64,
    /// Evidence counts: peer id → kind → count.
    pub evidence: BTreeMap<String, BTreeMap<String, u64>>,
    /// The Byzantine test mode this replica runs, if any.
    pub byzantine: Option<String>,
    /// The replicated key-value service, if configured.
    pub service: Option<ServiceStatus>,
}

/// The service part of `GET /status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// Ordered entries executed.
    pub executed: u64,
    /// Keys in the store.
    pub keys: u64,
    /// The newest certified checkpoint: delivery height, entries executed, and the hex of the
    /// certified state digest.
    pub checkpoint: Option<(u64, u64, String)>,
}

/// State shared between the replica loop and the endpoint.
pub struct Shared {
    pub status: Mutex<StatusSnapshot>,
    /// Set while more than `f` peers' send queues are over half full: `/submit` answers `503`
    /// (backpressure upstream, as `maftia-net` asks of its callers).
    pub congested: std::sync::atomic::AtomicBool,
    pub max_request: usize,
    pub prometheus: PrometheusHandle,
    /// `Some` when the replica runs with `--allow-byzantine-switch` (tests and the demo): a
    /// Byzantine mode requested through `POST /byzantine`, for the replica loop to apply.
    pub byzantine_switch: Option<Mutex<Option<Option<crate::node::ByzantineMode>>>>,
}

/// A request submitted through `POST /submit`, with where to send the verdict.
pub struct Submission {
    pub request: Vec<u8>,
    pub reply: oneshot::Sender<SubmitOutcome>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum SubmitOutcome {
    Accepted,
    Busy,
    Refused(String),
}

/// Serve until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    submit: mpsc::Sender<Submission>,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else { continue };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let shared = shared.clone();
        let submit = submit.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(IO_TIMEOUT, handle(stream, &shared, &submit)).await;
            drop(permit);
        });
    }
}

struct Response {
    code: u16,
    content_type: &'static str,
    body: Vec<u8>,
}

fn text(code: u16, body: impl Into<String>) -> Response {
    Response {
        code,
        content_type: "text/plain; charset=utf-8",
        body: body.into().into_bytes(),
    }
}

async fn handle(
    mut stream: TcpStream,
    shared: &Shared,
    submit: &mpsc::Sender<Submission>,
) -> std::io::Result<()> {
    let response = match read_request(&mut stream, shared.max_request).await? {
        Err(response) => response,
        Ok((method, path, body)) => route(&method, &path, body, shared, submit).await,
    };
    let reason = match response.code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        response.code,
        response.content_type,
        response.body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&response.body).await?;
    stream.shutdown().await
}

type Parsed = Result<(String, String, Vec<u8>), Response>;

/// Read one request: head up to [`MAX_HEAD`], body up to `max_body` (by Content-Length).
async fn read_request(stream: &mut TcpStream, max_body: usize) -> std::io::Result<Parsed> {
    let mut buffer = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(pos) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        if buffer.len() >= MAX_HEAD {
            return Ok(Err(text(431, "request head too large\n")));
        }
        let mut chunk = [0u8; 1024];
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Ok(Err(text(400, "incomplete request\n")));
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
        return Ok(Err(text(400, "malformed request line\n")));
    };
    let mut length = 0usize;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                match value.trim().parse::<usize>() {
                    Ok(l) => length = l,
                    Err(_) => return Ok(Err(text(400, "bad Content-Length\n"))),
                }
            }
        }
    }
    if length > max_body {
        return Ok(Err(text(
            413,
            format!("request of {length} bytes exceeds the limit of {max_body}\n"),
        )));
    }
    let mut body = buffer[head_end..].to_vec();
    body.truncate(length);
    while body.len() < length {
        let mut chunk = vec![0u8; (length - body.len()).min(64 * 1024)];
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Ok(Err(text(400, "body shorter than Content-Length\n")));
        }
        body.extend_from_slice(&chunk[..read]);
    }
    Ok(Ok((method.to_string(), path.to_string(), body)))
}

async fn route(
    method: &str,
    path: &str,
    body: Vec<u8>,
    shared: &Shared,
    submit: &mpsc::Sender<Submission>,
) -> Response {
    match (method, path) {
        ("GET", "/status") => {
            let snapshot = shared
                .status
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            match serde_json::to_vec_pretty(&snapshot) {
                Ok(mut body) => {
                    body.push(b'\n');
                    Response {
                        code: 200,
                        content_type: "application/json",
                        body,
                    }
                }
                Err(e) => text(503, format!("cannot encode status: {e}\n")),
            }
        }
        ("GET", "/metrics") => Response {
            code: 200,
            content_type: "text/plain; version=0.0.4",
            body: shared.prometheus.render().into_bytes(),
        },
        ("POST", "/submit") => {
            if body.is_empty() {
                return text(400, "empty request\n");
            }
            if shared.congested.load(std::sync::atomic::Ordering::Relaxed) {
                return text(503, "the network is congested; retry later\n");
            }
            let (reply, answer) = oneshot::channel();
            if submit
                .try_send(Submission {
                    request: body,
                    reply,
                })
                .is_err()
            {
                return text(503, "the replica is busy; retry later\n");
            }
            match answer.await {
                Ok(SubmitOutcome::Accepted) => text(200, "accepted\n"),
                Ok(SubmitOutcome::Busy) => text(503, "the pending queue is full; retry later\n"),
                Ok(SubmitOutcome::Refused(reason)) => text(409, format!("{reason}\n")),
                Err(_) => text(503, "the replica is shutting down\n"),
            }
        }
        ("POST", "/byzantine") => {
            let Some(switch) = &shared.byzantine_switch else {
                return text(
                    404,
                    "this replica was not started with --allow-byzantine-switch\n",
                );
            };
            let name = String::from_utf8_lossy(&body).trim().to_string();
            let mode = if name == "none" {
                None
            } else {
                match name.parse::<crate::node::ByzantineMode>() {
                    Ok(mode) => Some(mode),
                    Err(e) => return text(400, format!("{e} or none\n")),
                }
            };
            *switch
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(mode);
            text(200, "switching\n")
        }
        (_, "/status" | "/metrics" | "/submit" | "/byzantine") => text(405, "method not allowed\n"),
        _ => text(404, "not found (GET /status, GET /metrics, POST /submit)\n"),
    }
}

/// A minimal HTTP client for `maftia status` and tests: one request, whole response.
pub async fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    let work = async {
        let mut stream = TcpStream::connect(addr).await?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        parse_response(&response)
    };
    tokio::time::timeout(IO_TIMEOUT, work).await.map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::TimedOut, "management request timed out")
    })?
}

fn parse_response(response: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP response");
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(bad)?;
    let head = std::str::from_utf8(&response[..end]).map_err(|_| bad())?;
    let code = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|c| c.parse().ok())
        .ok_or_else(bad)?;
    Ok((code, response[end + 4..].to_vec()))
}
