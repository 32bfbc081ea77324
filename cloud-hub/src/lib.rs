//! # meridian-hub
//!
//! The cloud hub: the QUIC federation endpoint edges connect to, and the
//! durable store of every document. It runs the same sync engine and node
//! runtime as an edge (`meridian_node::runtime`) on its own SQLite store;
//! every edge is a downstream peer that pushes all its documents and asks
//! the hub for documents it does not have.
//!
//! **Invariant:** an edge is served only after its `hello` carried a known
//! edge id and the matching secret (compared in constant time), unless the
//! hub runs in open dev mode, which it announces loudly. The hub never asks
//! edges for documents (it has no upstream): `doc-unavailable` from the hub
//! means no edge has ever given it the document.
//!
//! Edges report their demand and RTTs ([`placer`]); the [`placement`]
//! engine decides each document's home from them every placement interval
//! (shown at `GET /placement`). With [`HubConfig::placement_moves`] the
//! placer hands a decided home off (the new home catches up first) and
//! announces it to edges with `home` control messages.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod admission;
mod bus;
mod console;
pub mod control;
mod edges;
pub mod feed;
pub mod keys;
mod pins;
pub mod placement;
pub mod placer;
mod replicas;
pub mod revocations;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use axum::{Json, Router};
use meridian_node::admin::AdminGuard;
use meridian_node::auth::Keyring;
use meridian_node::http::{HttpOptions, Served};
use meridian_node::metrics::{NodeMetrics, Role};
use meridian_node::quic::{self, FEDERATION_ALPN, Identity};
use meridian_node::runtime::{NodeEvent, NodeEvents, NodeRuntime};
use meridian_node::server::{self, AppState};
use meridian_node::startup::{self, BindError};
use meridian_node::store::{ControlStore, DocStore, PostgresStore, SqliteStore, StoreError, StoreOptions};
use meridian_node::task::AbortOnDrop;
use meridian_protocol::engine::EngineConfig;
use meridian_protocol::ids::PeerId;
use tokio::sync::{mpsc, oneshot};

use crate::edges::{EdgeShared, accept_loop};
use crate::placement::PlacementConfig;
use crate::placer::{PlacementMetrics, Placer, PlacerEvent, View};
use crate::revocations::{Revocations, RevokeApi};

/// Which edges may connect.
#[derive(Clone, Debug)]
pub enum EdgeAuth {
    /// Edge id → secret.
    Secrets(BTreeMap<String, String>),
    /// Any edge id, any secret. For local development only.
    DevOpen,
}

/// Clients the hub serves itself (`--serve-clients`, inspection tools and
/// tests) at most at once.
const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// Everything a hub needs to run.
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// UDP address of the QUIC federation endpoint.
    pub listen: SocketAddr,
    /// TCP address of `/healthz` and `/metrics`.
    pub http: SocketAddr,
    pub data_dir: PathBuf,
    pub hub_id: String,
    pub auth: EdgeAuth,
    /// Names (DNS or IP) in the dev certificate created on first start.
    pub cert_names: Vec<String>,
    pub max_frame_bytes: usize,
    pub idle_evict_after: Duration,
    /// The node loop's housekeeping interval (see `EdgeConfig::tick_interval`).
    pub tick_interval: Duration,
    /// fsync every commit to the SQLite store (the default; see `EdgeConfig::fsync`).
    pub fsync: bool,
    /// Bytes of stored chunks the background scrub checks per second (0:
    /// off; the SQLite store only).
    pub scrub_bytes_per_sec: u64,
    /// How long a replica may stay apart from the hub before it is
    /// divergent and resynced from scratch (zero: not checked).
    pub divergence_after: Duration,
    /// Also serve automerge-repo WebSocket clients at `/sync` on the HTTP
    /// port (inspection tools, tests). Off by default: clients belong on
    /// edges.
    pub serve_clients: bool,
    /// How often edges report demand and RTTs (sent to them in `welcome`).
    pub report_interval: Duration,
    /// How often the placement engine decides homes.
    pub placement_interval: Duration,
    pub placement: PlacementConfig,
    /// Act on placement: hand decided homes off (the new home catches up
    /// first) and announce them to edges. Off: decisions are advisory.
    pub placement_moves: bool,
    /// How long the placer's lease in the store lasts without renewal
    /// (renewed every third of it): one hub of those sharing a store
    /// places documents; when it dies another takes over within about this.
    pub placer_lease: Duration,
    /// Public keys (PEM) tokens of clients at `/sync` (`serve_clients`)
    /// are checked against. Empty: open dev mode for them (loopback only).
    pub auth_public_keys: Vec<PathBuf>,
    /// A fixed secret the operator routes (`/placement`, `/topology`,
    /// `/api/auth/revoke`) accept as `Authorization: Bearer`; with
    /// `auth_public_keys` they also take admin tokens, without either only
    /// loopback requests (`meridian_node::admin`).
    pub admin_token: Option<String>,
    /// Serve the operator routes on this address only, not on `http`.
    pub admin_listen: Option<SocketAddr>,
    /// Request headers must arrive within this (slowloris).
    pub header_read_timeout: Duration,
    /// Failed edge authentications (`hello`s refused) from one address per
    /// minute; past it, that address's connections are closed at once until
    /// the minute is over (0: no limit).
    pub max_auth_failures_per_minute: u32,
    /// An edge must open its stream and send `hello` within this.
    pub hello_timeout: Duration,
    /// Edges (ids of `auth`) the hub does not trust (devices in the open):
    /// each is served only the documents its clients' tokens grant, which
    /// it forwards (verified here against `auth_public_keys`).
    pub untrusted_edges: std::collections::BTreeSet<String>,
    /// A PostgreSQL URL to keep documents in (shared by the hubs on it);
    /// `None`: `hub.sqlite3` in `data_dir`.
    pub store: Option<String>,
    /// NATS servers of the bus to the other hubs sharing `store` (empty:
    /// none).
    pub bus: Vec<String>,
    /// Keep the change feed (`feed`): needs `store` and `bus`.
    pub feed: bool,
}

impl HubConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7400)),
            http: SocketAddr::from(([127, 0, 0, 1], 7401)),
            data_dir: data_dir.into(),
            hub_id: "meridian-hub".into(),
            auth: EdgeAuth::DevOpen,
            cert_names: vec!["localhost".into(), "127.0.0.1".into()],
            max_frame_bytes: meridian_node::DEFAULT_MAX_MESSAGE_BYTES,
            idle_evict_after: Duration::from_secs(60),
            tick_interval: Duration::from_secs(1),
            fsync: true,
            scrub_bytes_per_sec: meridian_node::runtime::DEFAULT_SCRUB_BYTES_PER_SEC,
            divergence_after: meridian_node::runtime::DEFAULT_DIVERGENCE_AFTER,
            serve_clients: false,
            report_interval: Duration::from_secs(2),
            placement_interval: Duration::from_secs(2),
            placement: PlacementConfig::default(),
            placement_moves: false,
            placer_lease: placer::PLACER_LEASE,
            auth_public_keys: Vec::new(),
            admin_token: None,
            admin_listen: None,
            header_read_timeout: meridian_node::http::DEFAULT_HEADER_READ_TIMEOUT,
            max_auth_failures_per_minute: 10,
            hello_timeout: admission::HELLO_TIMEOUT,
            untrusted_edges: Default::default(),
            store: None,
            bus: Vec::new(),
            feed: false,
        }
    }

    /// Both listeners on ephemeral loopback ports (for tests).
    pub fn ephemeral_ports(mut self) -> Self {
        self.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        self.http = SocketAddr::from(([127, 0, 0, 1], 0));
        self
    }

    pub fn edge(mut self, id: impl Into<String>, secret: impl Into<String>) -> Self {
        let mut map = match self.auth {
            EdgeAuth::Secrets(m) => m,
            EdgeAuth::DevOpen => BTreeMap::new(),
        };
        map.insert(id.into(), secret.into());
        self.auth = EdgeAuth::Secrets(map);
        self
    }

    pub fn validate(&self) -> Result<(), HubError> {
        if matches!(self.auth, EdgeAuth::DevOpen) && !self.listen.ip().is_loopback() {
            return Err(HubError::Config(format!(
                "refusing open dev mode on the non-loopback address {}: configure edges with --edge ID=SECRET",
                self.listen
            )));
        }
        if let Some(a) = self
            .admin_listen
            .filter(|a| self.auth_public_keys.is_empty() && self.admin_token.is_none() && !a.ip().is_loopback())
        {
            return Err(HubError::Config(format!(
                "--admin-listen {a} is not a loopback address, and without --auth-public-key or --admin-token \
                 the operator routes answer loopback requests only"
            )));
        }
        if !self.untrusted_edges.is_empty() && self.auth_public_keys.is_empty() {
            return Err(HubError::Config(
                "untrusted edges are served what their clients' tokens grant: give --auth-public-key".into(),
            ));
        }
        if self.serve_clients && self.auth_public_keys.is_empty() && !self.http.ip().is_loopback() {
            return Err(HubError::Config(format!(
                "refusing to serve clients without --auth-public-key on the non-loopback address {}",
                self.http
            )));
        }
        if self.feed && (self.store.is_none() || self.bus.is_empty()) {
            return Err(HubError::Config(
                "--feed needs a PostgreSQL --store and --bus (the feed is relayed from the store to NATS JetStream)"
                    .into(),
            ));
        }
        if self.report_interval.is_zero() || self.placement_interval.is_zero() {
            return Err(HubError::Config("report and placement intervals must be positive".into()));
        }
        let p = &self.placement;
        if !(p.min_gain_ratio.is_finite() && p.min_gain_ratio >= 0.0) || p.max_moves == 0 {
            return Err(HubError::Config(
                "placement needs a finite, non-negative min gain ratio and at least one move per window".into(),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("opening the store: {0}")]
    Store(#[from] StoreError),
    #[error("TLS: {0}")]
    Tls(#[from] quic::TlsError),
    #[error(transparent)]
    Bind(#[from] meridian_node::startup::BindError),
    #[error(transparent)]
    DataDir(#[from] meridian_node::startup::DataDirError),
    #[error("starting the storage thread: {0}")]
    Thread(std::io::Error),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("auth: {0}")]
    Auth(#[from] meridian_node::auth::KeyError),
}

/// The hub's document store: PostgreSQL when `store` names one, else
/// SQLite in the data folder.
async fn open_store(config: &HubConfig) -> Result<Box<dyn DocStore>, HubError> {
    let Some(url) = config.store.clone() else {
        let path = config.data_dir.join("hub.sqlite3");
        return Ok(Box::new(SqliteStore::open_with(&path, StoreOptions { fsync: config.fsync })?));
    };
    // The client runs a runtime of its own: opened (and later used) off
    // this runtime's threads.
    let feed = config.feed;
    let opened = tokio::task::spawn_blocking(move || {
        std::thread::spawn(move || PostgresStore::open(&url).and_then(|s| s.with_feed(feed)))
            .join()
            .map_err(|_| HubError::Config("opening the PostgreSQL store panicked".into()))
    })
    .await
    .map_err(|e| HubError::Config(format!("opening the PostgreSQL store: {e}")))??;
    // With the feed, the store keeps its outbox (see `feed`).
    let store = opened?;
    if store.keeps_feed() && !config.feed {
        tracing::warn!(
            "another hub keeps the change feed on this database: this hub keeps its outbox too (start it with --feed to relay it as well)"
        );
    }
    tracing::info!(store = %store.target(), storage_id = %store.storage_id(), "documents are kept in PostgreSQL");
    Ok(Box::new(store))
}

/// The connection the hub keeps its control state on ([`control`]): a
/// second one to the same database as its documents.
async fn open_control(config: &HubConfig) -> Result<control::ControlState, HubError> {
    let url = config.store.clone();
    let (path, fsync) = (config.data_dir.join("hub.sqlite3"), config.fsync);
    let control = control::ControlState::start(move || -> Result<Box<dyn ControlStore>, StoreError> {
        Ok(match url {
            Some(url) => Box::new(PostgresStore::open(&url)?),
            None => Box::new(SqliteStore::open_with(&path, StoreOptions { fsync })?),
        })
    })
    .await?;
    Ok(control)
}

/// The credential edges present to each other (sent to each edge in
/// `welcome`), kept in the data folder so it survives restarts.
fn load_or_create_peer_secret(dir: &std::path::Path) -> Result<String, HubError> {
    let path = dir.join("peer-secret");
    let io = |source| HubError::Io { path: path.clone(), source };
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let secret = hex::encode(rand::random::<[u8; 32]>());
    std::fs::create_dir_all(dir).map_err(io)?;
    std::fs::write(&path, &secret).map_err(io)?;
    Ok(secret)
}

/// A running hub. Dropping it aborts its tasks; [`Hub::shutdown`] stops it
/// gracefully.
#[derive(Debug)]
pub struct Hub {
    quic_addr: SocketAddr,
    http_addr: SocketAddr,
    ca_path: PathBuf,
    fingerprint: String,
    runtime: Option<NodeRuntime>,
    endpoint: quinn::Endpoint,
    accept: Option<AbortOnDrop<()>>,
    http: Option<Served>,
    /// The operator routes' own listener (`admin_listen`).
    admin: Option<Served>,
    placer: Option<AbortOnDrop<()>>,
    /// Applies revocations other hubs stored.
    _revocations_follow: AbortOnDrop<()>,
    /// Follows the tier's signing keys in the store.
    _keys_follow: AbortOnDrop<()>,
    /// The change feed's relay (with PostgreSQL and a bus).
    _feed: Option<AbortOnDrop<()>>,
    placement_metrics: Arc<PlacementMetrics>,
    /// The bus to the other hubs on the store (`bus`), if any.
    _bus: Option<bus::Bus>,
}

impl Hub {
    pub async fn start(config: HubConfig) -> Result<Self, HubError> {
        config.validate()?;
        if matches!(config.auth, EdgeAuth::DevOpen) {
            tracing::warn!(
                "OPEN DEV MODE: any edge id is accepted without a secret. Configure --edge ID=SECRET for real use."
            );
        }
        // Every port first: a start that cannot bind leaves nothing on disk.
        let quic_socket = startup::bind_udp("--listen", config.listen)?;
        let admin_listener = config.admin_listen.map(|a| startup::bind_tcp("--admin-listen", a)).transpose()?;
        let http_listener = startup::bind_tcp("--http", config.http)?;
        startup::writable_dir("--data", &config.data_dir)?;
        let identity = quic::load_or_create_identity(&config.data_dir, &config.cert_names, quic::IdentityOf::Hub)?;
        let peer_secret = Arc::new(load_or_create_peer_secret(&config.data_dir)?);
        let store = open_store(&config).await?;
        // The storage id is the store's (set by `NodeRuntime`): hubs on one
        // database share it, so the sync states an edge keeps for "the hub"
        // hold for any of them.
        let mut engine = EngineConfig::new(PeerId::new(config.hub_id.clone()), None);
        engine.idle_evict_after_ms = config.idle_evict_after.as_millis() as u64;
        engine.rng_seed = rand::random();
        engine.expects_upstream = false;
        engine.apply_off_loop_ops = meridian_node::runtime::APPLY_OFF_LOOP_OPS;
        let metrics = Arc::new(NodeMetrics::new(Role::Hub));
        let (runtime, committed) = if config.bus.is_empty() {
            (NodeRuntime::start(store, engine, config.tick_interval, metrics.clone()), None)
        } else {
            let (tx, rx) = mpsc::unbounded_channel();
            (NodeRuntime::start_shared(store, engine, config.tick_interval, metrics.clone(), tx), Some(rx))
        };
        let runtime = runtime.map_err(HubError::Thread)?;
        let scrub = NodeEvent::ScrubRate { bytes_per_sec: config.scrub_bytes_per_sec };
        let _ = runtime.events().send(scrub).await;
        let _ = runtime.events().send(NodeEvent::DivergenceAfter { after: config.divergence_after }).await;
        let bus = match committed {
            Some(rx) => Some(
                bus::Bus::start(&config.bus, rx, runtime.events(), metrics.registry())
                    .await
                    .map_err(HubError::Config)?,
            ),
            None => None,
        };
        let bind_error = |error| BindError { flag: "--listen", addr: config.listen, proto: "UDP", error };
        let endpoint =
            quic::server_endpoint(quic::server_config(&identity, FEDERATION_ALPN)?, quic_socket).map_err(bind_error)?;
        let quic_addr = endpoint.local_addr().map_err(bind_error)?;
        let placement_metrics = Arc::new(PlacementMetrics::new(metrics.registry()));
        let (placer_tx, placer_rx) = mpsc::channel(1024);
        let control = open_control(&config).await?;
        let placer = Placer::new(
            config.hub_id.clone(),
            config.placement.clone(),
            config.report_interval,
            config.placement_interval,
            placement_metrics.clone(),
        )
        .with_moves(config.placement_moves)
        .with_control(control.clone(), config.placer_lease);
        let placer = AbortOnDrop(tokio::spawn(placer::run(placer, placer_rx, runtime.events())));
        let revocations = Arc::new(Revocations::load(control.clone(), &config.data_dir).await?);
        let verifier = meridian_node::auth::Verifier::load(&config.auth_public_keys)?;
        // The tier's keys: this hub's files, and those in the store.
        let tier_keys = Arc::new(keys::TierKeys::load(control.clone(), verifier.public_pems()).await?);
        let keyring = (!tier_keys.list().is_empty())
            .then(|| {
                let keyring = Keyring::new(verifier);
                keyring.set_hub_keys(&tier_keys.others())?;
                keyring.revoke(&revocations.list());
                Ok::<_, HubError>(Arc::new(keyring))
            })
            .transpose()?;
        let keys_follow = AbortOnDrop(tokio::spawn(keys::follow(tier_keys.clone(), keyring.clone())));
        let shared = Arc::new(EdgeShared {
            peer_secret: peer_secret.to_string(),
            revocations: revocations.clone(),
            auth_keys: tier_keys.clone(),
            keyring: keyring.clone(),
            failures: admission::Failures::default(),
            metrics: metrics.clone(),
        });
        let accept = AbortOnDrop(tokio::spawn(accept_loop(
            endpoint.clone(),
            config.clone(),
            shared,
            runtime.events(),
            placer_tx.clone(),
        )));
        let app = if config.serve_clients {
            let auth = keyring.clone();
            if auth.is_none() {
                metrics.auth_open.set(1);
                tracing::warn!("OPEN DEV MODE: clients at /sync may read and write every document (loopback only)");
            }
            server::router(AppState {
                events: runtime.events(),
                metrics: metrics.clone(),
                max_message_bytes: config.max_frame_bytes,
                ping_interval: Duration::from_secs(10),
                auth,
                limits: server::ConnLimiter::new(DEFAULT_MAX_CONNECTIONS, 0),
                rates: Default::default(),
            })
        } else {
            let m = metrics.clone();
            Router::new()
                .route("/healthz", get(|| async { "ok\n" }))
                .route("/metrics", get(move || async move { m.render() }))
        };
        // The change feed: relayed from the store by one hub at a time
        // (PostgreSQL and a bus needed).
        let feed = match (&bus, config.feed) {
            (Some(bus), true) => {
                let relay = feed::relay(control.clone(), bus.client(), config.hub_id.clone(), config.placer_lease);
                Some(AbortOnDrop(tokio::spawn(relay)))
            }
            _ => None,
        };
        let follow = revocations::follow(revocations.clone(), keyring.clone(), runtime.events());
        let revocations_follow = AbortOnDrop(tokio::spawn(follow));
        let api = RevokeApi { revocations, keyring: keyring.clone(), events: runtime.events() };
        let protected = keyring.is_some() || config.admin_token.is_some();
        let keys_api = keys::KeysApi { keys: tier_keys, keyring: keyring.clone(), protected };
        let database = config.store.is_none().then(|| config.data_dir.join("hub.sqlite3"));
        let ops = operator_routes(placer_tx, api, control, keys_api, runtime.events(), database.as_deref());
        let http_options = HttpOptions { header_read_timeout: config.header_read_timeout, ..HttpOptions::default() };
        let guard = AdminGuard { token: config.admin_token.as_deref().map(Arc::from), keyring };
        // The console's page and code hold no data: served to anyone on the
        // operator listener; what they show comes from the routes guarded here.
        let ops = meridian_node::admin::protect(ops, guard).merge(console::router());
        let (app, admin) = match (admin_listener, config.admin_listen) {
            (Some(listener), Some(addr)) => {
                let served = meridian_node::http::serve(listener.listen()?, ops, http_options.clone(), metrics.clone())
                    .map_err(|error| BindError { flag: "--admin-listen", addr, proto: "TCP", error })?;
                (app, Some(served))
            }
            _ => (app.merge(ops), None),
        };
        // Connections are accepted from here on: the hub is ready.
        let http = meridian_node::http::serve(http_listener.listen()?, app, http_options, metrics.clone())
            .map_err(|error| BindError { flag: "--http", addr: config.http, proto: "TCP", error })?;
        let http_addr = http.addr;
        tracing::info!(%quic_addr, %http_addr, ca = %identity.ca_path.display(), fingerprint = %identity.fingerprint, "hub listening");
        let Identity { ca_path, fingerprint, .. } = identity;
        Ok(Self {
            quic_addr,
            http_addr,
            ca_path,
            fingerprint,
            runtime: Some(runtime),
            endpoint,
            accept: Some(accept),
            http: Some(http),
            admin,
            placer: Some(placer),
            _revocations_follow: revocations_follow,
            _keys_follow: keys_follow,
            _feed: feed,
            placement_metrics,
            _bus: bus,
        })
    }

    pub fn quic_addr(&self) -> SocketAddr {
        self.quic_addr
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Address of the operator routes' own listener (`admin_listen`), if set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|a| a.addr)
    }

    /// The CA certificate edges should trust (`--hub-ca`).
    pub fn ca_path(&self) -> &std::path::Path {
        &self.ca_path
    }

    /// SHA-256 of the hub certificate (`--hub-fingerprint`).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn metrics(&self) -> Option<&Arc<NodeMetrics>> {
        self.runtime.as_ref().map(NodeRuntime::metrics)
    }

    pub fn placement_metrics(&self) -> &Arc<PlacementMetrics> {
        &self.placement_metrics
    }

    /// Stops accepting edges, saves sync states and flushes the store.
    pub async fn shutdown(mut self) {
        self.accept.take();
        self.endpoint.close(quinn::VarInt::from_u32(0), b"hub shutting down");
        self.admin.take();
        let http = self.http.take().map(|Served { task, stop, .. }| {
            let _ = stop.send(());
            task
        });
        if let Some(r) = self.runtime.take() {
            r.shutdown().await;
        }
        drop(http);
        self.placer.take();
    }
}

/// The operator routes: `GET /placement` and `GET /topology` (JSON from
/// the placement task) and `POST /api/auth/revoke`; the caller puts them
/// behind the admin guard. No CORS headers: a page of another origin cannot
/// read which documents exist.
fn operator_routes(
    placer: mpsc::Sender<PlacerEvent>,
    revoke: RevokeApi,
    control: control::ControlState,
    keys: keys::KeysApi,
    events: NodeEvents,
    database: Option<&std::path::Path>,
) -> Router {
    let query = |view: View| {
        let placer = placer.clone();
        move || async move {
            let (reply, answer) = oneshot::channel();
            let _ = placer.send(PlacerEvent::Query { view, reply }).await;
            match answer.await {
                Ok(v) => Ok(Json(v)),
                Err(_) => Err((axum::http::StatusCode::SERVICE_UNAVAILABLE, "placement task stopped\n")),
            }
        }
    };
    Router::new()
        .route("/placement", get(query(View::Placement)))
        .route("/topology", get(query(View::Topology)))
        .merge(Router::new().route("/api/auth/revoke", post(revocations::revoke)).with_state(revoke))
        .merge(
            Router::new()
                .route("/api/auth/keys", get(keys::list).post(keys::add))
                .route("/api/auth/keys/{id}", axum::routing::delete(keys::remove))
                .with_state(keys),
        )
        .merge(
            Router::new()
                .route("/api/placement/pins", get(pins::list))
                .route("/api/placement/pins/{doc}", axum::routing::put(pins::pin).delete(pins::unpin))
                .with_state(control),
        )
        .merge(
            Router::new()
                .route("/api/docs", get(replicas::documents))
                .route("/api/docs/{doc}/replicas", get(replicas::replicas))
                .route("/api/divergence", get(replicas::divergence))
                .with_state(events.clone()),
        )
        // A document now or at earlier heads, its history, a rollback, an
        // export (the edges' routes; `/creator` with the SQLite store).
        .merge(meridian_node::doc_api::router(events, database))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_dev_mode_is_refused_off_loopback() {
        let mut c = HubConfig::new("/tmp/x");
        c.listen = "0.0.0.0:7400".parse().unwrap();
        assert!(c.validate().is_err());
        assert!(c.clone().edge("eu", "s").validate().is_ok());
    }

    #[test]
    fn placement_settings_are_validated() {
        let ok = HubConfig::new("/tmp/x");
        assert!(ok.validate().is_ok());
        let mut feed = ok.clone();
        feed.feed = true;
        assert!(feed.validate().is_err(), "the feed needs a PostgreSQL store and a bus");
        feed.store = Some("postgres://h/db".into());
        feed.bus = vec!["nats://127.0.0.1:4222".into()];
        assert!(feed.validate().is_ok());
        let mut c = ok.clone();
        c.placement_interval = Duration::ZERO;
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.placement.min_gain_ratio = f64::NAN;
        assert!(c.validate().is_err());
        let mut c = ok;
        c.placement.max_moves = 0;
        assert!(c.validate().is_err());
    }
}
