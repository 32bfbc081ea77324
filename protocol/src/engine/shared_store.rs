//! A store shared with other nodes: hubs on one database (issue 16). What
//! another hub committed reaches this engine in two ways, both handed in
//! by the driver: its chunk, told by the bus after the commit
//! ([`Engine::handle_stored_elsewhere`]), and, after a gap in what the bus
//! delivered, a fresh read of the document ([`Engine::refresh_from_store`]).
//! Either way the changes are in the store already: they are applied and
//! taken as stored (never written again) and synced to our peers like our
//! own durable changes.

use automerge::ReadDoc;

use crate::ids::DocumentId;
use crate::storage::StorageTask;

use super::effects::TaskPurpose;
use super::{Engine, Millis};

/// Chunks kept per document while it cannot take them (loading, or
/// applying off the loop); past it, the document is read again instead.
const MAX_WAITING: usize = 64;

impl Engine {
    /// Another node sharing our store committed `bytes` (automerge chunks,
    /// as written) for `doc_id`. A document not in memory is loaded if a
    /// peer is subscribed to it (evicted while they still hold it: the load
    /// reads the chunk and syncs it to them), else left alone (its next
    /// load reads them); one loading or applying off the loop takes them
    /// once that is done.
    pub fn handle_stored_elsewhere(&mut self, now: Millis, doc_id: DocumentId, bytes: Vec<u8>) {
        let Some(d) = self.docs.get_mut(&doc_id) else {
            self.load_if_subscribed(now, doc_id);
            return;
        };
        if d.busy() {
            if d.stored_elsewhere.len() < MAX_WAITING {
                d.stored_elsewhere.push(bytes);
            } else {
                d.refresh_wanted = true;
            }
            return;
        }
        self.take_stored_elsewhere(now, doc_id, vec![bytes]);
    }

    /// Reads the document from the store again and takes what it holds
    /// (after a gap in what the bus delivered: a reconnect, a lost
    /// message). A document not in memory is loaded if a peer is
    /// subscribed to it (it may have missed what the gap hid), else needs
    /// nothing.
    pub fn refresh_from_store(&mut self, now: Millis, doc_id: DocumentId) {
        if self.docs.contains_key(&doc_id) {
            self.out.storage(TaskPurpose::Refresh(doc_id), StorageTask::ReadDoc { doc: doc_id });
        } else {
            self.load_if_subscribed(now, doc_id);
        }
    }

    /// Every document in memory or subscribed to, read again
    /// ([`Self::refresh_from_store`]).
    pub fn refresh_all_from_store(&mut self, now: Millis) {
        let docs: std::collections::BTreeSet<DocumentId> =
            self.docs.keys().chain(self.subscribers.keys()).copied().collect();
        for doc in docs {
            self.refresh_from_store(now, doc);
        }
    }

    /// Loads an evicted document a peer is still subscribed to.
    fn load_if_subscribed(&mut self, now: Millis, doc_id: DocumentId) {
        if self.subscribers.get(&doc_id).is_some_and(|s| !s.is_empty()) {
            self.ensure_doc(now, doc_id);
        }
    }

    /// A refresh's read is in.
    pub(super) fn refreshed(&mut self, now: Millis, doc_id: DocumentId, bytes: Option<Vec<u8>>) {
        if let Some(bytes) = bytes {
            self.handle_stored_elsewhere(now, doc_id, bytes);
        }
    }

    /// Takes what waited while the document was busy, once it is not.
    pub(super) fn take_waiting_stored_elsewhere(&mut self, now: Millis, doc_id: DocumentId) {
        let Some(d) = self.docs.get_mut(&doc_id) else { return };
        if d.busy() {
            return;
        }
        if std::mem::take(&mut d.refresh_wanted) {
            d.stored_elsewhere.clear();
            return self.refresh_from_store(now, doc_id);
        }
        let waiting = std::mem::take(&mut d.stored_elsewhere);
        if !waiting.is_empty() {
            self.take_stored_elsewhere(now, doc_id, waiting);
        }
    }

    /// Applies chunks that are in the store already: if everything we had
    /// was stored (or its write issued) and nothing waited for a
    /// dependency, the new heads are too, and nothing is written; otherwise
    /// our next write carries them along with what it must store (a
    /// duplicate the next compaction drops).
    fn take_stored_elsewhere(&mut self, now: Millis, doc_id: DocumentId, chunks: Vec<Vec<u8>>) {
        let Some(d) = self.docs.get_mut(&doc_id) else { return };
        let before = d.doc.get_heads();
        // Changes a peer sent that wait in automerge's queue for a
        // dependency are applied by a chunk that brings it: they are in
        // the new heads but in no store (found by the simulation, cloud
        // seed 1995), so the new heads are written then.
        let unsaved = d.saved_heads != before || !d.doc.get_missing_deps(&[]).is_empty();
        for chunk in chunks {
            if let Err(error) = d.doc.load_incremental(&chunk) {
                tracing::warn!(doc = %doc_id, %error, "changes stored elsewhere do not load; reading the store again");
                d.refresh_wanted = true;
            }
        }
        if !unsaved {
            d.saved_heads = d.doc.get_heads();
        }
        self.stats.stored_elsewhere += 1;
        self.after_doc_update(now, doc_id, before);
        if self.docs.get_mut(&doc_id).is_some_and(|d| std::mem::take(&mut d.refresh_wanted)) {
            self.refresh_from_store(now, doc_id);
        }
    }
}
