use meridian_protocol::codec::federation::DocReport;

use super::*;

fn placer() -> Placer {
    let config = PlacementConfig { min_gain: Duration::ZERO, ..Default::default() };
    let interval = Duration::from_millis(200);
    Placer::new("hub".into(), config, interval, interval, Arc::default())
}

fn up(p: &mut Placer, id: &str, conn: u64, rtt_ms: u64) {
    let (edge, remote) = (EdgeId::new(id), "127.0.0.1:1".parse().unwrap());
    let hub_rtt = Duration::from_millis(rtt_ms);
    let (node_conn, peer_addr, peer_fingerprint) = (None, None, None);
    p.handle(PlacerEvent::EdgeUp { edge, conn, remote, hub_rtt, node_conn, peer_addr, peer_fingerprint });
}

fn report(p: &mut Placer, id: &str, conn: u64, doc: DocumentId, writes: u64) {
    let report = Report {
        seq: 1,
        window_ms: 1000,
        uplink_rtt_micros: Some(30_000),
        client_rtt_micros: None,
        docs: vec![DocReport { doc, subscribers: 1, writes }],
        peer_rtt_micros: BTreeMap::new(),
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
    p.decide();
    assert_eq!(home_of(&p, doc), json!({"edge": "eu"}));
    let explained = &p.placement_json()["documents"][0];
    assert_eq!(explained["demand"]["eu"]["writes_per_sec"], 10.0);
    assert!(explained["demand"].get("us").is_none());
    assert_eq!(p.metrics.moves_total.get(), 1);
    assert_eq!(p.topology_json()["rtt_matrix_ms"]["eu"]["hub"], 30.0, "the edge's own measurement wins");
    // An old connection of eu going away changes nothing; the current one does.
    p.handle(PlacerEvent::EdgeDown { edge: EdgeId::new("eu"), conn: 7 });
    p.decide();
    assert_eq!(home_of(&p, doc), json!({"edge": "eu"}));
    p.handle(PlacerEvent::EdgeDown { edge: EdgeId::new("eu"), conn: 1 });
    p.decide();
    assert_eq!(home_of(&p, doc), json!("hub"));
    assert_eq!(p.topology_json()["edges"].as_array().map(Vec::len), Some(1));
}

#[test]
fn placement_metrics_render_with_their_documented_names() {
    let node = meridian_node::metrics::NodeMetrics::new(meridian_node::metrics::Role::Hub);
    let _placement = PlacementMetrics::new(node.registry());
    let text = node.render();
    let names = ["decisions_total", "moves_total", "docs_tracked", "reports_total", "edges_reporting"];
    let more = ["handoffs_total", "handoffs_pending", "docs_homed_on_edges", "is_placer", "takeovers_total"];
    for name in names.into_iter().chain(more) {
        assert!(text.contains(&format!("\nmeridian_hub_placement_{name} 0\n")), "{name} in {text}");
    }
}
