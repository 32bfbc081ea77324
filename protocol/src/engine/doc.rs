//! The state of one document in memory, and of each peer's interest in it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use automerge::sync;
use automerge::{ActorId, Automerge, ChangeHash};

use crate::ids::{ConnId, DocumentId};
use crate::storage::StorageTask;

use super::apply::*;
use super::fanout::*;
use super::persistence::*;
use super::*;

/// What we know about one peer's interest in one document.
#[derive(Debug)]
pub(super) struct PeerDoc {
    pub(super) sync: sync::State,
    /// It asked with `request` (it has nothing) and has not sent data since.
    pub(super) requesting: bool,
    /// We told it `doc-unavailable`.
    pub(super) told_unavailable: bool,
    /// It got the stored snapshot at these heads before the document was
    /// loaded ([`Engine::answer_from_snapshot`]); its request is still to
    /// be applied.
    pub(super) answered_at: Option<Vec<ChangeHash>>,
}

impl PeerDoc {
    pub(super) fn new() -> Self {
        Self { sync: sync::State::new(), requesting: false, told_unavailable: false, answered_at: None }
    }
}

#[derive(Debug)]
pub(super) struct DocState {
    pub(super) doc: Automerge,
    pub(super) loading: bool,
    /// Heads covered by writes that were issued (not necessarily done).
    pub(super) saved_heads: Vec<ChangeHash>,
    pub(super) writes_in_flight: usize,
    /// Writes issued and completed so far; messages from peers wait until
    /// `hold_until` writes completed (see [`Engine::drain_pending`]).
    pub(super) writes_issued: u64,
    pub(super) writes_done: u64,
    pub(super) hold_until: u64,
    /// Bytes of the last snapshot and of the chunks appended since.
    pub(super) snapshot_bytes: usize,
    pub(super) chunk_bytes: usize,
    pub(super) peers: BTreeMap<ConnId, PeerDoc>,
    /// Peers waiting for their persisted sync state.
    pub(super) loading_states: BTreeSet<ConnId>,
    /// Peers whose sync state changed (a message from them, a loaded or
    /// reset state) since we last generated a message for them. With the
    /// document's heads unchanged, a clean peer has nothing new coming:
    /// [`Engine::sync_doc`] visits only these, so a message from one of N
    /// peers costs O(1), not O(N).
    pub(super) dirty: BTreeSet<ConnId>,
    pub(super) generated: Generated,
    /// The heads when [`Engine::sync_doc`] last generated messages: when
    /// they changed, every peer may need something.
    pub(super) synced_heads: Vec<ChangeHash>,
    pub(super) pending: VecDeque<Pending>,
    /// Upstreams that answered `doc-unavailable` since we last had data.
    pub(super) upstream_unavailable: BTreeSet<ConnId>,
    /// The application is waiting for this document (`find`).
    pub(super) local_waiting: bool,
    pub(super) last_active: Millis,
    /// It was asked of a source since it was loaded (counted once).
    pub(super) cold_open: bool,
    /// Fresh peers got the stored snapshot; the document loads on a second
    /// read ([`Engine::answer_from_snapshot`]).
    pub(super) answered_from_snapshot: bool,
    /// The stored document, read but not loaded yet: kept while peers'
    /// sync states load, to answer the fresh ones from it first.
    pub(super) stored: Option<Vec<u8>>,
    /// Nothing is stored for it (we created it, or its load found nothing):
    /// its first write may replace the store with one snapshot. Not so
    /// for a document whose stored bytes failed to load, nor one imported
    /// without a load: what the store holds must stay.
    pub(super) store_empty: bool,
}

impl DocState {
    pub(super) fn new(actor: ActorId, now: Millis, loading: bool) -> Self {
        Self {
            doc: Automerge::new().with_actor(actor),
            loading,
            saved_heads: Vec::new(),
            writes_in_flight: 0,
            writes_issued: 0,
            writes_done: 0,
            hold_until: 0,
            snapshot_bytes: 0,
            chunk_bytes: 0,
            peers: BTreeMap::new(),
            loading_states: BTreeSet::new(),
            dirty: BTreeSet::new(),
            generated: Generated::default(),
            synced_heads: Vec::new(),
            pending: VecDeque::new(),
            upstream_unavailable: BTreeSet::new(),
            local_waiting: false,
            last_active: now,
            cold_open: false,
            answered_from_snapshot: false,
            stored: None,
            store_empty: false,
        }
    }

    pub(super) fn has_data(&self) -> bool {
        !self.doc.get_heads().is_empty()
    }

    pub(super) fn busy(&self) -> bool {
        self.loading || !self.loading_states.is_empty()
    }
}

impl Engine {
    pub(super) fn subscribe(&mut self, conn: ConnId, doc_id: DocumentId) {
        self.subscribers.entry(doc_id).or_default().insert(conn);
    }

    /// Makes sure the document is in memory or being loaded.
    pub(super) fn ensure_doc(&mut self, now: Millis, doc_id: DocumentId) {
        if self.docs.contains_key(&doc_id) {
            return;
        }
        // In memory again, it is attached to upstreams as usual.
        self.resync_on_upstream.remove(&doc_id);
        let actor = self.random_actor();
        self.docs.insert(doc_id, DocState::new(actor, now, true));
        self.storage(TaskPurpose::LoadDoc(doc_id), StorageTask::LoadDoc { doc: doc_id });
    }

    /// Makes sure we have a sync state for this peer on this document,
    /// loading the persisted one for peers with a storage id.
    pub(super) fn ensure_peer_doc(&mut self, doc_id: DocumentId, conn: ConnId) {
        let storage = self.conns.get(&conn).and_then(|c| c.storage_id().cloned());
        let Some(d) = self.docs.get_mut(&doc_id) else { return };
        if d.peers.contains_key(&conn) {
            return;
        }
        d.peers.insert(conn, PeerDoc::new());
        d.dirty.insert(conn);
        if let Some(peer) = storage {
            d.loading_states.insert(conn);
            self.storage(TaskPurpose::LoadSyncState(doc_id, conn), StorageTask::LoadSyncState { doc: doc_id, peer });
        }
    }

    pub(super) fn attach_upstream(&mut self, now: Millis, doc_id: DocumentId, conn: ConnId) {
        self.subscribe(conn, doc_id);
        self.ensure_peer_doc(doc_id, conn);
        if let Some(d) = self.docs.get_mut(&doc_id) {
            d.last_active = now;
        }
    }
}
