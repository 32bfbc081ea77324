//! Connections and the handshake (`join` / `peer`), bad input, disconnects.

use std::collections::BTreeSet;

use crate::codec::{self, Decoded, Message, PROTOCOL_V1, PeerMetadata};
use crate::ids::{ConnId, DocumentId, PeerId, StorageId};

use super::access::{Access, Refusal};
use super::limits::Window;
use super::{Direction, Engine, ErrorKind, Event, Millis};

#[derive(Debug)]
pub(super) enum ConnState {
    AwaitingJoin,
    AwaitingPeer,
    Ready { peer: PeerId, metadata: PeerMetadata },
    Closed,
}

#[derive(Debug)]
pub(super) struct Conn {
    pub(super) direction: Direction,
    pub(super) state: ConnState,
    /// A link to another edge (placement, DESIGN §5): never an upstream,
    /// and what arrives on it is not client demand. Documents sync on it
    /// only when they are routed to it ([`Engine::set_route`]) or when the
    /// other side sends them.
    pub(super) edge_peer: bool,
    /// When it must have sent `join` by (incoming, until it has).
    pub(super) join_by: Option<Millis>,
    /// What it may read, write and create (see `access`).
    pub(super) access: Access,
    /// Refusals it was told of, per document (each is told once).
    pub(super) told: BTreeSet<(DocumentId, Refusal)>,
    /// Its ephemeral messages in the current one-second window.
    pub(super) ephemeral_window: Window,
    /// Its requests answered `doc-unavailable` in the current minute, and
    /// whether it was told it is past the limit (see `access`).
    pub(super) misses: Window,
    pub(super) told_lookup_limit: bool,
}

impl Conn {
    pub(super) fn peer(&self) -> Option<&PeerId> {
        match &self.state {
            ConnState::Ready { peer, .. } => Some(peer),
            _ => None,
        }
    }

    pub(super) fn storage_id(&self) -> Option<&StorageId> {
        match &self.state {
            ConnState::Ready { metadata, .. } if !metadata.is_ephemeral => metadata.storage_id.as_ref(),
            _ => None,
        }
    }

    pub(super) fn is_upstream_ready(&self) -> bool {
        self.direction == Direction::Outgoing && !self.edge_peer && matches!(self.state, ConnState::Ready { .. })
    }

    /// A link to another node: one we dialed (an upstream, a home edge), an
    /// edge-peer link, or one registered as a node ([`Access::node`]: an
    /// edge at the hub). A client's connection never is.
    pub(super) fn is_node_link(&self) -> bool {
        self.direction == Direction::Outgoing || self.edge_peer || self.access.node
    }

    /// It connected to us and has not sent `join` yet.
    pub(super) fn awaits_join(&self) -> bool {
        matches!(self.state, ConnState::AwaitingJoin)
    }

    /// A client (or device) connected to us: its writes are demand.
    pub(super) fn is_downstream(&self) -> bool {
        self.direction == Direction::Incoming && !self.edge_peer
    }
}

impl Engine {
    /// Registers a new connection. For [`Direction::Outgoing`] a `join` is
    /// queued right away.
    /// The connection has [`Access::full`]: use it for links between
    /// nodes and in open dev mode.
    pub fn handle_connect(&mut self, now: Millis, direction: Direction) -> ConnId {
        self.connect(now, direction, false, Access::full())
    }

    /// Registers a new connection that may do only what `access` grants
    /// (the driver verified its token). At `access.expires_at` it is
    /// closed.
    pub fn handle_connect_with(&mut self, now: Millis, direction: Direction, access: Access) -> ConnId {
        self.connect(now, direction, false, access)
    }

    /// Registers a link to another edge. `Outgoing` when we dialed it (we
    /// send `join`). Such a link is never an upstream: documents sync on it
    /// when routed to it ([`Engine::set_route`]) or sent by the other side,
    /// and its writes do not count as demand.
    pub fn handle_connect_edge_peer(&mut self, now: Millis, direction: Direction) -> ConnId {
        self.connect(now, direction, true, Access::full())
    }

    /// [`Engine::handle_connect_edge_peer`] for a link whose other end
    /// authenticated as `access.subject` (its edge id).
    pub fn handle_connect_edge_peer_with(&mut self, now: Millis, direction: Direction, access: Access) -> ConnId {
        self.connect(now, direction, true, access)
    }

    pub(super) fn connect(&mut self, now: Millis, direction: Direction, edge_peer: bool, access: Access) -> ConnId {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        self.handle_connect_as(now, conn, direction, edge_peer, access);
        conn
    }

    /// Registers a new connection under the id `conn` the driver chose (a
    /// sharded node registers each connection with every shard under one
    /// id; see `shard`). `edge_peer`: a link to another edge
    /// ([`Engine::handle_connect_edge_peer`]). Only the primary shard sends
    /// `join` on a connection we opened.
    pub fn handle_connect_as(
        &mut self,
        now: Millis,
        conn: ConnId,
        direction: Direction,
        edge_peer: bool,
        access: Access,
    ) {
        self.next_conn = self.next_conn.max(conn.0 + 1);
        let state = match direction {
            Direction::Incoming => ConnState::AwaitingJoin,
            Direction::Outgoing => ConnState::AwaitingPeer,
        };
        // The primary keeps the connection's deadlines (a late `join`, the
        // token's end): it closes the connection, and its disconnect
        // reaches every shard.
        let primary = self.config.shard.is_primary();
        let join_by = (primary && direction == Direction::Incoming && self.config.join_timeout_ms > 0)
            .then(|| Millis(now.0.saturating_add(self.config.join_timeout_ms)));
        if let Some(at) = join_by {
            self.timers.join_by(at, conn);
        }
        if let Some(at) = access.expires_at.filter(|_| primary) {
            self.timers.expires(at, conn);
        }
        let told = BTreeSet::new();
        let (ephemeral_window, misses) = (Window::new(now), Window::new(now));
        self.conns.insert(
            conn,
            Conn {
                direction,
                state,
                edge_peer,
                join_by,
                access,
                told,
                ephemeral_window,
                misses,
                told_lookup_limit: false,
            },
        );
        if direction == Direction::Outgoing && self.config.shard.is_primary() {
            let join = Message::Join {
                sender_id: self.config.peer_id.clone(),
                peer_metadata: self.our_metadata(),
                supported_protocol_versions: Some(vec![PROTOCOL_V1.to_owned()]),
            };
            self.out.send(conn, join);
        }
    }

    /// The connection is gone (closed by either side or failed).
    pub fn handle_disconnect(&mut self, now: Millis, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else { return };
        if let Some(at) = c.join_by {
            self.timers.joined(at, conn);
        }
        if let Some(at) = c.access.expires_at {
            self.timers.expired(at, conn);
        }
        let peer = c.peer().cloned();
        if let Some(p) = &peer {
            let key = (p.clone(), c.access.subject.clone());
            if self.peers.get(&key) == Some(&conn) {
                self.peers.remove(&key);
            }
        }
        let storage = c.storage_id().cloned();
        let doc_ids: Vec<DocumentId> = self.docs.keys().copied().collect();
        for doc_id in doc_ids {
            self.drop_peer_from_doc(now, doc_id, conn, storage.as_ref());
        }
        for subs in self.subscribers.values_mut() {
            subs.remove(&conn);
        }
        self.subscribers.retain(|_, s| !s.is_empty());
        self.routes.retain(|_, c| *c != conn);
        self.out.event(Event::PeerDisconnected { conn, peer });
    }

    pub(super) fn drop_peer_from_doc(
        &mut self,
        now: Millis,
        doc_id: DocumentId,
        conn: ConnId,
        storage: Option<&StorageId>,
    ) {
        let Some(d) = self.docs.get_mut(&doc_id) else { return };
        d.pending.retain(|p| p.conn != conn);
        d.held.retain(|p| p.conn != conn);
        let was_upstream_answer = d.upstream_unavailable.remove(&conn);
        let Some(pd) = d.peers.remove(&conn) else { return };
        d.dirty.remove(&conn);
        let loading_state = d.life.finish_state_load(&conn);
        // A document with no data (asked for, never found) leaves no sync
        // state behind: a flood of unknown ids stores nothing.
        if let (Some(storage), false, true) = (storage, loading_state, d.has_data()) {
            let state = pd.sync.encode();
            self.out.put_sync_state(doc_id, storage.clone(), state);
        }
        if loading_state {
            self.states_loaded(now, doc_id);
        }
        // An upstream that had not answered yet will never answer: waiting
        // requesters may now be owed a `doc-unavailable`.
        if !was_upstream_answer {
            self.resolve_availability(now, doc_id);
        }
    }

    /// A complete binary frame arrived on `conn`. Returns the wire type of
    /// the message if it decoded (for metrics).
    pub fn handle_frame(&mut self, now: Millis, conn: ConnId, bytes: &[u8]) -> Option<&'static str> {
        match self.conns.get(&conn).map(|c| &c.state) {
            None | Some(ConnState::Closed) => return None,
            _ => {}
        }
        match codec::decode(bytes) {
            Ok(Decoded::Message(m)) => Some(self.handle_decoded(now, conn, m)),
            Ok(Decoded::Unknown { message_type }) => {
                tracing::debug!(%conn, %message_type, "ignoring unknown message type");
                Some("other")
            }
            Err(e) => {
                self.reject(conn, ErrorKind::Decode, e.to_string());
                None
            }
        }
    }

    /// A message from `conn` the driver decoded (a sharded node decodes
    /// each frame once, to route it: see `shard`); returns its wire type.
    pub fn handle_decoded(&mut self, now: Millis, conn: ConnId, message: Message) -> &'static str {
        let message_type = message.type_name();
        match self.conns.get(&conn).map(|c| &c.state) {
            None | Some(ConnState::Closed) => {}
            _ => self.handle_message(now, conn, message),
        }
        message_type
    }

    /// The driver found the connection's input unacceptable before it got
    /// to the codec (a text frame, an oversize frame, a bad token): send an
    /// `error` and close.
    pub fn reject(&mut self, conn: ConnId, kind: ErrorKind, detail: impl Into<String>) {
        let detail = detail.into();
        let Some(c) = self.conns.get_mut(&conn) else { return };
        if matches!(c.state, ConnState::Closed) {
            return;
        }
        let target_id = c.peer().cloned();
        c.state = ConnState::Closed;
        tracing::info!(%conn, kind = kind.as_str(), detail = %crate::log::Escaped(&detail), "closing connection after bad input");
        self.out.event(Event::ProtocolError { conn, kind, detail: detail.clone() });
        let message =
            Message::Error { sender_id: Some(self.config.peer_id.clone()), message: detail.clone(), target_id };
        self.out.send(conn, message);
        self.out.close(conn, detail);
    }

    /// [`Engine::reject`] for what concerns the connection as a whole (its
    /// handshake, its token), which every shard sees: the primary tells the
    /// peer and closes it, the others only stop listening.
    pub fn reject_connection(&mut self, conn: ConnId, kind: ErrorKind, detail: impl Into<String>) {
        if self.config.shard.is_primary() {
            self.reject(conn, kind, detail);
        } else {
            self.close_quietly(conn);
        }
    }

    fn close_quietly(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.state = ConnState::Closed;
        }
    }

    pub(super) fn handle_message(&mut self, now: Millis, conn: ConnId, msg: Message) {
        let Some(c) = self.conns.get(&conn) else { return };
        match (&c.state, msg) {
            (ConnState::AwaitingJoin, Message::Join { sender_id, peer_metadata, supported_protocol_versions }) => {
                self.handle_join(now, conn, sender_id, peer_metadata, supported_protocol_versions)
            }
            (ConnState::AwaitingPeer, Message::Peer { sender_id, peer_metadata, .. }) => {
                self.become_ready(now, conn, sender_id, peer_metadata)
            }
            (_, Message::Error { message, .. }) => {
                tracing::warn!(%conn, %message, "peer reported an error");
            }
            (ConnState::Ready { .. }, msg) => self.handle_peer_message(now, conn, msg),
            // Every shard gets the handshake; the primary tells the peer
            // what is wrong with it, the others only stop listening.
            // Every shard gets the handshake (`shard::route`): a wrong one
            // concerns the connection; anything else, the shard it came to.
            (ConnState::AwaitingJoin, other) => {
                let detail = format!("expected `join` first, got `{}`", other.type_name());
                if matches!(other, Message::Peer { .. }) {
                    self.reject_connection(conn, ErrorKind::NotJoined, detail)
                } else {
                    self.reject(conn, ErrorKind::NotJoined, detail)
                }
            }
            (ConnState::AwaitingPeer, other) => {
                let detail = format!("expected `peer`, got `{}`", other.type_name());
                if matches!(other, Message::Join { .. }) {
                    self.reject_connection(conn, ErrorKind::NotJoined, detail)
                } else {
                    self.reject(conn, ErrorKind::NotJoined, detail)
                }
            }
            (ConnState::Closed, _) => {}
        }
    }

    pub(super) fn handle_join(
        &mut self,
        now: Millis,
        conn: ConnId,
        sender: PeerId,
        metadata: PeerMetadata,
        versions: Option<Vec<String>>,
    ) {
        if let Some(v) = &versions
            && !v.iter().any(|v| v == PROTOCOL_V1)
        {
            let detail = format!("unsupported protocol version (supported: [\"{PROTOCOL_V1}\"], offered: {v:?})");
            self.reject_connection(conn, ErrorKind::UnsupportedVersion, detail);
            return;
        }
        if !self.config.shard.is_primary() {
            // The primary answered, and closes a connection this one
            // replaces: its disconnect reaches every shard.
            return self.become_ready(now, conn, sender, metadata);
        }
        self.replace_same_subject(now, conn, &sender);
        let reply = Message::Peer {
            sender_id: self.config.peer_id.clone(),
            peer_metadata: self.our_metadata(),
            selected_protocol_version: PROTOCOL_V1.to_owned(),
            target_id: sender.clone(),
        };
        self.out.send(conn, reply);
        self.become_ready(now, conn, sender, metadata);
    }

    /// A `join` as `sender` on `conn`, where that peer id may be in use: a
    /// connection of the same subject is replaced (a client reconnecting).
    /// Connections of other subjects keep theirs and both stay (ready peers
    /// are keyed by peer id and subject): nobody takes over another's
    /// stream, nor locks them out by holding their id, and edges at the hub
    /// are told apart by the subject their `hello` authenticated, whatever
    /// peer id they join with. (A link we dialed to the same peer is another
    /// connection, not a previous one: two edges may each dial the other.)
    fn replace_same_subject(&mut self, now: Millis, conn: ConnId, sender: &PeerId) {
        let Some(subject) = self.conns.get(&conn).map(|c| c.access.subject.clone()) else { return };
        let old = self.peers.get(&(sender.clone(), subject)).copied();
        if let Some(old) = old.filter(|old| *old != conn)
            && self.conns.get(&old).is_some_and(|c| c.direction == Direction::Incoming)
        {
            self.out.close(old, "replaced by a new connection");
            self.handle_disconnect(now, old);
        }
    }

    pub(super) fn become_ready(&mut self, now: Millis, conn: ConnId, peer: PeerId, metadata: PeerMetadata) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        c.state = ConnState::Ready { peer: peer.clone(), metadata: metadata.clone() };
        if let Some(at) = c.join_by.take() {
            self.timers.joined(at, conn);
        }
        let upstream = c.direction == Direction::Outgoing && !c.edge_peer;
        self.peers.insert((peer.clone(), c.access.subject.clone()), conn);
        self.out.event(Event::PeerConnected { conn, peer, metadata });
        if upstream {
            // A new upstream gets every document we hold in memory, and is
            // asked for the ones somebody is waiting for.
            let doc_ids: Vec<DocumentId> = self.docs.keys().copied().collect();
            for doc_id in doc_ids {
                self.attach_upstream(now, doc_id, conn);
                self.sync_doc(now, doc_id);
            }
            // Evicted documents it must hear of are loaded and attached
            // (even without data: then it is asked for them again).
            for doc_id in std::mem::take(&mut self.resync_on_upstream) {
                self.ensure_doc(now, doc_id);
                self.attach_upstream(now, doc_id, conn);
            }
        }
    }

    pub(super) fn our_metadata(&self) -> PeerMetadata {
        PeerMetadata { storage_id: self.config.storage_id.clone(), is_ephemeral: self.config.storage_id.is_none() }
    }
}
