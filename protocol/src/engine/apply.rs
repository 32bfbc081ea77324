//! Applying peers' sync messages: waiting for loads and commits, coalescing, batches.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use automerge::ReadDoc;
use automerge::sync;

use crate::codec::Message;
use crate::ids::{ConnId, DocumentId};

use super::access::Refusal;
use super::conn::Conn;
use super::doc::DocState;
use super::off_loop::{Item, Outcome, receive};
use super::{Engine, EngineStats, ErrorKind, Event, Millis};

/// At most this many messages creating a document are held per document
/// (see [`Engine::hold_creations`]); past it they are refused.
const MAX_HELD: usize = 64;

/// A document message waiting until the document (and the sender's sync
/// state) is loaded, or until the commit in flight is done.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) conn: ConnId,
    /// The last message (of those merged into this one) was a `request`.
    pub(super) requesting: bool,
    /// One of the messages merged into this one was a `sync`.
    pub(super) any_sync: bool,
    /// How many peer messages this one stands for (see [`coalesce`]).
    pub(super) merged: u64,
    /// Operations its changes hold, counted for a client's message (0 for
    /// links between nodes, which are not limited).
    pub(super) ops: u64,
    /// From a peer that may not write the document: it carries no changes
    /// (they were taken out), and heads of its own we do not know are not
    /// taken as the peer's (we would ask for them forever).
    pub(super) read_only: bool,
    pub(super) message: sync::Message,
}

impl Pending {
    /// It carries changes (not only heads, needs and haves).
    pub(super) fn changes(&self) -> bool {
        !self.message.changes.is_empty()
    }

    /// It may be merged with the same peer's next message: it carries
    /// changes and does not ask us to reset the sync (a reset clears what we
    /// sent before the changes are applied, which a merged message could not
    /// keep apart).
    pub(super) fn mergeable(&self) -> bool {
        self.changes() && !self.message.flags.is_some_and(|f| f.contains(sync::MessageFlags::SYNC_RESET))
    }

    /// Appends the same peer's next message: its changes follow ours, and its
    /// heads, needs, haves and flags replace ours.
    pub(super) fn absorb(&mut self, next: Pending) {
        let changes: Vec<Vec<u8>> =
            self.message.changes.iter().chain(next.message.changes.iter()).map(<[u8]>::to_vec).collect();
        self.message = sync::Message { changes: changes.into(), ..next.message };
        self.requesting = next.requesting;
        self.any_sync |= next.any_sync;
        self.merged += next.merged;
        self.ops = self.ops.saturating_add(next.ops);
    }
}

/// Merges each peer's consecutive messages that carry changes into one, so
/// automerge applies them as one batch: its cost per call grows with the
/// document (a one-change call on a 12 KB text costs about as much as 30
/// changes in one call), and a writer with changes in flight sends many
/// while a commit is in progress. The result is what applying them in turn
/// gives: a peer's document only grows, so its later heads, needs and haves
/// supersede its earlier ones, and the sync state keeps only the latest.
/// Messages from different peers are independent of each other; each
/// peer's keep their order.
pub(super) fn coalesce(pending: impl IntoIterator<Item = Pending>) -> Vec<Pending> {
    let mut out: Vec<Pending> = Vec::new();
    // Index in `out` of each peer's last message.
    let mut last: BTreeMap<ConnId, usize> = BTreeMap::new();
    for p in pending {
        if let Some(&i) = last.get(&p.conn)
            && out[i].mergeable()
            && p.mergeable()
        {
            out[i].absorb(p);
            continue;
        }
        last.insert(p.conn, out.len());
        out.push(p);
    }
    out
}

/// The message with its changes taken out (heads, needs and haves stay).
fn without_changes(message: sync::Message) -> sync::Message {
    sync::Message { changes: Vec::<Vec<u8>>::new().into(), ..message }
}

/// The heads of a read-only peer as far as they are ours. Its own
/// changes never reach us, so heads of its own would make automerge ask
/// for them forever; dropped, and nothing left, they would read as a
/// peer that lost everything (automerge then sends the whole document
/// again, every round). What it says we share (`have.last_sync`) stands
/// in for them.
pub(super) fn known_heads_of_read_only(
    doc: &automerge::Automerge,
    message: &sync::Message,
) -> Vec<automerge::ChangeHash> {
    let known = |h: &automerge::ChangeHash| doc.get_change_by_hash(h).is_some();
    if message.heads.iter().all(known) {
        return message.heads.clone();
    }
    let mut heads: Vec<automerge::ChangeHash> = message.heads.iter().copied().filter(known).collect();
    heads.extend(message.have.iter().flat_map(|h| h.last_sync.iter().copied()).filter(known));
    heads.sort();
    heads.dedup();
    heads
}

impl Engine {
    /// Frames handed in until [`Self::end_batch`] queue their document
    /// messages instead of applying them. A runtime with several frames at
    /// hand (a writer's window of changes) hands them all in as one batch,
    /// and each peer's changes reach automerge as one call (see
    /// `coalesce`), whose cost grows with the document rather than with the
    /// number of changes. Everything else is handled as it comes.
    pub fn begin_batch(&mut self) {
        self.batch.get_or_insert_with(Vec::new);
    }

    /// Applies the document messages queued since [`Self::begin_batch`].
    pub fn end_batch(&mut self, now: Millis) {
        for doc_id in self.batch.take().unwrap_or_default() {
            self.drain_pending(now, doc_id);
        }
    }

    pub(super) fn handle_peer_message(&mut self, now: Millis, conn: ConnId, msg: Message) {
        match msg {
            Message::Sync { document_id, data, .. } => self.handle_doc_data(now, conn, document_id, data, false),
            Message::Request { document_id, data, .. } => self.handle_doc_data(now, conn, document_id, data, true),
            Message::DocUnavailable { document_id, .. } => self.handle_unavailable(now, conn, document_id),
            Message::Ephemeral { sender_id, document_id, session_id, count, data, .. } => {
                self.handle_ephemeral(now, conn, sender_id, document_id, session_id, count, data)
            }
            // Remote-heads gossip is optional in the protocol; we accept and
            // ignore it, as the JS sync server does by default.
            Message::RemoteSubscriptionChange { .. } | Message::RemoteHeadsChanged { .. } => {}
            Message::Join { .. } | Message::Peer { .. } => {
                tracing::debug!(%conn, "ignoring repeated handshake message");
            }
            Message::Error { .. } => {}
        }
    }

    pub(super) fn handle_doc_data(
        &mut self,
        now: Millis,
        conn: ConnId,
        doc_id: DocumentId,
        data: Vec<u8>,
        requesting: bool,
    ) {
        if !self.may_read(conn, &doc_id) {
            return self.refuse_unreadable(conn, doc_id);
        }
        // A client probing for documents nobody has, past its limit: no
        // storage read, no lookup upstream.
        if requesting && !self.docs.contains_key(&doc_id) && self.lookups_exhausted(now, conn) {
            return self.refuse_lookup(conn, doc_id);
        }
        // Validate before anything is loaded or stored on its behalf.
        let mut message = match sync::Message::decode(&data) {
            Ok(m) => m,
            Err(e) => {
                let detail = format!("invalid automerge sync message for {doc_id}: {e}");
                self.reject(conn, ErrorKind::InvalidSyncMessage, detail);
                return;
            }
        };
        let read_only = !self.may_write(conn, &doc_id);
        if read_only && !message.changes.is_empty() {
            message = without_changes(message);
            self.tell_refused(conn, doc_id, Refusal::ReadOnly);
        }
        let ops = match self.ops_allowed(conn, doc_id, &message, data.len()) {
            Ok(ops) => ops,
            Err(detail) => return self.reject(conn, ErrorKind::TooManyOps, detail),
        };
        if self.is_refetching_from(&doc_id, conn) {
            // For the upstream's copy being fetched beside ours.
            return self.refetch_received(now, doc_id, message);
        }
        self.subscribe(conn, doc_id);
        self.ensure_doc(now, doc_id);
        self.ensure_peer_doc(doc_id, conn);
        // A client that writes is a co-writer (`fanout::CO_WRITER_MS`); a
        // node relays other people's changes and is never held for them.
        let client = self.conns.get(&conn).is_some_and(|c| !c.is_node_link());
        let Some(d) = self.docs.get_mut(&doc_id) else { return };
        d.touch(now);
        if let Some(p) = d.peers.get_mut(&conn) {
            p.heard_at = Some(now);
            p.unanswered = None;
            if client && !message.changes.is_empty() {
                p.wrote_at = Some(now);
            }
        }
        d.pending.push_back(Pending { conn, requesting, any_sync: !requesting, merged: 1, ops, read_only, message });
        match &mut self.batch {
            Some(docs) => {
                if !docs.contains(&doc_id) {
                    docs.push(doc_id);
                }
            }
            None => self.drain_pending(now, doc_id),
        }
    }

    /// Applies queued document messages once nothing is loading and the
    /// writes of the messages applied last time completed.
    ///
    /// Messages wait for those writes so that their completion can be
    /// acknowledged: peers are answered only when no write is in flight
    /// (durable before advertised), and applying each message as it came
    /// would issue a new write before the last one finished, so a document
    /// written by peers faster than one commit at a time would never be
    /// answered. Waiting, the messages that came in during one commit are
    /// applied together and go to the store as the next one. Only writes
    /// issued here hold messages back: local changes (a client typing
    /// through every IndexedDB commit) never keep peers' edits out. And
    /// only messages carrying changes wait: acknowledgements (a thousand
    /// watchers confirming the last change) are applied as they come, unless
    /// a message of theirs is already waiting (a connection's messages are
    /// applied in order), so the next message each watcher gets starts from
    /// what it confirmed. A node that sends before its writes are durable
    /// ([`super::EngineConfig::send_before_durable`], a browser tab) has
    /// no reason to wait and applies every message as it comes.
    pub(super) fn drain_pending(&mut self, now: Millis, doc_id: DocumentId) {
        let followed = self.follows_home_lag(&doc_id);
        let Some(d) = self.docs.get_mut(&doc_id) else { return };
        d.release_held();
        if d.busy() || d.pending.is_empty() {
            return;
        }
        let pending = d.take_applicable();
        if pending.is_empty() {
            return;
        }
        let pending = if self.config.coalesce_messages { coalesce(pending) } else { pending };
        let pending = self.hold_creations(now, doc_id, pending);
        let demand: Vec<bool> = pending
            .iter()
            .map(|p| self.config.track_demand && self.conns.get(&p.conn).is_some_and(Conn::is_downstream))
            .collect();
        let Some(d) = self.docs.get_mut(&doc_id) else { return };
        let before = d.doc.get_heads();
        let (mut held, max_ops) = (d.doc.stats().num_ops, self.config.max_document_ops);
        let (mut items, mut too_many) = (Vec::new(), Vec::new());
        for (p, count_demand) in pending.into_iter().zip(demand) {
            if max_ops > 0 && p.ops > 0 && held.saturating_add(p.ops) > max_ops {
                let detail = format!(
                    "{} operations would take document {doc_id} past the limit of {max_ops} (it holds {held})",
                    p.ops
                );
                too_many.push((p.conn, detail));
                continue;
            }
            held = held.saturating_add(p.ops);
            if let Some(item) = d.prepare(p, count_demand, &mut self.stats) {
                items.push(item);
            }
        }
        for (conn, detail) in too_many {
            self.reject(conn, ErrorKind::TooManyOps, detail);
        }
        let Some(d) = self.docs.get_mut(&doc_id) else { return };
        let limit = self.config.apply_off_loop_ops;
        if limit > 0 && d.apply_cost(&items) > limit {
            let job = d.start_job(doc_id, &mut self.next_job, before, followed, items);
            self.stats.applied_off_loop += 1;
            self.out.apply(job);
            return;
        }
        let outcomes = items.into_iter().map(|item| d.receive_here(item)).collect();
        self.after_apply(now, doc_id, before, followed, outcomes);
    }

    /// What follows applying a drain's messages (here or off the loop):
    /// peers whose message failed are told and closed, the changes are
    /// written and synced, demand and the home's confirmation counted, and
    /// the next messages wait for this drain's writes.
    pub(super) fn after_apply(
        &mut self,
        now: Millis,
        doc_id: DocumentId,
        before: Vec<automerge::ChangeHash>,
        followed: bool,
        outcomes: Vec<Outcome>,
    ) {
        let Some(d) = self.docs.get_mut(&doc_id) else { return };
        let issued = d.writes_issued;
        let mut rejected = Vec::new();
        let mut from = Vec::new();
        let mut senders = Vec::with_capacity(outcomes.len());
        for o in outcomes {
            senders.push(o.conn);
            if followed {
                from.push(o.conn);
            }
            let failed = o.failed_heads.is_some();
            match o.result {
                Ok(true) => *self.writes.entry(doc_id).or_default() += o.merged,
                Ok(false) => {}
                Err(e) => rejected.push((
                    o.conn,
                    format!("could not apply sync message for {doc_id}: {e}"),
                    o.failed_heads.unwrap_or_default(),
                )),
            }
            // A stalled node whose heads moved is answered again.
            if let Some(pd) = d.peers.get_mut(&o.conn)
                && !failed
                && pd.stalled.is_some()
                && pd.stalled.as_ref() != pd.sync.their_heads.as_ref()
            {
                pd.stalled = None;
                d.dirty.insert(o.conn);
            }
        }
        // A copy holding a change ours refuses: one document must not cut a
        // connection off from every other. The peer is stalled on it; a node
        // is left to the divergence watch, a client is told.
        for (conn, detail, heads) in rejected {
            let Some(node) = self.conns.get(&conn).map(Conn::is_node_link) else { continue };
            if let Some(pd) = self.docs.get_mut(&doc_id).and_then(|d| d.peers.get_mut(&conn)) {
                pd.stalled = Some(heads);
            }
            if node {
                tracing::warn!(doc = %doc_id, %conn, %detail, "a node's changes do not apply to this copy; the link stays open");
                self.out.event(Event::Unapplicable { doc: doc_id, conn, detail });
            } else {
                tracing::info!(doc = %doc_id, %conn, %detail, "a client's changes do not apply to this copy");
                self.tell_refused(conn, doc_id, Refusal::Unapplicable);
            }
        }
        self.after_doc_update(now, doc_id, before);
        self.check_replicas(now, doc_id, &senders);
        // Only the home's own messages can confirm changes to it.
        if followed && self.home_conn(&doc_id).is_some_and(|home| from.contains(&home)) {
            self.check_home(now, doc_id);
        }
        // The next messages wait for these writes and are then applied
        // together (one automerge call instead of many), unless this node
        // sends before its writes are durable: it applies at once too.
        if let Some(d) = self.docs.get_mut(&doc_id)
            && d.writes_issued > issued
            && !self.config.send_before_durable
        {
            d.hold_until = d.writes_issued;
        }
        self.maybe_offload(doc_id);
        self.finish_refetch(now, doc_id);
    }

    /// Messages about a document nobody has (no data here), from a peer
    /// without the create right (see `access`): each is taken as a request
    /// for the document, which is then looked for, and the peer's own heads
    /// are not taken (they are not ours). Its `sync` messages (it has the
    /// document, and would create it here) are held: applied if the
    /// document turns up, refused with the `doc-unavailable`
    /// (`announce_unavailable`) if not, or at once once that was said.
    ///
    /// A creator past its subject's limit of new documents
    /// ([`EngineConfig::creates_per_minute`]) is treated the same way, and
    /// refused with `create_limit`.
    fn hold_creations(&mut self, now: Millis, doc_id: DocumentId, pending: Vec<Pending>) -> Vec<Pending> {
        if self.docs.get(&doc_id).is_none_or(|d| d.has_data()) {
            return pending;
        }
        let mut out = Vec::with_capacity(pending.len());
        let mut refused = Vec::new();
        for p in pending {
            // (A creator past its limit: even its messages without changes
            // are only asks, or it would be asked for its changes forever.)
            if self.may_create(p.conn) && self.creation_allowed(now, p.conn, p.changes()) {
                if p.changes() {
                    self.created_by(doc_id, p.conn);
                }
                out.push(p);
                continue;
            }
            let Some(d) = self.docs.get_mut(&doc_id) else { break };
            let ask = Pending {
                conn: p.conn,
                requesting: true,
                any_sync: false,
                merged: 1,
                ops: 0,
                read_only: true,
                message: without_changes(p.message.clone()),
            };
            let answered = d.peers.get(&p.conn).is_some_and(|pd| pd.told_unavailable);
            // A `sync` says it has the document: it would create it here.
            if p.any_sync || p.changes() {
                if answered || d.held.len() >= MAX_HELD {
                    refused.push(p.conn);
                } else {
                    d.held.push(p);
                }
            }
            out.push(ask);
        }
        for conn in refused {
            self.refuse_creation(conn, doc_id);
        }
        out
    }
}

impl DocState {
    /// Held changes (see [`Engine::hold_creations`]) go ahead once the
    /// document has data: they no longer create it.
    fn release_held(&mut self) {
        if self.held.is_empty() || !self.has_data() {
            return;
        }
        for p in self.held.drain(..).rev() {
            self.pending.push_front(p);
        }
    }

    /// Takes the waiting messages that may be applied now: all of them once
    /// the writes of the last ones applied completed; before that, only
    /// acknowledgements (no changes) of peers with nothing else waiting.
    fn take_applicable(&mut self) -> Vec<Pending> {
        if self.writes_done >= self.hold_until {
            return self.pending.drain(..).collect();
        }
        let mut waiting = BTreeSet::new();
        let (mut now_applied, mut kept) = (Vec::new(), VecDeque::new());
        for p in self.pending.drain(..) {
            if p.changes() || waiting.contains(&p.conn) {
                waiting.insert(p.conn);
                kept.push_back(p);
            } else {
                now_applied.push(p);
            }
        }
        self.pending = kept;
        now_applied
    }

    /// Readies one (possibly merged) message of a peer for automerge: what
    /// its arrival says of the peer is noted here; `None`: the peer left.
    fn prepare(&mut self, p: Pending, count_demand: bool, stats: &mut EngineStats) -> Option<Item> {
        let pd = self.peers.get_mut(&p.conn)?;
        pd.requesting = p.requesting;
        self.dirty.insert(p.conn);
        if p.any_sync {
            pd.told_unavailable = false;
        }
        if p.merged > 1 {
            stats.sync_merged += p.merged - 1;
        }
        let count_write = count_demand && !p.message.changes.is_empty();
        Some(Item {
            conn: p.conn,
            merged: p.merged,
            ops: p.ops,
            count_write,
            read_only: p.read_only,
            answered_at: pd.answered_at.take(),
            message: p.message,
        })
    }

    /// Applies a prepared message here, with the peer's sync state.
    fn receive_here(&mut self, item: Item) -> Outcome {
        let conn = item.conn;
        match self.peers.get_mut(&conn) {
            Some(pd) => receive(&mut self.doc, &mut pd.sync, item),
            None => Outcome { conn, merged: item.merged, result: Ok(false), failed_heads: None },
        }
    }
}
