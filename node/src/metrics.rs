//! Typed metrics of a node (edge or hub), kept in a `prometheus` registry
//! and rendered in the Prometheus text format at `/metrics` (the crate's
//! encoder). Names start with `meridian_edge_` on an edge and
//! `meridian_hub_` on the hub; the `uplink_` ones are an edge's only. The
//! hub registers its own (placement, bus) in the same registry
//! ([`NodeMetrics::registry`]). Beside them: `process_*` (resident memory,
//! open file descriptors, CPU seconds, start time; Linux) without a prefix.
//!
//! | name | type | meaning |
//! |---|---|---|
//! | `meridian_edge_connections` | gauge | open connections (WebSocket and QUIC) |
//! | `meridian_edge_connections_total` | counter | connections accepted since start |
//! | `meridian_edge_documents_loaded` | gauge | documents in memory |
//! | `meridian_edge_messages_in_total{type}` | counter | protocol messages received, by type |
//! | `meridian_edge_messages_out_total{type}` | counter | protocol messages sent, by type |
//! | `meridian_edge_bytes_in_total` / `_bytes_out_total` | counter | WebSocket payload bytes |
//! | `meridian_edge_errors_total{kind}` | counter | connections closed for bad input, by kind |
//! | `meridian_edge_auth_refused_total{reason}` | counter | connections refused for their token, by reason (`missing`, `malformed`, `unknown_key`, `bad_signature`, `expired`, `not_yet_valid`) |
//! | `meridian_edge_access_refused_total{refusal}` | counter | requests refused by a connection's grants, by kind (`not_granted`, `read_only`, `create`, `ephemeral_limit`, `lookup_limit`, `create_limit`, `unapplicable`: changes its copy of the document refuses) |
//! | `meridian_edge_limits_hit_total{limit}` | counter | requests refused by a limit (`connections`, `connections_per_address`: open WebSockets and QUIC devices; `http_connections`: connections still speaking HTTP; `header_timeout`: request headers or a TLS handshake not read in time; at the hub `edge_auth_failures`: an address past its refused `hello`s, `handshake_timeout`: an edge that opened no stream or sent no `hello` in time; `send_queue`: a peer dropped for not reading, its queue past 8192 messages or 64 MiB; `message_rate`: a client's reads paused at its rate of messages or bytes) |
//! | `meridian_edge_auth_open` | gauge | 1 when the node runs in open dev mode (no token needed; loopback only) |
//! | `meridian_edge_storage_batches_total` | counter | SQLite transactions committed |
//! | `meridian_edge_storage_tasks_total` | counter | storage tasks executed |
//! | `meridian_edge_storage_failures_total` | counter | storage tasks that failed |
//! | `meridian_edge_chunks_quarantined_total` | counter | stored chunks that failed their check (corrupt: on load, or found by the scrub), moved to the `quarantine` table and left out; the document is written again from memory if loaded, and syncs what it lacks back from the hub or peers |
//! | `meridian_edge_scrub_chunks_total` / `_scrub_bytes_total` | counter | stored chunks (bytes) the background scrub checked (`--scrub-bytes-per-sec`) |
//! | `meridian_edge_scrub_passes_total` | counter | complete passes of the scrub over the store |
//! | `meridian_edge_divergent_documents` / `_divergent_replicas` | gauge | documents (replicas: peers' copies) that stay apart from this node past `--divergence-after-secs` (what either side had not crossing) |
//! | `meridian_edge_divergence_detected_total` / `_repairs_total` / `_healed_total` | counter | replicas found divergent; forced resyncs (sync state started afresh, up to 3 in a row); divergent replicas that met this node again |
//! | `meridian_edge_divergence_refetches_total` | counter | the last resort: copies of documents still divergent from the upstream after the resyncs, quarantined and replaced by the upstream's (an edge) |
//! | `meridian_edge_unapplicable_total` | counter | sync messages from another node whose changes this copy refuses (an actor's sequence forked, say); the link stays open |
//! | `meridian_edge_divergence_recovery_seconds` | histogram | for a divergent replica that healed: from it parting from this node to meeting again (time to recover) |
//! | `meridian_edge_storage_batch_seconds` | histogram | time to run one storage batch |
//! | `meridian_edge_evictions_total` | counter | documents evicted from memory |
//! | `meridian_edge_uplink_connected` | gauge | 1 while the QUIC uplink to the hub is up |
//! | `meridian_edge_uplink_connects_total` | counter | uplink connections established |
//! | `meridian_edge_uplink_refusals_total` | counter | times the hub refused this edge's credential |
//! | `meridian_edge_uplink_rtt_seconds` | gauge | QUIC round-trip time to the hub |
//! | `meridian_edge_uplink_hub_in_use{hub}` | gauge | per hub given to `--hub`: 1 for the one the uplink is connected to, else 0 |
//! | `meridian_edge_uplink_failovers_total` | counter | uplink sessions established with a different hub than the previous one |
//! | `meridian_edge_client_rtt_seconds` | gauge | WebSocket ping ↔ pong round trip to clients (moving average over all clients) |
//! | `meridian_edge_docs_pending_upstream` | gauge | loaded documents with changes the hub has not acknowledged |
//! | `meridian_edge_docs_synced_upstream` | gauge | loaded documents whose heads the hub has acknowledged |
//! | `meridian_edge_backfill_queued` | gauge | stored documents still to be synced with the hub |
//! | `meridian_edge_applied_off_loop_total` | counter | drains of a large document's messages applied on a thread of their own (`--apply-off-loop-ops`) |
//! | `meridian_edge_offloaded_total` | counter | documents whose local copy was dropped for the hub's (disk budget) |
//! | `meridian_edge_cold_opens_total` | counter | documents opened that were not stored here, fetched from the hub or their home edge |
//! | `meridian_edge_sync_generated_total` | counter | sync messages automerge generated for peers |
//! | `meridian_edge_sync_shared_total` | counter | sync messages sent as a copy of one generated for a peer in the same sync state (watchers in step) |
//! | `meridian_edge_sync_merged_total` | counter | peers' sync messages applied in one batch with the same peer's previous one (a writer with changes in flight) |
//! | `meridian_edge_snapshot_answers_total` | counter | peers with nothing sent a document's stored snapshot before it was loaded |
//! | `meridian_edge_store_bytes` | gauge | bytes of document data in the store (measured every 10 s, and for a disk budget) |
//! | `meridian_edge_build_info{version}` | gauge | 1, labelled with the build's version |
//! | `meridian_edge_replica_lag_seconds` | histogram | one hop of replication: from a change durable here to each replica syncing the document (at the hub: each edge; at an edge: the hub, its clients, peer edges) advertising heads that cover it; the last figure per replica is in the hub's `/api/docs/{doc}/replicas` (`lag_ms`) |
//! | `meridian_edge_home_lag_seconds` | histogram | from a change being durable here to the document's home confirming it (home edge over its link, else the hub; not for documents homed here, nor changes the home already had) |

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use meridian_protocol::engine::{ErrorKind, Refusal};
use prometheus::{Encoder, Gauge, HistogramOpts, IntCounterVec, IntGaugeVec, Opts};
pub use prometheus::{Histogram, IntCounter, IntGauge, Registry};

use crate::auth::TokenError;

/// Message types we count; anything else is `other`.
const TYPES: [&str; 10] = [
    "join",
    "peer",
    "error",
    "request",
    "sync",
    "doc-unavailable",
    "ephemeral",
    "remote-subscription-change",
    "remote-heads-changed",
    "other",
];

/// Limits counted in `limits_hit_total`.
const LIMITS: [&str; 8] = [
    "connections",
    "connections_per_address",
    "http_connections",
    "header_timeout",
    "edge_auth_failures",
    "handshake_timeout",
    "send_queue",
    "message_rate",
];

/// Buckets of the latency histograms (seconds).
pub const BUCKETS: [f64; 10] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5];

/// What a node is: the `uplink_` metrics are an edge's only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Edge,
    Hub,
}

impl Role {
    fn prefix(self) -> &'static str {
        match self {
            Role::Edge => "meridian_edge",
            Role::Hub => "meridian_hub",
        }
    }
}

/// All metrics of one node (edge or hub); shared between the node loop and
/// HTTP handlers.
#[derive(Debug)]
pub struct NodeMetrics {
    registry: Registry,
    /// `process_*`, registered without the node's prefix.
    process: Registry,
    pub connections: IntGauge,
    pub connections_total: IntCounter,
    pub documents_loaded: IntGauge,
    messages_in: IntCounterVec,
    messages_out: IntCounterVec,
    pub bytes_in: IntCounter,
    pub bytes_out: IntCounter,
    errors: IntCounterVec,
    auth_refusals: IntCounterVec,
    access_refusals: IntCounterVec,
    /// 1 in open dev mode (no token needed).
    pub auth_open: IntGauge,
    limits_hit: IntCounterVec,
    pub storage_batches: IntCounter,
    pub storage_tasks: IntCounter,
    pub storage_failures: IntCounter,
    pub chunks_quarantined: IntCounter,
    pub scrub_chunks: IntCounter,
    pub scrub_bytes: IntCounter,
    pub scrub_passes: IntCounter,
    pub divergent_documents: IntGauge,
    pub divergent_replicas: IntGauge,
    pub divergence_detected: IntCounter,
    pub divergence_repairs: IntCounter,
    pub divergence_healed: IntCounter,
    pub divergence_refetches: IntCounter,
    pub unapplicable: IntCounter,
    pub divergence_recovery_seconds: Histogram,
    pub storage_batch_seconds: Histogram,
    pub home_lag_seconds: Histogram,
    pub replica_lag_seconds: Histogram,
    pub evictions: IntCounter,
    pub uplink_connected: IntGauge,
    pub uplink_rtt_seconds: Gauge,
    /// Moving average of client WebSocket round trips (0: none measured).
    client_rtt_micros: AtomicU64,
    client_rtt_seconds: Gauge,
    pub uplink_connects_total: IntCounter,
    pub uplink_refusals_total: IntCounter,
    /// The hubs the uplink may use, in order (set once by the uplink).
    uplink_hubs: std::sync::OnceLock<Vec<String>>,
    /// The hub in use (its index in `uplink_hubs` and the id it gave), and
    /// the last one connected to, kept across losses to count fail-overs.
    uplink_hub: std::sync::Mutex<UplinkHub>,
    uplink_hub_in_use: IntGaugeVec,
    pub uplink_failovers_total: IntCounter,
    pub docs_pending_upstream: IntGauge,
    pub docs_synced_upstream: IntGauge,
    pub backfill_queued: IntGauge,
    pub offloaded: IntCounter,
    pub applied_off_loop: IntCounter,
    pub cold_opens: IntCounter,
    pub sync_generated: IntCounter,
    pub sync_shared: IntCounter,
    pub sync_merged: IntCounter,
    pub snapshot_answers: IntCounter,
    pub store_bytes: IntGauge,
}

/// Which of the uplink's hubs is in use (see [`NodeMetrics::set_uplink_in_use`]).
#[derive(Debug, Default)]
struct UplinkHub {
    in_use: Option<(usize, String)>,
    last: Option<usize>,
}

/// Registers a metric in `registry` and hands it back. The names are this
/// file's own constants: a clash is a bug caught by every test.
pub fn register<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    if let Err(error) = registry.register(Box::new(metric.clone())) {
        panic!("metric registered twice or badly named: {error}");
    }
    metric
}

/// A counter in `registry`.
pub fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    register(registry, IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}")))
}

/// A gauge in `registry`.
pub fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    register(registry, IntGauge::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}")))
}

/// A gauge of real numbers in `registry`.
pub fn float_gauge(registry: &Registry, name: &str, help: &str) -> Gauge {
    register(registry, Gauge::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}")))
}

/// A latency histogram (seconds, [`BUCKETS`]) in `registry`.
pub fn histogram(registry: &Registry, name: &str, help: &str) -> Histogram {
    let opts = HistogramOpts::new(name, help).buckets(BUCKETS.to_vec());
    register(registry, Histogram::with_opts(opts).unwrap_or_else(|e| panic!("metric {name}: {e}")))
}

/// A counter per value of `label`, each shown from the start (at 0).
fn labelled(registry: &Registry, name: &str, help: &str, label: &str, values: &[&str]) -> IntCounterVec {
    let vec = IntCounterVec::new(Opts::new(name, help), &[label]).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    for v in values {
        vec.with_label_values(&[*v]);
    }
    register(registry, vec)
}

/// Moves a counter up to `total`, a count kept elsewhere (the engine's).
pub fn set_total(counter: &IntCounter, total: u64) {
    counter.inc_by(total.saturating_sub(counter.get()));
}

/// A metric not shown (a hub has no uplink).
fn unregistered<M>(metric: prometheus::Result<M>) -> M {
    metric.unwrap_or_else(|e| panic!("metric: {e}"))
}

impl NodeMetrics {
    pub fn new(role: Role) -> Self {
        let registry =
            Registry::new_custom(Some(role.prefix().into()), None).unwrap_or_else(|e| panic!("metrics registry: {e}"));
        let r = &registry;
        let process = Registry::new();
        #[cfg(target_os = "linux")]
        if let Err(error) = process.register(Box::new(prometheus::process_collector::ProcessCollector::for_self())) {
            tracing::warn!(%error, "the process metrics are not shown");
        }
        let build = IntGaugeVec::new(Opts::new("build_info", "1, labelled with the build's version."), &["version"])
            .unwrap_or_else(|e| panic!("metric build_info: {e}"));
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        register(r, build);
        let edge = role == Role::Edge;
        // The uplink's metrics exist on an edge only; a hub's are kept unshown.
        let uplink_counter = |name: &str, help: &str| {
            if edge { counter(r, name, help) } else { unregistered(IntCounter::new(name, help)) }
        };
        let kinds: Vec<&str> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        let reasons: Vec<&str> = TokenError::ALL.iter().map(|r| r.as_str()).collect();
        let refusals: Vec<&str> = Refusal::ALL.iter().map(|r| r.as_str()).collect();
        let uplink_hub_in_use =
            IntGaugeVec::new(Opts::new("uplink_hub_in_use", "1 for the hub the uplink is connected to."), &["hub"])
                .unwrap_or_else(|e| panic!("metric uplink_hub_in_use: {e}"));
        Self {
            connections: gauge(r, "connections", "Open connections (WebSocket and QUIC)."),
            connections_total: counter(r, "connections_total", "Connections accepted."),
            documents_loaded: gauge(r, "documents_loaded", "Documents in memory."),
            messages_in: labelled(r, "messages_in_total", "Messages received by type.", "type", &TYPES),
            messages_out: labelled(r, "messages_out_total", "Messages sent by type.", "type", &TYPES),
            bytes_in: counter(r, "bytes_in_total", "Payload bytes received."),
            bytes_out: counter(r, "bytes_out_total", "Payload bytes sent."),
            errors: labelled(r, "errors_total", "Connections closed for bad input.", "kind", &kinds),
            auth_refusals: labelled(
                r,
                "auth_refused_total",
                "Connections refused for their token, by reason.",
                "reason",
                &reasons,
            ),
            access_refusals: labelled(
                r,
                "access_refused_total",
                "Requests refused by a connection's grants, by kind.",
                "refusal",
                &refusals,
            ),
            auth_open: gauge(r, "auth_open", "1 when the node runs in open dev mode (no token needed; loopback only)."),
            limits_hit: labelled(r, "limits_hit_total", "Requests refused by a limit, by limit.", "limit", &LIMITS),
            storage_batches: counter(r, "storage_batches_total", "Storage transactions committed."),
            storage_tasks: counter(r, "storage_tasks_total", "Storage tasks executed."),
            storage_failures: counter(r, "storage_failures_total", "Storage tasks that failed."),
            chunks_quarantined: counter(
                r,
                "chunks_quarantined_total",
                "Stored chunks that failed their check (on load or by the scrub), moved to the quarantine table.",
            ),
            scrub_chunks: counter(r, "scrub_chunks_total", "Stored chunks the background scrub checked."),
            scrub_bytes: counter(r, "scrub_bytes_total", "Bytes of stored chunks the background scrub checked."),
            scrub_passes: counter(r, "scrub_passes_total", "Passes of the background scrub over the whole store."),
            divergent_documents: gauge(
                r,
                "divergent_documents",
                "Documents with a replica that stays apart from this node.",
            ),
            divergent_replicas: gauge(
                r,
                "divergent_replicas",
                "Replicas (peers' copies) that stay apart from this node.",
            ),
            divergence_detected: counter(r, "divergence_detected_total", "Replicas found divergent."),
            divergence_repairs: counter(r, "divergence_repairs_total", "Forced resyncs of divergent replicas."),
            divergence_healed: counter(r, "divergence_healed_total", "Divergent replicas that met this node again."),
            divergence_refetches: counter(
                r,
                "divergence_refetches_total",
                "Copies still divergent from the upstream after the resyncs, quarantined and replaced by the upstream's.",
            ),
            unapplicable: counter(
                r,
                "unapplicable_total",
                "Sync messages from other nodes whose changes this copy refuses (the link stays open).",
            ),
            divergence_recovery_seconds: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "divergence_recovery_seconds",
                        "From a replica apart from this node to it meeting again, for replicas that were divergent.",
                    )
                    .buckets(vec![1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0]),
                )
                .unwrap_or_else(|e| panic!("metric divergence_recovery_seconds: {e}")),
            ),
            storage_batch_seconds: histogram(r, "storage_batch_seconds", "Time to run one storage batch."),
            evictions: counter(r, "evictions_total", "Documents evicted from memory."),
            uplink_connected: if edge {
                gauge(r, "uplink_connected", "1 while the uplink to the hub is up.")
            } else {
                unregistered(IntGauge::new("uplink_connected", "-"))
            },
            uplink_connects_total: uplink_counter("uplink_connects_total", "Uplink connections established."),
            uplink_refusals_total: uplink_counter(
                "uplink_refusals_total",
                "Times the hub refused this edge's credential.",
            ),
            uplink_failovers_total: uplink_counter(
                "uplink_failovers_total",
                "Uplink sessions established with another hub than the previous one.",
            ),
            uplink_hub_in_use: if edge { register(r, uplink_hub_in_use) } else { uplink_hub_in_use },
            uplink_rtt_seconds: if edge {
                float_gauge(r, "uplink_rtt_seconds", "QUIC round-trip time to the hub.")
            } else {
                unregistered(Gauge::new("uplink_rtt_seconds", "-"))
            },
            client_rtt_micros: AtomicU64::default(),
            client_rtt_seconds: float_gauge(
                r,
                "client_rtt_seconds",
                "WebSocket ping-pong round trip to clients (moving average).",
            ),
            uplink_hubs: std::sync::OnceLock::new(),
            uplink_hub: std::sync::Mutex::new(UplinkHub::default()),
            docs_pending_upstream: gauge(
                r,
                "docs_pending_upstream",
                "Loaded documents with changes the hub has not acknowledged.",
            ),
            docs_synced_upstream: gauge(
                r,
                "docs_synced_upstream",
                "Loaded documents whose heads the hub has acknowledged.",
            ),
            backfill_queued: gauge(r, "backfill_queued", "Stored documents still to be synced with the hub."),
            applied_off_loop: counter(
                r,
                "applied_off_loop_total",
                "Drains of a large document's messages applied on a thread of their own.",
            ),
            offloaded: counter(r, "offloaded_total", "Documents whose local copy was dropped for the hub's."),
            cold_opens: counter(
                r,
                "cold_opens_total",
                "Documents opened that were not stored here (fetched from the hub or their home).",
            ),
            sync_generated: counter(r, "sync_generated_total", "Sync messages automerge generated for peers."),
            sync_shared: counter(
                r,
                "sync_shared_total",
                "Sync messages sent as a copy of one generated for a peer in the same sync state.",
            ),
            sync_merged: counter(
                r,
                "sync_merged_total",
                "Peers' sync messages applied in one batch with the same peer's previous one.",
            ),
            snapshot_answers: counter(
                r,
                "snapshot_answers_total",
                "Peers with nothing sent a document's stored snapshot before it was loaded.",
            ),
            store_bytes: gauge(r, "store_bytes", "Bytes of document data in the store."),
            home_lag_seconds: histogram(
                r,
                "home_lag_seconds",
                "From a change durable here to the document's home confirming it.",
            ),
            replica_lag_seconds: histogram(
                r,
                "replica_lag_seconds",
                "From a change durable here to each replica syncing the document confirming it (one hop).",
            ),
            registry,
            process,
        }
    }

    /// The registry of the node's metrics (its names get the node's
    /// prefix): the hub adds its own here.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The hubs the uplink may use, in order of preference.
    pub fn set_uplink_hubs(&self, hubs: Vec<String>) {
        for hub in &hubs {
            self.uplink_hub_in_use.with_label_values(&[hub.as_str()]).set(0);
        }
        let _ = self.uplink_hubs.set(hubs);
    }

    /// The hub the uplink is connected to (its index among the hubs and the
    /// id it gave), or `None` while it is down. A session with another hub
    /// than the previous one counts as a fail-over.
    pub fn set_uplink_in_use(&self, hub: Option<(usize, String)>) {
        let mut state = self.uplink_hub.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((index, _)) = &hub {
            if state.last.is_some_and(|l| l != *index) {
                self.uplink_failovers_total.inc();
            }
            state.last = Some(*index);
        }
        for (i, addr) in self.uplink_hubs().iter().enumerate() {
            let on = hub.as_ref().is_some_and(|(index, _)| *index == i);
            self.uplink_hub_in_use.with_label_values(&[addr.as_str()]).set(i64::from(on));
        }
        state.in_use = hub;
    }

    /// The hubs the uplink may use (empty without an uplink).
    pub fn uplink_hubs(&self) -> &[String] {
        self.uplink_hubs.get().map_or(&[], Vec::as_slice)
    }

    /// The address and id of the hub in use, if connected.
    pub fn uplink_in_use(&self) -> Option<(String, String)> {
        let state = self.uplink_hub.lock().unwrap_or_else(|e| e.into_inner());
        let (index, id) = state.in_use.as_ref()?;
        Some((self.uplink_hubs().get(*index)?.clone(), id.clone()))
    }

    /// Folds one client round trip into the moving average (weight 1/8;
    /// concurrent updates may lose a sample, which an average can afford).
    pub fn observe_client_rtt(&self, rtt: std::time::Duration) {
        let x = (rtt.as_micros() as u64).max(1);
        let old = self.client_rtt_micros.load(Relaxed);
        let new = if old == 0 { x } else { old - old / 8 + x / 8 };
        self.client_rtt_micros.store(new, Relaxed);
        self.client_rtt_seconds.set(new as f64 / 1e6);
    }

    /// The typical client round trip, once one was measured.
    pub fn client_rtt(&self) -> Option<std::time::Duration> {
        let us = self.client_rtt_micros.load(Relaxed);
        (us > 0).then(|| std::time::Duration::from_micros(us))
    }

    pub fn message_in(&self, message_type: &str, bytes: usize) {
        self.messages_in.with_label_values(&[type_label(message_type)]).inc();
        self.bytes_in.inc_by(bytes as u64);
    }

    pub fn message_out(&self, message_type: &str, bytes: usize) {
        self.messages_out.with_label_values(&[type_label(message_type)]).inc();
        self.bytes_out.inc_by(bytes as u64);
    }

    /// Messages of one wire type received so far.
    pub fn messages_in_of(&self, message_type: &str) -> u64 {
        self.messages_in.with_label_values(&[type_label(message_type)]).get()
    }

    pub fn error(&self, kind: ErrorKind) {
        self.errors.with_label_values(&[kind.as_str()]).inc();
    }

    pub fn errors_of(&self, kind: ErrorKind) -> u64 {
        self.errors.with_label_values(&[kind.as_str()]).get()
    }

    pub fn auth_refused(&self, reason: TokenError) {
        self.auth_refusals.with_label_values(&[reason.as_str()]).inc();
    }

    pub fn auth_refused_of(&self, reason: TokenError) -> u64 {
        self.auth_refusals.with_label_values(&[reason.as_str()]).get()
    }

    /// A request was refused by the limit named `limit` (one of [`LIMITS`]).
    pub fn limit_hit(&self, limit: &str) {
        self.limits_hit.with_label_values(&[limit_label(limit)]).inc();
    }

    pub fn limit_hits_of(&self, limit: &str) -> u64 {
        self.limits_hit.with_label_values(&[limit_label(limit)]).get()
    }

    pub fn access_refused(&self, refusal: Refusal) {
        self.access_refusals.with_label_values(&[refusal.as_str()]).inc();
    }

    pub fn access_refused_of(&self, refusal: Refusal) -> u64 {
        self.access_refusals.with_label_values(&[refusal.as_str()]).get()
    }

    /// Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut families = self.registry.gather();
        families.extend(self.process.gather());
        let mut out = Vec::with_capacity(8192);
        if let Err(error) = prometheus::TextEncoder::new().encode(&families, &mut out) {
            tracing::warn!(%error, "rendering the metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// A message type's label: one of [`TYPES`], else `other` (a peer's
/// message type never becomes a label of its own).
fn type_label(t: &str) -> &'static str {
    TYPES.iter().find(|x| **x == t).copied().unwrap_or("other")
}

/// A limit's label: one of [`LIMITS`] (the callers name them).
fn limit_label(limit: &str) -> &'static str {
    LIMITS.iter().find(|x| **x == limit).copied().unwrap_or(LIMITS[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_kept_and_the_text_is_prometheus() {
        let m = NodeMetrics::new(Role::Edge);
        m.message_in("sync", 10);
        m.message_in("made-up", 3);
        m.set_uplink_hubs(vec!["127.0.0.1:7400".into(), "127.0.0.1:7410".into()]);
        m.set_uplink_in_use(Some((1, "h2".into())));
        m.storage_batch_seconds.observe(0.002);
        set_total(&m.offloaded, 4);
        set_total(&m.offloaded, 3);
        let text = m.render();
        for line in [
            "meridian_edge_messages_in_total{type=\"sync\"} 1\n",
            "meridian_edge_messages_in_total{type=\"other\"} 1\n",
            "meridian_edge_bytes_in_total 13\n",
            "meridian_edge_errors_total{kind=\"decode\"} 0\n",
            "meridian_edge_uplink_hub_in_use{hub=\"127.0.0.1:7400\"} 0\n",
            "meridian_edge_uplink_hub_in_use{hub=\"127.0.0.1:7410\"} 1\n",
            "meridian_edge_storage_batch_seconds_bucket{le=\"0.0025\"} 1\n",
            "meridian_edge_storage_batch_seconds_count 1\n",
            "meridian_edge_offloaded_total 4\n",
            "# TYPE meridian_edge_connections_total counter\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
        assert!(text.contains(&format!("meridian_edge_build_info{{version=\"{}\"}} 1\n", env!("CARGO_PKG_VERSION"))));
        #[cfg(target_os = "linux")]
        assert!(text.contains("\nprocess_resident_memory_bytes "), "{text}");
        #[cfg(target_os = "linux")]
        assert!(text.contains("\nprocess_open_fds "), "{text}");
    }

    #[test]
    fn a_hub_shows_no_uplink() {
        let m = NodeMetrics::new(Role::Hub);
        m.uplink_connects_total.inc();
        let text = m.render();
        assert!(text.contains("meridian_hub_connections_total 0\n"), "{text}");
        assert!(!text.contains("uplink"), "{text}");
    }
}
