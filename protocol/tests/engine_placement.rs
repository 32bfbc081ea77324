//! The engine's side of placement (DESIGN §5): edge-peer links carry only
//! the documents routed to them and are not demand; a hub's catch-up
//! brings a peer to the heads it targets.

use automerge::transaction::Transactable;
use automerge::{ROOT, ReadDoc};
use meridian_protocol::engine::{CatchUp, Direction, Millis};
use meridian_protocol::ids::DocumentId;

use meridian_protocol::testing::{TestNode, settle};

fn write(node: &mut TestNode, doc: DocumentId, key: &str, n: i64) {
    node.engine.change(Millis(0), doc, |tx| tx.put(ROOT, key, n).map(|_| ())).expect("change");
}

#[test]
fn an_edge_peer_link_carries_routed_documents_only_and_is_not_demand() {
    // `eu` links to `ap`, the home of `homed`; `eu` also holds `local`.
    let mut eu = TestNode::new("eu", |c| c.track_demand = true);
    let mut ap = TestNode::new("ap", |c| c.track_demand = true);
    let homed = eu.engine.create(Millis(0), |tx| tx.put(ROOT, "n", 0).map(|_| ())).expect("create");
    let local = eu.engine.create(Millis(0), |tx| tx.put(ROOT, "n", 0).map(|_| ())).expect("create");
    eu.drain_frames();
    let out = eu.engine.handle_connect_edge_peer(Millis(0), Direction::Outgoing);
    let inc = ap.engine.handle_connect_edge_peer(Millis(0), Direction::Incoming);
    settle(&mut eu, out, &mut ap, inc);
    // Not an upstream: nothing was sent to ap but the handshake.
    assert!(ap.engine.document(&homed).is_none() && ap.engine.document(&local).is_none());

    eu.engine.set_route(Millis(0), homed, Some(out));
    assert_eq!(eu.engine.route(&homed), Some(out));
    settle(&mut eu, out, &mut ap, inc);
    write(&mut eu, homed, "n", 1);
    write(&mut eu, local, "n", 1);
    settle(&mut eu, out, &mut ap, inc);
    let at_home = ap.engine.document(&homed).expect("the routed document reached its home");
    assert_eq!(at_home.get_heads(), eu.engine.document(&homed).expect("loaded").get_heads());
    assert!(ap.engine.document(&local).is_none(), "only routed documents go to the home");
    // Writes relayed by another edge are not the home's client demand...
    assert!(ap.engine.take_demand().get(&homed).is_none_or(|d| d.writes == 0 && d.subscribers == 0));
    // ... and the home's own writes come back over the link.
    write(&mut ap, homed, "home", 2);
    settle(&mut eu, out, &mut ap, inc);
    assert_eq!(
        eu.engine.document(&homed).and_then(|d| d.get(ROOT, "home").ok().flatten()).map(|(v, _)| v.to_string()),
        Some("2".into())
    );
    // The route ends with the connection.
    eu.engine.handle_disconnect(Millis(0), out);
    assert_eq!(eu.engine.route(&homed), None);
}

#[test]
fn a_catch_up_pushes_the_document_until_the_peer_covers_the_target() {
    // The hub holds `doc`; the edge, connected upstream to it, does not.
    let mut hub = TestNode::new("hub", |c| c.track_demand = false);
    let mut edge = TestNode::new("edge", |c| c.track_demand = true);
    let doc = hub.engine.create(Millis(0), |tx| tx.put(ROOT, "n", 0).map(|_| ())).expect("create");
    hub.drain_frames();
    let h_conn = hub.engine.handle_connect(Millis(0), Direction::Incoming);
    let e_conn = edge.engine.handle_connect(Millis(0), Direction::Outgoing);
    settle(&mut edge, e_conn, &mut hub, h_conn);
    let target = hub.engine.durable_heads(&doc).expect("durable");
    assert_eq!(hub.engine.catch_up(Millis(0), doc, h_conn, Some(&target)), CatchUp::Behind);
    settle(&mut edge, e_conn, &mut hub, h_conn);
    assert_eq!(hub.engine.catch_up(Millis(0), doc, h_conn, Some(&target)), CatchUp::CaughtUp);
    assert_eq!(edge.engine.durable_heads(&doc), Some(target.clone()));
    // A later change at the hub does not move the target it was given...
    write(&mut hub, doc, "n", 1);
    assert_eq!(hub.engine.catch_up(Millis(0), doc, h_conn, Some(&target)), CatchUp::CaughtUp);
    // ... and is pushed too (the edge is subscribed now).
    settle(&mut edge, e_conn, &mut hub, h_conn);
    assert_eq!(hub.engine.catch_up(Millis(0), doc, h_conn, None), CatchUp::CaughtUp);
    assert_eq!(hub.engine.covers_peer(&doc, h_conn), Some(true));
    assert!(hub.engine.holds_durably(&doc, &edge.engine.durable_heads(&doc).expect("edge durable")));
}
