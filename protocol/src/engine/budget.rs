//! Budgets: idle eviction, the memory budget, offloading to the upstream for the disk budget.

use crate::ids::{ConnId, DocumentId};
use crate::storage::StorageTask;

use super::conn::Conn;
use super::doc::DocState;
use super::effects::TaskPurpose;
use super::{Direction, Engine, Event, Millis};

impl Engine {
    /// Drops our copy of a document, in memory and in the store, once that
    /// loses nothing: a ready upstream (the hub, which advertises only
    /// committed heads) has acknowledged every change we hold, no write or
    /// message is in flight, and no client here uses it (subscribed on a
    /// live connection, or opened by the local application). The document
    /// is loaded to check (with the upstream's persisted sync state); if it
    /// is not safe yet it stays marked and is checked again as messages
    /// arrive, and a client's interest unmarks it. Opening it later fetches
    /// it from upstream or its home edge (a cold open). Edges call this to
    /// keep their store under a disk budget (the cloud copy is the hub's).
    pub fn offload(&mut self, now: Millis, doc_id: DocumentId) {
        if !self.config.expects_upstream || self.opened.contains(&doc_id) || self.is_pinned(&doc_id) {
            return;
        }
        self.offloading.insert(doc_id);
        self.ensure_doc(now, doc_id);
        self.maybe_offload(doc_id);
    }

    /// Whether someone here uses the document: the local application opened
    /// it, or a peer that connected to us (a client, or an edge for which we
    /// are the home) is subscribed on a live connection.
    pub fn in_use(&self, doc_id: &DocumentId) -> bool {
        self.opened.contains(doc_id)
            || self.subscribers.get(doc_id).is_some_and(|subs| {
                // Clients, and edges syncing it with us as its home.
                subs.iter().any(|c| {
                    self.conns.get(c).is_some_and(|c| c.direction == Direction::Incoming && c.peer().is_some())
                })
            })
    }

    /// Carries out a pending [`Engine::offload`] if it is safe now.
    pub(super) fn maybe_offload(&mut self, doc_id: DocumentId) {
        if !self.offloading.contains(&doc_id) {
            return;
        }
        if self.in_use(&doc_id) {
            self.offloading.remove(&doc_id);
            return;
        }
        let Some(d) = self.docs.get(&doc_id) else {
            self.offloading.remove(&doc_id);
            return;
        };
        if !d.is_quiet() {
            return;
        }
        if !d.has_data() {
            // Nothing stored here: nothing to drop.
            self.offloading.remove(&doc_id);
            return;
        }
        if !d.acknowledged_by(|c| self.is_upstream(c)) {
            return;
        }
        self.offloading.remove(&doc_id);
        self.remove_doc(doc_id);
        self.resync_on_upstream.remove(&doc_id);
        // Sync states go with the chunks: a peer must not be remembered as
        // holding what we no longer hold.
        self.out.storage(TaskPurpose::Offload(doc_id), StorageTask::DeleteDoc { doc: doc_id });
        self.stats.offloaded += 1;
        self.out.event(Event::Evicted { doc: doc_id });
    }

    /// Evicts the least recently active documents that can leave while
    /// more than [`EngineConfig::max_loaded_docs`] are in memory.
    pub(super) fn enforce_memory_budget(&mut self) {
        let max = self.config.max_loaded_docs;
        if max == 0 || self.docs.len() <= max {
            return;
        }
        let mut candidates: Vec<(Millis, DocumentId)> =
            self.docs.iter().filter(|(_, d)| d.is_quiet()).map(|(id, d)| (d.last_active, *id)).collect();
        candidates.sort();
        let excess = self.docs.len() - max;
        for (_, doc_id) in candidates.into_iter().take(excess) {
            self.evict(doc_id);
        }
    }

    pub(super) fn evict(&mut self, doc_id: DocumentId) {
        let Some(d) = self.remove_doc(doc_id) else { return };
        if self.needs_resync(doc_id, &d) {
            self.resync_on_upstream.insert(doc_id);
        }
        // No data (asked for, never found): no sync state to keep.
        let peers = if d.has_data() { d.peers } else { Default::default() };
        for (conn, pd) in peers {
            let storage = self.conns.get(&conn).and_then(|c| c.storage_id().cloned());
            if let Some(storage) = storage {
                self.out.put_sync_state(doc_id, storage, pd.sync.encode());
            }
        }
        self.out.event(Event::Evicted { doc: doc_id });
    }

    /// Whether an upstream that connects later must hear of an evicted
    /// document: someone here wants its changes (the local application
    /// opened it, or a downstream peer is subscribed), or it may lack ours
    /// (no ready upstream acknowledged our heads).
    pub(super) fn needs_resync(&self, doc_id: DocumentId, d: &DocState) -> bool {
        // Without an upstream (a hub) the set would only grow.
        if !self.config.expects_upstream {
            return false;
        }
        if self.opened.contains(&doc_id) {
            return true;
        }
        let acknowledged = d.acknowledged_by(|c| self.is_upstream(c));
        let downstream = self.subscribers.get(&doc_id).is_some_and(|subs| {
            subs.iter().any(|c| self.conns.get(c).is_some_and(|c| c.direction == Direction::Incoming))
        });
        !acknowledged || downstream
    }

    /// Loads a document (if stored) so that it syncs with every upstream,
    /// without the application waiting for it. Used to push stored
    /// documents to a hub that has just connected.
    pub fn open(&mut self, now: Millis, doc_id: DocumentId) {
        self.ensure_doc(now, doc_id);
        if let Some(d) = self.docs.get_mut(&doc_id) {
            d.touch(now);
        }
    }

    /// Loaded documents with data, split into (acknowledged by a ready
    /// upstream, not yet acknowledged).
    /// A node without upstreams by design (the hub) has nothing to report.
    pub fn upstream_sync_status(&self) -> (usize, usize) {
        if !self.config.expects_upstream {
            return (0, 0);
        }
        let (mut synced, mut pending) = (0, 0);
        for d in self.docs.values().filter(|d| d.has_data()) {
            if d.acknowledged_by(|c| self.is_upstream(c)) { synced += 1 } else { pending += 1 }
        }
        (synced, pending)
    }
}

impl Engine {
    /// A ready connection to an upstream (not an edge-peer link).
    fn is_upstream(&self, conn: &ConnId) -> bool {
        self.conns.get(conn).is_some_and(Conn::is_upstream_ready)
    }
}
