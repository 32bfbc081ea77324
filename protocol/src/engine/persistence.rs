//! Persistence: the write pipeline (appends, compaction), storage results and failures.

use automerge::ChangeHash;
use automerge::sync;

use crate::ids::{ConnId, DocumentId};
use crate::storage::{StorageResult, StorageTask, StorageTaskId};

use super::conn::*;
use super::*;

#[derive(Debug)]
pub(super) enum TaskPurpose {
    LoadDoc(DocumentId),
    Write(DocumentId),
    /// Our copy is dropped after an upstream acknowledged all of it.
    Offload(DocumentId),
    LoadSyncState(DocumentId, ConnId),
    PutSyncState,
}

impl Engine {
    /// After the document may have changed: persist new changes, then (once
    /// durable) answer every peer.
    pub(super) fn after_doc_update(&mut self, now: Millis, doc_id: DocumentId, before: Vec<ChangeHash>) {
        let Some(d) = self.docs.get_mut(&doc_id) else { return };
        let heads = d.doc.get_heads();
        if heads != before {
            self.event(Event::DocUpdated { doc: doc_id });
        }
        let Some(d) = self.docs.get_mut(&doc_id) else { return };
        if heads != before && heads != d.saved_heads {
            d.upstream_unavailable.clear();
            if d.saved_heads.is_empty() && d.store_empty {
                // Nothing stored yet: the first write is a snapshot. A chunk
                // of everything would be as large as one, and a large
                // document (an upload) would then be compacted right away:
                // two full saves on this thread instead of one.
                d.saved_heads = heads;
                self.compact(doc_id);
            } else {
                let chunk = d.doc.save_after(&d.saved_heads);
                d.saved_heads = heads;
                d.writes_in_flight += 1;
                d.writes_issued += 1;
                d.chunk_bytes += chunk.len();
                let compact = d.chunk_bytes >= self.config.min_compact_bytes && d.chunk_bytes >= d.snapshot_bytes;
                self.storage(TaskPurpose::Write(doc_id), StorageTask::AppendChunk { doc: doc_id, data: chunk });
                if compact {
                    self.compact(doc_id);
                }
            }
            // New data goes upstream too, and to the document's home edge.
            let upstreams = self.upstream_conns();
            for up in upstreams.into_iter().chain(self.routes.get(&doc_id).copied()) {
                self.attach_upstream(now, doc_id, up);
            }
        }
        self.sync_doc(now, doc_id);
    }

    pub(super) fn compact(&mut self, doc_id: DocumentId) {
        let Some(d) = self.docs.get_mut(&doc_id) else { return };
        // Only applied changes, as appends store: changes waiting for a
        // dependency (automerge's queue, which `save` keeps by default) are
        // not ours to store yet; they are not in our heads, so their
        // sender still counts them unacknowledged and sends them again.
        let snapshot = d.doc.save_with_options(automerge::SaveOptions { deflate: true, retain_orphans: false });
        d.snapshot_bytes = snapshot.len();
        d.chunk_bytes = 0;
        d.writes_in_flight += 1;
        d.writes_issued += 1;
        self.storage(TaskPurpose::Write(doc_id), StorageTask::Compact { doc: doc_id, snapshot });
    }

    /// A storage task finished.
    pub fn handle_storage_result(&mut self, now: Millis, id: StorageTaskId, result: StorageResult) {
        let Some(purpose) = self.tasks.remove(&id) else { return };
        match (purpose, result) {
            (TaskPurpose::LoadDoc(doc_id), StorageResult::Loaded(bytes)) => self.doc_loaded(now, doc_id, bytes),
            (TaskPurpose::LoadSyncState(doc_id, conn), StorageResult::Loaded(bytes)) => {
                self.sync_state_loaded(now, doc_id, conn, bytes)
            }
            (TaskPurpose::Write(doc_id), StorageResult::Done) => self.write_done(now, doc_id),
            (TaskPurpose::PutSyncState, StorageResult::Done) => {}
            (TaskPurpose::Offload(doc), StorageResult::Done) => tracing::debug!(%doc, "local copy dropped"),
            (purpose, StorageResult::Failed(detail)) => self.storage_failed(now, purpose, detail),
            // A store answering the wrong kind of result is broken: treated
            // as a failure, so nothing waits for it forever.
            (purpose, result) => {
                let kind = if matches!(result, StorageResult::Done) { "done" } else { "loaded" };
                let detail = format!("storage result `{kind}` does not match its task {purpose:?}");
                self.storage_failed(now, purpose, detail);
            }
        }
    }

    pub(super) fn doc_loaded(&mut self, now: Millis, doc_id: DocumentId, bytes: Option<Vec<u8>>) {
        if let Some(b) = &bytes
            && self.config.answer_from_snapshot
            && let Some(d) = self.docs.get_mut(&doc_id)
            && !d.answered_from_snapshot
            && !d.pending.is_empty()
            && let Some(heads) = crate::snapshot::document_heads(b).filter(|h| !h.is_empty())
        {
            // Whether waiting peers have nothing shows once their persisted
            // sync states are in ([`Self::states_loaded`]).
            if !d.loading_states.is_empty() {
                d.stored = bytes;
                return;
            }
            if self.answer_from_snapshot(doc_id, b, heads) {
                return;
            }
        }
        let Some(d) = self.docs.get_mut(&doc_id) else { return };
        d.loading = false;
        d.store_empty = bytes.is_none();
        let mut load_error = None;
        if let Some(bytes) = bytes {
            if let Err(e) = d.doc.load_incremental(&bytes) {
                load_error = Some(format!("stored document {doc_id} does not load: {e}"));
            }
            d.snapshot_bytes = bytes.len();
        }
        d.saved_heads = d.doc.get_heads();
        let has_data = d.has_data();
        let local = has_data && std::mem::take(&mut d.local_waiting);
        // Everyone subscribed before an eviction is attached again.
        let subs: Vec<ConnId> = self.subscribers.get(&doc_id).map(|s| s.iter().copied().collect()).unwrap_or_default();
        for conn in subs {
            if self.conns.get(&conn).is_some_and(|c| c.peer().is_some()) {
                self.ensure_peer_doc(doc_id, conn);
            }
        }
        if has_data {
            for up in self.upstream_conns() {
                self.attach_upstream(now, doc_id, up);
            }
            if let Some(route) = self.routes.get(&doc_id).copied() {
                self.attach_upstream(now, doc_id, route);
            }
        }
        if let Some(detail) = load_error {
            self.event(Event::StorageFailed { doc: Some(doc_id), detail });
        }
        if local {
            self.event(Event::DocReady { doc: doc_id });
        }
        self.drain_pending(now, doc_id);
        self.sync_doc(now, doc_id);
        self.maybe_offload(doc_id);
    }

    pub(super) fn sync_state_loaded(&mut self, now: Millis, doc_id: DocumentId, conn: ConnId, bytes: Option<Vec<u8>>) {
        let Some(d) = self.docs.get_mut(&doc_id) else { return };
        let Some(pd) = d.peers.get_mut(&conn) else { return };
        d.loading_states.remove(&conn);
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
        if d.loading_states.is_empty()
            && let Some(bytes) = d.stored.take()
        {
            return self.doc_loaded(now, doc_id, Some(bytes));
        }
        self.drain_pending(now, doc_id);
        self.sync_doc(now, doc_id);
        self.maybe_offload(doc_id);
    }

    pub(super) fn write_done(&mut self, now: Millis, doc_id: DocumentId) {
        let Some(d) = self.docs.get_mut(&doc_id) else { return };
        d.writes_in_flight = d.writes_in_flight.saturating_sub(1);
        d.writes_done += 1;
        if d.writes_in_flight == 0 {
            let heads = d.doc.get_heads();
            let local = std::mem::take(&mut d.local_waiting);
            self.event(Event::DocChanged { doc: doc_id, heads });
            if local {
                self.event(Event::DocReady { doc: doc_id });
            }
            self.sync_doc(now, doc_id);
        }
        self.drain_pending(now, doc_id);
    }

    pub(super) fn storage_failed(&mut self, now: Millis, purpose: TaskPurpose, detail: String) {
        let doc = match purpose {
            TaskPurpose::LoadDoc(d) | TaskPurpose::Write(d) | TaskPurpose::LoadSyncState(d, _) => Some(d),
            // A failed delete leaves the copy stored: nothing is lost.
            TaskPurpose::PutSyncState | TaskPurpose::Offload(_) => None,
        };
        tracing::error!(?doc, %detail, "storage task failed");
        self.event(Event::StorageFailed { doc, detail });
        // What is in memory may now be ahead of the store: forget it rather
        // than ever advertise it. The peers that synced it believe they
        // delivered their changes (automerge remembers what it sent on a
        // connection), so their connections are closed too: on reconnect
        // both sides start from what is really stored and the changes are
        // sent again.
        if let Some(doc_id) = doc {
            let Some(d) = self.docs.remove(&doc_id) else { return };
            if self.config.expects_upstream {
                // Reloaded from the store and synced when an upstream is
                // ready again.
                self.resync_on_upstream.insert(doc_id);
            }
            self.tasks.retain(|_, p| !matches!(p, TaskPurpose::LoadDoc(d) | TaskPurpose::Write(d) | TaskPurpose::LoadSyncState(d, _) if *d == doc_id));
            for conn in d.peers.keys() {
                self.close_for_storage_failure(*conn);
            }
            let _ = now;
        }
    }

    pub(super) fn close_for_storage_failure(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        if matches!(c.state, ConnState::Closed) {
            return;
        }
        c.state = ConnState::Closed;
        self.outputs.push_back(Output::Close { conn, reason: "storage failure; reconnect to resync".into() });
    }
}
