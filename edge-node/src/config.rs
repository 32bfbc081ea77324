//! Edge configuration: parsed from flags and environment variables by the
//! binary, built directly by tests. [`UplinkConfig`] is the part about the
//! hub.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use meridian_node::DEFAULT_MAX_MESSAGE_BYTES;
use meridian_node::quic::HubTrust;

/// Everything an edge node needs to run.
#[derive(Clone, Debug)]
pub struct EdgeConfig {
    /// Address of the HTTP/WebSocket listener (`/sync`, `/`, `/healthz`, `/metrics`).
    pub listen: SocketAddr,
    /// Folder holding the SQLite store.
    pub data_dir: PathBuf,
    /// Our peer id on the wire.
    pub peer_id: String,
    /// Largest accepted WebSocket message; bigger ones get an `error` and a close.
    pub max_message_bytes: usize,
    /// Documents untouched for this long leave memory.
    pub idle_evict_after: Duration,
    /// A client that has not sent `join` this long after connecting is
    /// refused and closed (zero: no limit).
    pub join_timeout: Duration,
    /// The node loop's housekeeping interval (store usage for the disk
    /// budget, metrics) and the pace of a backfill (one slice of stored
    /// documents per interval); the engine's own deadlines need no tick.
    pub tick_interval: Duration,
    /// Interval of WebSocket pings; a peer silent for three intervals is dropped.
    pub ping_interval: Duration,
    /// fsync on every commit (the default): an acknowledged change
    /// survives power loss. Off (`--unsafe-no-fsync`), commits survive
    /// process crashes (`kill -9`) only.
    pub fsync: bool,
    /// UDP address of the QUIC listener for device clients (ALPN
    /// `meridian/1`); `None` disables it.
    pub quic_listen: Option<SocketAddr>,
    /// The QUIC link to the hub, if this edge federates.
    pub uplink: Option<UplinkConfig>,
    /// UDP address where other edges link to this one when it is a
    /// document's home (ALPN `meridian-peer/1`); `None`: it is never dialled
    /// (edges still dial homes elsewhere).
    pub peer_listen: Option<SocketAddr>,
    /// Address of the peer listener told to the hub (default: the bound one).
    pub peer_advertise: Option<String>,
    /// Dial these addresses for these home edges instead of the announced
    /// ones (edge id → address).
    pub peer_routes: std::collections::BTreeMap<String, SocketAddr>,
    /// Memory budget: at most this many documents in memory (0: no limit;
    /// idle eviction applies either way).
    pub memory_budget_docs: usize,
    /// A fixed secret the operator routes (`/api/docs/…`, `/homes`) accept
    /// as `Authorization: Bearer` (see `meridian_node::admin` for the rule).
    pub admin_token: Option<String>,
    /// Serve the operator routes on this address only, not beside `/sync`.
    pub admin_listen: Option<SocketAddr>,
    /// Disk budget: bytes of document data kept locally (0: no limit). Past
    /// it, the least recently written documents the hub holds in full and
    /// no client here uses are dropped; opening one later fetches it again
    /// (a cold open, from the hub or the document's home edge).
    pub disk_budget_bytes: u64,
    /// Engine shards: documents are hashed over this many engines, each on
    /// its own task, so the edge uses that many cores (a connection's
    /// documents may live in several; see `meridian_protocol::engine::shard`).
    pub engine_threads: usize,
    /// Bytes of stored chunks the background scrub checks per second, for
    /// corruption (0: off; a chunk is checked on every load anyway).
    pub scrub_bytes_per_sec: u64,
    /// How long a replica (the hub's, a peer edge's or a client's copy of a
    /// document) may stay apart from this edge's before it is divergent
    /// and resynced from scratch (zero: not checked).
    pub divergence_after: Duration,
    /// Public keys (PEM) clients' tokens are checked against (several:
    /// key rotation). Empty: open dev mode, where every client may read
    /// and write everything; it serves loopback addresses only.
    pub auth_public_keys: Vec<PathBuf>,
    /// Open WebSocket connections at most, in all and from one client
    /// address (0: no cap); past them an upgrade gets 503 and is counted.
    pub max_connections: usize,
    pub max_connections_per_address: usize,
    /// A client's requests for documents nobody has, per minute; past it
    /// its requests for documents not in memory are answered
    /// `doc-unavailable` with no lookup (0: no limit).
    pub unknown_requests_per_minute: u32,
    /// Documents one token subject may create per minute (0: no limit).
    pub creates_per_minute: u32,
    /// Operations in one client message at most, operations per byte of it
    /// past the first 100,000, and operations a client may take a document
    /// to (0: no limit); see `EngineConfig`.
    pub max_message_ops: u64,
    pub max_ops_per_byte: u64,
    pub max_document_ops: u64,
    /// See `EngineConfig::apply_off_loop_ops`.
    pub apply_off_loop_ops: u64,
    /// Each client's rate of messages and bytes (WebSocket and QUIC
    /// devices); past it, its connection is not read for a while
    /// (backpressure).
    pub rates: meridian_node::throttle::Rates,
    /// Serve `https://` and `wss://` with this certificate chain and key
    /// (PEM files) on the HTTP listeners; `None`: plain `http://`/`ws://`.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Request headers must arrive within this (slowloris), which is also
    /// the longest idle time of a kept-alive HTTP connection.
    pub header_read_timeout: Duration,
}

impl EdgeConfig {
    /// Defaults that run out of the box, with data under `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7300)),
            data_dir: data_dir.into(),
            peer_id: "meridian-edge".to_owned(),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            idle_evict_after: Duration::from_secs(60),
            join_timeout: Duration::from_secs(10),
            tick_interval: Duration::from_secs(1),
            ping_interval: Duration::from_secs(10),
            fsync: true,
            quic_listen: None,
            uplink: None,
            peer_listen: None,
            peer_advertise: None,
            peer_routes: std::collections::BTreeMap::new(),
            memory_budget_docs: 0,
            admin_token: None,
            admin_listen: None,
            disk_budget_bytes: 0,
            engine_threads: default_engine_threads(),
            scrub_bytes_per_sec: meridian_node::runtime::DEFAULT_SCRUB_BYTES_PER_SEC,
            divergence_after: meridian_node::runtime::DEFAULT_DIVERGENCE_AFTER,
            auth_public_keys: Vec::new(),
            max_connections: 10_000,
            max_connections_per_address: 256,
            header_read_timeout: meridian_node::http::DEFAULT_HEADER_READ_TIMEOUT,
            tls: None,
            max_message_ops: 2_000_000,
            max_ops_per_byte: 64,
            max_document_ops: 10_000_000,
            apply_off_loop_ops: meridian_node::runtime::APPLY_OFF_LOOP_OPS,
            rates: meridian_node::throttle::Rates::default(),
            unknown_requests_per_minute: 120,
            creates_per_minute: 120,
        }
    }

    /// Listen on an ephemeral loopback port (for tests).
    pub fn ephemeral_port(mut self) -> Self {
        self.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        self
    }

    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    pub fn peer_id(mut self, id: impl Into<String>) -> Self {
        self.peer_id = id.into();
        self
    }

    pub fn max_message_bytes(mut self, n: usize) -> Self {
        self.max_message_bytes = n;
        self
    }

    pub fn idle_evict_after(mut self, d: Duration) -> Self {
        self.idle_evict_after = d;
        self
    }

    /// Serve device clients over QUIC on `addr`.
    pub fn quic_listen(mut self, addr: SocketAddr) -> Self {
        self.quic_listen = Some(addr);
        self
    }

    pub fn uplink(mut self, uplink: UplinkConfig) -> Self {
        self.uplink = Some(uplink);
        self
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_message_bytes < 1024 {
            return Err(ConfigError::Invalid("max message size must be at least 1024 bytes".into()));
        }
        if self.peer_id.is_empty() {
            return Err(ConfigError::Invalid("peer id must not be empty".into()));
        }
        if self.tick_interval.is_zero() || self.ping_interval.is_zero() {
            return Err(ConfigError::Invalid("intervals must be positive".into()));
        }
        if self.auth_public_keys.is_empty() {
            // (The operator routes take --admin-token from anywhere.)
            let admin = self.admin_listen.filter(|_| self.admin_token.is_none());
            for (flag, addr) in
                [("--listen", Some(self.listen)), ("--quic-listen", self.quic_listen), ("--admin-listen", admin)]
            {
                if let Some(addr) = addr.filter(|a| !a.ip().is_loopback()) {
                    return Err(ConfigError::Invalid(format!(
                        "{flag} {addr} is not a loopback address, and without --auth-public-key anyone could read \
                         and write every document: open dev mode serves loopback only. Create keys with \
                         `meridian-edge auth keygen --out DIR` and pass --auth-public-key DIR/auth-public.pem"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Without public keys the edge runs in open dev mode.
    pub fn open_mode(&self) -> bool {
        self.auth_public_keys.is_empty()
    }

    /// Where the hub's revocations are kept, inside the data folder.
    pub fn revocations_path(&self) -> PathBuf {
        self.data_dir.join("revocations.json")
    }

    /// Path of the SQLite database inside the data folder.
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("edge.sqlite3")
    }
}

/// Where the hub is and how to authenticate to it.
#[derive(Clone, Debug)]
pub struct UplinkConfig {
    /// The hubs to federate with, in order of preference: one is in use, the
    /// others are where the edge fails over to (hubs sharing one store).
    /// Never empty.
    pub hubs: Vec<SocketAddr>,
    /// Name the hub certificate must carry (`localhost` for the dev CA).
    pub server_name: String,
    pub edge_id: String,
    pub secret: String,
    pub trust: HubTrust,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// How long one hub may take to answer a connection attempt before the
    /// edge tries the next.
    pub connect_timeout: Duration,
    /// Where the hub's revocations are kept (`EdgeNode::start` sets it to
    /// `<data>/revocations.json`); `None`: in memory only.
    pub revocations_file: Option<PathBuf>,
    pub max_frame_bytes: usize,
}

impl UplinkConfig {
    pub fn new(hub: SocketAddr, edge_id: impl Into<String>, secret: impl Into<String>, trust: HubTrust) -> Self {
        Self {
            hubs: vec![hub],
            server_name: "localhost".into(),
            edge_id: edge_id.into(),
            secret: secret.into(),
            trust,
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            revocations_file: None,
            max_frame_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }

    /// Adds a hub to fail over to.
    pub fn fallback(mut self, hub: SocketAddr) -> Self {
        self.hubs.push(hub);
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The engine shards an edge runs unless told: one per available core.
pub fn default_engine_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
