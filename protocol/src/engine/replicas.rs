//! Replicas of a document and their divergence (issue 17). Every peer
//! syncing a document with us holds a replica of it; at the hub these are
//! the edges (and their clients' documents behind them). Normally a
//! replica's heads and ours meet within a round trip or two. A replica that
//! stays apart — it does not get to heads we had, or we do not get the
//! changes it advertised — past a threshold is **divergent**: sync is stuck
//! (a lost sync state, a peer that dropped a change it told us it has, a
//! bug). The repair is a forced resync: its sync state is started afresh,
//! so both sides compare everything again (what a reconnect does), at most
//! [`MAX_REPAIRS`] times in a row. If the replica still apart after them is
//! our upstream (the hub, seen from an edge), our copy is the suspect one:
//! it is quarantined and fetched again (`refetch`). Any other replica still
//! apart stays reported divergent, for an operator.
//!
//! The watch is lazy: [`Engine::check_divergence`] runs on the driver's
//! housekeeping interval (a pass over the documents in memory and their
//! peers, comparing heads: no allocation for a replica in step), records for each replica apart from us what each
//! side had then, and calls it divergent only if, a threshold later, that
//! much still has not crossed (so a document written without pause, whose
//! heads never meet, is not divergent while changes keep crossing).

use automerge::ChangeHash;

use crate::ids::{ConnId, DocumentId, PeerId};

use super::{Engine, Millis};

/// Forced resyncs of one replica in a row before it is left to an operator.
pub const MAX_REPAIRS: u32 = 3;

/// Durable heads followed until every replica confirms them, at most (past
/// it, new ones are not followed), for at most this long.
const LAG_TRACKED: usize = 4096;
const LAG_GIVE_UP_MS: u64 = 60_000;

/// Heads durable here since `since`, and the replicas that have not
/// confirmed them yet ([`EngineConfig::track_replica_lag`]).
#[derive(Debug)]
pub(super) struct Followed {
    heads: Vec<ChangeHash>,
    since: Millis,
    waiting: Vec<ConnId>,
}

/// A replica apart from us, since when, and what each side had then.
#[derive(Debug, Clone)]
pub(super) struct Watch {
    since: Millis,
    ours: Vec<ChangeHash>,
    theirs: Vec<ChangeHash>,
    repairs: u32,
    divergent: bool,
}

/// One replica of a document ([`Engine::replicas`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaStatus {
    pub conn: ConnId,
    /// Who holds it (its peer id: an edge's, or a client's).
    pub peer: Option<PeerId>,
    /// Who it authenticated as (a token's subject; `node:ID` for a node
    /// link), if anyone.
    pub subject: Option<String>,
    /// The heads it last advertised; `None`: none yet.
    pub heads: Option<Vec<ChangeHash>>,
    /// Its heads are ours.
    pub in_sync: bool,
    /// How long it has been apart from us (ms), if it is.
    pub apart_ms: Option<u64>,
    /// How long ago it last sent a message about the document (ms).
    pub heard_ms_ago: Option<u64>,
    /// How long it last took to confirm a change durable here (ms).
    pub lag_ms: Option<u64>,
    pub divergent: bool,
    /// Forced resyncs in a row.
    pub repairs: u32,
}

/// What a divergence check found ([`Engine::check_divergence`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Divergence {
    /// Replicas divergent now: document, connection, peer, apart since (ms).
    pub divergent: Vec<(DocumentId, ConnId, Option<PeerId>, u64)>,
    /// Forced resyncs started by this check.
    pub repairs: u64,
    /// Replicas that were divergent and met us again since the last check.
    pub healed: Vec<(DocumentId, ConnId, u64)>,
    /// Documents whose copy this check started to fetch again from the
    /// upstream replica on the connection (`refetch`).
    pub refetching: Vec<(DocumentId, ConnId)>,
}

impl Engine {
    /// `heads` became durable here: follow them until each replica that
    /// does not have them yet (and has told us its heads) confirms them.
    pub(super) fn follow_to_replicas(&mut self, now: Millis, doc_id: DocumentId, heads: &[ChangeHash]) {
        if !self.config.track_replica_lag {
            return;
        }
        // Given up on: a minute without every replica confirming.
        if self.replica_lag_len >= LAG_TRACKED / 2 {
            self.replica_lag.retain(|_, f| {
                f.retain(|x| now.0.saturating_sub(x.since.0) < LAG_GIVE_UP_MS);
                !f.is_empty()
            });
            self.replica_lag_len = self.replica_lag.values().map(Vec::len).sum();
        }
        if self.replica_lag_len >= LAG_TRACKED {
            return;
        }
        let Some(d) = self.docs.get(&doc_id) else { return };
        let waiting: Vec<ConnId> = d
            .peers
            .iter()
            .filter(|(conn, p)| p.sync.their_heads.is_some() && !d.peer_covers(**conn, heads))
            .map(|(conn, _)| *conn)
            .collect();
        if waiting.is_empty() {
            return;
        }
        self.replica_lag.entry(doc_id).or_default().push(Followed { heads: heads.to_vec(), since: now, waiting });
        self.replica_lag_len += 1;
    }

    /// After messages from `from` about `doc_id`: the replicas among them
    /// that now cover what was followed confirm it.
    pub(super) fn check_replicas(&mut self, now: Millis, doc_id: DocumentId, from: &[ConnId]) {
        let Some(mut followed) = self.replica_lag.remove(&doc_id) else { return };
        let before = followed.len();
        if let Some(d) = self.docs.get_mut(&doc_id) {
            for f in &mut followed {
                let confirmed: Vec<ConnId> =
                    f.waiting.iter().filter(|c| from.contains(c) && d.peer_covers(**c, &f.heads)).copied().collect();
                for conn in confirmed {
                    let lag_ms = now.0.saturating_sub(f.since.0);
                    if let Some(p) = d.peers.get_mut(&conn) {
                        p.last_lag_ms = Some(lag_ms);
                    }
                    self.out.event(super::Event::ReplicaConfirmed { doc: doc_id, conn, lag_ms });
                    f.waiting.retain(|c| *c != conn);
                }
                // Replicas gone meanwhile are not waited for.
                f.waiting.retain(|c| d.peers.contains_key(c));
            }
        }
        followed.retain(|f| !f.waiting.is_empty() && now.0.saturating_sub(f.since.0) < LAG_GIVE_UP_MS);
        self.replica_lag_len -= before - followed.len();
        if !followed.is_empty() {
            self.replica_lag.insert(doc_id, followed);
        }
    }

    /// The documents loaded in memory, in id order, after `after` if given.
    pub fn loaded_documents(&self, after: Option<DocumentId>) -> impl Iterator<Item = DocumentId> + '_ {
        use std::ops::Bound::{Excluded, Unbounded};
        let from = after.map_or(Unbounded, Excluded);
        self.docs.range((from, Unbounded)).filter(|(_, d)| d.is_loaded()).map(|(id, _)| *id)
    }

    /// Every replica of `doc` (peers syncing it with us), if it is in
    /// memory.
    pub fn replicas(&self, now: Millis, doc: &DocumentId) -> Option<Vec<ReplicaStatus>> {
        let d = self.docs.get(doc).filter(|d| d.is_loaded())?;
        let ours = d.doc.get_heads();
        Some(
            d.peers
                .iter()
                .map(|(conn, p)| {
                    let heads = p.sync.their_heads.clone();
                    let watch = self.replica_watch.get(&(*doc, *conn));
                    ReplicaStatus {
                        conn: *conn,
                        peer: self.conns.get(conn).and_then(|c| c.peer()).cloned(),
                        subject: self.conns.get(conn).map(|c| c.access.subject.clone()).filter(|s| !s.is_empty()),
                        in_sync: heads.as_ref().is_some_and(|h| same(h, &ours)),
                        heads,
                        apart_ms: watch.map(|w| now.0.saturating_sub(w.since.0)),
                        heard_ms_ago: p.heard_at.map(|t| now.0.saturating_sub(t.0)),
                        lag_ms: p.last_lag_ms,
                        divergent: watch.is_some_and(|w| w.divergent),
                        repairs: watch.map_or(0, |w| w.repairs),
                    }
                })
                .collect(),
        )
    }

    /// Looks at every replica of every document in memory: one apart from
    /// us for `threshold_ms` without what either side had then crossing is
    /// divergent, and is resynced from scratch (up to [`MAX_REPAIRS`] times
    /// in a row, a threshold apart); an upstream still apart a threshold
    /// after that has our copy fetched again (`refetch`).
    pub fn check_divergence(&mut self, now: Millis, threshold_ms: u64) -> Divergence {
        self.check_refetches(now);
        let mut out = Divergence::default();
        let mut resync = Vec::new();
        let mut last_resort = Vec::new();
        for (doc_id, d) in &self.docs {
            if !d.is_loaded() || !d.is_durable() || d.busy() {
                // Not settled here: nothing to compare yet; watches stand.
                continue;
            }
            let ours = d.doc.get_heads();
            for (conn, p) in &d.peers {
                let key = (*doc_id, *conn);
                let theirs = p.sync.their_heads.as_deref();
                let met = theirs.is_some_and(|h| same(h, &ours));
                let watch = self.replica_watch.get_mut(&key);
                match (met, watch) {
                    (true, None) => {}
                    (true, Some(w)) => {
                        if w.divergent {
                            out.healed.push((*doc_id, *conn, now.0.saturating_sub(w.since.0)));
                        }
                        self.replica_watch.remove(&key);
                    }
                    (false, None) => {
                        let theirs = theirs.map(<[ChangeHash]>::to_vec).unwrap_or_default();
                        self.replica_watch.insert(
                            key,
                            Watch { since: now, ours: ours.clone(), theirs, repairs: 0, divergent: false },
                        );
                    }
                    (false, Some(w)) => {
                        // Progress: what each side had then crossed (or
                        // they told us nothing since a resync).
                        let crossed = d.peer_covers(*conn, &w.ours) && d.holds(&w.theirs);
                        if crossed && !w.divergent {
                            *w = Watch {
                                since: now,
                                ours: ours.clone(),
                                theirs: theirs.map(<[ChangeHash]>::to_vec).unwrap_or_default(),
                                ..w.clone()
                            };
                            w.repairs = 0;
                            continue;
                        }
                        if crossed && w.divergent {
                            out.healed.push((*doc_id, *conn, now.0.saturating_sub(w.since.0)));
                            self.replica_watch.remove(&key);
                            continue;
                        }
                        let apart = now.0.saturating_sub(w.since.0);
                        if apart < threshold_ms.saturating_mul(u64::from(w.repairs) + 1) {
                            if w.divergent {
                                let peer = self.conns.get(conn).and_then(|c| c.peer()).cloned();
                                out.divergent.push((*doc_id, *conn, peer, apart));
                            }
                            continue;
                        }
                        w.divergent = true;
                        let peer = self.conns.get(conn).and_then(|c| c.peer()).cloned();
                        out.divergent.push((*doc_id, *conn, peer, apart));
                        if w.repairs < MAX_REPAIRS {
                            w.repairs += 1;
                            resync.push(key);
                        } else {
                            last_resort.push(key);
                        }
                    }
                }
            }
        }
        // Replicas gone (disconnected, document evicted): forgotten.
        let docs = &self.docs;
        self.replica_watch.retain(|(doc, conn), _| docs.get(doc).is_some_and(|d| d.peers.contains_key(conn)));
        for (doc_id, conn) in resync {
            if let Some(d) = self.docs.get_mut(&doc_id)
                && let Some(p) = d.peers.get_mut(&conn)
            {
                p.start_over();
                // Due a message: our side, from the start.
                d.dirty.insert(conn);
                out.repairs += 1;
            }
            self.sync_doc(now, doc_id);
        }
        // Offered at each check; it starts unless one is under way or the
        // document was refetched in the last hour (`may_refetch`).
        for (doc_id, conn) in last_resort {
            if self.may_refetch(now, &doc_id, conn) {
                self.start_refetch(now, doc_id, conn);
                out.refetching.push((doc_id, conn));
            }
        }
        out
    }
}

/// The same heads, in any order (a handful each: no allocation).
fn same(a: &[ChangeHash], b: &[ChangeHash]) -> bool {
    a.len() == b.len() && a.iter().all(|h| b.contains(h))
}
