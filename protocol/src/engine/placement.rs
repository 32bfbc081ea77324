//! Placement: routes to home edges, catch-up and coverage checks for hand-offs, demand.

use std::collections::BTreeMap;

use automerge::ChangeHash;

use crate::ids::{ConnId, DocumentId};

#[cfg(doc)]
use super::EngineConfig;
use super::doc::DocState;
use super::{CatchUp, DocDemand, Engine, Millis};

impl Engine {
    /// Demand per document since the last call: downstream subscribers now,
    /// and client writes counted since (with [`EngineConfig::track_demand`]).
    /// Documents with neither are left out.
    pub fn take_demand(&mut self) -> BTreeMap<DocumentId, DocDemand> {
        let mut out: BTreeMap<DocumentId, DocDemand> = BTreeMap::new();
        for (doc, subs) in &self.subscribers {
            let downstream = subs
                .iter()
                .filter(|c| self.conns.get(c).is_some_and(|c| c.is_downstream() && c.peer().is_some()))
                .count();
            if downstream > 0 {
                out.entry(*doc).or_default().subscribers = downstream as u32;
            }
        }
        for (doc, writes) in std::mem::take(&mut self.writes) {
            out.entry(doc).or_default().writes = writes;
        }
        out
    }

    /// Whether the peer on `conn` has told us it has every change up to
    /// `heads` of the document (its heads are `heads` or descend from them).
    /// This is how a client learns a change is durable at its server: a
    /// server only advertises heads that are committed.
    pub fn peer_covers(&self, doc: &DocumentId, conn: ConnId, heads: &[ChangeHash]) -> bool {
        self.docs.get(doc).is_some_and(|d| d.peer_covers(conn, heads))
    }

    /// Also syncs `doc` on `conn` (an edge-peer link to the document's home
    /// edge), or stops doing so with `None`. The document keeps syncing with
    /// every upstream: the route is a shortcut to the home, the hub stays
    /// the fallback. Attached whenever the document has data in memory (now
    /// if loaded, else when loaded or when it gets data); forgotten when the
    /// connection goes away.
    pub fn set_route(&mut self, now: Millis, doc_id: DocumentId, conn: Option<ConnId>) {
        let old = match conn {
            Some(c) => self.routes.insert(doc_id, c),
            None => self.routes.remove(&doc_id),
        };
        if old == conn {
            return;
        }
        if let Some(old) = old {
            let storage = self.conns.get(&old).and_then(|c| c.storage_id().cloned());
            self.drop_peer_from_doc(now, doc_id, old, storage.as_ref());
            if let Some(subs) = self.subscribers.get_mut(&doc_id) {
                subs.remove(&old);
            }
        }
        let Some(conn) = conn else { return };
        if self.docs.get(&doc_id).is_some_and(|d| d.is_loaded() && d.has_data()) {
            self.attach_upstream(now, doc_id, conn);
            self.sync_doc(now, doc_id);
        }
    }

    /// Whether the document's home has confirmed `heads` (advertised heads
    /// covering them, which it does only once they are committed there):
    /// asked of the link to its home edge when it is routed and up, else of
    /// a ready upstream. `None`: no such connection.
    pub fn home_covers(&self, doc: &DocumentId, heads: &[ChangeHash]) -> Option<bool> {
        let conn = self.home_conn(doc)?;
        Some(self.peer_covers(doc, conn, heads))
    }

    /// The connection that speaks for the document's home: the link to its
    /// home edge when routed and up, else a ready upstream.
    pub(super) fn home_conn(&self, doc: &DocumentId) -> Option<ConnId> {
        let ready = |c: &ConnId| self.conns.get(c).is_some_and(|c| c.peer().is_some());
        self.routes.get(doc).copied().filter(ready).or_else(|| self.upstream_conns().first().copied())
    }

    /// The edge-peer link a document is routed to, if any.
    pub fn route(&self, doc: &DocumentId) -> Option<ConnId> {
        self.routes.get(doc).copied()
    }

    /// Brings the peer on `conn` up to our durable copy of `doc` (the hub
    /// does this before it announces `conn`'s edge as the new home), and
    /// says how far it is: whether the peer's heads cover `target` (heads
    /// of ours; our durable heads now if `None`). A caller that keeps
    /// checking passes the heads it first got from [`Engine::durable_heads`]:
    /// under steady writes elsewhere "everything durable here now" is a
    /// moving target the peer may never confirm at one instant. Never asks
    /// the peer for a document we lack: the hub has no upstream.
    pub fn catch_up(
        &mut self,
        now: Millis,
        doc_id: DocumentId,
        conn: ConnId,
        target: Option<&[ChangeHash]>,
    ) -> CatchUp {
        if self.conns.get(&conn).is_none_or(|c| c.peer().is_none()) {
            return CatchUp::NoPeer;
        }
        let Some(d) = self.docs.get_mut(&doc_id) else {
            self.ensure_doc(now, doc_id);
            return CatchUp::Loading;
        };
        d.touch(now);
        if !d.is_loaded() {
            return CatchUp::Loading;
        }
        if !d.has_data() {
            return CatchUp::NoData;
        }
        if !d.peers.contains_key(&conn) {
            self.attach_upstream(now, doc_id, conn);
            self.sync_doc(now, doc_id);
        }
        let target = match target {
            Some(t) => t.to_vec(),
            None => match self.durable_heads(&doc_id) {
                Some(heads) => heads,
                None => return CatchUp::Behind,
            },
        };
        if self.peer_covers(&doc_id, conn, &target) { CatchUp::CaughtUp } else { CatchUp::Behind }
    }

    /// The heads the peer on `conn` last advertised for `doc`.
    pub fn peer_heads(&self, doc: &DocumentId, conn: ConnId) -> Option<Vec<ChangeHash>> {
        self.docs.get(doc)?.peers.get(&conn)?.sync.their_heads.clone()
    }

    /// Whether every change in `heads` is here and committed to our store.
    pub fn holds_durably(&self, doc: &DocumentId, heads: &[ChangeHash]) -> bool {
        self.docs.get(doc).is_some_and(|d| d.is_durable() && d.holds(heads))
    }

    /// Whether every change the peer on `conn` has advertised for `doc` is
    /// durable here; `None` if it has not told us its heads (or the
    /// document is not in memory).
    pub fn covers_peer(&self, doc: &DocumentId, conn: ConnId) -> Option<bool> {
        let d = self.docs.get(doc).filter(|d| d.is_loaded())?;
        let theirs = d.peers.get(&conn)?.sync.their_heads.as_ref()?;
        Some(d.writes_in_flight == 0 && d.holds(theirs))
    }
}

impl DocState {
    /// Whether the peer on `conn` advertised heads that are `heads` or
    /// descend from them.
    pub(super) fn peer_covers(&self, conn: ConnId, heads: &[ChangeHash]) -> bool {
        let Some(theirs) = self.peers.get(&conn).and_then(|p| p.sync.their_heads.as_ref()) else { return false };
        if heads.iter().all(|h| theirs.contains(h)) {
            return true;
        }
        if !self.holds(theirs) {
            return false;
        }
        let newer = self.doc.get_changes(theirs);
        heads.iter().all(|h| !newer.iter().any(|c| c.hash() == *h))
    }
}
