//! Availability: asking sources for documents we lack, `doc-unavailable`,
//! and the local application's `find`.

use automerge::sync::{self, SyncDoc};

use crate::codec::Message;
use crate::ids::{ConnId, DocumentId};

use super::conn::Conn;
use super::doc::DocState;
use super::{Engine, Event, Millis};

impl Engine {
    /// Asks for a document: loads it from storage, and if it is not there,
    /// from upstream. Answered by [`Event::DocReady`] or
    /// [`Event::DocUnavailable`].
    pub fn find(&mut self, now: Millis, doc_id: DocumentId) {
        self.opened.insert(doc_id);
        let Some(d) = self.docs.get_mut(&doc_id) else {
            self.ensure_doc(now, doc_id);
            if let Some(d) = self.docs.get_mut(&doc_id) {
                d.life.wait_locally();
            }
            return;
        };
        d.touch(now);
        if d.is_durable() && d.has_data() {
            self.out.event(Event::DocReady { doc: doc_id });
            return;
        }
        d.life.wait_locally();
        self.resolve_availability(now, doc_id);
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

    fn is_source(&self, conn: ConnId, doc_id: &DocumentId) -> bool {
        self.conns.get(&conn).is_some_and(Conn::is_upstream_ready)
            || (self.routes.get(doc_id) == Some(&conn) && self.conns.get(&conn).is_some_and(|c| c.peer().is_some()))
    }

    /// For a document we do not have: ask upstreams that have not answered,
    /// and tell requesters `doc-unavailable` once nobody is left to ask.
    pub(super) fn resolve_availability(&mut self, now: Millis, doc_id: DocumentId) {
        let Some(d) = self.docs.get(&doc_id) else { return };
        if !d.may_sync(self.config.send_before_durable) || d.has_data() || !d.someone_waiting() {
            return;
        }
        let sources = self.sources(&doc_id);
        let Some(d) = self.docs.get_mut(&doc_id) else { return };
        let asking = d.not_yet_asked(sources);
        if asking.is_empty() {
            return self.announce_unavailable(now, doc_id);
        }
        if d.life.count_cold_open() {
            self.stats.cold_opens += 1;
        }
        let ask: Vec<ConnId> = asking.into_iter().filter(|up| !d.peers.contains_key(up)).collect();
        for up in ask {
            self.ensure_peer_doc(doc_id, up);
            self.subscribe(up, doc_id);
        }
        self.generate_requests(doc_id);
    }

    /// Sends `request` messages to upstreams attached to a document we
    /// have no data for.
    fn generate_requests(&mut self, doc_id: DocumentId) {
        let sources = self.sources(&doc_id);
        let Some(d) = self.docs.get_mut(&doc_id) else { return };
        for (conn, data) in d.requests(&sources) {
            self.send_doc_message(conn, doc_id, data, false);
        }
    }

    fn announce_unavailable(&mut self, now: Millis, doc_id: DocumentId) {
        let Some(d) = self.docs.get_mut(&doc_id) else { return };
        let targets = d.owed_unavailable();
        let local = d.life.take_local_waiting();
        // Changes held for want of the create right would create it: refused.
        let creators: Vec<ConnId> = d.held.iter().map(|p| p.conn).filter(|c| targets.contains(c)).collect();
        d.held.retain(|p| !targets.contains(&p.conn));
        for conn in targets {
            self.count_miss(now, conn);
            let Some(target_id) = self.conns.get(&conn).and_then(|c| c.peer().cloned()) else { continue };
            let sender_id = self.config.peer_id.clone();
            self.out.send(conn, Message::DocUnavailable { sender_id, target_id, document_id: doc_id });
        }
        for conn in creators {
            self.refuse_creation(conn, doc_id);
        }
        if local {
            self.out.event(Event::DocUnavailable { doc: doc_id });
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

impl DocState {
    /// The application or a requesting peer not yet told `doc-unavailable`
    /// waits for it.
    fn someone_waiting(&self) -> bool {
        self.life.local_waiting() || self.peers.values().any(|p| p.requesting && !p.told_unavailable)
    }

    /// The sources that have neither answered `doc-unavailable` nor asked
    /// us for it themselves.
    fn not_yet_asked(&self, sources: Vec<ConnId>) -> Vec<ConnId> {
        sources
            .into_iter()
            .filter(|up| {
                !self.upstream_unavailable.contains(up)
                    && !self.peers.get(up).is_some_and(|p| p.requesting || p.stalled.is_some())
            })
            .collect()
    }

    /// Encoded `request`s to the attached `sources` (whose sync state is in).
    fn requests(&mut self, sources: &[ConnId]) -> Vec<(ConnId, Vec<u8>)> {
        let mut out = Vec::new();
        for (conn, pd) in self.peers.iter_mut() {
            if self.life.state_loading(conn) || pd.requesting || pd.stalled.is_some() || !sources.contains(conn) {
                continue;
            }
            if let Some(m) = self.doc.generate_sync_message(&mut pd.sync) {
                out.push((*conn, m.encode()));
            }
        }
        out
    }

    /// Requesters owed a `doc-unavailable`, now marked as told.
    fn owed_unavailable(&mut self) -> Vec<ConnId> {
        let mut targets = Vec::new();
        for (conn, pd) in self.peers.iter_mut() {
            if pd.requesting && !pd.told_unavailable {
                pd.told_unavailable = true;
                targets.push(*conn);
            }
        }
        targets
    }
}
