//! The snapshot answer: a fresh peer gets the stored snapshot before the
//! document is loaded ([`Engine::answer_from_snapshot`]).

use std::collections::BTreeSet;

use automerge::{ChangeHash, sync};

use crate::ids::{ConnId, DocumentId};
use crate::storage::StorageTask;

use super::Engine;
use super::doc::DocState;
use super::effects::TaskPurpose;

impl Engine {
    /// A fresh peer gets the stored snapshot first: when the stored
    /// document is one whole-document chunk (as compaction leaves it) and
    /// peers that have nothing of it are waiting with a `request`, they get
    /// those bytes as automerge's whole-document sync message right away,
    /// and the document is loaded on a second read of the store. Loading a
    /// large document costs automerge far more than reading it (0.5 s
    /// against milliseconds for 800 KiB), and the peer needs the same time
    /// to load what it receives: this way the two loads overlap instead of
    /// following each other. The snapshot is durable, so advertising its
    /// heads keeps "durable before advertised". Returns whether it answered
    /// (and the document is being read again). `bytes` are one document
    /// chunk with these (non-empty) `heads`; it answers once per load.
    pub(super) fn answer_from_snapshot(&mut self, doc_id: DocumentId, bytes: &[u8], heads: Vec<ChangeHash>) -> bool {
        let Some(d) = self.docs.get_mut(&doc_id) else { return false };
        let fresh = d.fresh_requesters();
        if fresh.is_empty() {
            return false;
        }
        let data = snapshot_message(heads.clone(), bytes);
        d.life.answered();
        for conn in &fresh {
            if let Some(pd) = d.peers.get_mut(conn) {
                pd.answered_at = Some(heads.clone());
            }
        }
        self.stats.snapshot_answers += fresh.len() as u64;
        for conn in fresh {
            self.send_doc_message(conn, doc_id, data.clone(), true);
        }
        self.out.storage(TaskPurpose::LoadDoc(doc_id), StorageTask::LoadDoc { doc: doc_id });
        true
    }
}

impl DocState {
    /// Peers whose first waiting message is a request from a peer with
    /// nothing and no sync history with us, able to take a whole document
    /// (automerge's v2 messages, which come with flags).
    fn fresh_requesters(&self) -> Vec<ConnId> {
        let mut seen = BTreeSet::new();
        let mut fresh = Vec::new();
        for p in &self.pending {
            if !seen.insert(p.conn) {
                continue;
            }
            let m = &p.message;
            let has_nothing = m.heads.is_empty() && m.need.is_empty() && m.changes.is_empty();
            let no_history = self.peers.get(&p.conn).is_some_and(|pd| pd.sync.their_heads.is_none());
            if p.requesting
                && has_nothing
                && m.flags.is_some()
                && m.have.iter().all(|h| h.last_sync.is_empty())
                && no_history
                && !self.life.state_loading(&p.conn)
            {
                fresh.push(p.conn);
            }
        }
        fresh
    }
}

/// Automerge's whole-document sync message carrying the stored snapshot.
fn snapshot_message(heads: Vec<ChangeHash>, bytes: &[u8]) -> Vec<u8> {
    let mut flags = sync::MessageFlags::new();
    flags.set(sync::MessageFlags::SUPPORTS_SYNC_RESET);
    // No `have`: we claim nothing about the peer's changes, so it sends
    // none until our heads show it what we lack (then we `need` them).
    sync::Message {
        heads,
        need: Vec::new(),
        have: Vec::new(),
        changes: vec![bytes.to_vec()].into(),
        flags: Some(flags),
        version: sync::MessageVersion::V2,
    }
    .encode()
}

/// A peer's sync state once its `request` (applied after the load) and our
/// answer from the snapshot at `heads` are both accounted for: we sent
/// those heads (so automerge sends nothing more while it is in flight),
/// and what we send next is what we have beyond them (its `have` is the
/// snapshot's heads with nothing else: an empty bloom filter contains
/// nothing). Its own heads stay unknown until it answers, so nobody
/// (a hand-off's catch-up) takes it to hold the document before it says
/// so. Automerge itself would record every hash it sent instead;
/// listing them needs the loaded document's every change.
pub(super) fn answered_from_snapshot(s: &mut sync::State, heads: Vec<ChangeHash>) {
    s.their_heads = None;
    s.their_have = Some(vec![sync::Have { last_sync: heads.clone(), bloom: sync::BloomFilter::default() }]);
    s.their_need = Some(Vec::new());
    s.last_sent_heads = heads;
    s.have_responded = true;
    s.in_flight = true;
}
