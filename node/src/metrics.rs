//! Typed metrics of a node (edge or hub), rendered as Prometheus text at
//! `/metrics`. Names start with `meridian_edge_` on an edge and
//! `meridian_hub_` on the hub.
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
//! | `meridian_edge_access_refused_total{refusal}` | counter | requests refused by a connection's grants, by kind (`not_granted`, `read_only`, `create`, `ephemeral_limit`) |
//! | `meridian_edge_limits_hit_total{limit}` | counter | requests refused by a limit (`connections`, `connections_per_address`: open WebSockets and QUIC devices; `http_connections`: connections still speaking HTTP; `header_timeout`: request headers or a TLS handshake not read in time; at the hub `edge_auth_failures`: an address past its refused `hello`s, `handshake_timeout`: an edge that opened no stream or sent no `hello` in time; `send_queue`: a peer dropped for not reading, its queue past 8192 messages or 64 MiB; `message_rate`: a client's reads paused at its rate of messages or bytes) |
//! | `meridian_edge_auth_open` | gauge | 1 when the node runs in open dev mode (no token needed; loopback only) |
//! | `meridian_edge_storage_batches_total` | counter | SQLite transactions committed |
//! | `meridian_edge_storage_tasks_total` | counter | storage tasks executed |
//! | `meridian_edge_storage_failures_total` | counter | storage tasks that failed |
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
//! | `meridian_edge_store_bytes` | gauge | bytes of document data in the store (measured with a disk budget) |
//! | `meridian_edge_home_lag_seconds` | histogram | from a change being durable here to the document's home confirming it (home edge over its link, else the hub; not for documents homed here, nor changes the home already had) |

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use meridian_protocol::engine::{ErrorKind, Refusal};

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

const BUCKETS: [f64; 10] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5];

#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; 10],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, seconds: f64) {
        for (i, b) in BUCKETS.iter().enumerate() {
            if seconds <= *b {
                self.buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros.fetch_add((seconds * 1e6) as u64, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {}", self.buckets[i].load(Relaxed));
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_micros.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// All metrics of one node (edge or hub); shared between the node loop and
/// HTTP handlers.
#[derive(Debug)]
pub struct NodeMetrics {
    prefix: &'static str,
    pub connections: AtomicU64,
    pub connections_total: AtomicU64,
    pub documents_loaded: AtomicU64,
    messages_in: [AtomicU64; 10],
    messages_out: [AtomicU64; 10],
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    errors: [AtomicU64; ErrorKind::ALL.len()],
    auth_refusals: [AtomicU64; TokenError::ALL.len()],
    access_refusals: [AtomicU64; Refusal::ALL.len()],
    /// 1 in open dev mode (no token needed).
    pub auth_open: AtomicU64,
    limits_hit: [AtomicU64; LIMITS.len()],
    pub storage_batches: AtomicU64,
    pub storage_tasks: AtomicU64,
    pub storage_failures: AtomicU64,
    pub storage_batch_seconds: Histogram,
    pub home_lag_seconds: Histogram,
    pub evictions: AtomicU64,
    pub uplink_connected: AtomicU64,
    pub uplink_rtt_micros: AtomicU64,
    /// Moving average of client WebSocket round trips (0: none measured).
    client_rtt_micros: AtomicU64,
    pub uplink_connects_total: AtomicU64,
    pub uplink_refusals_total: AtomicU64,
    /// The hubs the uplink may use, in order (set once by the uplink).
    uplink_hubs: std::sync::OnceLock<Vec<String>>,
    /// The hub in use (its index in `uplink_hubs` and the id it gave), and
    /// the last one connected to, kept across losses to count fail-overs.
    uplink_hub: std::sync::Mutex<UplinkHub>,
    pub uplink_failovers_total: AtomicU64,
    pub docs_pending_upstream: AtomicU64,
    pub docs_synced_upstream: AtomicU64,
    pub backfill_queued: AtomicU64,
    pub offloaded: AtomicU64,
    pub applied_off_loop: AtomicU64,
    pub cold_opens: AtomicU64,
    pub sync_generated: AtomicU64,
    pub sync_shared: AtomicU64,
    pub sync_merged: AtomicU64,
    pub snapshot_answers: AtomicU64,
    pub store_bytes: AtomicU64,
}

/// Which of the uplink's hubs is in use (see [`NodeMetrics::set_uplink_in_use`]).
#[derive(Debug, Default)]
struct UplinkHub {
    in_use: Option<(usize, String)>,
    last: Option<usize>,
}

fn type_index(t: &str) -> usize {
    TYPES.iter().position(|x| *x == t).unwrap_or(TYPES.len() - 1)
}

impl NodeMetrics {
    pub fn new(prefix: &'static str) -> Self {
        Self {
            prefix,
            connections: AtomicU64::default(),
            connections_total: AtomicU64::default(),
            documents_loaded: AtomicU64::default(),
            messages_in: Default::default(),
            messages_out: Default::default(),
            bytes_in: AtomicU64::default(),
            bytes_out: AtomicU64::default(),
            errors: Default::default(),
            auth_refusals: Default::default(),
            access_refusals: Default::default(),
            auth_open: AtomicU64::default(),
            limits_hit: Default::default(),
            storage_batches: AtomicU64::default(),
            storage_tasks: AtomicU64::default(),
            storage_failures: AtomicU64::default(),
            storage_batch_seconds: Histogram::default(),
            home_lag_seconds: Histogram::default(),
            evictions: AtomicU64::default(),
            uplink_connected: AtomicU64::default(),
            uplink_rtt_micros: AtomicU64::default(),
            client_rtt_micros: AtomicU64::default(),
            uplink_connects_total: AtomicU64::default(),
            uplink_refusals_total: AtomicU64::default(),
            uplink_hubs: std::sync::OnceLock::new(),
            uplink_hub: std::sync::Mutex::new(UplinkHub::default()),
            uplink_failovers_total: AtomicU64::default(),
            docs_pending_upstream: AtomicU64::default(),
            docs_synced_upstream: AtomicU64::default(),
            backfill_queued: AtomicU64::default(),
            offloaded: AtomicU64::default(),
            applied_off_loop: AtomicU64::default(),
            cold_opens: AtomicU64::default(),
            sync_generated: AtomicU64::default(),
            sync_shared: AtomicU64::default(),
            sync_merged: AtomicU64::default(),
            snapshot_answers: AtomicU64::default(),
            store_bytes: AtomicU64::default(),
        }
    }

    /// The hubs the uplink may use, in order of preference.
    pub fn set_uplink_hubs(&self, hubs: Vec<String>) {
        let _ = self.uplink_hubs.set(hubs);
    }

    /// The hub the uplink is connected to (its index among the hubs and the
    /// id it gave), or `None` while it is down. A session with another hub
    /// than the previous one counts as a fail-over.
    pub fn set_uplink_in_use(&self, hub: Option<(usize, String)>) {
        let mut state = self.uplink_hub.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((index, _)) = &hub {
            if state.last.is_some_and(|l| l != *index) {
                self.uplink_failovers_total.fetch_add(1, Relaxed);
            }
            state.last = Some(*index);
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
    }

    /// The typical client round trip, once one was measured.
    pub fn client_rtt(&self) -> Option<std::time::Duration> {
        let us = self.client_rtt_micros.load(Relaxed);
        (us > 0).then(|| std::time::Duration::from_micros(us))
    }

    pub fn message_in(&self, message_type: &str, bytes: usize) {
        self.messages_in[type_index(message_type)].fetch_add(1, Relaxed);
        self.bytes_in.fetch_add(bytes as u64, Relaxed);
    }

    pub fn message_out(&self, message_type: &str, bytes: usize) {
        self.messages_out[type_index(message_type)].fetch_add(1, Relaxed);
        self.bytes_out.fetch_add(bytes as u64, Relaxed);
    }

    /// Messages of one wire type received so far.
    pub fn messages_in_of(&self, message_type: &str) -> u64 {
        self.messages_in[type_index(message_type)].load(Relaxed)
    }

    pub fn error(&self, kind: ErrorKind) {
        slot(&ErrorKind::ALL, &self.errors, &kind).fetch_add(1, Relaxed);
    }

    pub fn errors_of(&self, kind: ErrorKind) -> u64 {
        slot(&ErrorKind::ALL, &self.errors, &kind).load(Relaxed)
    }

    pub fn auth_refused(&self, reason: TokenError) {
        slot(&TokenError::ALL, &self.auth_refusals, &reason).fetch_add(1, Relaxed);
    }

    pub fn auth_refused_of(&self, reason: TokenError) -> u64 {
        slot(&TokenError::ALL, &self.auth_refusals, &reason).load(Relaxed)
    }

    /// A request was refused by the limit named `limit` (one of [`LIMITS`]).
    pub fn limit_hit(&self, limit: &str) {
        slot(&LIMITS, &self.limits_hit, &limit).fetch_add(1, Relaxed);
    }

    pub fn limit_hits_of(&self, limit: &str) -> u64 {
        slot(&LIMITS, &self.limits_hit, &limit).load(Relaxed)
    }

    pub fn access_refused(&self, refusal: Refusal) {
        slot(&Refusal::ALL, &self.access_refusals, &refusal).fetch_add(1, Relaxed);
    }

    pub fn access_refused_of(&self, refusal: Refusal) -> u64 {
        slot(&Refusal::ALL, &self.access_refusals, &refusal).load(Relaxed)
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        gauge(&mut out, &self.name("connections"), "Open connections (WebSocket and QUIC).", &self.connections);
        counter(&mut out, &self.name("connections_total"), "Connections accepted.", &self.connections_total);
        gauge(&mut out, &self.name("documents_loaded"), "Documents in memory.", &self.documents_loaded);
        labelled(
            &mut out,
            &self.name("messages_in_total"),
            "Messages received by type.",
            "type",
            &TYPES,
            &self.messages_in,
        );
        labelled(
            &mut out,
            &self.name("messages_out_total"),
            "Messages sent by type.",
            "type",
            &TYPES,
            &self.messages_out,
        );
        counter(&mut out, &self.name("bytes_in_total"), "Payload bytes received.", &self.bytes_in);
        counter(&mut out, &self.name("bytes_out_total"), "Payload bytes sent.", &self.bytes_out);
        let kinds: Vec<&str> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        labelled(
            &mut out,
            &self.name("errors_total"),
            "Connections closed for bad input.",
            "kind",
            &kinds,
            &self.errors,
        );
        let reasons: Vec<&str> = TokenError::ALL.iter().map(|r| r.as_str()).collect();
        let help = "Connections refused for their token, by reason.";
        labelled(&mut out, &self.name("auth_refused_total"), help, "reason", &reasons, &self.auth_refusals);
        let refusals: Vec<&str> = Refusal::ALL.iter().map(|r| r.as_str()).collect();
        let help = "Requests refused by a connection's grants, by kind.";
        labelled(&mut out, &self.name("access_refused_total"), help, "refusal", &refusals, &self.access_refusals);
        let help = "Requests refused by a limit, by limit.";
        labelled(&mut out, &self.name("limits_hit_total"), help, "limit", &LIMITS, &self.limits_hit);
        let help = "1 when the node runs in open dev mode (no token needed; loopback only).";
        gauge(&mut out, &self.name("auth_open"), help, &self.auth_open);
        counter(
            &mut out,
            &self.name("storage_batches_total"),
            "Storage transactions committed.",
            &self.storage_batches,
        );
        counter(&mut out, &self.name("storage_tasks_total"), "Storage tasks executed.", &self.storage_tasks);
        counter(&mut out, &self.name("storage_failures_total"), "Storage tasks that failed.", &self.storage_failures);
        self.storage_batch_seconds.render(
            &mut out,
            &self.name("storage_batch_seconds"),
            "Time to run one storage batch.",
        );
        counter(&mut out, &self.name("evictions_total"), "Documents evicted from memory.", &self.evictions);
        gauge(&mut out, &self.name("uplink_connected"), "1 while the uplink to the hub is up.", &self.uplink_connected);
        counter(
            &mut out,
            &self.name("uplink_connects_total"),
            "Uplink connections established.",
            &self.uplink_connects_total,
        );
        counter(
            &mut out,
            &self.name("uplink_refusals_total"),
            "Times the hub refused this edge's credential.",
            &self.uplink_refusals_total,
        );
        counter(
            &mut out,
            &self.name("uplink_failovers_total"),
            "Uplink sessions established with another hub than the previous one.",
            &self.uplink_failovers_total,
        );
        if !self.uplink_hubs().is_empty() {
            let name = self.name("uplink_hub_in_use");
            let in_use = self.uplink_in_use().map(|(addr, _)| addr);
            let _ = writeln!(out, "# HELP {name} 1 for the hub the uplink is connected to.\n# TYPE {name} gauge");
            for hub in self.uplink_hubs() {
                let _ = writeln!(out, "{name}{{hub=\"{hub}\"}} {}", u8::from(in_use.as_deref() == Some(hub)));
            }
        }
        let rtt = self.uplink_rtt_micros.load(Relaxed) as f64 / 1e6;
        let name = self.name("uplink_rtt_seconds");
        let _ = writeln!(out, "# HELP {name} QUIC round-trip time to the hub.\n# TYPE {name} gauge\n{name} {rtt}");
        let rtt = self.client_rtt_micros.load(Relaxed) as f64 / 1e6;
        let name = self.name("client_rtt_seconds");
        let help = "WebSocket ping-pong round trip to clients (moving average).";
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {rtt}");
        gauge(
            &mut out,
            &self.name("docs_pending_upstream"),
            "Loaded documents with changes the hub has not acknowledged.",
            &self.docs_pending_upstream,
        );
        gauge(
            &mut out,
            &self.name("docs_synced_upstream"),
            "Loaded documents whose heads the hub has acknowledged.",
            &self.docs_synced_upstream,
        );
        gauge(
            &mut out,
            &self.name("backfill_queued"),
            "Stored documents still to be synced with the hub.",
            &self.backfill_queued,
        );
        let help = "Drains of a large document's messages applied on a thread of their own.";
        counter(&mut out, &self.name("applied_off_loop_total"), help, &self.applied_off_loop);
        let help = "Documents whose local copy was dropped for the hub's.";
        counter(&mut out, &self.name("offloaded_total"), help, &self.offloaded);
        let help = "Documents opened that were not stored here (fetched from the hub or their home).";
        counter(&mut out, &self.name("cold_opens_total"), help, &self.cold_opens);
        let help = "Sync messages automerge generated for peers.";
        counter(&mut out, &self.name("sync_generated_total"), help, &self.sync_generated);
        let help = "Sync messages sent as a copy of one generated for a peer in the same sync state.";
        counter(&mut out, &self.name("sync_shared_total"), help, &self.sync_shared);
        let help = "Peers' sync messages applied in one batch with the same peer's previous one.";
        counter(&mut out, &self.name("sync_merged_total"), help, &self.sync_merged);
        let help = "Peers with nothing sent a document's stored snapshot before it was loaded.";
        counter(&mut out, &self.name("snapshot_answers_total"), help, &self.snapshot_answers);
        gauge(&mut out, &self.name("store_bytes"), "Bytes of document data in the store.", &self.store_bytes);
        let help = "From a change durable here to the document's home confirming it.";
        self.home_lag_seconds.render(&mut out, &self.name("home_lag_seconds"), help);
        out
    }

    fn name(&self, suffix: &str) -> String {
        format!("{}_{suffix}", self.prefix)
    }
}

/// The counter of `value` among `all` (the first one if it is not there:
/// the label sets are closed enums, so that cannot happen).
fn slot<'a, T: PartialEq>(all: &[T], counters: &'a [AtomicU64], value: &T) -> &'a AtomicU64 {
    &counters[all.iter().position(|x| x == value).unwrap_or(0)]
}

fn gauge(out: &mut String, name: &str, help: &str, v: &AtomicU64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}", v.load(Relaxed));
}

fn counter(out: &mut String, name: &str, help: &str, v: &AtomicU64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", v.load(Relaxed));
}

fn labelled(out: &mut String, name: &str, help: &str, label: &str, values: &[&str], counts: &[AtomicU64]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (v, c) in values.iter().zip(counts) {
        let _ = writeln!(out, "{name}{{{label}=\"{v}\"}} {}", c.load(Relaxed));
    }
}
