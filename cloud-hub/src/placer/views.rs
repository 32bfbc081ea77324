//! The placer's answers to `GET /placement` and `GET /topology`.

use super::*;

impl Placer {
    /// `GET /placement`: the placer, homes, pins, hand-offs, decisions.
    pub(super) fn placement_json(&self) -> Value {
        let (_, latencies) = self.inputs();
        let ms = |d: &Duration| d.as_secs_f64() * 1e3;
        let edge_hub: BTreeMap<&EdgeId, f64> = latencies.edge_hub.iter().map(|(e, d)| (e, ms(d))).collect();
        let client: BTreeMap<&EdgeId, f64> = latencies.client_edge.iter().map(|(e, d)| (e, ms(d))).collect();
        let announced = |doc: &DocumentId| serde_json::to_value(self.announced_home(doc)).unwrap_or(Value::Null);
        let documents: Vec<Value> = self
            .engine
            .explanations()
            .values()
            .map(|e| {
                let mut v = serde_json::to_value(e).unwrap_or(Value::Null);
                if let Some(o) = v.as_object_mut() {
                    o.insert("announced_home".into(), announced(&e.doc));
                }
                v
            })
            .collect();
        let handoffs: Vec<Value> = self
            .handoffs
            .iter()
            .map(|(doc, h)| {
                json!({
                    "doc": doc.to_string(),
                    "from": announced(doc),
                    "to": h.to,
                    "pending_ms": h.started.elapsed().as_millis() as u64,
                    "status": h.status,
                })
            })
            .collect();
        let homes: Vec<Value> = self
            .announced
            .iter()
            .map(|(doc, h)| json!({ "doc": doc.to_string(), "edge": h.edge, "addr": h.addr }))
            .collect();
        let pins: Vec<Value> = self
            .pins
            .iter()
            .map(|p| json!({ "doc": p.doc.to_string(), "to": p.edge.as_deref().unwrap_or("hub"), "at_ms": p.at_ms }))
            .collect();
        let holder_hub = |h: &String| h.rsplit_once('#').map_or(h.clone(), |(hub, _)| hub.to_owned());
        json!({
            "placer": {
                "this_hub": self.leading,
                "hub": self.placer.as_ref().map(holder_hub).or_else(|| self.control.is_none().then(|| self.hub_id.clone())),
                "holder": self.placer,
                "lease_ttl_ms": self.control.as_ref().map(|_| self.lease_ttl.as_millis() as u64),
                // After a take-over: how long until it decides again.
                "settling_ms": self.settle_until.map(|t| t.saturating_duration_since(Instant::now()).as_millis() as u64),
            },
            "homes": homes,
            "pins": pins,
            "advisory": !self.moves,
            "moves_enabled": self.moves,
            "handoffs": handoffs,
            "recent_handoffs": self.announced_history,
            "now_ms": self.now().0,
            "placement_interval_ms": self.placement_interval.as_millis() as u64,
            "config": self.engine.config(),
            "docs_tracked": self.engine.tracked(),
            "decisions_total": self.engine.decisions(),
            "latencies_ms": { "edge_hub": edge_hub, "client_edge": client },
            "documents": documents,
            "recent_moves": self.engine.history().collect::<Vec<_>>(),
        })
    }

    /// `GET /topology`: edges, their reports and round trips.
    pub(super) fn topology_json(&self) -> Value {
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
                        "edges": e.peer_rtts.iter().map(|(p, d)| (p.to_string(), ms(*d))).collect::<BTreeMap<_, _>>(),
                    },
                    "peer_addr": e.peer_addr,
                })
            })
            .collect();
        let elsewhere: Vec<Value> = self
            .remote
            .iter()
            .map(|(id, r)| {
                json!({
                    "id": id,
                    "hub": r.hub,
                    "report_age_ms": unix_ms().saturating_sub(r.at_ms),
                    "docs_reported": r.report.demand.len(),
                })
            })
            .collect();
        json!({
            "hub": self.hub_id,
            "report_interval_ms": self.report_interval.as_millis() as u64,
            "edges": edges,
            "edges_on_other_hubs": elsewhere,
            "rtt_matrix_ms": self.rtt_matrix(),
            "edge_edge_measured": self.edges.values().any(|e| !e.peer_rtts.is_empty()),
        })
    }

    /// Round trips between every pair of nodes, in ms. Edge ↔ edge is the
    /// measured direct link when there is one, else the path through the hub.
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
