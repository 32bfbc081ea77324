//! Availability: asking sources for documents we lack, `doc-unavailable`, `find`.

use automerge::sync::{self, SyncDoc};

use crate::codec::Message;
use crate::ids::{ConnId, DocumentId};

use super::conn::*;
use super::*;

impl Engine {
    /// Asks for a document: loads it from storage, and if it is not there,
    /// from upstream. Answered by [`Event::DocReady`] or
    /// [`Event::DocUnavailable`].
    pub fn find(&mut self, now: Millis, doc_id: DocumentId) {
        self.opened.insert(doc_id);
        if let Some(d) = self.docs.get_mut(&doc_id) {
            d.last_active = now;
            if !d.loading && d.has_data() && d.writes_in_flight == 0 {
                self.event(Event::DocReady { doc: doc_id });
                return;
            }
            d.local_waiting = true;
            self.resolve_availability(now, doc_id);
            return;
        }
        self.ensure_doc(now, doc_id);
        if let Some(d) = self.docs.get_mut(&doc_id) {
            d.local_waiting = true;
        }
    }

    /// Connections a document we lack is asked of: every ready upstream,
    /// and the link to its home edge.
    pub(super) fn sources(&self, doc_id: &DocumentId) -> Vec<ConnId> {
        let mut sources = self.upstream_conns();
        if let Some(r) = self.routes.get(doc_id).filter(|c| self.conns.get(c).is_some_and(|c| c.peer().is_some())) {
            sources.push(*r);
        }
        sources
    }

    pub(super) fn is_source(&self, conn: ConnId, doc_id: &DocumentId) -> bool {
        self.conns.get(&conn).is_some_and(Conn::is_upstream_ready)
            || (self.routes.get(doc_id) == Some(&conn) && self.conns.get(&conn).is_some_and(|c| c.peer().is_some()))
    }

    /// For a document we do not have: ask upstreams that have not answered,
    /// and tell requesters `doc-unavailable` once nobody is left to ask.
    pub(super) fn resolve_availability(&mut self, _now: Millis, doc_id: DocumentId) {
        let Some(d) = self.docs.get(&doc_id) else { return };
        if d.loading || d.has_data() || d.writes_in_flight > 0 {
            return;
        }
        let someone_waiting = d.local_waiting || d.peers.values().any(|p| p.requesting && !p.told_unavailable);
        if !someone_waiting {
            return;
        }
        let upstreams = self.sources(&doc_id);
        let Some(d) = self.docs.get_mut(&doc_id) else { return };
        let mut asking = Vec::new();
        for up in upstreams {
            let requester = d.peers.get(&up).is_some_and(|p| p.requesting);
            if !d.upstream_unavailable.contains(&up) && !requester {
                asking.push(up);
            }
        }
        if !asking.is_empty() {
            if !std::mem::replace(&mut d.cold_open, true) {
                self.stats.cold_opens += 1;
            }
            let ask: Vec<ConnId> = asking.into_iter().filter(|up| !d.peers.contains_key(up)).collect();
            for up in ask {
                self.ensure_peer_doc(doc_id, up);
                self.subscribe(up, doc_id);
            }
            self.generate_requests(doc_id);
            return;
        }
        self.announce_unavailable(doc_id);
    }

    /// Sends `request` messages to upstreams attached to a document we
    /// have no data for.
    pub(super) fn generate_requests(&mut self, doc_id: DocumentId) {
        let sources = self.sources(&doc_id);
        let Some(d) = self.docs.get_mut(&doc_id) else { return };
        let mut out = Vec::new();
        for (conn, pd) in d.peers.iter_mut() {
            if d.loading_states.contains(conn) || pd.requesting {
                continue;
            }
            if !sources.contains(conn) {
                continue;
            }
            if let Some(m) = d.doc.generate_sync_message(&mut pd.sync) {
                out.push((*conn, m.encode()));
            }
        }
        for (conn, data) in out {
            self.send_doc_message(conn, doc_id, data, false);
        }
    }

    pub(super) fn announce_unavailable(&mut self, doc_id: DocumentId) {
        let Some(d) = self.docs.get_mut(&doc_id) else { return };
        let mut targets = Vec::new();
        for (conn, pd) in d.peers.iter_mut() {
            if pd.requesting && !pd.told_unavailable {
                pd.told_unavailable = true;
                targets.push(*conn);
            }
        }
        let local = std::mem::take(&mut d.local_waiting);
        for conn in targets {
            let Some(target_id) = self.conns.get(&conn).and_then(|c| c.peer().cloned()) else { continue };
            let sender_id = self.config.peer_id.clone();
            self.send(conn, Message::DocUnavailable { sender_id, target_id, document_id: doc_id });
        }
        if local {
            self.event(Event::DocUnavailable { doc: doc_id });
        }
    }

    pub(super) fn handle_unavailable(&mut self, now: Millis, conn: ConnId, doc_id: DocumentId) {
        let is_upstream = self.is_source(conn, &doc_id);
        let Some(d) = self.docs.get_mut(&doc_id) else { return };
        if is_upstream {
            d.upstream_unavailable.insert(conn);
        }
        if let Some(pd) = d.peers.get_mut(&conn) {
            // Whatever we sent was in vain; start over if it reappears.
            pd.sync = sync::State::new();
            d.dirty.insert(conn);
        }
        // Answers the reset peer if we have data (and, as sync_doc ends,
        // requesters if we do not).
        self.sync_doc(now, doc_id);
    }
}
