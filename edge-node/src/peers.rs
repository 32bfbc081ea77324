//! Edge ↔ edge links for placement (DESIGN §5, ARCHITECTURE "Placement").
//!
//! The hub announces each document's **home** with a `home` control message
//! on the uplink once the home has caught up. This module keeps what was
//! announced (the [`PeerDirectory`], shown at `GET /homes`) and, for a
//! document whose home is another edge, keeps a direct QUIC link to that
//! edge (ALPN `meridian-peer/1`, dialled on demand at the address the hub
//! gave) and routes the document to it ([`NodeEvent::Route`]): the engine
//! then syncs it with its home directly, **as well as** with the hub. The
//! hub path is the fallback: when the home is unreachable nothing changes
//! but the latency (changes reach the home through the hub), and nothing is
//! lost because no copy is ever dropped for a route.
//!
//! Trust: the dialling edge accepts exactly the certificate whose SHA-256
//! fingerprint the hub announced with the home (the home told the hub in its
//! `hello`); the home accepts an edge whose `hello` carries the federation's
//! peer secret, which the hub gives every edge it admitted in `welcome`.
//!
//! One actor ([`run`]) owns the links; each link is a task that reconnects
//! with backoff while some document is homed at its edge, and reports the
//! link's QUIC RTT into the directory (reported to the hub as edge ↔ edge
//! RTT).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use meridian_node::quic::{self, EndpointError, FrameIoError, HubTrust};
use meridian_node::runtime::{NodeEvent, NodeEvents, register_edge_peer};
use meridian_node::startup::BindError;
use meridian_node::task::AbortOnDrop;
use meridian_protocol::codec::federation::{self, Control, FEDERATION_VERSION, FrameError, FrameKind, HomeNotice};
use meridian_protocol::engine::Direction;
use meridian_protocol::ids::{ConnId, DocumentId};
use tokio::sync::mpsc;

use crate::error::EdgeError;
use meridian_node::backoff::Backoff;

/// ALPN of edge ↔ edge links.
pub const PEER_ALPN: &[u8] = b"meridian-peer/1";

/// What this edge knows of homes and links; shared by the uplink (which
/// learns homes and the peer secret), the report task (peer RTTs) and HTTP.
#[derive(Debug, Default)]
pub struct PeerDirectory {
    inner: Mutex<Directory>,
}

#[derive(Debug, Default)]
struct Directory {
    secret: Option<String>,
    homes: BTreeMap<DocumentId, HomeNotice>,
    links: BTreeMap<String, LinkStatus>,
}

/// One link to another edge, as shown at `GET /homes`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct LinkStatus {
    pub addr: String,
    pub connected: bool,
    #[serde(rename = "rttMs")]
    pub rtt_ms: Option<f64>,
    pub connects: u64,
    #[serde(rename = "lastError")]
    pub last_error: Option<String>,
}

impl PeerDirectory {
    fn with<T>(&self, f: impl FnOnce(&mut Directory) -> T) -> T {
        let mut guard = match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    pub fn set_secret(&self, secret: Option<String>) {
        self.with(|d| d.secret = secret);
    }

    fn secret(&self) -> Option<String> {
        self.with(|d| d.secret.clone())
    }

    /// The announced home edge of a document (`None`: the hub, or unknown).
    pub fn home(&self, doc: &DocumentId) -> Option<String> {
        self.with(|d| d.homes.get(doc).and_then(|h| h.edge.clone()))
    }

    /// Measured RTTs of the connected links, by edge id.
    pub fn link_rtts(&self) -> BTreeMap<String, Duration> {
        self.with(|d| {
            d.links
                .iter()
                .filter(|(_, l)| l.connected)
                .filter_map(|(e, l)| Some((e.clone(), Duration::from_secs_f64(l.rtt_ms? / 1e3))))
                .collect()
        })
    }

    fn link(&self, edge: &str, f: impl FnOnce(&mut LinkStatus)) {
        self.with(|d| f(d.links.entry(edge.to_owned()).or_default()));
    }

    fn json(&self, edge_id: &str) -> serde_json::Value {
        self.with(|d| {
            let homes: Vec<serde_json::Value> = d
                .homes
                .values()
                .map(|h| serde_json::json!({ "doc": h.doc.to_string(), "home": h.edge, "addr": h.addr }))
                .collect();
            serde_json::json!({ "edgeId": edge_id, "homes": homes, "links": d.links })
        })
    }
}

/// `GET /homes`: the homes this edge was told and its links to other edges.
pub fn router(dir: Arc<PeerDirectory>, edge_id: String) -> Router {
    Router::new().route("/homes", get(homes)).with_state((dir, Arc::new(edge_id)))
}

async fn homes(State((dir, edge_id)): State<(Arc<PeerDirectory>, Arc<String>)>) -> impl IntoResponse {
    axum::Json(dir.json(&edge_id))
}

/// What the peer actor reacts to.
#[derive(Debug)]
pub enum PeerEvent {
    /// The hub announced a home.
    Home(HomeNotice),
    /// The uplink (re)connected: what the hub said before is forgotten (it
    /// sends every edge home again).
    Reset,
    LinkUp {
        edge: String,
        generation: u64,
        conn: ConnId,
    },
    LinkDown {
        edge: String,
        generation: u64,
    },
}

/// Everything the actor needs.
#[derive(Clone, Debug)]
pub struct PeerSettings {
    /// Our edge id (sent in `hello` to other edges).
    pub edge_id: String,
    /// Dial these addresses instead of the announced ones (edge id → addr;
    /// for NAT, or a latency proxy in tests and the demo).
    pub routes: BTreeMap<String, SocketAddr>,
    pub max_frame_bytes: usize,
}

struct Link {
    generation: u64,
    addr: SocketAddr,
    fingerprint: String,
    conn: Option<ConnId>,
    _task: AbortOnDrop<()>,
}

struct PeerActor {
    settings: PeerSettings,
    dir: Arc<PeerDirectory>,
    events: NodeEvents,
    me: mpsc::Sender<PeerEvent>,
    links: BTreeMap<String, Link>,
    /// How many documents are homed at each edge (links are kept while > 0).
    homed_at: BTreeMap<String, usize>,
    generation: u64,
}

/// Runs the peer actor until its channel closes.
pub async fn run(
    settings: PeerSettings,
    dir: Arc<PeerDirectory>,
    events: NodeEvents,
    me: mpsc::Sender<PeerEvent>,
    mut rx: mpsc::Receiver<PeerEvent>,
) {
    let mut actor =
        PeerActor { settings, dir, events, me, links: BTreeMap::new(), homed_at: BTreeMap::new(), generation: 0 };
    while let Some(event) = rx.recv().await {
        actor.handle(event).await;
    }
}

impl PeerActor {
    async fn handle(&mut self, event: PeerEvent) {
        match event {
            PeerEvent::Home(notice) => self.home(notice).await,
            PeerEvent::Reset => {
                let routed: Vec<DocumentId> = self.dir.with(|d| std::mem::take(&mut d.homes)).into_keys().collect();
                for doc in routed {
                    self.route(doc, None).await;
                    self.pin(doc, false).await;
                }
                self.links.clear();
                self.homed_at.clear();
                self.dir.with(|d| d.links.clear());
            }
            PeerEvent::LinkUp { edge, generation, conn } => {
                let Some(link) = self.links.get_mut(&edge).filter(|l| l.generation == generation) else { return };
                link.conn = Some(conn);
                let docs: Vec<DocumentId> = self.dir.with(|d| {
                    d.homes.values().filter(|h| h.edge.as_deref() == Some(edge.as_str())).map(|h| h.doc).collect()
                });
                tracing::info!(%edge, docs = docs.len(), "link to a home edge is up; routing its documents");
                for doc in docs {
                    self.route(doc, Some(conn)).await;
                }
            }
            PeerEvent::LinkDown { edge, generation } => {
                // The engine forgot the routes with the connection.
                if let Some(link) = self.links.get_mut(&edge).filter(|l| l.generation == generation) {
                    link.conn = None;
                }
            }
        }
    }

    async fn route(&self, doc: DocumentId, conn: Option<ConnId>) {
        let _ = self.events.send(NodeEvent::Route { doc, conn }).await;
    }

    async fn pin(&self, doc: DocumentId, pinned: bool) {
        let _ = self.events.send(NodeEvent::Pin { doc, pinned }).await;
    }

    async fn home(&mut self, notice: HomeNotice) {
        let doc = notice.doc;
        let target = notice.edge.clone().filter(|e| *e != self.settings.edge_id);
        self.pin(doc, notice.edge.as_deref() == Some(self.settings.edge_id.as_str())).await;
        let old = self.dir.with(|d| d.homes.insert(doc, notice.clone())).and_then(|h| h.edge);
        if let Some(edge) = &notice.edge {
            *self.homed_at.entry(edge.clone()).or_default() += 1;
        }
        let conn = match &target {
            Some(edge) => self.ensure_link(edge, &notice),
            None => None,
        };
        self.route(doc, conn).await;
        // A link to an edge that is nobody's home any more is closed.
        if let Some(old) = old {
            let left = self.homed_at.get_mut(&old).map(|n| {
                *n = n.saturating_sub(1);
                *n
            });
            if left == Some(0) {
                self.homed_at.remove(&old);
                self.links.remove(&old);
                self.dir.with(|d| d.links.remove(&old));
            }
        }
    }

    /// Starts (or restarts, if the hub gave a new address) the link to
    /// `edge`; its connection if it is up.
    fn ensure_link(&mut self, edge: &str, notice: &HomeNotice) -> Option<ConnId> {
        let announced = notice.addr.as_deref().and_then(|a| a.parse::<SocketAddr>().ok());
        let Some(addr) = self.settings.routes.get(edge).copied().or(announced) else {
            tracing::debug!(%edge, "no address for the home edge; its documents sync through the hub");
            return None;
        };
        let Some(fingerprint) = notice.fingerprint.clone() else {
            tracing::debug!(%edge, "no certificate fingerprint for the home edge; syncing through the hub");
            return None;
        };
        if let Some(l) = self.links.get(edge).filter(|l| l.addr == addr && l.fingerprint == fingerprint) {
            return l.conn;
        }
        self.generation += 1;
        let dial = Dial {
            edge: edge.to_owned(),
            addr,
            fingerprint: fingerprint.clone(),
            generation: self.generation,
            settings: self.settings.clone(),
            dir: self.dir.clone(),
            events: self.events.clone(),
            me: self.me.clone(),
        };
        self.dir.link(edge, |l| *l = LinkStatus { addr: addr.to_string(), ..Default::default() });
        let task = AbortOnDrop(tokio::spawn(dial.run()));
        self.links
            .insert(edge.to_owned(), Link { generation: self.generation, addr, fingerprint, conn: None, _task: task });
        None
    }
}

/// Why a link to a home edge could not be made (shown as the link's
/// `lastError` at `GET /homes`).
#[derive(Debug, thiserror::Error)]
enum DialError {
    #[error("no peer secret from the hub yet")]
    NoSecret,
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error(transparent)]
    Connect(#[from] quinn::ConnectError),
    #[error("connect timed out")]
    Timeout,
    #[error(transparent)]
    Connection(#[from] quinn::ConnectionError),
    #[error(transparent)]
    Frame(#[from] FrameIoError),
    #[error("no answer to hello")]
    NoAnswer,
    #[error("refused: {0}")]
    Refused(String),
    #[error("unexpected handshake answer {0:?}")]
    Unexpected(Option<(FrameKind, Result<Control, FrameError>)>),
}

/// Why this edge refused an edge that dialled it (the reason is sent to
/// that edge in a `refused` frame).
#[derive(Debug, thiserror::Error)]
enum HelloError {
    #[error("no hello within 10 s")]
    Timeout,
    #[error("bad hello frame: {0}")]
    Frame(FrameIoError),
    #[error("expected a hello control frame")]
    NotControl,
    #[error("expected hello")]
    NotHello,
    #[error("unsupported federation version {0}")]
    Version(u64),
    #[error("this edge has no peer secret from its hub yet")]
    NoSecret,
    #[error("edge `{0}` did not present this federation's peer secret")]
    WrongSecret(String),
    #[error(transparent)]
    Welcome(FrameIoError),
}

/// One link to a home edge, kept up with backoff.
struct Dial {
    edge: String,
    addr: SocketAddr,
    fingerprint: String,
    generation: u64,
    settings: PeerSettings,
    dir: Arc<PeerDirectory>,
    events: NodeEvents,
    me: mpsc::Sender<PeerEvent>,
}

impl Dial {
    async fn run(self) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            let reason = match self.session().await {
                Ok(reason) => {
                    backoff.reset();
                    reason
                }
                Err(e) => e.to_string(),
            };
            tracing::info!(edge = %self.edge, addr = %self.addr, %reason, "link to a home edge down; its documents sync through the hub");
            self.dir.link(&self.edge, |l| {
                l.connected = false;
                l.last_error = Some(reason);
            });
            let _ = self.me.send(PeerEvent::LinkDown { edge: self.edge.clone(), generation: self.generation }).await;
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    async fn session(&self) -> Result<String, DialError> {
        let secret = self.dir.secret().ok_or(DialError::NoSecret)?;
        let trust = HubTrust::Fingerprint(self.fingerprint.clone());
        let endpoint = quic::client_endpoint(self.addr, &trust, PEER_ALPN)?;
        let connecting = endpoint.connect(self.addr, "localhost")?;
        let connection =
            tokio::time::timeout(Duration::from_secs(10), connecting).await.map_err(|_| DialError::Timeout)??;
        let (mut send, mut recv) = connection.open_bi().await?;
        let hello = Control::Hello {
            version: FEDERATION_VERSION,
            node_id: self.settings.edge_id.clone(),
            secret,
            peer_addr: None,
            peer_fingerprint: None,
        };
        quic::write_frame(&mut send, FrameKind::Control, &federation::encode_control(&hello)).await?;
        let reply = tokio::time::timeout(Duration::from_secs(10), quic::read_frame(&mut recv, 64 * 1024))
            .await
            .map_err(|_| DialError::NoAnswer)??;
        match reply.map(|(kind, bytes)| (kind, federation::decode_control(&bytes))) {
            Some((FrameKind::Control, Ok(Control::Welcome { .. }))) => {}
            Some((FrameKind::Control, Ok(Control::Refused { reason }))) => return Err(DialError::Refused(reason)),
            other => return Err(DialError::Unexpected(other)),
        }
        let Some((conn, out)) = register_edge_peer(&self.events, Direction::Outgoing, Some(&self.edge)).await else {
            return Ok("node stopped".into());
        };
        self.dir.link(&self.edge, |l| {
            l.connected = true;
            l.connects += 1;
            l.rtt_ms = Some(connection.rtt().as_secs_f64() * 1e3);
        });
        let up = PeerEvent::LinkUp { edge: self.edge.clone(), generation: self.generation, conn };
        let _ = self.me.send(up).await;
        let rtt = |d: Duration| self.dir.link(&self.edge, |l| l.rtt_ms = Some(d.as_secs_f64() * 1e3));
        let limit = self.settings.max_frame_bytes;
        Ok(quic::pump(&connection, send, recv, conn, &self.events, out, quic::Reading::unthrottled(limit), rtt, |_| {})
            .await)
    }
}

/// Starts the listener for other edges (ALPN `meridian-peer/1`) on its
/// bound socket with the edge's certificate; returns its address and the
/// accept task.
pub fn listen(
    identity: &quic::Identity,
    listen: SocketAddr,
    socket: std::net::UdpSocket,
    dir: Arc<PeerDirectory>,
    edge_id: String,
    events: NodeEvents,
    limit: usize,
) -> Result<(SocketAddr, AbortOnDrop<()>), EdgeError> {
    let server = quic::server_config(identity, PEER_ALPN).map_err(EdgeError::Tls)?;
    let bind_error = |error| BindError { flag: "--peer-listen", addr: listen, proto: "UDP", error };
    let endpoint = quic::server_endpoint(server, socket).map_err(bind_error)?;
    let local = endpoint.local_addr().map_err(bind_error)?;
    tracing::info!(addr = %local, "QUIC listener for other edges");
    let task = AbortOnDrop(tokio::spawn(accept(endpoint, dir, Arc::new(edge_id), events, limit)));
    Ok((local, task))
}

async fn accept(
    endpoint: quinn::Endpoint,
    dir: Arc<PeerDirectory>,
    edge_id: Arc<String>,
    events: NodeEvents,
    limit: usize,
) {
    quic::accept_each(endpoint, |incoming| serve(incoming, dir.clone(), edge_id.clone(), events.clone(), limit)).await;
}

/// One edge that dialled us: `hello` with the peer secret, then documents.
async fn serve(
    incoming: quinn::Incoming,
    dir: Arc<PeerDirectory>,
    edge_id: Arc<String>,
    events: NodeEvents,
    limit: usize,
) {
    let remote = incoming.remote_address();
    let Ok(connection) = incoming.await else { return };
    let Ok((mut send, mut recv)) = connection.accept_bi().await else { return };
    let who = match peer_handshake(&mut send, &mut recv, &dir, &edge_id).await {
        Ok(who) => who,
        Err(reason) => {
            tracing::warn!(%remote, %reason, "refused an edge link");
            return quic::refuse(&connection, send, &reason.to_string()).await;
        }
    };
    let Some((conn, out)) = register_edge_peer(&events, Direction::Incoming, Some(&who)).await else { return };
    tracing::info!(%remote, edge = %who, %conn, "an edge linked to us (we are a home)");
    let reason =
        quic::pump(&connection, send, recv, conn, &events, out, quic::Reading::unthrottled(limit), |_| {}, |_| {})
            .await;
    tracing::info!(%remote, edge = %who, %reason, "edge link closed");
}

async fn peer_handshake(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    dir: &PeerDirectory,
    edge_id: &str,
) -> Result<String, HelloError> {
    let frame = tokio::time::timeout(Duration::from_secs(10), quic::read_frame(recv, 64 * 1024))
        .await
        .map_err(|_| HelloError::Timeout)?
        .map_err(HelloError::Frame)?;
    let Some((FrameKind::Control, bytes)) = frame else { return Err(HelloError::NotControl) };
    let Ok(Control::Hello { version, node_id, secret, .. }) = federation::decode_control(&bytes) else {
        return Err(HelloError::NotHello);
    };
    if version != FEDERATION_VERSION {
        return Err(HelloError::Version(version));
    }
    let expected = dir.secret().ok_or(HelloError::NoSecret)?;
    if !quic::same_secret(expected.as_bytes(), secret.as_bytes()) {
        return Err(HelloError::WrongSecret(node_id));
    }
    let welcome = Control::Welcome {
        version: FEDERATION_VERSION,
        hub_id: edge_id.to_owned(),
        report_interval_ms: None,
        peer_secret: None,
    };
    quic::write_frame(send, FrameKind::Control, &federation::encode_control(&welcome))
        .await
        .map_err(HelloError::Welcome)?;
    Ok(node_id)
}

/// The uplink's side of the actor: what to say in `hello`, where to send
/// what the hub announces.
#[derive(Clone, Debug)]
pub struct PeerHandle {
    pub dir: Arc<PeerDirectory>,
    pub events: mpsc::Sender<PeerEvent>,
    /// Our listener for other edges (advertised address) and certificate.
    pub listen_addr: Option<String>,
    pub fingerprint: Option<String>,
}

impl PeerHandle {
    /// A control frame from the hub: a `home` notice goes to the actor.
    pub fn on_control(&self, bytes: &[u8]) {
        match federation::decode_control(bytes) {
            Ok(Control::Home(notice)) => {
                if self.events.try_send(PeerEvent::Home(notice)).is_err() {
                    // The document keeps syncing through the hub.
                    tracing::warn!("too many home notices queued; one is dropped");
                }
            }
            Ok(other) => tracing::debug!(?other, "ignoring a control message from the hub"),
            Err(e) => tracing::debug!(error = %e, "ignoring an undecodable control message"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_directory_shows_homes_and_links() {
        let dir = PeerDirectory::default();
        let doc = DocumentId::from_bytes([5; 16]);
        dir.with(|d| d.homes.insert(doc, HomeNotice { doc, edge: Some("ap".into()), addr: None, fingerprint: None }));
        dir.link("ap", |l| {
            l.connected = true;
            l.rtt_ms = Some(240.0);
        });
        assert_eq!(dir.home(&doc).as_deref(), Some("ap"));
        assert_eq!(dir.link_rtts().get("ap"), Some(&Duration::from_millis(240)));
        let v = dir.json("eu");
        assert_eq!(v["homes"][0]["home"], "ap");
        assert_eq!(v["links"]["ap"]["rttMs"], 240.0);
    }
}
