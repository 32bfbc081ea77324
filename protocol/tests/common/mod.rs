#![allow(dead_code)] // each test binary uses part of the harness
//! An engine with an in-memory store, and delivery between two of them:
//! the harness of the engine tests that wire nodes by hand.

use meridian_protocol::engine::{Engine, EngineConfig, Millis, Output};
use meridian_protocol::ids::{ConnId, PeerId, StorageId};
use meridian_protocol::storage::MemoryStore;

pub struct Node {
    pub engine: Engine,
    store: MemoryStore,
}

impl Node {
    pub fn new(name: &str, track_demand: bool) -> Self {
        Self::with(name, |config| config.track_demand = track_demand)
    }

    /// A node whose configuration `adjust` changes first.
    pub fn with(name: &str, adjust: impl FnOnce(&mut EngineConfig)) -> Self {
        let mut config = EngineConfig::new(PeerId::new(name), Some(StorageId::new(format!("{name}-store"))));
        adjust(&mut config);
        Self { engine: Engine::new(config), store: MemoryStore::new() }
    }

    /// Runs storage tasks; returns the frames sent, with their connection.
    pub fn drain(&mut self) -> Vec<(ConnId, Vec<u8>)> {
        let mut frames = Vec::new();
        while let Some(o) = self.engine.poll_output() {
            match o {
                Output::Send { conn, message } => frames.push((conn, meridian_protocol::codec::encode(&message))),
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

/// Delivers frames between `a` (on `a_conn`) and `b` (on `b_conn`) until
/// both are quiet; frames for other connections are counted, not sent.
pub fn settle(a: &mut Node, a_conn: ConnId, b: &mut Node, b_conn: ConnId) -> usize {
    let mut elsewhere = 0;
    loop {
        let (to_b, to_a) = (a.drain(), b.drain());
        if to_b.is_empty() && to_a.is_empty() {
            return elsewhere;
        }
        for (conn, f) in to_b {
            if conn == a_conn {
                b.engine.handle_frame(Millis(0), b_conn, &f);
            } else {
                elsewhere += 1;
            }
        }
        for (conn, f) in to_a {
            if conn == b_conn {
                a.engine.handle_frame(Millis(0), a_conn, &f);
            } else {
                elsewhere += 1;
            }
        }
    }
}
