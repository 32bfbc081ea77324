//! The hub's placement task: one actor that collects what edges report
//! (the topology), runs the [`PlacementEngine`] every placement interval,
//! and answers the admin API (`GET /placement`, `GET /topology`).
//!
//! Edge connection tasks feed it [`PlacerEvent`]s; it owns all the state, so
//! nothing is shared but the metrics. Demand from an edge whose last report
//! is older than [`STALE_REPORTS`] report intervals is ignored (the edge is
//! alive but silent); a disconnected edge leaves the latency matrix, so a
//! home on it is left at the next tick.
//!
//! **One placer at a time.** Hubs sharing a store (PostgreSQL) each run this
//! task, but only the holder of the `placer` lease in the store
//! ([`ControlStore::take_lease`], renewed every third of
//! [`PLACER_LEASE`]) decides and hands off; when its hub dies another
//! takes the lease over once it expires and continues from what the store
//! keeps: the announced homes, the operators' pins, and every edge's latest
//! report (each hub records its own edges' reports at every placement
//! tick, so the placer sees edges connected to any hub). The other hubs
//! follow the announced homes in the store and tell their edges. A hand-off
//! needs the new home connected to the placer's hub (it asks that hub's
//! node runtime how far the edge has caught up); a home decided on an edge
//! of another hub waits, shown as such at `GET /placement`.
//!
//! Decisions are **advisory** unless moves are enabled (`--placement-moves`).
//! With moves, a decided home is only *announced* (a `home` control message
//! to every edge) after a hand-off ([`Placer::advance_handoffs`]): the new
//! home edge has confirmed heads covering the hub's durable heads of the
//! document, and the hub holds everything the old home edge advertised.
//! Until then edges keep the old home. Nothing is ever deleted by a move:
//! every edge keeps syncing every document with the hub, so a hand-off that
//! never completes costs latency, never data.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use std::time::Duration;

use meridian_node::metrics::{Histogram, IntCounter, IntGauge, Registry, counter, gauge, histogram, set_total};
use meridian_node::runtime::{NodeEvent, NodeEvents};
use meridian_node::store::StoredPin;
use meridian_protocol::codec::federation::{self, Control, HomeNotice, Report};
use meridian_protocol::engine::{HandoffTargets, Millis};
use meridian_protocol::ids::{ConnId, DocumentId};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::control::{ControlState, unix_ms};
use crate::placement::{DemandMap, EdgeDemand, EdgeId, Home, Latencies, PlacementConfig, PlacementEngine};

/// How long the placer's lease lasts without renewal (the default of
/// `HubConfig::placer_lease`); it is renewed every third of it.
pub const PLACER_LEASE: Duration = Duration::from_secs(3);
/// The lease's name in the store.
const LEASE_NAME: &str = "placer";
/// About how long the edges of a hub that died take to reach another (the
/// uplink's idle timeout, then a connect). A placer that took over with
/// homes on edges decides nothing for this plus [`STALE_REPORTS`] report
/// intervals, so homes on edges that are failing over are not left.
pub const EDGE_FAILOVER: Duration = Duration::from_secs(5);

/// Reports older than this many intervals no longer count as demand.
pub const STALE_REPORTS: u32 = 3;
/// How long a hand-off waits for a connected old home to tell the hub its
/// heads before it goes ahead without (nothing is lost either way: the old
/// home keeps syncing with the hub).
pub const OLD_HOME_PATIENCE: Duration = Duration::from_secs(10);
/// Completed hand-offs kept for `GET /placement`.
const HANDOFF_HISTORY: usize = 256;

mod handoff;
mod tier;
mod views;

/// What the placement task reacts to.
#[derive(Debug)]
pub enum PlacerEvent {
    /// An edge passed the handshake; `conn` tells its connections apart.
    EdgeUp {
        edge: EdgeId,
        conn: u64,
        remote: SocketAddr,
        hub_rtt: Duration,
        /// Its connection in the hub's node runtime.
        node_conn: Option<ConnId>,
        /// Where it accepts other edges, and its certificate fingerprint.
        peer_addr: Option<String>,
        peer_fingerprint: Option<String>,
    },
    /// A report arrived; `hub_rtt` is the hub's own RTT estimate for the link.
    Report {
        edge: EdgeId,
        conn: u64,
        report: Report,
        hub_rtt: Duration,
    },
    EdgeDown {
        edge: EdgeId,
        conn: u64,
    },
    /// Renders `GET /placement` or `GET /topology`.
    Query {
        view: View,
        reply: oneshot::Sender<Value>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    Placement,
    Topology,
}

/// Placement metrics, in the hub's registry beside the node metrics at `/metrics`.
///
/// | name | type | meaning |
/// |---|---|---|
/// | `meridian_hub_placement_decisions_total` | counter | per-document decisions taken (one per tracked document per tick) |
/// | `meridian_hub_placement_moves_total` | counter | home changes decided (advisory) |
/// | `meridian_hub_placement_docs_tracked` | gauge | documents the placement engine tracks |
/// | `meridian_hub_placement_reports_total` | counter | demand reports received from edges |
/// | `meridian_hub_placement_edges_reporting` | gauge | connected edges whose last report is fresh |
/// | `meridian_hub_placement_handoffs_total` | counter | hand-offs completed: a new home caught up and was announced to edges |
/// | `meridian_hub_placement_handoffs_pending` | gauge | decided homes not yet announced (the new home is catching up) |
/// | `meridian_hub_placement_docs_homed_on_edges` | gauge | documents whose announced home is an edge |
/// | `meridian_hub_placement_is_placer` | gauge | 1 while this hub holds the placer's lease |
/// | `meridian_hub_placement_takeovers_total` | counter | times this hub became the placer |
/// | `meridian_hub_placement_handoff_seconds` | histogram | from a home decided to the new home announced (it caught up) |
#[derive(Debug)]
pub struct PlacementMetrics {
    pub decisions_total: IntCounter,
    pub moves_total: IntCounter,
    pub docs_tracked: IntGauge,
    pub reports_total: IntCounter,
    pub edges_reporting: IntGauge,
    pub handoffs_total: IntCounter,
    pub handoffs_pending: IntGauge,
    pub docs_homed_on_edges: IntGauge,
    pub is_placer: IntGauge,
    pub takeovers_total: IntCounter,
    pub handoff_seconds: Histogram,
}

impl PlacementMetrics {
    /// The placement metrics, in the hub's registry (`meridian_hub_` prefix).
    pub fn new(r: &Registry) -> Self {
        Self {
            decisions_total: counter(r, "placement_decisions_total", "Per-document placement decisions taken."),
            moves_total: counter(r, "placement_moves_total", "Home changes decided (advisory)."),
            docs_tracked: gauge(r, "placement_docs_tracked", "Documents the placement engine tracks."),
            reports_total: counter(r, "placement_reports_total", "Demand reports received from edges."),
            edges_reporting: gauge(r, "placement_edges_reporting", "Connected edges with a fresh report."),
            handoffs_total: counter(
                r,
                "placement_handoffs_total",
                "Hand-offs completed (new home caught up, announced).",
            ),
            handoffs_pending: gauge(r, "placement_handoffs_pending", "Decided homes not announced yet."),
            docs_homed_on_edges: gauge(
                r,
                "placement_docs_homed_on_edges",
                "Documents whose announced home is an edge.",
            ),
            is_placer: gauge(r, "placement_is_placer", "1 while this hub holds the placer's lease."),
            takeovers_total: counter(r, "placement_takeovers_total", "Times this hub became the placer."),
            handoff_seconds: histogram(
                r,
                "placement_handoff_seconds",
                "From a home decided to the new home announced (caught up).",
            ),
        }
    }
}

impl Default for PlacementMetrics {
    /// Metrics in a registry of their own (not shown at `/metrics`).
    fn default() -> Self {
        Self::new(&Registry::new())
    }
}

/// What the hub knows of one connected edge.
#[derive(Debug)]
struct EdgeState {
    conn: u64,
    remote: SocketAddr,
    connected_at: Instant,
    last_report: Option<Instant>,
    reports: u64,
    seq: u64,
    window_ms: u64,
    reported_rtt: Option<Duration>,
    hub_rtt: Option<Duration>,
    client_rtt: Option<Duration>,
    demand: BTreeMap<DocumentId, EdgeDemand>,
    node_conn: Option<ConnId>,
    peer_addr: Option<String>,
    peer_fingerprint: Option<String>,
    /// Measured RTTs of its direct links to other edges.
    peer_rtts: BTreeMap<EdgeId, Duration>,
}

/// What a hub records of each of its edges' reports for the placer
/// (`edge_reports.report`, JSON): enough to place documents on an edge
/// connected to another hub and to tell edges how to reach it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct SharedReport {
    /// Round trip between the edge and its hub, in microseconds.
    rtt_us: Option<u64>,
    client_rtt_us: Option<u64>,
    peer_addr: Option<String>,
    peer_fingerprint: Option<String>,
    /// Per document: open subscriptions and writes per second.
    demand: BTreeMap<String, (u32, f64)>,
    peer_rtts_us: BTreeMap<String, u64>,
}

/// An edge connected to another hub, as its last recorded report says.
#[derive(Clone, Debug)]
struct RemoteEdge {
    hub: String,
    at_ms: u64,
    report: SharedReport,
}

/// One edge as the placement engine sees it, wherever it is connected.
struct EdgeView {
    id: EdgeId,
    rtt: Option<Duration>,
    client_rtt: Option<Duration>,
    /// Empty when its report is stale.
    demand: Vec<(DocumentId, EdgeDemand)>,
    peers: Vec<(EdgeId, Duration)>,
}

/// An announced home on an edge, and where other edges reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct HomeEdge {
    edge: EdgeId,
    addr: Option<String>,
    fingerprint: Option<String>,
}

/// A decided home that is not announced yet.
#[derive(Debug, Clone)]
struct Handoff {
    to: Home,
    started: Instant,
    status: String,
    /// What "caught up" means for this hand-off, fixed by the first check:
    /// the hub's durable heads and the old home's heads at that moment.
    targets: HandoffTargets,
}

/// A completed hand-off, for `GET /placement`.
#[derive(Debug, Clone, serde::Serialize)]
struct Announced {
    at_ms: u64,
    #[serde(serialize_with = "doc_str")]
    doc: DocumentId,
    from: Home,
    to: Home,
    /// From the decision to the announcement.
    took_ms: f64,
}

fn doc_str<S: serde::Serializer>(d: &DocumentId, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(d)
}

/// The placement task's state.
#[derive(Debug)]
pub struct Placer {
    hub_id: String,
    engine: PlacementEngine,
    edges: BTreeMap<EdgeId, EdgeState>,
    started: Instant,
    report_interval: Duration,
    placement_interval: Duration,
    metrics: Arc<PlacementMetrics>,
    /// Act on decisions (hand-offs and `home` notices) or only show them.
    moves: bool,
    /// Announced homes that are edges (absent: the hub).
    announced: BTreeMap<DocumentId, HomeEdge>,
    /// The store of the placer's lease, homes, pins and reports (`None`:
    /// this hub alone, always the placer, nothing persisted; unit tests).
    control: Option<ControlState>,
    /// This process's name as a lease holder (`HUB-ID#RANDOM`).
    holder: String,
    lease_ttl: Duration,
    /// Until when this hub may act as the placer (from its last renewal).
    lease_until: Option<Instant>,
    /// Whether it acts as the placer (taken over, not stepped down).
    leading: bool,
    /// The lease's holder at the last renewal.
    placer: Option<String>,
    /// After a take-over, no decisions before this (see [`EDGE_FAILOVER`]).
    settle_until: Option<Instant>,
    /// Edges connected to other hubs (leader only).
    remote: BTreeMap<EdgeId, RemoteEdge>,
    pins: Vec<StoredPin>,
    handoffs: BTreeMap<DocumentId, Handoff>,
    announced_history: std::collections::VecDeque<Announced>,
    /// Control messages for the node runtime, sent by [`run`].
    outbox: Vec<NodeEvent>,
}

impl Placer {
    pub fn new(
        hub_id: String,
        config: PlacementConfig,
        report_interval: Duration,
        placement_interval: Duration,
        metrics: Arc<PlacementMetrics>,
    ) -> Self {
        Self {
            engine: PlacementEngine::new(config),
            edges: BTreeMap::new(),
            started: Instant::now(),
            report_interval,
            placement_interval,
            metrics,
            moves: false,
            announced: BTreeMap::new(),
            handoffs: BTreeMap::new(),
            announced_history: std::collections::VecDeque::new(),
            outbox: Vec::new(),
            holder: format!("{hub_id}#{:08x}", rand::random::<u32>()),
            hub_id,
            control: None,
            lease_ttl: PLACER_LEASE,
            lease_until: None,
            leading: true,
            placer: None,
            settle_until: None,
            remote: BTreeMap::new(),
            pins: Vec::new(),
        }
    }

    /// Shares the placer's role, homes, pins and reports through `control`
    /// with the other hubs on the store: this hub places only while it
    /// holds the lease (`lease_ttl`).
    pub fn with_control(mut self, control: ControlState, lease_ttl: Duration) -> Self {
        self.control = Some(control);
        self.lease_ttl = lease_ttl;
        self.leading = false;
        self
    }

    /// Acts on decisions: hand-offs, then `home` notices to edges.
    pub fn with_moves(mut self, moves: bool) -> Self {
        self.moves = moves;
        self
    }

    fn now(&self) -> Millis {
        Millis(self.started.elapsed().as_millis() as u64)
    }

    fn handle(&mut self, event: PlacerEvent) {
        match event {
            PlacerEvent::EdgeUp { edge, conn, remote, hub_rtt, node_conn, peer_addr, peer_fingerprint } => {
                let state = EdgeState {
                    conn,
                    remote,
                    connected_at: Instant::now(),
                    last_report: None,
                    reports: 0,
                    seq: 0,
                    window_ms: 0,
                    reported_rtt: None,
                    hub_rtt: Some(hub_rtt),
                    client_rtt: None,
                    demand: BTreeMap::new(),
                    node_conn,
                    peer_addr,
                    peer_fingerprint,
                    peer_rtts: BTreeMap::new(),
                };
                self.edges.insert(edge.clone(), state);
                // A (re)connected edge learns every home that is an edge.
                if self.moves {
                    let docs: Vec<DocumentId> = self.announced.keys().copied().collect();
                    for doc in docs {
                        let notice = self.notice(doc, &self.announced_home(&doc));
                        self.send_control(&edge, &notice);
                    }
                }
            }
            PlacerEvent::Report { edge, conn, report, hub_rtt } => self.report(edge, conn, report, hub_rtt),
            PlacerEvent::EdgeDown { edge, conn } => {
                // A reconnected edge's new connection may have arrived first.
                if self.edges.get(&edge).is_some_and(|e| e.conn == conn) {
                    self.edges.remove(&edge);
                }
            }
            PlacerEvent::Query { view, reply } => {
                let _ = reply.send(match view {
                    View::Placement => self.placement_json(),
                    View::Topology => self.topology_json(),
                });
            }
        }
    }

    fn report(&mut self, edge: EdgeId, conn: u64, report: Report, hub_rtt: Duration) {
        self.metrics.reports_total.inc();
        let Some(state) = self.edges.get_mut(&edge).filter(|e| e.conn == conn) else { return };
        // Writes per second over the edge's window (at least one interval,
        // so a first short window does not inflate the rate).
        let window = Duration::from_millis(report.window_ms).max(self.report_interval).as_secs_f64();
        state.demand = report
            .docs
            .iter()
            .map(|d| {
                let demand = EdgeDemand { subscribers: d.subscribers, writes_per_sec: d.writes as f64 / window };
                (d.doc, demand)
            })
            .collect();
        state.last_report = Some(Instant::now());
        state.reports += 1;
        state.seq = report.seq;
        state.window_ms = report.window_ms;
        state.reported_rtt = report.uplink_rtt_micros.map(Duration::from_micros);
        state.client_rtt = report.client_rtt_micros.map(Duration::from_micros);
        state.hub_rtt = Some(hub_rtt);
        state.peer_rtts =
            report.peer_rtt_micros.iter().map(|(e, us)| (EdgeId::new(e.clone()), Duration::from_micros(*us))).collect();
    }

    fn fresh(&self, e: &EdgeState) -> bool {
        e.last_report.is_some_and(|t| t.elapsed() <= self.report_interval * STALE_REPORTS)
    }

    /// Every edge the placer counts: this hub's, then those other hubs
    /// reported (fresh rows only, so connected there).
    fn views(&self) -> Vec<EdgeView> {
        let ms = |us: Option<u64>| us.map(Duration::from_micros);
        let mut views: Vec<EdgeView> = self
            .edges
            .iter()
            .map(|(id, e)| EdgeView {
                id: id.clone(),
                rtt: e.reported_rtt.or(e.hub_rtt),
                client_rtt: e.client_rtt,
                demand: if self.fresh(e) { e.demand.iter().map(|(d, x)| (*d, *x)).collect() } else { Vec::new() },
                peers: e.peer_rtts.iter().map(|(p, d)| (p.clone(), *d)).collect(),
            })
            .collect();
        views.extend(self.remote.iter().map(|(id, r)| {
            EdgeView {
                id: id.clone(),
                rtt: ms(r.report.rtt_us),
                client_rtt: ms(r.report.client_rtt_us),
                demand: r
                    .report
                    .demand
                    .iter()
                    .filter_map(|(d, (subscribers, writes_per_sec))| {
                        let demand = EdgeDemand { subscribers: *subscribers, writes_per_sec: *writes_per_sec };
                        Some((d.parse().ok()?, demand))
                    })
                    .collect(),
                peers: r
                    .report
                    .peer_rtts_us
                    .iter()
                    .map(|(p, us)| (EdgeId::new(p.clone()), Duration::from_micros(*us)))
                    .collect(),
            }
        }));
        views
    }

    /// The engine's inputs from the current topology.
    fn inputs(&self) -> (DemandMap, Latencies) {
        let mut demand = DemandMap::new();
        let mut latencies = Latencies::default();
        let views = self.views();
        for v in &views {
            if let Some(rtt) = v.rtt {
                latencies.edge_hub.insert(v.id.clone(), rtt);
            }
            if let Some(rtt) = v.client_rtt {
                latencies.client_edge.insert(v.id.clone(), rtt);
            }
            for (doc, d) in &v.demand {
                demand.entry(*doc).or_default().insert(v.id.clone(), *d);
            }
        }
        // Measured edge ↔ edge round trips between connected edges (the
        // smaller of the two sides' measurements).
        let connected: std::collections::BTreeSet<&EdgeId> = views.iter().map(|v| &v.id).collect();
        for v in &views {
            for (b, rtt) in &v.peers {
                if v.id == *b || !connected.contains(b) {
                    continue;
                }
                let key = if v.id < *b { (v.id.clone(), b.clone()) } else { (b.clone(), v.id.clone()) };
                let entry = latencies.edge_edge.entry(key).or_insert(*rtt);
                *entry = (*entry).min(*rtt);
            }
        }
        (demand, latencies)
    }

    /// One placement round: this hub's edges' reports go to the store;
    /// the placer decides (with the reports of edges on other hubs, and the
    /// pins), the other hubs follow the homes it announced.
    async fn tick(&mut self) {
        self.share_reports().await;
        if self.leading && !self.lease_valid() {
            self.step_down("its lease ran out before it was renewed");
        }
        if self.leading {
            self.load_cluster().await;
            if self.settle_until.is_some_and(|t| Instant::now() >= t) {
                self.settle_until = None;
            }
            if self.settle_until.is_none() {
                self.decide();
            }
        } else {
            self.follow().await;
        }
    }

    /// Runs the placement engine on the current inputs.
    fn decide(&mut self) {
        let (demand, latencies) = self.inputs();
        let moves = self.engine.tick(self.now(), &demand, &latencies);
        for m in &moves {
            let advisory = !self.moves;
            tracing::info!(doc = %m.doc, from = %m.from, to = %m.to, reason = m.reason.as_str(), gain_ms = m.gain_ms, advisory, "placement: new home decided");
        }
        self.metrics.moves_total.inc_by(moves.len() as u64);
        set_total(&self.metrics.decisions_total, self.engine.decisions());
        self.metrics.docs_tracked.set(self.engine.tracked() as i64);
        let reporting = self.edges.values().filter(|e| self.fresh(e)).count();
        self.metrics.edges_reporting.set(reporting as i64);
    }

    /// Where other edges reach `edge`: its connection here, its report at
    /// another hub, or what was announced with a home on it.
    fn reach(&self, edge: &EdgeId) -> (Option<String>, Option<String>) {
        if let Some(s) = self.edges.get(edge) {
            return (s.peer_addr.clone(), s.peer_fingerprint.clone());
        }
        if let Some(r) = self.remote.get(edge) {
            return (r.report.peer_addr.clone(), r.report.peer_fingerprint.clone());
        }
        self.announced
            .values()
            .find(|h| h.edge == *edge)
            .map_or((None, None), |h| (h.addr.clone(), h.fingerprint.clone()))
    }

    /// The `home` notice for a document.
    fn notice(&self, doc: DocumentId, home: &Home) -> Control {
        let (edge, (addr, fingerprint)) = match home {
            Home::Hub => (None, (None, None)),
            Home::Edge(e) => (Some(e.to_string()), self.reach(e)),
        };
        Control::Home(HomeNotice { doc, edge, addr, fingerprint })
    }

    fn send_control(&mut self, edge: &EdgeId, control: &Control) {
        let Some(conn) = self.edges.get(edge).and_then(|e| e.node_conn) else { return };
        self.outbox.push(NodeEvent::SendControl { conn, bytes: federation::encode_control(control) });
    }
}

/// Runs the placement task until every sender is gone. `node` is the hub's
/// node runtime (hand-offs and `home` notices go through it).
pub async fn run(mut placer: Placer, mut events: mpsc::Receiver<PlacerEvent>, node: NodeEvents) {
    let mut tick = tokio::time::interval(placer.placement_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Hand-offs advance faster than decisions are taken: a catch-up is a
    // few round trips, and the announcement should follow it closely.
    let mut handoff_tick = tokio::time::interval(placer.placement_interval.min(Duration::from_millis(100)));
    handoff_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lease_tick = tokio::time::interval((placer.lease_ttl / 3).max(Duration::from_millis(10)));
    lease_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(e) => placer.handle(e),
                None => break,
            },
            _ = lease_tick.tick(), if placer.control.is_some() => placer.renew_lease().await,
            _ = tick.tick() => placer.tick().await,
            _ = handoff_tick.tick() => placer.advance_handoffs(&node).await,
        }
        for e in std::mem::take(&mut placer.outbox) {
            if node.send(e).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests;
