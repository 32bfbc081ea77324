//! The state of one document in memory, and of each peer's interest in it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use automerge::sync;
use automerge::{ActorId, Automerge, ChangeHash, ReadDoc};

use crate::ids::{ConnId, DocumentId};
use crate::storage::StorageTask;

use super::apply::Pending;
use super::effects::TaskPurpose;
use super::fanout::Generated;
use super::off_loop::Ticket;
use super::phase::Lifecycle;
use super::refetch::Refetch;
use super::{Engine, Millis};

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
    /// When its last message about the document came.
    pub(super) heard_at: Option<Millis>,
    /// How long it last took to confirm a change durable here (ms).
    pub(super) last_lag_ms: Option<u64>,
    /// A node whose changes this copy refused, and its heads then: we send
    /// it nothing more about the document (each side would otherwise ask
    /// for what the other cannot give, forever) until its heads move, a
    /// forced resync or a refetched copy (`replicas`, `refetch`).
    pub(super) stalled: Option<Vec<ChangeHash>>,
    /// We sent it changes then and have heard nothing from it about the
    /// document since: what comes meanwhile waits for its answer (or for
    /// [`super::fanout::REPLY_WAIT_MS`]) and goes out as one message.
    pub(super) unanswered: Option<Millis>,
    /// When its last message carrying changes came (it writes too).
    pub(super) wrote_at: Option<Millis>,
    /// When we last sent it changes.
    pub(super) changes_sent_at: Option<Millis>,
}

impl PeerDoc {
    pub(super) fn new() -> Self {
        Self {
            sync: sync::State::new(),
            requesting: false,
            told_unavailable: false,
            answered_at: None,
            heard_at: None,
            last_lag_ms: None,
            stalled: None,
            unanswered: None,
            wrote_at: None,
            changes_sent_at: None,
        }
    }

    /// Compares everything again from the start (a forced resync, a
    /// replaced copy): a fresh sync state, and a stalled peer is heard.
    pub(super) fn start_over(&mut self) {
        self.sync = sync::State::new();
        self.stalled = None;
        self.unanswered = None;
    }
}

/// One document in memory: the automerge document, where its load and its
/// writes stand, and every peer's sync state with it.
#[derive(Debug)]
pub(super) struct DocState {
    pub(super) doc: Automerge,
    /// Its load, the application's wait, peers' sync states being read.
    pub(super) life: Lifecycle,
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
    /// Copied to shed automerge's spare room (`shrink_once`).
    pub(super) shrunk: bool,
    /// Boxed: a map node holds room for eleven entries, and a sync state
    /// is large (a document's one peer cost a 3 KB node unboxed).
    pub(super) peers: BTreeMap<ConnId, Box<PeerDoc>>,
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
    /// Changes that would create the document, from peers without the
    /// create right, held while it is looked for (see `access`).
    pub(super) held: Vec<Pending>,
    /// Its messages are being applied off the engine's thread (`off_loop`).
    pub(super) applying: Option<Ticket>,
    /// Chunks other nodes stored, waiting until it is not busy, and whether
    /// it must be read again instead (`shared_store`).
    pub(super) stored_elsewhere: Vec<Vec<u8>>,
    pub(super) refresh_wanted: bool,
    /// Upstreams that answered `doc-unavailable` since we last had data.
    pub(super) upstream_unavailable: BTreeSet<ConnId>,
    pub(super) last_active: Millis,
    /// The key of its idle-eviction entry (see `timers`).
    pub(super) idle_timer: Millis,
    /// The upstream's copy being fetched to replace this one (`refetch`).
    pub(super) refetch: Option<Box<Refetch>>,
}

impl DocState {
    pub(super) fn new(actor: ActorId, now: Millis, life: Lifecycle) -> Self {
        Self {
            doc: Automerge::new().with_actor(actor),
            life,
            saved_heads: Vec::new(),
            writes_in_flight: 0,
            writes_issued: 0,
            writes_done: 0,
            hold_until: 0,
            snapshot_bytes: 0,
            chunk_bytes: 0,
            shrunk: false,
            peers: BTreeMap::new(),
            dirty: BTreeSet::new(),
            generated: Generated::default(),
            synced_heads: Vec::new(),
            pending: VecDeque::new(),
            held: Vec::new(),
            applying: None,
            stored_elsewhere: Vec::new(),
            refresh_wanted: false,
            upstream_unavailable: BTreeSet::new(),
            last_active: now,
            idle_timer: now,
            refetch: None,
        }
    }

    pub(super) fn has_data(&self) -> bool {
        !self.doc.get_heads().is_empty()
    }

    /// In memory (its load, if any, is done).
    pub(super) fn is_loaded(&self) -> bool {
        self.life.is_loaded()
    }

    /// Loading, or a peer's sync state is, or messages are being applied
    /// off the loop: nothing (more) may be applied yet.
    pub(super) fn busy(&self) -> bool {
        self.life.busy() || self.applying.is_some()
    }

    /// Durable (or, `before_durable`, loaded: see
    /// [`super::EngineConfig::send_before_durable`]), and no application
    /// off the loop is about to move the heads: sync messages may go out.
    pub(super) fn may_sync(&self, before_durable: bool) -> bool {
        self.is_loaded() && (before_durable || self.writes_in_flight == 0) && self.applying.is_none()
    }

    /// Loaded with no write in flight: what is in memory is in the store.
    pub(super) fn is_durable(&self) -> bool {
        self.is_loaded() && self.writes_in_flight == 0
    }

    /// Nothing is loading, being written or waiting to be applied, no
    /// change from a peer still attached waits for a dependency, and the
    /// application is not waiting for it: it may leave memory. (Changes
    /// waiting for a dependency live only in memory, and their sender
    /// believes them delivered: dropped while it is connected, a peer that
    /// does not resend what it sent once would never send them again; once
    /// every peer has left, a reconnecting one starts afresh.)
    pub(super) fn is_quiet(&self) -> bool {
        !self.busy()
            && self.writes_in_flight == 0
            && self.pending.is_empty()
            && self.held.is_empty()
            && !self.life.local_waiting()
            && self.refetch.is_none()
            && (self.peers.is_empty() || self.doc.get_missing_deps(&[]).is_empty())
    }

    /// Every change in `heads` is in the document.
    pub(super) fn holds(&self, heads: &[ChangeHash]) -> bool {
        heads.iter().all(|h| self.doc.get_change_by_hash(h).is_some())
    }

    /// Some peer for which `is_upstream` holds shares our heads: an
    /// upstream acknowledged every change we have.
    pub(super) fn acknowledged_by(&self, is_upstream: impl Fn(&ConnId) -> bool) -> bool {
        let heads = self.doc.get_heads();
        self.peers.iter().any(|(conn, pd)| is_upstream(conn) && heads.iter().all(|h| pd.sync.shared_heads.contains(h)))
    }

    pub(super) fn touch(&mut self, now: Millis) {
        self.last_active = now;
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
        self.insert_doc(doc_id, DocState::new(actor, now, Lifecycle::reading()));
        self.out.storage(TaskPurpose::LoadDoc(doc_id), StorageTask::LoadDoc { doc: doc_id });
    }

    /// Makes sure we have a sync state for this peer on this document,
    /// loading the persisted one for peers with a storage id.
    pub(super) fn ensure_peer_doc(&mut self, doc_id: DocumentId, conn: ConnId) {
        let storage = self.conns.get(&conn).and_then(|c| c.storage_id().cloned());
        let Some(d) = self.docs.get_mut(&doc_id) else { return };
        if d.peers.contains_key(&conn) {
            return;
        }
        d.peers.insert(conn, Box::new(PeerDoc::new()));
        d.dirty.insert(conn);
        if let Some(peer) = storage {
            d.life.start_state_load(conn);
            self.out
                .storage(TaskPurpose::LoadSyncState(doc_id, conn), StorageTask::LoadSyncState { doc: doc_id, peer });
        }
    }

    pub(super) fn attach_upstream(&mut self, now: Millis, doc_id: DocumentId, conn: ConnId) {
        self.subscribe(conn, doc_id);
        self.ensure_peer_doc(doc_id, conn);
        if let Some(d) = self.docs.get_mut(&doc_id) {
            d.touch(now);
        }
    }
}
