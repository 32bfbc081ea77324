//! HTTP glue shared by edges and the hub: the automerge-repo WebSocket
//! endpoint (`/sync`, and `/` for clients that point at the bare host),
//! `/healthz` and `/metrics`. An edge adds `/info` (`meridian_edge::info`).
//!
//! Each WebSocket gets one task that moves frames between the socket and the
//! node loop. Policy (what is valid, what to answer) lives in the engine;
//! this file only enforces what must be checked before bytes reach it:
//! the token (with auth on, an upgrade without a valid one is refused with
//! 401 and the reason, before any WebSocket exists), binary frames only,
//! and the size limit.
//!
//! A client presents its token as `?token=…` on the URL (how unmodified
//! automerge-repo clients can: their adapter takes a URL) or as
//! `Authorization: Bearer …`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use meridian_protocol::engine::{Access, ErrorKind};

use crate::auth::{self, Keyring, TokenError};
use crate::metrics::NodeMetrics;
use crate::runtime::{NodeEvent, NodeEvents, Outbound, register_client};
use crate::throttle::{Rates, Throttle};

/// What every handler needs.
#[derive(Clone, Debug)]
pub struct AppState {
    pub events: NodeEvents,
    pub metrics: Arc<NodeMetrics>,
    pub max_message_bytes: usize,
    pub ping_interval: Duration,
    /// Public keys and revocations tokens are checked against; `None`:
    /// open dev mode (every connection may do everything).
    pub auth: Option<Arc<Keyring>>,
    /// Caps on open WebSockets, in all and per client address.
    pub limits: Arc<ConnLimiter>,
    /// Each client's rate of messages and bytes (see `throttle`).
    pub rates: Rates,
}

/// Caps on open WebSocket connections (0: no cap), and the counts.
#[derive(Debug, Default)]
pub struct ConnLimiter {
    total: usize,
    per_address: usize,
    open: std::sync::Mutex<(usize, std::collections::HashMap<std::net::IpAddr, usize>)>,
}

/// Which cap refused a connection (the `limit` label of the metric).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnLimit {
    Connections,
    ConnectionsPerAddress,
}

impl ConnLimit {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnLimit::Connections => "connections",
            ConnLimit::ConnectionsPerAddress => "connections_per_address",
        }
    }
}

impl ConnLimiter {
    pub fn new(total: usize, per_address: usize) -> Arc<Self> {
        Arc::new(Self { total, per_address, open: Default::default() })
    }

    /// Takes a place for a connection from `addr` (unknown: counted in all
    /// only), or says which cap is reached. The place is given back when
    /// the returned slot is dropped.
    pub fn admit(self: &Arc<Self>, addr: Option<std::net::IpAddr>) -> Result<ConnSlot, ConnLimit> {
        let mut open = self.open.lock().map_err(|_| ConnLimit::Connections)?;
        if self.total > 0 && open.0 >= self.total {
            return Err(ConnLimit::Connections);
        }
        if let Some(a) = addr {
            let n = open.1.entry(a).or_default();
            if self.per_address > 0 && *n >= self.per_address {
                return Err(ConnLimit::ConnectionsPerAddress);
            }
            *n += 1;
        }
        open.0 += 1;
        Ok(ConnSlot { limiter: self.clone(), addr })
    }
}

/// A connection's place under the caps; given back on drop.
#[derive(Debug)]
pub struct ConnSlot {
    limiter: Arc<ConnLimiter>,
    addr: Option<std::net::IpAddr>,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let Ok(mut open) = self.limiter.open.lock() else { return };
        open.0 = open.0.saturating_sub(1);
        if let Some(a) = self.addr
            && let Some(n) = open.1.get_mut(&a)
        {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&a);
            }
        }
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/sync", get(sync))
        .route("/healthz", get(|| async { ([(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")], "ok\n") }))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}

async fn root(
    State(state): State<AppState>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    query: Result<Query<TokenQuery>, QueryRejection>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    match ws {
        Ok(ws) => upgrade(ws, state, peer_ip(peer), query.ok().map(|q| q.0), &headers),
        Err(_) => "Meridian edge. Point an automerge-repo WebSocket client at ws://<this host>/sync (or /).\n\
                   Health: /healthz, metrics: /metrics, about this edge: /info.\n"
            .into_response(),
    }
}

async fn sync(
    State(state): State<AppState>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    query: Result<Query<TokenQuery>, QueryRejection>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    upgrade(ws, state, peer_ip(peer), query.ok().map(|q| q.0), &headers)
}

/// The client's address, when the server was made with connect info.
fn peer_ip(
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
) -> Option<std::net::IpAddr> {
    peer.map(|axum::Extension(axum::extract::ConnectInfo(addr))| addr.ip())
}

/// The `?token=` of a request's URL (decoded by axum's `Query`).
#[derive(Debug, Default, serde::Deserialize)]
pub struct TokenQuery {
    pub token: Option<String>,
}

/// The token a request carries: `?token=` on the URL, else
/// `Authorization: Bearer`. Empty when there is none.
pub fn request_token(query: Option<TokenQuery>, headers: &HeaderMap) -> String {
    let from_header = || bearer(headers).map(str::to_owned);
    query.and_then(|q| q.token).or_else(from_header).unwrap_or_default()
}

/// The token of an `Authorization: Bearer …` header (the one parser of it:
/// the WebSocket upgrade, the edge's admin API and the hub's revoke API).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

/// The request comes from a web page of another origin than the host it
/// addresses (browsers send `Origin` with every POST): state-changing
/// requests are refused then.
pub fn cross_site(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else { return false };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    origin == "null" || !origin_host.eq_ignore_ascii_case(host)
}

/// `Host` names this machine directly (`localhost`, an IP address), not a
/// DNS name an attacker's page could have rebound to 127.0.0.1: what a
/// loopback-only API checks besides the socket's address.
pub fn local_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else { return true };
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

/// What a connection presenting `token` may do, for how long; `Err` when
/// auth is on and the token does not hold (counted in metrics).
pub fn authorize(
    verifier: Option<&Keyring>,
    token: &str,
    metrics: &NodeMetrics,
) -> Result<(Access, Option<Duration>), TokenError> {
    // Open dev mode: everything, except speaking for other peers (a client
    // never relays; its presence goes out under the peer id it joined as).
    let Some(verifier) = verifier else { return Ok((Access { relay: false, ..Access::full() }, None)) };
    let now = auth::unix_now();
    match verifier.verify(token, now) {
        Ok(grant) => Ok((grant.access(), Some(grant.valid_for(now)))),
        Err(reason) => {
            metrics.auth_refused(reason);
            Err(reason)
        }
    }
}

/// 401 with the reason, as the body and in `WWW-Authenticate`.
fn unauthorized(reason: TokenError) -> Response {
    let challenge = format!("Bearer error=\"invalid_token\", error_description=\"{reason}\"");
    (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, challenge)], format!("unauthorized: {reason}\n"))
        .into_response()
}

/// Initial WebSocket read buffer of a connection.
const READ_BUFFER_BYTES: usize = 1024;

fn upgrade(
    ws: WebSocketUpgrade,
    state: AppState,
    peer: Option<std::net::IpAddr>,
    query: Option<TokenQuery>,
    headers: &HeaderMap,
) -> Response {
    let slot = match state.limits.admit(peer) {
        Ok(slot) => slot,
        Err(limit) => {
            state.metrics.limit_hit(limit.as_str());
            tracing::info!(peer = %meridian_protocol::log::Maybe(&peer), limit = limit.as_str(), "WebSocket upgrade refused: too many connections");
            let why = match limit {
                ConnLimit::Connections => "too many connections to this node; try again later",
                ConnLimit::ConnectionsPerAddress => "too many connections from your address",
            };
            return (StatusCode::SERVICE_UNAVAILABLE, format!("{why} (limit: {})\n", limit.as_str())).into_response();
        }
    };
    let token = request_token(query, headers);
    let (access, valid_for) = match authorize(state.auth.as_deref(), &token, &state.metrics) {
        Ok(granted) => granted,
        Err(reason) => {
            tracing::info!(%reason, "WebSocket upgrade refused");
            return unauthorized(reason);
        }
    };
    // A frame or message over the limit is refused from its header, before
    // its payload is buffered (`too_big` below answers it with an `error`).
    let transport_limit = state.max_message_bytes;
    // tungstenite allocates its read buffer up front (128 KiB by default):
    // that was most of an idle connection's memory (issue 7, connect
    // scenario: 163 KiB per connection with its document at 128 KiB, 48 at
    // 16 KiB, 36 at 4 KiB; issue 19: 24.4 at 4 KiB, 21.4 at 1 KiB). Bigger
    // messages still arrive whole; the buffer grows, and each read takes
    // up to this many bytes (a 300,000-operation upload: 410 ms at 4 KiB,
    // 393 at 1 KiB).
    ws.max_message_size(transport_limit).max_frame_size(transport_limit).read_buffer_size(READ_BUFFER_BYTES).on_upgrade(
        move |socket| async move {
            connection(socket, state, access, valid_for, token).await;
            drop(slot);
        },
    )
}

/// Runs one WebSocket until either side closes it.
async fn connection(socket: WebSocket, state: AppState, access: Access, valid_for: Option<Duration>, token: String) {
    let Some((conn, mut out_rx)) = register_client(&state.events, access, valid_for, Some(token)).await else {
        return;
    };
    // Ends when the connection does (exported while traces are on).
    let _span = crate::telemetry::connection_span("websocket", conn.0, None);
    let (mut sink, mut stream) = socket.split();
    let mut ping = tokio::time::interval(state.ping_interval);
    ping.tick().await;
    let mut last_heard = Instant::now();
    // When our last ping left, until its pong comes back (client RTT for placement).
    let mut ping_sent: Option<Instant> = None;
    let mut throttle = Throttle::new(state.rates);
    // Past its rate, the socket is not read until then (backpressure).
    let mut paused: Option<tokio::time::Instant> = None;
    // Off once the socket sent something we refuse to read further.
    let mut reading = true;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(paused.unwrap_or_else(tokio::time::Instant::now)), if paused.is_some() => {
                paused = None;
            }
            incoming = stream.next(), if paused.is_none() && reading => {
                let msg = match incoming {
                    Some(Ok(msg)) => msg,
                    Some(Err(e)) if too_big(&e) => {
                        // Refused from its header, nothing of it buffered: the
                        // engine answers with an `error` and closes.
                        reading = false;
                        let detail = format!("a message over the limit of {} bytes", state.max_message_bytes);
                        if state.events.send(NodeEvent::Reject { conn, kind: ErrorKind::Oversize, detail }).await.is_err() {
                            break;
                        }
                        continue;
                    }
                    _ => break,
                };
                last_heard = Instant::now();
                if let (WsMessage::Binary(bytes), Some(t)) = (&msg, throttle.as_mut())
                    && let Some(wait) = t.take(bytes.len())
                {
                    state.metrics.limit_hit("message_rate");
                    paused = Some(tokio::time::Instant::now() + wait);
                }
                let event = match msg {
                    WsMessage::Binary(bytes) if bytes.len() > state.max_message_bytes => NodeEvent::Reject {
                        conn,
                        kind: ErrorKind::Oversize,
                        detail: format!("message of {} bytes exceeds the limit of {} bytes", bytes.len(), state.max_message_bytes),
                    },
                    WsMessage::Binary(bytes) => NodeEvent::Frame { conn, bytes: bytes.to_vec(), parent: None },
                    WsMessage::Text(_) => NodeEvent::Reject {
                        conn,
                        kind: ErrorKind::TextFrame,
                        detail: "text frames are not part of the protocol; send CBOR in binary frames".into(),
                    },
                    WsMessage::Close(_) => break,
                    WsMessage::Pong(_) => {
                        if let Some(sent) = ping_sent.take() {
                            state.metrics.observe_client_rtt(sent.elapsed());
                        }
                        continue;
                    }
                    WsMessage::Ping(_) => continue,
                };
                if state.events.send(event).await.is_err() {
                    break;
                }
            }
            // A WebSocket carries no trace context: the frame alone.
            out = out_rx.recv() => match out.map(Outbound::untraced) {
                Some(Outbound::Frame(bytes)) => {
                    if sink.send(WsMessage::Binary(bytes.into())).await.is_err() {
                        break;
                    }
                }
                Some(Outbound::Control(_) | Outbound::Traced(_)) => {}
                Some(Outbound::Close(reason)) => {
                    let frame = CloseFrame { code: 1008, reason: truncate(&reason, 120).into() };
                    let _ = sink.send(WsMessage::Close(Some(frame))).await;
                    break;
                }
                None => {
                    let _ = sink.send(WsMessage::Close(None)).await;
                    break;
                }
            },
            _ = ping.tick() => {
                if last_heard.elapsed() > state.ping_interval * 3 {
                    tracing::info!(%conn, "peer silent for three ping intervals; dropping it");
                    break;
                }
                if sink.send(WsMessage::Ping(Vec::new().into())).await.is_err() {
                    break;
                }
                ping_sent = Some(Instant::now());
            }
        }
    }
    let _ = state.events.send(NodeEvent::Disconnected { conn }).await;
}

/// The WebSocket layer refused a frame or message over the size limit.
fn too_big(e: &axum::Error) -> bool {
    use std::error::Error as _;
    e.source()
        .and_then(|s| s.downcast_ref::<tokio_tungstenite::tungstenite::Error>())
        .is_some_and(|t| matches!(t, tokio_tungstenite::tungstenite::Error::Capacity(_)))
}

/// Close reasons must fit in a control frame (125 bytes).
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
