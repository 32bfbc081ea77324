//! Demand counting in the engine (for placement reports): a client's
//! writes are counted at the server that tracks demand, subscribers are the
//! downstream connections, and `take_demand` resets the write counts.

use automerge::ROOT;
use automerge::transaction::Transactable;
use meridian_protocol::engine::{Direction, DocDemand, Millis};

use meridian_protocol::testing::{TestNode, settle};

#[test]
fn client_writes_and_subscribers_are_counted() {
    let mut server = TestNode::new("edge", |c| c.track_demand = true);
    let mut client = TestNode::new("client", |c| c.track_demand = false);
    let s_conn = server.engine.handle_connect(Millis(0), Direction::Incoming);
    let c_conn = client.engine.handle_connect(Millis(0), Direction::Outgoing);
    settle(&mut client, c_conn, &mut server, s_conn);
    let doc = client.engine.create(Millis(0), |tx| tx.put(ROOT, "n", 0).map(|_| ())).expect("create");
    settle(&mut client, c_conn, &mut server, s_conn);
    for i in 1..=4i64 {
        client.engine.change(Millis(0), doc, |tx| tx.put(ROOT, "n", i).map(|_| ())).expect("change");
        settle(&mut client, c_conn, &mut server, s_conn);
    }
    let demand = server.engine.take_demand();
    assert_eq!(demand.get(&doc), Some(&DocDemand { subscribers: 1, writes: 5 }));
    // Counts restart; the subscription stays.
    assert_eq!(server.engine.take_demand().get(&doc), Some(&DocDemand { subscribers: 1, writes: 0 }));
    // The client does not track demand; its upstream is no subscriber of its own.
    assert!(client.engine.take_demand().is_empty());
    server.engine.handle_disconnect(Millis(0), s_conn);
    assert!(server.engine.take_demand().is_empty());
}
