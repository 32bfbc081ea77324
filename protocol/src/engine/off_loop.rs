//! Applying a document's messages away from the engine's thread.
//!
//! Automerge applies a peer's changes to a long text in time that grows
//! with the text (about 0.2 s per call at a million characters, whatever
//! the change), and the engine serves every document from one thread. A
//! drain whose cost is estimated past [`EngineConfig::apply_off_loop_ops`]
//! is therefore handed to the driver as an [`ApplyJob`]: a copy of the
//! document (cheap: automerge's columns are shared until written) and of
//! the senders' sync states, which any thread may run. Meanwhile the
//! document keeps serving reads from what it holds, takes local changes,
//! and queues peers' messages; it sends no sync message (its heads are about
//! to move). [`Engine::handle_applied`] swaps the result in, adds the local
//! changes made meanwhile, and goes on as after any drain.
//!
//! [`EngineConfig::apply_off_loop_ops`]: super::EngineConfig::apply_off_loop_ops

use automerge::sync::{self, SyncDoc};
use automerge::{Automerge, ChangeHash, ReadDoc};

use crate::ids::{ConnId, DocumentId};

use super::apply::known_heads_of_read_only;
use super::doc::DocState;
use super::snapshot_answer::answered_from_snapshot;
use super::{Engine, Millis};

/// One peer's (possibly merged) message, ready for automerge.
#[derive(Clone, Debug)]
pub(super) struct Item {
    pub(super) conn: ConnId,
    pub(super) merged: u64,
    /// Operations its changes hold, as counted for a client (0 otherwise).
    pub(super) ops: u64,
    /// Count it as a client's write (for placement) if it moves our heads.
    pub(super) count_write: bool,
    pub(super) read_only: bool,
    /// The heads of the snapshot the peer was answered from before the load.
    pub(super) answered_at: Option<Vec<ChangeHash>>,
    pub(super) message: sync::Message,
}

/// What applying an [`Item`] gave.
#[derive(Debug)]
pub(super) struct Outcome {
    pub(super) conn: ConnId,
    pub(super) merged: u64,
    /// `Ok(true)`: a counted write moved our heads.
    pub(super) result: Result<bool, String>,
    /// The heads the message advertised, if it failed to apply (automerge
    /// does not take them then).
    pub(super) failed_heads: Option<Vec<ChangeHash>>,
}

/// Applies one message to `doc` with the peer's sync state.
pub(super) fn receive(doc: &mut Automerge, state: &mut sync::State, item: Item) -> Outcome {
    let Item { conn, merged, count_write, read_only, answered_at, mut message, .. } = item;
    if read_only {
        message.heads = known_heads_of_read_only(doc, &message);
    }
    // An empty message whose heads equal ours makes automerge record
    // those heads as sent (`last_sent_heads`), so it generates nothing
    // more. But heads whose write is in flight (or not yet issued) were
    // never sent, and advertising them is how the peer learns its
    // changes are stored: keep the heads we really sent.
    let echoes_ours = message.changes.is_empty() && !message.heads.is_empty() && message.heads == doc.get_heads();
    let last_sent = state.last_sent_heads.clone();
    let before = if count_write { doc.get_heads() } else { Vec::new() };
    // Its request, answered from the snapshot before the load: that
    // answer stands if the document holds what the snapshot held (it may
    // hold more: a writer's changes applied before this request are
    // then sent as what lies beyond the snapshot's heads).
    let answered = answered_at.filter(|h| {
        h.iter().all(|c| doc.get_change_by_hash(c).is_some()) && message.heads.is_empty() && message.changes.is_empty()
    });
    let outcome = |result| Outcome { conn, merged, result, failed_heads: None };
    let heads = message.heads.clone();
    if let Err(e) = doc.receive_sync_message(state, message) {
        return Outcome { failed_heads: Some(heads), ..outcome(Err(e.to_string())) };
    }
    // A peer that says it needs changes we sent did not keep them (it
    // evicted the document while they waited for a dependency, say),
    // and automerge never sends a change twice on one connection: it
    // gets them again.
    if let Some(need) = &state.their_need {
        for h in need {
            state.sent_hashes.remove(h);
        }
    }
    if let Some(heads) = answered {
        answered_from_snapshot(state, heads);
        return outcome(Ok(false));
    }
    if echoes_ours {
        state.last_sent_heads = last_sent;
        return outcome(Ok(false));
    }
    outcome(Ok(count_write && doc.get_heads() != before))
}

/// A document's messages to apply away from the engine's thread
/// ([`super::Output::Apply`]): run it anywhere, then hand the result to
/// [`Engine::handle_applied`].
#[derive(Clone, Debug)]
pub struct ApplyJob {
    doc_id: DocumentId,
    ticket: u64,
    doc: Automerge,
    items: Vec<(Item, sync::State)>,
}

/// Jobs are told apart by document and number (for comparing outputs).
impl PartialEq for ApplyJob {
    fn eq(&self, other: &Self) -> bool {
        (self.doc_id, self.ticket) == (other.doc_id, other.ticket)
    }
}

impl ApplyJob {
    pub fn doc(&self) -> DocumentId {
        self.doc_id
    }

    /// Applies the messages in order (the costly part).
    pub fn run(self) -> Applied {
        let ApplyJob { doc_id, ticket, mut doc, items } = self;
        let mut outcomes = Vec::with_capacity(items.len());
        for (item, mut state) in items {
            outcomes.push((receive(&mut doc, &mut state, item), state));
        }
        Applied { doc_id, ticket, doc, outcomes }
    }
}

/// A finished [`ApplyJob`].
#[derive(Debug)]
pub struct Applied {
    doc_id: DocumentId,
    ticket: u64,
    doc: Automerge,
    outcomes: Vec<(Outcome, sync::State)>,
}

impl Applied {
    /// The document it was applied to.
    pub fn doc(&self) -> DocumentId {
        self.doc_id
    }
}

/// A document's job in progress: which one, and what the drain that made it
/// needs to finish.
#[derive(Debug)]
pub(super) struct Ticket {
    id: u64,
    /// Our heads when the job was made.
    before: Vec<ChangeHash>,
    /// Its changes may confirm the home's (see `follows_home_lag`).
    followed: bool,
}

impl DocState {
    /// The cost of applying `items`, in operations: the document's (a
    /// change to a text costs in proportion to the text) and those the
    /// messages bring (counted for clients; for links between nodes, which
    /// are not counted, their bytes stand in).
    pub(super) fn apply_cost(&self, items: &[Item]) -> u64 {
        let bytes = |i: &Item| i.message.changes.iter().map(|c| c.len() as u64).sum::<u64>();
        let brought: u64 = items.iter().filter(|i| !i.message.changes.is_empty()).map(|i| i.ops.max(bytes(i))).sum();
        if brought == 0 {
            return 0;
        }
        self.doc.stats().num_ops.saturating_add(brought)
    }

    /// Hands `items` over as a job on a copy of the document; the document
    /// is busy until its result is in.
    pub(super) fn start_job(
        &mut self,
        doc_id: DocumentId,
        next_job: &mut u64,
        before: Vec<ChangeHash>,
        followed: bool,
        items: Vec<Item>,
    ) -> ApplyJob {
        *next_job += 1;
        let ticket = *next_job;
        let items = items
            .into_iter()
            .map(|item| {
                let state = self.peers.get(&item.conn).map(|pd| pd.sync.clone()).unwrap_or_default();
                (item, state)
            })
            .collect();
        self.applying = Some(Ticket { id: ticket, before, followed });
        ApplyJob { doc_id, ticket, doc: self.doc.clone(), items }
    }
}

impl Engine {
    /// An [`ApplyJob`] finished: its document takes the result (with the
    /// local changes made meanwhile), the senders' sync states are theirs
    /// again, and the document goes on as after any drain. A result for a
    /// document that left memory since (a failed write, say) is dropped.
    pub fn handle_applied(&mut self, now: Millis, applied: Applied) {
        let Applied { doc_id, ticket, mut doc, outcomes } = applied;
        let Some(d) = self.docs.get_mut(&doc_id) else { return };
        let Some(Ticket { before, followed, .. }) = d.applying.take_if(|t| t.id == ticket) else { return };
        if d.doc.get_heads() != before {
            let local: Vec<automerge::Change> = d.doc.get_changes(&before);
            if let Err(e) = doc.apply_changes(local) {
                // Our own changes, already in memory: they cannot fail to apply.
                tracing::error!(doc = %doc_id, "local changes made while applying were refused: {e}");
            }
        }
        d.doc = doc;
        let outcomes = outcomes
            .into_iter()
            .map(|(outcome, state)| {
                if let Some(pd) = d.peers.get_mut(&outcome.conn) {
                    pd.sync = state;
                }
                outcome
            })
            .collect();
        self.after_apply(now, doc_id, before, followed, outcomes);
        self.take_waiting_stored_elsewhere(now, doc_id);
        self.drain_pending(now, doc_id);
    }
}
