//! Demand counting in the engine (for placement reports): a client's
//! writes are counted at the server that tracks demand, subscribers are the
//! downstream connections, and `take_demand` resets the write counts.

use automerge::ROOT;
use automerge::transaction::Transactable;
use meridian_protocol::engine::{Direction, DocDemand, Engine, EngineConfig, Millis, Output};
use meridian_protocol::ids::{ConnId, PeerId, StorageId};
use meridian_protocol::storage::MemoryStore;

struct Node {
    engine: Engine,
    store: MemoryStore,
}

impl Node {
    fn new(name: &str, track_demand: bool) -> Self {
        let mut config = EngineConfig::new(PeerId::new(name), Some(StorageId::new(format!("{name}-store"))));
        config.track_demand = track_demand;
        Self { engine: Engine::new(config), store: MemoryStore::new() }
    }

    /// Runs storage tasks and returns the frames for `conn`'s peer.
    fn drain(&mut self) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        while let Some(o) = self.engine.poll_output() {
            match o {
                Output::Send { message, .. } => frames.push(meridian_protocol::codec::encode(&message)),
                Output::Storage { id, task } => {
                    let r = self.store.execute(&task);
                    self.engine.handle_storage_result(Millis(0), id, r);
                }
                Output::Close { .. } | Output::Event(_) => {}
            }
        }
        frames
    }
}

/// Delivers frames both ways until both sides are quiet.
fn settle(client: &mut Node, c_conn: ConnId, server: &mut Node, s_conn: ConnId) {
    loop {
        let to_server = client.drain();
        let to_client = server.drain();
        if to_server.is_empty() && to_client.is_empty() {
            return;
        }
        for f in to_server {
            server.engine.handle_frame(Millis(0), s_conn, &f);
        }
        for f in to_client {
            client.engine.handle_frame(Millis(0), c_conn, &f);
        }
    }
}

#[test]
fn client_writes_and_subscribers_are_counted() {
    let mut server = Node::new("edge", true);
    let mut client = Node::new("client", false);
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
