//! Access control: what each connection may read, write and create, and
//! who it may speak for (DESIGN §4, guarantee 5).
//!
//! The driver verifies a connection's credentials (a token) before it
//! registers the connection and hands the engine the grants as an
//! [`Access`]; from then on the engine enforces them:
//!
//! - a document it may not read is answered exactly as an unknown one
//!   (`doc-unavailable`), and nothing flows either way: no sync, no
//!   subscription, no ephemeral messages;
//! - a peer that may read but not write receives the document and every
//!   later change, but its changes are never applied, stored, acknowledged
//!   or relayed; it is told once per document with an `error` message and
//!   stays connected;
//! - a document nobody has (not stored here, unavailable from every source)
//!   is created only by a peer with the create right: another peer's first
//!   changes are held while the document is looked for, applied if it
//!   turns up, and refused (`doc-unavailable` and an `error`) if it does
//!   not;
//! - a client's ephemeral messages are relayed only under the peer id it
//!   joined as (one claiming another sender is dropped), and a second
//!   `join` with a connected peer id replaces that connection only for the
//!   same subject (others of other subjects keep theirs: no takeover, no
//!   lock-out);
//! - at [`Access::expires_at`] the connection is closed ("token expired").
//!
//! Links between nodes (upstreams, edges admitted by the hub, edge peers)
//! and every connection of a node in open dev mode have [`Access::full`].

use std::collections::BTreeSet;

use crate::codec::Message;
use crate::ids::{ConnId, DocumentId, PeerId};

use super::{Engine, ErrorKind, Event, Millis};

/// Refusals remembered per connection (each is told once); past this
/// many, further ones are not told (a peer probing random ids costs no
/// memory without bound).
pub(super) const TOLD_PER_CONNECTION: usize = 4096;

/// Documents a grant covers: every one, or those listed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DocSet {
    all: bool,
    docs: BTreeSet<DocumentId>,
}

impl DocSet {
    /// Every document.
    pub fn all() -> Self {
        Self { all: true, docs: BTreeSet::new() }
    }

    /// No document.
    pub fn none() -> Self {
        Self::default()
    }

    pub fn of(docs: impl IntoIterator<Item = DocumentId>) -> Self {
        Self { all: false, docs: docs.into_iter().collect() }
    }

    pub fn insert(&mut self, doc: DocumentId) {
        self.docs.insert(doc);
    }

    pub fn insert_all(&mut self) {
        self.all = true;
    }

    pub fn contains(&self, doc: &DocumentId) -> bool {
        self.all || self.docs.contains(doc)
    }

    /// Adds every document of `other`.
    pub fn extend(&mut self, other: &DocSet) {
        self.all |= other.all;
        if !self.all {
            self.docs.extend(other.docs.iter().copied());
        }
    }
}

/// What one connection may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    /// Who it is (a token's `sub`); connections of one subject may take
    /// over each other's peer id.
    pub subject: String,
    /// Documents it may read (and receive changes of).
    pub read: DocSet,
    /// Documents it may write (writing implies reading).
    pub write: DocSet,
    /// It may create documents nobody has.
    pub create: bool,
    /// A node relaying other peers' messages (an edge at the hub, an
    /// upstream): its ephemeral messages keep the sender ids they carry.
    /// A client's are relayed as its own.
    pub relay: bool,
    /// Another node (an edge at the hub, an edge-peer link): a document
    /// whose changes from it do not apply is not a reason to close it (see
    /// `Event::Unapplicable`). Connections we dial are nodes anyway.
    pub node: bool,
    /// When its grants end, on the engine's clock: the connection is then
    /// closed. `None`: never.
    pub expires_at: Option<Millis>,
    /// Its token's id (`jti`) and when it was issued (`iat`, seconds since
    /// the Unix epoch), for revocations ([`Engine::revoke`]).
    pub token_id: String,
    pub issued_at: Option<u64>,
}

impl Access {
    /// Everything: links between nodes, and every connection of a node in
    /// open dev mode.
    pub fn full() -> Self {
        Self {
            subject: String::new(),
            read: DocSet::all(),
            write: DocSet::all(),
            create: true,
            relay: true,
            node: false,
            expires_at: None,
            token_id: String::new(),
            issued_at: None,
        }
    }

    /// Another node that authenticated as `id` (an edge at the hub, an
    /// edge-peer link): everything, as the subject `node:{id}`.
    pub fn node(id: &str) -> Self {
        Self { subject: format!("node:{id}"), node: true, ..Self::full() }
    }

    /// A client's grants.
    pub fn client(subject: impl Into<String>, read: DocSet, write: DocSet, create: bool) -> Self {
        Self {
            subject: subject.into(),
            read,
            write,
            create,
            relay: false,
            node: false,
            expires_at: None,
            token_id: String::new(),
            issued_at: None,
        }
    }

    pub fn may_read(&self, doc: &DocumentId) -> bool {
        self.read.contains(doc) || self.write.contains(doc)
    }

    pub fn may_write(&self, doc: &DocumentId) -> bool {
        self.write.contains(doc)
    }

    /// A revocation of the token `token_id`, or of every token of
    /// `subject` issued at or before the given second (or that does not
    /// say when), covers this connection's token. Links between nodes hold
    /// no token and are never covered.
    pub fn revoked_by(&self, token_id: Option<&str>, subject: Option<(&str, u64)>) -> bool {
        let by_id = token_id.is_some_and(|t| !t.is_empty() && self.token_id == t);
        let by_subject =
            subject.is_some_and(|(s, at)| !self.relay && self.subject == s && self.issued_at.is_none_or(|i| i <= at));
        by_id || by_subject
    }
}

/// Why the engine refused a connection something without closing it
/// ([`Event::Refused`], counted in metrics by [`Refusal::as_str`]).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Hash)]
pub enum Refusal {
    /// A document it may not read (answered as unknown).
    NotGranted,
    /// Changes to a document it may only read.
    ReadOnly,
    /// Changes creating a document, without the create right.
    Create,
    /// An ephemeral message over the size or rate limit.
    EphemeralLimit,
    /// A request for a document not in memory, past the limit of requests
    /// for documents nobody has ([`EngineConfig::unknown_requests_per_minute`]).
    LookupLimit,
    /// Changes creating a document, past the subject's limit
    /// ([`EngineConfig::creates_per_minute`]).
    CreateLimit,
    /// Changes this node's copy of the document refuses (automerge cannot
    /// apply them: an actor id reused by a cloned device, say). The
    /// document stops syncing with that client; its others go on.
    Unapplicable,
}

impl Refusal {
    pub const ALL: [Refusal; 7] = [
        Refusal::NotGranted,
        Refusal::ReadOnly,
        Refusal::Create,
        Refusal::EphemeralLimit,
        Refusal::LookupLimit,
        Refusal::CreateLimit,
        Refusal::Unapplicable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::NotGranted => "not_granted",
            Refusal::ReadOnly => "read_only",
            Refusal::Create => "create",
            Refusal::EphemeralLimit => "ephemeral_limit",
            Refusal::LookupLimit => "lookup_limit",
            Refusal::CreateLimit => "create_limit",
            Refusal::Unapplicable => "unapplicable",
        }
    }
}

impl Engine {
    /// The access of a connection (none if it is unknown).
    pub(super) fn access(&self, conn: ConnId) -> Option<&Access> {
        self.conns.get(&conn).map(|c| &c.access)
    }

    pub(super) fn may_read(&self, conn: ConnId, doc: &DocumentId) -> bool {
        self.access(conn).is_some_and(|a| a.may_read(doc))
    }

    pub(super) fn may_write(&self, conn: ConnId, doc: &DocumentId) -> bool {
        self.access(conn).is_some_and(|a| a.may_write(doc))
    }

    pub(super) fn may_create(&self, conn: ConnId) -> bool {
        self.access(conn).is_some_and(|a| a.create)
    }

    /// A document message for a document `conn` may not read: answered as
    /// an unknown document is, and nothing else happens.
    /// As for an unknown document, it is answered once: a client told
    /// `doc-unavailable` may ask again at once (automerge-repo's do), and
    /// is then not answered. Past [`TOLD_PER_CONNECTION`] documents, it is
    /// not answered at all.
    pub(super) fn refuse_unreadable(&mut self, conn: ConnId, doc_id: DocumentId) {
        let Some(target_id) = self.first_telling(conn, doc_id, Refusal::NotGranted) else { return };
        let sender_id = self.config.peer_id.clone();
        self.out.send(conn, Message::DocUnavailable { sender_id, target_id, document_id: doc_id });
        self.out.event(Event::Refused { conn, doc: Some(doc_id), refusal: Refusal::NotGranted });
    }

    /// The peer id to tell `refusal` about `doc_id`, the first time only
    /// (and not past [`TOLD_PER_CONNECTION`] refusals on one connection).
    pub(super) fn first_telling(&mut self, conn: ConnId, doc_id: DocumentId, refusal: Refusal) -> Option<PeerId> {
        let c = self.conns.get_mut(&conn)?;
        let target_id = c.peer().cloned()?;
        (c.told.len() < TOLD_PER_CONNECTION && c.told.insert((doc_id, refusal))).then_some(target_id)
    }

    /// Tells `conn` once per document why its changes were not taken (it
    /// stays connected: a read-only viewer keeps receiving).
    pub(super) fn tell_refused(&mut self, conn: ConnId, doc_id: DocumentId, refusal: Refusal) {
        let Some(target_id) = self.first_telling(conn, doc_id, refusal) else { return };
        let message = self.refusal_text(doc_id, refusal);
        tracing::info!(%conn, doc = %doc_id, refusal = refusal.as_str(), "refused a peer's changes");
        self.out.event(Event::Refused { conn, doc: Some(doc_id), refusal });
        self.out.send(
            conn,
            Message::Error { sender_id: Some(self.config.peer_id.clone()), message, target_id: Some(target_id) },
        );
    }

    /// What a peer is told of `refusal`.
    pub(super) fn refusal_text(&self, doc_id: DocumentId, refusal: Refusal) -> String {
        match refusal {
            Refusal::ReadOnly => format!("read-only: your changes to {doc_id} are not accepted"),
            Refusal::Create => format!("creating document {doc_id} needs the create right"),
            Refusal::EphemeralLimit => {
                let (bytes, rate) = (self.config.ephemeral_max_bytes, self.config.ephemeral_per_second);
                format!(
                    "ephemeral messages about {doc_id} over the limit ({bytes} bytes each, {rate} per second) are dropped"
                )
            }
            Refusal::NotGranted => format!("document {doc_id} refused"),
            Refusal::LookupLimit => format!(
                "over {} requests a minute for documents nobody has: {doc_id} and other documents not in memory \
                 are answered doc-unavailable without a lookup for now",
                self.config.unknown_requests_per_minute
            ),
            Refusal::Unapplicable => format!(
                "your changes to {doc_id} do not apply to this node's copy (an actor id reused by a cloned device?): \
                 they are not accepted and {doc_id} no longer syncs with you; start again from a fresh copy of it"
            ),
            Refusal::CreateLimit => format!(
                "over {} new documents a minute: creating {doc_id} is refused for now",
                self.config.creates_per_minute
            ),
        }
    }

    /// A token was revoked: closes every connection whose token
    /// `covered` says it covers (see [`Access::revoked_by`]). Returns how
    /// many were closed.
    pub fn revoke(&mut self, covered: impl Fn(&Access) -> bool) -> usize {
        let doomed: Vec<ConnId> = self.conns.iter().filter(|(_, c)| covered(&c.access)).map(|(id, _)| *id).collect();
        for conn in &doomed {
            self.reject_connection(*conn, ErrorKind::TokenRevoked, "token revoked");
        }
        doomed.len()
    }

    /// Changes of `conn` that would create `doc_id` are refused: without
    /// the create right, or past its subject's limit.
    pub(super) fn refuse_creation(&mut self, conn: ConnId, doc_id: DocumentId) {
        let refusal = if self.may_create(conn) { Refusal::CreateLimit } else { Refusal::Create };
        self.tell_refused(conn, doc_id, refusal);
    }

    /// Adds `more`'s grants to what `conn` may read, write and create: an
    /// untrusted edge at the hub, as the tokens of its clients arrive
    /// (verified by the driver). Its subject, relay right and expiry stay.
    pub fn extend_access(&mut self, conn: ConnId, more: &Access) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.access.read.extend(&more.read);
            c.access.write.extend(&more.write);
            c.access.create |= more.create;
        }
    }

    /// Closes connections whose grants ended by `now`.
    pub(super) fn close_expired(&mut self, now: Millis) {
        while let Some((conn, at)) = self.timers.take_expired(now) {
            if self.conns.get(&conn).is_some_and(|c| c.access.expires_at == Some(at)) {
                self.reject_connection(conn, ErrorKind::TokenExpired, "token expired");
            }
        }
    }
}
