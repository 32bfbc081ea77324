//! Persistence: the write pipeline (appends, compaction), storage results
//! and failures. What goes to the store is only ever applied changes, and a
//! document's sync messages wait while its write is in flight (durable
//! before advertised, see [`Engine::sync_doc`]).

use automerge::{ChangeHash, ReadDoc, sync};

use crate::ids::{ConnId, DocumentId};
use crate::storage::{StorageResult, StorageTask, StorageTaskId};

use super::conn::ConnState;
use super::doc::DocState;
use super::effects::{Effects, TaskPurpose};
use super::{Engine, Event, Millis};

/// A document of at most this many operations is copied once it is first
/// durable in memory (see [`DocState::shrink_once`]).
const SHRINK_MAX_OPS: u64 = 10_000;

impl DocState {
    /// Issues the write of what changed since the last one (`heads` are
    /// the document's now), compacting when the chunks have grown.
    fn write_changes(
        &mut self,
        doc_id: DocumentId,
        heads: Vec<ChangeHash>,
        min_compact_bytes: usize,
        out: &mut Effects,
    ) {
        if self.saved_heads.is_empty() && self.life.nothing_stored() {
            // Nothing stored yet: the first write is a snapshot. A chunk
            // of everything would be as large as one, and a large
            // document (an upload) would then be compacted right away:
            // two full saves on this thread instead of one.
            self.saved_heads = heads;
            self.compact(doc_id, out);
            return;
        }
        let chunk = self.doc.save_after(&self.saved_heads);
        self.saved_heads = heads;
        self.writes_in_flight += 1;
        self.writes_issued += 1;
        self.chunk_bytes += chunk.len();
        let compact = self.chunk_bytes >= min_compact_bytes && self.chunk_bytes >= self.snapshot_bytes;
        out.storage(TaskPurpose::Write(doc_id), StorageTask::AppendChunk { doc: doc_id, data: chunk });
        if compact {
            self.compact(doc_id, out);
        }
    }

    fn compact(&mut self, doc_id: DocumentId, out: &mut Effects) {
        self.write_whole(doc_id, None, out);
    }

    /// Issues the write of the whole document as one snapshot replacing
    /// every stored chunk ([`StorageTask::Compact`]); with `quarantine`,
    /// the chunks it replaces go to the store's quarantine with that reason
    /// ([`StorageTask::Quarantine`], `refetch`).
    pub(super) fn write_whole(&mut self, doc_id: DocumentId, quarantine: Option<String>, out: &mut Effects) {
        // Only applied changes, as appends store: changes waiting for a
        // dependency (automerge's queue, which `save` keeps by default) are
        // not ours to store yet; they are not in our heads, so their
        // sender still counts them unacknowledged and sends them again.
        let snapshot = self.doc.save_with_options(automerge::SaveOptions { deflate: true, retain_orphans: false });
        self.snapshot_bytes = snapshot.len();
        self.chunk_bytes = 0;
        self.writes_in_flight += 1;
        self.writes_issued += 1;
        let task = match quarantine {
            None => StorageTask::Compact { doc: doc_id, snapshot },
            Some(reason) => StorageTask::Quarantine { doc: doc_id, snapshot, reason },
        };
        out.storage(TaskPurpose::Write(doc_id), task);
    }

    /// The first time the document is durable since it came into memory,
    /// a small one is replaced by its copy: automerge keeps room to grow in
    /// a document it built (12.7 KB for a two-key document loaded or
    /// received, 3.7 KB copied), and most documents an edge holds are
    /// small and idle. Once per stay in memory: a document being edited
    /// grows again, and copying it at every write would cost more than
    /// the room it frees.
    fn shrink_once(&mut self) {
        if self.shrunk || self.applying.is_some() {
            return;
        }
        self.shrunk = true;
        if self.doc.stats().num_ops <= SHRINK_MAX_OPS {
            self.doc = self.doc.clone();
        }
    }

    /// Loads the stored bytes into the (empty) document.
    fn load_stored(&mut self, bytes: Option<Vec<u8>>) -> Result<(), automerge::AutomergeError> {
        let mut result = Ok(());
        if let Some(bytes) = bytes {
            result = self.doc.load_incremental(&bytes).map(|_| ());
            self.snapshot_bytes = bytes.len();
        }
        self.saved_heads = self.doc.get_heads();
        result
    }
}

impl Engine {
    /// The store set a chunk of `doc_id` aside as corrupt (a scrub): if the
    /// document is in memory, everything it holds is written again as one
    /// snapshot, which heals the store's copy at once; if not, its next
    /// load reads what is left and peers bring the rest back by syncing.
    pub fn rewrite_stored(&mut self, _now: Millis, doc_id: DocumentId) {
        let Some(d) = self.docs.get_mut(&doc_id) else { return };
        if d.busy() {
            // Loading (it reads the store without that chunk) or applying
            // off the loop: its next compaction writes it whole.
            return;
        }
        d.compact(doc_id, &mut self.out);
    }

    /// After the document may have changed: persist new changes, then (once
    /// durable) answer every peer.
    pub(super) fn after_doc_update(&mut self, now: Millis, doc_id: DocumentId, before: Vec<ChangeHash>) {
        let Some(d) = self.docs.get_mut(&doc_id) else { return };
        let heads = d.doc.get_heads();
        if heads != before {
            self.out.event(Event::DocUpdated { doc: doc_id });
            if heads != d.saved_heads {
                d.upstream_unavailable.clear();
                d.write_changes(doc_id, heads, self.config.min_compact_bytes, &mut self.out);
                // New data goes upstream too, and to the document's home edge.
                let upstreams = self.upstream_conns();
                for up in upstreams.into_iter().chain(self.routes.get(&doc_id).copied()) {
                    self.attach_upstream(now, doc_id, up);
                }
            }
        }
        self.sync_doc(now, doc_id);
    }

    /// A storage task finished.
    pub fn handle_storage_result(&mut self, now: Millis, id: StorageTaskId, result: StorageResult) {
        let Some(purpose) = self.out.finished(id) else { return };
        match (purpose, result) {
            (TaskPurpose::LoadDoc(doc_id), StorageResult::Loaded(bytes)) => self.doc_loaded(now, doc_id, bytes),
            (TaskPurpose::LoadSyncState(doc_id, conn), StorageResult::Loaded(bytes)) => {
                self.sync_state_loaded(now, doc_id, conn, bytes)
            }
            (TaskPurpose::Write(doc_id), StorageResult::Done) => self.write_done(now, doc_id),
            (TaskPurpose::PutSyncState, StorageResult::Done) => {}
            (TaskPurpose::Refresh(doc_id), StorageResult::Loaded(bytes)) => self.refreshed(now, doc_id, bytes),
            (TaskPurpose::Offload(doc), StorageResult::Done) => tracing::debug!(%doc, "local copy dropped"),
            (purpose, StorageResult::Failed(detail)) => self.storage_failed(purpose, detail),
            // A store answering the wrong kind of result is broken: treated
            // as a failure, so nothing waits for it forever.
            (purpose, result) => {
                let kind = if matches!(result, StorageResult::Done) { "done" } else { "loaded" };
                let detail = format!("storage result `{kind}` does not match its task {purpose:?}");
                self.storage_failed(purpose, detail);
            }
        }
    }

    /// The store's read of a document is in (`None`: nothing stored). Fresh
    /// peers waiting may get the stored snapshot first (then the document
    /// is read again), or the bytes wait for peers' sync states; otherwise
    /// the document is loaded and everyone subscribed is attached again.
    pub(super) fn doc_loaded(&mut self, now: Millis, doc_id: DocumentId, bytes: Option<Vec<u8>>) {
        let Some(d) = self.docs.get_mut(&doc_id) else { return };
        if let Some(b) = &bytes
            && self.config.answer_from_snapshot
            && d.life.may_answer_from_snapshot()
            && !d.pending.is_empty()
            && let Some(heads) = crate::snapshot::document_heads(b).filter(|h| !h.is_empty())
        {
            // Whether waiting peers have nothing shows once their persisted
            // sync states are in ([`Self::states_loaded`]).
            if d.life.states_loading() {
                d.life.hold(bytes.unwrap_or_default());
                return;
            }
            if self.answer_from_snapshot(doc_id, b, heads) {
                return;
            }
        }
        let Some(d) = self.docs.get_mut(&doc_id) else { return };
        d.life.finish_load(bytes.is_none());
        let load_error = d.load_stored(bytes).err().map(|e| format!("stored document {doc_id} does not load: {e}"));
        let has_data = d.has_data();
        let local = has_data && d.life.take_local_waiting();
        // Everyone subscribed before an eviction is attached again.
        let subs: Vec<ConnId> = self.subscribers.get(&doc_id).map(|s| s.iter().copied().collect()).unwrap_or_default();
        for conn in subs {
            if self.conns.get(&conn).is_some_and(|c| c.peer().is_some()) {
                self.ensure_peer_doc(doc_id, conn);
            }
        }
        if has_data {
            for up in self.upstream_conns().into_iter().chain(self.routes.get(&doc_id).copied()) {
                self.attach_upstream(now, doc_id, up);
            }
        }
        if let Some(detail) = load_error {
            self.out.event(Event::StorageFailed { doc: Some(doc_id), detail });
        }
        if local {
            self.out.event(Event::DocReady { doc: doc_id });
        }
        self.settle(now, doc_id);
    }

    pub(super) fn sync_state_loaded(&mut self, now: Millis, doc_id: DocumentId, conn: ConnId, bytes: Option<Vec<u8>>) {
        let Some(d) = self.docs.get_mut(&doc_id) else { return };
        let Some(pd) = d.peers.get_mut(&conn) else { return };
        d.life.finish_state_load(&conn);
        d.dirty.insert(conn);
        if let Some(state) = bytes.and_then(|b| sync::State::decode(&b).ok()) {
            pd.sync = state;
        }
        self.states_loaded(now, doc_id);
    }

    /// A peer's sync state is in, or the peer left while it loaded: the
    /// document's waiting messages may go ahead (once every state is in),
    /// or the stored document kept for them is loaded now.
    pub(super) fn states_loaded(&mut self, now: Millis, doc_id: DocumentId) {
        let Some(d) = self.docs.get_mut(&doc_id) else { return };
        if let Some(bytes) = d.life.release() {
            return self.doc_loaded(now, doc_id, Some(bytes));
        }
        self.settle(now, doc_id);
    }

    /// What a document's new state may let go ahead: its waiting messages,
    /// answers to its peers, a pending offload.
    fn settle(&mut self, now: Millis, doc_id: DocumentId) {
        self.take_waiting_stored_elsewhere(now, doc_id);
        self.drain_pending(now, doc_id);
        self.sync_doc(now, doc_id);
        self.maybe_offload(doc_id);
    }

    pub(super) fn write_done(&mut self, now: Millis, doc_id: DocumentId) {
        let Some(d) = self.docs.get_mut(&doc_id) else { return };
        d.writes_in_flight = d.writes_in_flight.saturating_sub(1);
        d.writes_done += 1;
        if d.writes_in_flight == 0 {
            d.shrink_once();
            let heads = d.doc.get_heads();
            let local = d.life.take_local_waiting();
            self.out.event(Event::DocChanged { doc: doc_id, heads: heads.clone() });
            self.follow_to_replicas(now, doc_id, &heads);
            self.follow_to_home(now, doc_id, heads);
            if local {
                self.out.event(Event::DocReady { doc: doc_id });
            }
            self.sync_doc(now, doc_id);
            // A fetched copy that waited for this write replaces ours now.
            self.finish_refetch(now, doc_id);
        }
        self.drain_pending(now, doc_id);
    }

    fn storage_failed(&mut self, purpose: TaskPurpose, detail: String) {
        let doc = purpose.doc();
        tracing::error!(doc = %crate::log::Maybe(&doc), %detail, "storage task failed");
        self.out.event(Event::StorageFailed { doc, detail });
        // What is in memory may now be ahead of the store: forget it rather
        // than ever advertise it. The peers that synced it believe they
        // delivered their changes (automerge remembers what it sent on a
        // connection), so their connections are closed too: on reconnect
        // both sides start from what is really stored and the changes are
        // sent again.
        let Some(doc_id) = doc else { return };
        let Some(d) = self.remove_doc(doc_id) else { return };
        if self.config.expects_upstream {
            // Reloaded from the store and synced when an upstream is
            // ready again.
            self.resync_on_upstream.insert(doc_id);
        }
        self.out.forget_doc(doc_id);
        for conn in d.peers.keys() {
            self.close_for_storage_failure(*conn);
        }
    }

    fn close_for_storage_failure(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        if matches!(c.state, ConnState::Closed) {
            return;
        }
        c.state = ConnState::Closed;
        self.out.close(conn, "storage failure; reconnect to resync");
    }
}
