//! Fan-out: generating sync messages for a document's peers, shared between peers in the same state.

use std::collections::HashMap;

use automerge::sync::{self, SyncDoc};
use automerge::{Automerge, ChangeHash, ReadDoc};

use crate::codec::Message;
use crate::ids::{ConnId, DocumentId};

use super::doc::DocState;
use super::{Engine, EngineStats, Millis};

/// Sync messages already generated for the document at `heads`, by the
/// peer's sync state before generating: `generate_sync_message` is a pure
/// function of the document and that state, and peers that are in step
/// (a thousand watchers of one document, every fresh peer fetching it) have
/// equal states. So one change to a document with N watchers costs one
/// automerge generate, not N, and a fresh peer fetching a large document
/// reuses the saved document the previous one got.
#[derive(Debug, Default)]
pub(super) struct Generated {
    /// Look up and remember messages in this pass (see `revalidate`).
    pub(super) enabled: bool,
    /// The document has several peers: even small messages may be shared.
    pub(super) several_peers: bool,
    pub(super) heads: Vec<ChangeHash>,
    /// Hashed with foldhash, not SipHash: a state holds sets of hashes and
    /// bloom filters, and hashing them was a sixth of the edge's
    /// instructions per change in a fan-out (`cargo xtask bench cost`).
    /// A fixed seed keeps simulations reproducible; states crafted to
    /// collide cost at most [`GENERATED_STATES`] comparisons a lookup.
    pub(super) by_state: HashMap<sync::State, (sync::State, Option<Vec<u8>>), foldhash::fast::FixedState>,
    /// Roughly what `by_state` holds, in bytes.
    pub(super) bytes: usize,
}

/// A peer we sent changes has this long to answer before what came for it
/// since goes out anyway. Peers answer a message that moved their heads at
/// once; one that already had the changes need not answer.
pub(super) const REPLY_WAIT_MS: u64 = 500;

/// Several people writing one document: changes for a client that wrote
/// in the last [`CO_WRITER_MS`] go out at most every
/// [`EngineConfig::co_writer_spacing_ms`](super::EngineConfig), folded into
/// one message. Such a client answers our messages within milliseconds, so
/// answers alone fold little. A client that only reads (watchers of a lone
/// writer) is never held, nor is a link to another node (it relays other
/// people's changes); a writer's acknowledgement waits only when others'
/// changes for it are waiting too, and goes with them.
pub(super) const CO_WRITER_MS: u64 = 2000;

/// At most this many distinct sync states are remembered per document...
pub(super) const GENERATED_STATES: usize = 256;
/// ...holding at most about this many bytes.
pub(super) const GENERATED_BYTES: usize = 8 << 20;
/// A document with one peer remembers only messages this large (a whole
/// saved document for a fresh peer: the next fresh peer gets it without
/// another save); small ones are cheap to generate again.
pub(super) const SHARED_ALONE_BYTES: usize = 16 << 10;

impl Generated {
    /// Starts a pass over the document's peers. Remembered messages stay
    /// valid while the document is at the same `heads` with no queued
    /// changes (changes waiting for dependencies change what we `need`
    /// without changing the heads); while some are queued nothing is looked
    /// up or remembered, so every entry was made with an empty queue.
    pub(super) fn revalidate(&mut self, doc: &Automerge, heads: &[ChangeHash], enabled: bool, peers: usize) {
        self.enabled = enabled && doc.get_missing_deps(&[]).is_empty();
        self.several_peers = peers > 1;
        if !self.enabled || self.heads != heads {
            self.by_state.clear();
            self.bytes = 0;
            self.heads = heads.to_vec();
        }
    }

    /// The encoded message for a peer in `state` (advanced as automerge
    /// would advance it), from the cache when a peer in the same state got
    /// one already.
    pub(super) fn generate(
        &mut self,
        doc: &Automerge,
        state: &mut sync::State,
        stats: &mut EngineStats,
    ) -> Option<Vec<u8>> {
        if let Some((after, message)) = self.by_state.get(state).filter(|_| self.enabled) {
            *state = after.clone();
            stats.sync_shared += 1;
            return message.clone();
        }
        stats.sync_generated += 1;
        if !self.enabled {
            return doc.generate_sync_message(state).map(|m| m.encode());
        }
        let before = state.clone();
        let message = doc.generate_sync_message(state).map(|m| m.encode());
        let len = message.as_ref().map_or(0, Vec::len);
        if self.several_peers || len >= SHARED_ALONE_BYTES {
            // The states' hash sets dominate besides the message. When full,
            // the states seen first stay: with many peers lagging in
            // different ways, clearing would lose the big group in step.
            let bytes = len + 32 * (before.sent_hashes.len() + state.sent_hashes.len()) + 512;
            if self.by_state.len() < GENERATED_STATES && self.bytes + bytes <= GENERATED_BYTES {
                self.bytes += bytes;
                self.by_state.insert(before, (state.clone(), message.clone()));
            }
        }
        message
    }
}

impl Engine {
    /// Sends whatever sync messages are due for a document, unless a write
    /// is in flight (then [`Self::handle_storage_result`] calls us again):
    /// durable before advertised, since every sync message carries our
    /// heads, and heads must only cover committed changes (a browser tab
    /// is the exception: [`super::EngineConfig::send_before_durable`]).
    pub(super) fn sync_doc(&mut self, now: Millis, doc_id: DocumentId) {
        let Some(d) = self.docs.get_mut(&doc_id) else { return };
        if !d.may_sync(self.config.send_before_durable) {
            return;
        }
        let has_data = d.has_data();
        let spacing = self.config.co_writer_spacing_ms;
        let (due, wait) = d.generate_due(now, self.config.share_generated, spacing, &mut self.stats);
        for (conn, data) in due {
            self.send_doc_message(conn, doc_id, data, has_data);
        }
        if let Some(until) = wait {
            self.timers.reply_by(until, doc_id);
        }
        self.resolve_availability(now, doc_id);
    }

    /// Sends an encoded automerge sync message for `doc_id` to the peer on
    /// `conn`: as `sync` when we have data for the document, as `request`
    /// when we have none.
    pub(super) fn send_doc_message(&mut self, conn: ConnId, doc_id: DocumentId, data: Vec<u8>, has_data: bool) {
        let Some(target_id) = self.conns.get(&conn).and_then(|c| c.peer().cloned()) else { return };
        let sender_id = self.config.peer_id.clone();
        let message = if has_data {
            Message::Sync { sender_id, target_id, document_id: doc_id, data }
        } else {
            Message::Request { sender_id, target_id, document_id: doc_id, data }
        };
        self.out.send(conn, message);
    }
}

impl DocState {
    /// The encoded sync messages due to peers whose state changed (every
    /// peer when our heads did), in connection order; peers whose sync
    /// state is loading, and requesters while we have nothing, stay due.
    ///
    /// So do peers that have not answered the changes we last sent them
    /// (`PeerDoc::unanswered`), until they answer or [`REPLY_WAIT_MS`] is
    /// up (returned: the earliest such deadline). A lone writer's change
    /// goes out at once, since its watchers answered the last one long
    /// ago; under load (several people typing into one document, a slow
    /// client) what comes while a peer is busy with our last message goes
    /// out as one message once it answers, so each peer applies fewer,
    /// larger messages and no fixed delay is added; and a peer that writes
    /// too gets changes at most every `spacing` ms.
    fn generate_due(
        &mut self,
        now: Millis,
        share: bool,
        spacing: u64,
        stats: &mut EngineStats,
    ) -> (Vec<(ConnId, Vec<u8>)>, Option<Millis>) {
        let heads = self.doc.get_heads();
        let has_data = !heads.is_empty();
        if heads != self.synced_heads {
            self.dirty.extend(self.peers.keys().copied());
            // New changes here: a stalled node gets them (one round; if it
            // answers with what we refuse again, it is stalled again).
            for pd in self.peers.values_mut() {
                pd.stalled = None;
            }
        }
        self.generated.revalidate(&self.doc, &heads, share, self.peers.len());
        self.synced_heads = heads;
        let (mut out, mut wait) = (Vec::new(), None::<Millis>);
        for conn in std::mem::take(&mut self.dirty) {
            let Some(pd) = self.peers.get_mut(&conn) else { continue };
            if let Some(sent) = pd.unanswered {
                let until = Millis(sent.0.saturating_add(REPLY_WAIT_MS));
                if now < until {
                    self.dirty.insert(conn);
                    wait = Some(wait.map_or(until, |w| w.min(until)));
                    continue;
                }
                pd.unanswered = None;
            }
            // A peer that has nothing gets nothing from us while we have
            // nothing either; availability is answered separately.
            if self.life.state_loading(&conn) || (pd.requesting && !has_data) {
                self.dirty.insert(conn);
                continue;
            }
            // The upstream whose copy is being fetched to replace this one
            // hears from that copy only (`refetch`); a node whose changes
            // this copy refused waits (`PeerDoc::stalled`).
            if pd.stalled.is_some() || self.refetch.as_ref().is_some_and(|r| r.conn == conn) {
                continue;
            }
            if let (Some(wrote), Some(last)) = (pd.wrote_at, pd.changes_sent_at)
                && now.saturating_sub(wrote) < CO_WRITER_MS
                && pd.sync.their_heads.as_ref() != Some(&self.synced_heads)
            {
                let until = Millis(last.0.saturating_add(spacing));
                if now < until {
                    self.dirty.insert(conn);
                    wait = Some(wait.map_or(until, |w| w.min(until)));
                    continue;
                }
            }
            let sent = pd.sync.sent_hashes.len();
            if let Some(data) = self.generated.generate(&self.doc, &mut pd.sync, stats) {
                if pd.sync.sent_hashes.len() > sent {
                    pd.unanswered = Some(now);
                    pd.changes_sent_at = Some(now);
                }
                out.push((conn, data));
            }
        }
        (out, wait)
    }
}
