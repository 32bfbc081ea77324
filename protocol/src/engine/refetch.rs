//! The last resort of divergence repair (issue 17): our copy of a document
//! that stays apart from its upstream (the hub, as seen from an edge) after
//! [`MAX_REPAIRS`] forced resyncs is **quarantined and fetched again**.
//!
//! The case it is for: a copy that cannot take the upstream's changes, so
//! no resync ever brings them. Automerge refuses a change whose actor and
//! sequence number it already holds under another hash (an actor id reused
//! by a cloned device or a restored backup: `DuplicateSeqNumber`), and
//! after that refusal the two sides' sync goes quiet for good. Each side
//! holds something the other refuses.
//!
//! The repair keeps serving the old copy while the upstream's is fetched
//! beside it, as a fresh peer would fetch it: the upstream's messages for
//! the document go to that side copy ([`Refetch`]), nothing of the old copy
//! goes to the upstream. Once the side copy holds the heads the upstream
//! advertises, it replaces the old one: every change of ours it lacks is
//! applied to it again, one at a time in causal order (so the changes the
//! upstream never got, from clients that were writing here, are kept and
//! sent on); a change it refuses, and whatever depends on it, is left out.
//! The old copy's chunks go to the store's quarantine in the same
//! transaction that stores the new copy ([`StorageTask::Quarantine`](crate::storage::StorageTask::Quarantine)), so
//! nothing is lost: what was left out can be inspected there. Every peer's
//! sync state starts afresh against the new copy (a client still holding a
//! refused change is refused again, as bad input).
//!
//! One document is refetched at most once per [`REFETCH_AGAIN_AFTER_MS`]:
//! a copy still apart after that stays reported divergent, for an operator.
//! Off unless [`EngineConfig::refetch_divergent`](super::EngineConfig::refetch_divergent)
//! (edges turn it on; a browser keeps its copy).

use automerge::sync::{self, SyncDoc};
use automerge::{Automerge, ChangeHash, ReadDoc};

use crate::ids::{ConnId, DocumentId};

use super::conn::Conn;
use super::replicas::MAX_REPAIRS;
use super::{Engine, Event, Millis};

/// A document is refetched at most once in this long.
pub const REFETCH_AGAIN_AFTER_MS: u64 = 60 * 60 * 1000;
/// A refetch that has not brought the upstream's copy in this long is
/// given up (the old copy goes on syncing as before).
const REFETCH_GIVE_UP_MS: u64 = 120_000;

/// The upstream's copy of a document being fetched beside ours.
#[derive(Debug)]
pub(super) struct Refetch {
    pub(super) conn: ConnId,
    doc: Automerge,
    sync: sync::State,
    since: Millis,
}

impl Refetch {
    /// It holds the heads the upstream advertised (and they are not none).
    fn complete(&self) -> bool {
        self.sync
            .their_heads
            .as_ref()
            .is_some_and(|h| !h.is_empty() && h.iter().all(|h| self.doc.get_change_by_hash(h).is_some()))
    }
}

impl Engine {
    /// Whether our copy of `doc_id` may be refetched from `conn`: it is a
    /// ready upstream, nothing is being fetched already, and the document
    /// was not refetched in the last [`REFETCH_AGAIN_AFTER_MS`].
    pub(super) fn may_refetch(&self, now: Millis, doc_id: &DocumentId, conn: ConnId) -> bool {
        self.config.refetch_divergent
            && self.conns.get(&conn).is_some_and(Conn::is_upstream_ready)
            && self.docs.get(doc_id).is_some_and(|d| d.refetch.is_none() && d.has_data())
            && self.refetched.get(doc_id).is_none_or(|at| now.0.saturating_sub(at.0) >= REFETCH_AGAIN_AFTER_MS)
    }

    /// Starts fetching the upstream's copy of `doc_id` beside ours: a
    /// request from an empty copy, as a fresh peer sends.
    pub(super) fn start_refetch(&mut self, now: Millis, doc_id: DocumentId, conn: ConnId) {
        let actor = self.random_actor();
        let Some(d) = self.docs.get_mut(&doc_id) else { return };
        let mut r = Refetch { conn, doc: Automerge::new().with_actor(actor), sync: sync::State::new(), since: now };
        let first = r.doc.generate_sync_message(&mut r.sync).map(|m| m.encode());
        d.refetch = Some(Box::new(r));
        self.refetched.insert(doc_id, now);
        tracing::warn!(
            doc = %doc_id, %conn,
            "this copy stays apart from the upstream's after {MAX_REPAIRS} resyncs: fetching the upstream's copy to replace it (the old one goes to the quarantine)"
        );
        if let Some(data) = first {
            self.send_doc_message(conn, doc_id, data, false);
        }
    }

    /// Whether a message from `conn` about `doc_id` belongs to a refetch.
    pub(super) fn is_refetching_from(&self, doc_id: &DocumentId, conn: ConnId) -> bool {
        self.docs.get(doc_id).and_then(|d| d.refetch.as_ref()).is_some_and(|r| r.conn == conn)
    }

    /// The upstream's message for the side copy: applied to it and
    /// answered from it; the copy replaces ours once complete.
    pub(super) fn refetch_received(&mut self, now: Millis, doc_id: DocumentId, message: sync::Message) {
        let Some(d) = self.docs.get_mut(&doc_id) else { return };
        let Some(r) = d.refetch.as_mut() else { return };
        let conn = r.conn;
        if let Err(e) = r.doc.receive_sync_message(&mut r.sync, message) {
            // The upstream's own copy does not load here: nothing to gain.
            tracing::warn!(doc = %doc_id, %conn, error = %e, "refetch given up: the upstream's copy does not apply");
            return self.abandon_refetch(now, doc_id);
        }
        // Complete: nothing more to ask, and the copy's heads are not ours
        // to advertise before it is stored (it speaks once durable, after
        // `finish_refetch`). Incomplete: it asks for the rest (its heads are
        // then the upstream's own changes, durable there).
        if r.complete() {
            return self.finish_refetch(now, doc_id);
        }
        let has_data = !r.doc.get_heads().is_empty();
        let reply = r.doc.generate_sync_message(&mut r.sync).map(|m| m.encode());
        if let Some(data) = reply {
            self.send_doc_message(conn, doc_id, data, has_data);
        }
    }

    /// Housekeeping of refetches: one whose upstream left, or that took too
    /// long, is given up; one that completed while the document was busy
    /// replaces the copy now.
    pub(super) fn check_refetches(&mut self, now: Millis) {
        self.refetched.retain(|_, at| now.0.saturating_sub(at.0) < REFETCH_AGAIN_AFTER_MS);
        let docs: Vec<DocumentId> = self.docs.iter().filter(|(_, d)| d.refetch.is_some()).map(|(id, _)| *id).collect();
        for doc_id in docs {
            let Some(r) = self.docs.get(&doc_id).and_then(|d| d.refetch.as_ref()) else { continue };
            if r.complete() {
                // Waited for the document to be idle: it may be now.
                self.finish_refetch(now, doc_id);
                continue;
            }
            let gone = !self.conns.get(&r.conn).is_some_and(Conn::is_upstream_ready);
            if gone || now.0.saturating_sub(r.since.0) >= REFETCH_GIVE_UP_MS {
                tracing::warn!(doc = %doc_id, gone, "refetch given up: the upstream left or did not send its copy");
                self.abandon_refetch(now, doc_id);
            }
        }
    }

    /// Drops the side copy; the old copy syncs with the upstream again,
    /// from a fresh sync state, and may be offered the last resort again
    /// once [`REFETCH_AGAIN_AFTER_MS`] passed.
    fn abandon_refetch(&mut self, now: Millis, doc_id: DocumentId) {
        let Some(d) = self.docs.get_mut(&doc_id) else { return };
        let Some(r) = d.refetch.take() else { return };
        if let Some(pd) = d.peers.get_mut(&r.conn) {
            pd.start_over();
            d.dirty.insert(r.conn);
        }
        self.sync_doc(now, doc_id);
    }

    /// Replaces our copy with the fetched one, if it is complete and the
    /// document is not busy (loading, applying off the loop, writing).
    pub(super) fn finish_refetch(&mut self, now: Millis, doc_id: DocumentId) {
        let Some(d) = self.docs.get_mut(&doc_id) else { return };
        if !d.refetch.as_ref().is_some_and(|r| r.complete()) || d.busy() || d.writes_in_flight > 0 {
            return;
        }
        let Some(r) = d.refetch.take() else { return };
        let old = std::mem::replace(&mut d.doc, r.doc);
        let (restored, left) = restore(&mut d.doc, &old);
        let reason = format!(
            "divergent: the copy stayed apart from the upstream's after {MAX_REPAIRS} resyncs and was replaced by it; {left} of its changes could not be applied to it"
        );
        d.saved_heads = d.doc.get_heads();
        d.write_whole(doc_id, Some(reason), &mut self.out);
        // Every peer compares against the new copy from the start.
        for (conn, pd) in &mut d.peers {
            pd.start_over();
            pd.answered_at = None;
            d.dirty.insert(*conn);
        }
        d.generated = Default::default();
        d.synced_heads.clear();
        self.replica_watch.retain(|(doc, _), _| *doc != doc_id);
        if let Some(followed) = self.replica_lag.remove(&doc_id) {
            self.replica_lag_len -= followed.len();
        }
        self.stats.refetches += 1;
        tracing::warn!(
            doc = %doc_id, restored, left,
            "copy replaced by the upstream's: the old one is in the quarantine; changes of ours it lacked were applied again"
        );
        self.out.event(Event::DocUpdated { doc: doc_id });
        self.out.event(Event::Refetched { doc: doc_id, restored, left });
        // Answered once the new copy is durable (`write_done`).
        self.sync_doc(now, doc_id);
    }
}

/// Applies to `fresh` every change of `old` it lacks, one at a time in
/// causal order; a change it refuses and the changes that depend on it are
/// left out (none stays queued for a missing dependency). Returns how many
/// were applied and how many left out.
fn restore(fresh: &mut Automerge, old: &Automerge) -> (u64, u64) {
    let mut skipped: std::collections::HashSet<ChangeHash> = std::collections::HashSet::new();
    let (mut restored, mut left) = (0, 0);
    for change in old.get_changes(&[]) {
        let hash = change.hash();
        if fresh.get_change_by_hash(&hash).is_some() {
            continue;
        }
        if change.deps().iter().any(|d| skipped.contains(d)) {
            skipped.insert(hash);
            left += 1;
            continue;
        }
        match fresh.apply_changes([change]) {
            Ok(()) if fresh.get_change_by_hash(&hash).is_some() => restored += 1,
            _ => {
                skipped.insert(hash);
                left += 1;
            }
        }
    }
    (restored, left)
}
