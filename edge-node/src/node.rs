//! [`EdgeNode`]: an edge, assembled from the node runtime, the WebSocket
//! server and (optionally) the QUIC uplink to the hub.

use std::net::SocketAddr;
use std::sync::Arc;

use meridian_node::admin::AdminGuard;
use meridian_node::auth::{Keyring, Verifier};
use meridian_node::http::{HttpOptions, Served};
use meridian_node::metrics::{NodeMetrics, Role};
use meridian_node::quic;
use meridian_node::runtime::{self, NodeEvent, NodeEvents, NodeRuntime};
use meridian_node::server::{self, AppState};
use meridian_node::startup::{self, BindError};
use meridian_node::store::{SqliteStore, StoreOptions};
use meridian_node::task::AbortOnDrop;
use meridian_protocol::codec::federation::{self, Control, FrameKind};
use meridian_protocol::engine::EngineConfig;
use meridian_protocol::ids::PeerId;
use meridian_protocol::log::Maybe;

use crate::config::{EdgeConfig, UplinkConfig};
use crate::error::EdgeError;
use crate::info::{self, NodeInfo};
use crate::peers::{self, PeerDirectory, PeerHandle, PeerSettings};

/// A running edge node. Dropping it aborts its tasks; call
/// [`EdgeNode::shutdown`] for a graceful stop.
#[derive(Debug)]
pub struct EdgeNode {
    addr: SocketAddr,
    /// The HTTP listeners speak TLS (`wss://`).
    tls: bool,
    metrics: Arc<NodeMetrics>,
    runtime: Option<NodeRuntime>,
    http: Option<Served>,
    /// The operator routes' own listener (`--admin-listen`).
    admin: Option<Served>,
    uplink: Option<AbortOnDrop<()>>,
    quic_addr: Option<SocketAddr>,
    devices: Option<AbortOnDrop<()>>,
    peer_addr: Option<SocketAddr>,
    /// The peer actor and the listener for other edges.
    peers: Vec<AbortOnDrop<()>>,
}

/// The edge ↔ edge side of placement: the peer actor, and the listener for
/// other edges if configured. Only for edges with an uplink (homes come
/// from the hub).
struct PeerParts {
    handle: PeerHandle,
    addr: Option<SocketAddr>,
    tasks: Vec<AbortOnDrop<()>>,
}

fn start_peers(
    config: &EdgeConfig,
    edge_id: &str,
    events: NodeEvents,
    socket: Option<std::net::UdpSocket>,
) -> Result<PeerParts, EdgeError> {
    let dir = Arc::new(PeerDirectory::default());
    let (tx, rx) = tokio::sync::mpsc::channel(4096);
    let mut tasks = Vec::new();
    let (mut addr, mut listen_addr, mut fingerprint) = (None, None, None);
    if let (Some(listen), Some(socket)) = (config.peer_listen, socket) {
        let names = vec!["localhost".to_owned(), listen.ip().to_string()];
        let identity =
            quic::load_or_create_identity(&config.data_dir, &names, quic::IdentityOf::Edge).map_err(EdgeError::Tls)?;
        let limit = config.max_message_bytes;
        let (bound, task) =
            peers::listen(&identity, listen, socket, dir.clone(), edge_id.to_owned(), events.clone(), limit)?;
        tasks.push(task);
        addr = Some(bound);
        listen_addr = Some(config.peer_advertise.clone().unwrap_or_else(|| bound.to_string()));
        fingerprint = Some(identity.fingerprint);
    }
    let settings = PeerSettings {
        edge_id: edge_id.to_owned(),
        routes: config.peer_routes.clone(),
        max_frame_bytes: config.max_message_bytes,
    };
    tasks.push(AbortOnDrop(tokio::spawn(peers::run(settings, dir.clone(), events, tx.clone(), rx))));
    Ok(PeerParts { handle: PeerHandle { dir, events: tx, listen_addr, fingerprint }, addr, tasks })
}

/// What the device listener checks a device's first frame against.
#[derive(Clone, Debug)]
struct DeviceAuth {
    /// `None`: open dev mode.
    verifier: Option<Arc<Keyring>>,
    metrics: Arc<NodeMetrics>,
    /// How long a device may take to send its first frame (`None`: no limit).
    first_frame_within: Option<std::time::Duration>,
    /// Each device's rate of messages and bytes.
    rates: meridian_node::throttle::Rates,
    /// The caps on open connections, shared with the WebSocket listener.
    limits: Arc<server::ConnLimiter>,
}

/// Starts the QUIC listener for device clients (ALPN `meridian/1`) on its
/// bound socket, with a certificate from the edge's data folder (created on
/// first start).
fn start_device_listener(
    config: &EdgeConfig,
    listen: SocketAddr,
    socket: std::net::UdpSocket,
    events: NodeEvents,
    auth: DeviceAuth,
) -> Result<(SocketAddr, AbortOnDrop<()>), EdgeError> {
    let names = vec!["localhost".to_owned(), listen.ip().to_string()];
    let identity =
        quic::load_or_create_identity(&config.data_dir, &names, quic::IdentityOf::Edge).map_err(EdgeError::Tls)?;
    let server = quic::server_config(&identity, quic::DEVICE_ALPN).map_err(EdgeError::Tls)?;
    let bind_error = |error| BindError { flag: "--quic-listen", addr: listen, proto: "UDP", error };
    let endpoint = quic::server_endpoint(server, socket).map_err(bind_error)?;
    let addr = endpoint.local_addr().map_err(bind_error)?;
    tracing::info!(%addr, ca = %identity.ca_path.display(), fingerprint = %identity.fingerprint, "QUIC listener for devices");
    let task = AbortOnDrop(tokio::spawn(accept_devices(endpoint, events, config.max_message_bytes, auth)));
    Ok((addr, task))
}

/// Accepts device connections; each runs in a task owned by the loop.
async fn accept_devices(endpoint: quinn::Endpoint, events: NodeEvents, limit: usize, auth: DeviceAuth) {
    quic::accept_each(endpoint, |incoming| serve_device(incoming, events.clone(), limit, auth.clone())).await;
}

/// A device's first frame is its token ([`Control::Auth`]); in open dev
/// mode it may be `join` right away. Without a valid token (auth on) the
/// device is refused with the reason before it reaches the engine.
async fn serve_device(incoming: quinn::Incoming, events: NodeEvents, limit: usize, auth: DeviceAuth) {
    let remote = incoming.remote_address();
    let Ok(connection) = incoming.await else { return };
    // A device that opens no stream in time is dropped, as one that sends nothing.
    let opened = match auth.first_frame_within {
        Some(limit) => match tokio::time::timeout(limit, connection.accept_bi()).await {
            Ok(opened) => opened,
            Err(_) => {
                auth.metrics.limit_hit("handshake_timeout");
                return connection.close(quinn::VarInt::from_u32(1), b"no stream opened in time");
            }
        },
        None => connection.accept_bi().await,
    };
    let Ok((send, mut recv)) = opened else { return };
    let _slot = match auth.limits.admit(Some(remote.ip())) {
        Ok(slot) => slot,
        Err(cap) => {
            auth.metrics.limit_hit(cap.as_str());
            let reason = format!("too many connections (limit: {})", cap.as_str());
            return quic::refuse(&connection, send, &reason).await;
        }
    };
    let read = quic::read_frame(&mut recv, limit);
    let first = match auth.first_frame_within {
        Some(limit) => tokio::time::timeout(limit, read).await.unwrap_or(Ok(None)),
        None => read.await,
    };
    let (token, join) = match first {
        Ok(Some((FrameKind::Control, bytes))) => match federation::decode_control(&bytes) {
            Ok(Control::Auth { token }) => (token, None),
            _ => (String::new(), None),
        },
        Ok(Some((FrameKind::Repo, bytes))) => (String::new(), Some(bytes)),
        _ => return quic::refuse(&connection, send, "nothing received").await,
    };
    let (access, valid_for) = match server::authorize(auth.verifier.as_deref(), &token, &auth.metrics) {
        Ok(granted) => granted,
        Err(reason) => {
            tracing::info!(%remote, %reason, "device refused");
            return quic::refuse(&connection, send, &format!("unauthorized: {reason}")).await;
        }
    };
    let Some((conn, out)) = runtime::register_client(&events, access, valid_for, Some(token)).await else { return };
    if let Some(bytes) = join
        && events.send(NodeEvent::Frame { conn, bytes, parent: None }).await.is_err()
    {
        return;
    }
    let metrics = auth.metrics.clone();
    let reading = quic::Reading {
        max_frame_bytes: limit,
        rates: Some(auth.rates),
        on_throttled: Some(Box::new(move || metrics.limit_hit("message_rate"))),
        link: false,
    };
    let reason = quic::pump(&connection, send, recv, conn, &events, out, reading, |_| {}, |_| {}).await;
    tracing::info!(%remote, %conn, %reason, "device disconnected");
}

/// The public keys tokens are checked against, or `None` in open dev mode
/// (announced loudly: anyone reaching the edge may read and write
/// everything).
fn load_verifier(config: &EdgeConfig, metrics: &NodeMetrics) -> Result<Option<Arc<Keyring>>, EdgeError> {
    if config.open_mode() {
        metrics.auth_open.set(1);
        tracing::warn!(
            "OPEN DEV MODE: no --auth-public-key, so every client may read and write every document \
             (serving loopback only)"
        );
        return Ok(None);
    }
    let verifier = Verifier::load(&config.auth_public_keys)?;
    tracing::info!(keys = config.auth_public_keys.len(), "clients need a token (auth on)");
    let keyring = Keyring::new(verifier);
    // What the hub revoked before a restart still holds.
    let path = config.revocations_path();
    let kept = meridian_node::auth::load_revocations(&path).map_err(|source| EdgeError::Io { path, source })?;
    keyring.revoke(&kept);
    Ok(Some(Arc::new(keyring)))
}

impl EdgeNode {
    /// Opens the store, binds the listener, starts serving, and (if
    /// configured) starts the uplink to the hub.
    pub async fn start(config: EdgeConfig) -> Result<Self, EdgeError> {
        config.validate()?;
        // Every port first: a start that cannot bind leaves nothing on disk.
        let listener = startup::bind_tcp("--listen", config.listen)?;
        let addr = listener.local_addr()?;
        let admin_listener = config.admin_listen.map(|a| startup::bind_tcp("--admin-listen", a)).transpose()?;
        let device_socket = config.quic_listen.map(|a| startup::bind_udp("--quic-listen", a)).transpose()?;
        let peer_socket = match (&config.uplink, config.peer_listen) {
            (Some(_), Some(a)) => Some(startup::bind_udp("--peer-listen", a)?),
            _ => None,
        };
        startup::writable_dir("--data", &config.data_dir)?;
        let store = SqliteStore::open_with(&config.database_path(), StoreOptions { fsync: config.fsync })?;

        // The storage id is the store's (set by `NodeRuntime`).
        let mut engine = EngineConfig::new(PeerId::new(config.peer_id.clone()), None);
        engine.idle_evict_after_ms = config.idle_evict_after.as_millis() as u64;
        engine.join_timeout_ms = config.join_timeout.as_millis() as u64;
        engine.unknown_requests_per_minute = config.unknown_requests_per_minute;
        engine.creates_per_minute = config.creates_per_minute;
        engine.max_message_ops = config.max_message_ops;
        engine.max_ops_per_byte = config.max_ops_per_byte;
        engine.max_document_ops = config.max_document_ops;
        engine.apply_off_loop_ops = config.apply_off_loop_ops;
        engine.rng_seed = rand::random();
        // Demand is what the uplink reports to the hub for placement.
        engine.track_demand = config.uplink.is_some();
        engine.max_loaded_docs = config.memory_budget_docs;
        let metrics = Arc::new(NodeMetrics::new(Role::Edge));
        let verifier = load_verifier(&config, &metrics)?;
        let limits = server::ConnLimiter::new(config.max_connections, config.max_connections_per_address);
        // Without a hub there is no cloud copy to fall back on.
        let disk_budget = if config.uplink.is_some() { config.disk_budget_bytes } else { 0 };
        let (tick, threads) = (config.tick_interval, config.engine_threads);
        let runtime = NodeRuntime::start_edge(Box::new(store), engine, tick, metrics.clone(), disk_budget, threads)
            .map_err(EdgeError::Thread)?;
        let _ = runtime.events().send(NodeEvent::ScrubRate { bytes_per_sec: config.scrub_bytes_per_sec }).await;
        let _ = runtime.events().send(NodeEvent::DivergenceAfter { after: config.divergence_after }).await;
        let peers = match &config.uplink {
            Some(u) => Some(start_peers(&config, &u.edge_id, runtime.events(), peer_socket)?),
            None => None,
        };
        let mut app = server::router(AppState {
            events: runtime.events(),
            metrics: metrics.clone(),
            max_message_bytes: config.max_message_bytes,
            ping_interval: config.ping_interval,
            auth: verifier.clone(),
            limits: limits.clone(),
            rates: config.rates,
        })
        .merge(info::router(
            metrics.clone(),
            NodeInfo {
                peer_id: config.peer_id.clone(),
                edge_id: config.uplink.as_ref().map(|u| u.edge_id.clone()),
                hubs: config
                    .uplink
                    .as_ref()
                    .map_or_else(Vec::new, |u| u.hubs.iter().map(ToString::to_string).collect()),
                auth: if verifier.is_some() { "tokens" } else { "open" },
            },
        ));
        // Operator routes: behind one guard, on their own listener with
        // --admin-listen, else beside /sync.
        let mut ops = meridian_node::doc_api::router(runtime.events(), Some(&config.database_path()));
        if let (Some(p), Some(u)) = (&peers, &config.uplink) {
            ops = ops.merge(peers::router(p.handle.dir.clone(), u.edge_id.clone()));
        }
        let tls = match &config.tls {
            Some((cert, key)) => Some(meridian_node::http::tls_config(cert, key).map_err(EdgeError::HttpsTls)?),
            None => None,
        };
        let http_options =
            HttpOptions { header_read_timeout: config.header_read_timeout, max_open: config.max_connections, tls };
        let guard = AdminGuard { token: config.admin_token.as_deref().map(Arc::from), keyring: verifier.clone() };
        let ops = meridian_node::admin::protect(ops, guard);
        let admin = match admin_listener {
            Some(listener) => Some(
                meridian_node::http::serve(listener.listen()?, ops, http_options.clone(), metrics.clone()).map_err(
                    |error| BindError {
                        flag: "--admin-listen",
                        addr: config.admin_listen.unwrap_or(addr),
                        proto: "TCP",
                        error,
                    },
                )?,
            ),
            None => {
                app = app.merge(ops);
                None
            }
        };
        // Connections are accepted from here on: the edge is ready.
        let http = meridian_node::http::serve(listener.listen()?, app, http_options, metrics.clone())
            .map_err(|error| BindError { flag: "--listen", addr, proto: "TCP", error })?;
        let handle = peers.as_ref().map(|p| p.handle.clone());
        let uplink = config.uplink.clone().map(|u| {
            let hubs: Vec<String> = u.hubs.iter().map(ToString::to_string).collect();
            tracing::info!(hubs = %hubs.join(","), edge_id = %u.edge_id, "uplink configured");
            let keyring = verifier.clone();
            let u = UplinkConfig { revocations_file: Some(config.revocations_path()), ..u };
            AbortOnDrop(tokio::spawn(crate::uplink::run(u, runtime.events(), metrics.clone(), handle, keyring)))
        });
        let (peer_addr, peer_tasks) = peers.map_or((None, Vec::new()), |p| (p.addr, p.tasks));
        let (quic_addr, devices) = match config.quic_listen.zip(device_socket) {
            Some((listen, socket)) => {
                let auth = DeviceAuth {
                    verifier: verifier.clone(),
                    metrics: metrics.clone(),
                    first_frame_within: (!config.join_timeout.is_zero()).then_some(config.join_timeout),
                    limits: limits.clone(),
                    rates: config.rates,
                };
                let (addr, task) = start_device_listener(&config, listen, socket, runtime.events(), auth)?;
                (Some(addr), Some(task))
            }
            None => (None, None),
        };
        let admin_addr = admin.as_ref().map(|a| a.addr);
        tracing::info!(%addr, quic_addr = %Maybe(&quic_addr), admin_addr = %Maybe(&admin_addr), data = %config.data_dir.display(), "edge listening");
        Ok(Self {
            addr,
            tls: config.tls.is_some(),
            metrics,
            quic_addr,
            runtime: Some(runtime),
            http: Some(http),
            admin,
            uplink,
            devices,
            peer_addr,
            peers: peer_tasks,
        })
    }

    /// Address of the listener for other edges, if enabled.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer_addr
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Address of the operator routes' own listener (`--admin-listen`), if set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|a| a.addr)
    }

    /// The automerge-repo WebSocket URL of this edge.
    pub fn ws_url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}/sync", self.addr)
    }

    /// Address of the QUIC listener for devices, if enabled.
    pub fn quic_addr(&self) -> Option<SocketAddr> {
        self.quic_addr
    }

    /// The `quic://` URL devices connect to, if enabled.
    pub fn quic_url(&self) -> Option<String> {
        self.quic_addr.map(|a| format!("quic://{a}"))
    }

    pub fn metrics(&self) -> &Arc<NodeMetrics> {
        &self.metrics
    }

    /// Stops accepting, drops the uplink, closes connections after saving
    /// their sync state, and waits until every storage write has committed.
    pub async fn shutdown(mut self) {
        self.uplink.take();
        self.devices.take();
        self.peers.clear();
        self.admin.take();
        // Stop accepting first; WebSockets close as the runtime shuts down.
        let http = self.http.take().map(|served| {
            let Served { task, stop, .. } = served;
            let _ = stop.send(());
            task
        });
        if let Some(r) = self.runtime.take() {
            r.shutdown().await;
        }
        if let Some(mut t) = http {
            let _ = (&mut t.0).await;
        }
    }
}
