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
//! Decisions are **advisory**: they are computed, logged, counted and shown,
//! but no hot replica moves yet.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use meridian_protocol::codec::federation::Report;
use meridian_protocol::engine::Millis;
use meridian_protocol::ids::DocumentId;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::placement::{DemandMap, EdgeDemand, EdgeId, Latencies, PlacementConfig, PlacementEngine};

/// Reports older than this many intervals no longer count as demand.
pub const STALE_REPORTS: u32 = 3;

/// What the placement task reacts to.
#[derive(Debug)]
pub enum PlacerEvent {
    /// An edge passed the handshake; `conn` tells its connections apart.
    EdgeUp {
        edge: EdgeId,
        conn: u64,
        remote: SocketAddr,
        hub_rtt: Duration,
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

/// Placement metrics, rendered after the node metrics at `/metrics`.
///
/// | name | type | meaning |
/// |---|---|---|
/// | `meridian_hub_placement_decisions_total` | counter | per-document decisions taken (one per tracked document per tick) |
/// | `meridian_hub_placement_moves_total` | counter | home changes decided (advisory) |
/// | `meridian_hub_placement_docs_tracked` | gauge | documents the placement engine tracks |
/// | `meridian_hub_placement_reports_total` | counter | demand reports received from edges |
/// | `meridian_hub_placement_edges_reporting` | gauge | connected edges whose last report is fresh |
#[derive(Debug, Default)]
pub struct PlacementMetrics {
    pub decisions_total: AtomicU64,
    pub moves_total: AtomicU64,
    pub docs_tracked: AtomicU64,
    pub reports_total: AtomicU64,
    pub edges_reporting: AtomicU64,
}

impl PlacementMetrics {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let rows = [
            ("decisions_total", "counter", "Per-document placement decisions taken.", &self.decisions_total),
            ("moves_total", "counter", "Home changes decided (advisory).", &self.moves_total),
            ("docs_tracked", "gauge", "Documents the placement engine tracks.", &self.docs_tracked),
            ("reports_total", "counter", "Demand reports received from edges.", &self.reports_total),
            ("edges_reporting", "gauge", "Connected edges with a fresh report.", &self.edges_reporting),
        ];
        for (name, kind, help, v) in rows {
            let name = format!("meridian_hub_placement_{name}");
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}", v.load(Relaxed));
        }
        out
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
            hub_id,
            engine: PlacementEngine::new(config),
            edges: BTreeMap::new(),
            started: Instant::now(),
            report_interval,
            placement_interval,
            metrics,
        }
    }

    fn now(&self) -> Millis {
        Millis(self.started.elapsed().as_millis() as u64)
    }

    fn handle(&mut self, event: PlacerEvent) {
        match event {
            PlacerEvent::EdgeUp { edge, conn, remote, hub_rtt } => {
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
                };
                self.edges.insert(edge, state);
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
        self.metrics.reports_total.fetch_add(1, Relaxed);
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
    }

    fn fresh(&self, e: &EdgeState) -> bool {
        e.last_report.is_some_and(|t| t.elapsed() <= self.report_interval * STALE_REPORTS)
    }

    /// The engine's inputs from the current topology.
    fn inputs(&self) -> (DemandMap, Latencies) {
        let mut demand = DemandMap::new();
        let mut latencies = Latencies::default();
        for (id, e) in &self.edges {
            if let Some(rtt) = e.reported_rtt.or(e.hub_rtt) {
                latencies.edge_hub.insert(id.clone(), rtt);
            }
            if let Some(rtt) = e.client_rtt {
                latencies.client_edge.insert(id.clone(), rtt);
            }
            if !self.fresh(e) {
                continue;
            }
            for (doc, d) in &e.demand {
                demand.entry(*doc).or_default().insert(id.clone(), *d);
            }
        }
        (demand, latencies)
    }

    fn tick(&mut self) {
        let (demand, latencies) = self.inputs();
        let moves = self.engine.tick(self.now(), &demand, &latencies);
        for m in &moves {
            tracing::info!(doc = %m.doc, from = %m.from, to = %m.to, reason = ?m.reason, gain_ms = m.gain_ms, "placement: new home (advisory)");
        }
        self.metrics.moves_total.fetch_add(moves.len() as u64, Relaxed);
        self.metrics.decisions_total.store(self.engine.decisions(), Relaxed);
        self.metrics.docs_tracked.store(self.engine.tracked() as u64, Relaxed);
        let reporting = self.edges.values().filter(|e| self.fresh(e)).count();
        self.metrics.edges_reporting.store(reporting as u64, Relaxed);
    }

    fn placement_json(&self) -> Value {
        let (_, latencies) = self.inputs();
        let ms = |d: &Duration| d.as_secs_f64() * 1e3;
        let edge_hub: BTreeMap<&EdgeId, f64> = latencies.edge_hub.iter().map(|(e, d)| (e, ms(d))).collect();
        let client: BTreeMap<&EdgeId, f64> = latencies.client_edge.iter().map(|(e, d)| (e, ms(d))).collect();
        json!({
            "advisory": true,
            "now_ms": self.now().0,
            "placement_interval_ms": self.placement_interval.as_millis() as u64,
            "config": self.engine.config(),
            "docs_tracked": self.engine.tracked(),
            "decisions_total": self.engine.decisions(),
            "latencies_ms": { "edge_hub": edge_hub, "client_edge": client },
            "documents": self.engine.explanations().values().collect::<Vec<_>>(),
            "recent_moves": self.engine.history().collect::<Vec<_>>(),
        })
    }

    fn topology_json(&self) -> Value {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let edges: Vec<Value> = self
            .edges
            .iter()
            .map(|(id, e)| {
                json!({
                    "id": id,
                    "remote": e.remote.to_string(),
                    "connected_for_ms": e.connected_at.elapsed().as_millis() as u64,
                    "last_report_ms_ago": e.last_report.map(|t| t.elapsed().as_millis() as u64),
                    "fresh": self.fresh(e),
                    "reports": e.reports,
                    "seq": e.seq,
                    "window_ms": e.window_ms,
                    "docs_reported": e.demand.len(),
                    "rtt_ms": {
                        "hub": e.reported_rtt.or(e.hub_rtt).map(ms),
                        "edge_reported": e.reported_rtt.map(ms),
                        "hub_measured": e.hub_rtt.map(ms),
                        "clients": e.client_rtt.map(ms),
                    },
                })
            })
            .collect();
        json!({
            "hub": self.hub_id,
            "report_interval_ms": self.report_interval.as_millis() as u64,
            "edges": edges,
            "rtt_matrix_ms": self.rtt_matrix(),
            "edge_edge_measured": false,
        })
    }

    /// Round trips between every pair of nodes, in ms. Edge ↔ edge is not
    /// measured yet: it is the path through the hub.
    fn rtt_matrix(&self) -> BTreeMap<String, BTreeMap<String, Option<f64>>> {
        let (_, l) = self.inputs();
        let unknown = self.engine.config().unknown_rtt;
        let mut nodes = vec![("hub".to_owned(), crate::placement::Home::Hub)];
        nodes.extend(self.edges.keys().map(|e| (e.to_string(), crate::placement::Home::Edge(e.clone()))));
        let mut m = BTreeMap::new();
        for (a, ha) in &nodes {
            let row = nodes
                .iter()
                .map(|(b, hb)| {
                    let rtt = match (ha, hb) {
                        (crate::placement::Home::Edge(e), h) => l.edge_to_home(e, h, unknown),
                        (crate::placement::Home::Hub, crate::placement::Home::Edge(e)) => {
                            l.edge_to_home(e, &crate::placement::Home::Hub, unknown)
                        }
                        (crate::placement::Home::Hub, crate::placement::Home::Hub) => Some(Duration::ZERO),
                    };
                    (b.clone(), rtt.map(|d| d.as_secs_f64() * 1e3))
                })
                .collect();
            m.insert(a.clone(), row);
        }
        m
    }
}

/// Runs the placement task until every sender is gone.
pub async fn run(mut placer: Placer, mut events: mpsc::Receiver<PlacerEvent>) {
    let mut tick = tokio::time::interval(placer.placement_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(e) => placer.handle(e),
                None => break,
            },
            _ = tick.tick() => placer.tick(),
        }
    }
}

#[cfg(test)]
mod tests {
    use meridian_protocol::codec::federation::DocReport;

    use super::*;

    fn placer() -> Placer {
        let config = PlacementConfig { min_gain: Duration::ZERO, ..Default::default() };
        let interval = Duration::from_millis(200);
        Placer::new("hub".into(), config, interval, interval, Arc::default())
    }

    fn up(p: &mut Placer, id: &str, conn: u64, rtt_ms: u64) {
        let (edge, remote) = (EdgeId::new(id), "127.0.0.1:1".parse().unwrap());
        p.handle(PlacerEvent::EdgeUp { edge, conn, remote, hub_rtt: Duration::from_millis(rtt_ms) });
    }

    fn report(p: &mut Placer, id: &str, conn: u64, doc: DocumentId, writes: u64) {
        let report = Report {
            seq: 1,
            window_ms: 1000,
            uplink_rtt_micros: Some(30_000),
            client_rtt_micros: None,
            docs: vec![DocReport { doc, subscribers: 1, writes }],
        };
        p.handle(PlacerEvent::Report { edge: EdgeId::new(id), conn, report, hub_rtt: Duration::from_millis(29) });
    }

    fn home_of(p: &Placer, doc: DocumentId) -> Value {
        let v = p.placement_json();
        let docs = v["documents"].as_array().cloned().unwrap_or_default();
        docs.into_iter().find(|d| d["doc"] == doc.to_string().as_str()).map_or(Value::Null, |d| d["home"].clone())
    }

    #[test]
    fn reports_become_demand_and_a_departed_home_is_left() {
        let mut p = placer();
        let doc = DocumentId::from_bytes([7; 16]);
        up(&mut p, "eu", 1, 30);
        up(&mut p, "us", 2, 1);
        report(&mut p, "eu", 1, doc, 10);
        report(&mut p, "us", 99, doc, 1000); // a stale connection's report is dropped
        p.tick();
        assert_eq!(home_of(&p, doc), json!({"edge": "eu"}));
        let explained = &p.placement_json()["documents"][0];
        assert_eq!(explained["demand"]["eu"]["writes_per_sec"], 10.0);
        assert!(explained["demand"].get("us").is_none());
        assert_eq!(p.metrics.moves_total.load(Relaxed), 1);
        assert_eq!(p.topology_json()["rtt_matrix_ms"]["eu"]["hub"], 30.0, "the edge's own measurement wins");
        // An old connection of eu going away changes nothing; the current one does.
        p.handle(PlacerEvent::EdgeDown { edge: EdgeId::new("eu"), conn: 7 });
        p.tick();
        assert_eq!(home_of(&p, doc), json!({"edge": "eu"}));
        p.handle(PlacerEvent::EdgeDown { edge: EdgeId::new("eu"), conn: 1 });
        p.tick();
        assert_eq!(home_of(&p, doc), json!("hub"));
        assert_eq!(p.topology_json()["edges"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn placement_metrics_render_with_their_documented_names() {
        let text = PlacementMetrics::default().render();
        for name in ["decisions_total", "moves_total", "docs_tracked", "reports_total", "edges_reporting"] {
            assert!(text.contains(&format!("\nmeridian_hub_placement_{name} 0\n")), "{name} in {text}");
        }
    }
}
