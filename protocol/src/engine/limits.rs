//! Limits on what one client may cost the node (guarantee 5's other
//! half: one abusive client never slows the others). Each is a setting of
//! [`EngineConfig`], and links between nodes are never limited:
//!
//! - ephemeral messages: size and rate per connection;
//! - requests for documents nobody has, per minute: past it, answered
//!   `doc-unavailable` with no storage read and no lookup upstream;
//! - documents created per token subject per minute;
//! - operations per message (absolute, and per byte past [`FREE_OPS`]),
//!   counted before anything is loaded, and per document.

use automerge::sync;

use crate::codec::Message;
use crate::ids::{ConnId, DocumentId};

use super::access::Refusal;

/// Subjects whose creations are counted at most; past it, those whose
/// minute is over are forgotten.
const MAX_SUBJECTS_TRACKED: usize = 4096;
use super::{Engine, EngineConfig, Event, FREE_OPS, MAX_INFLATED_BYTES, Millis};

/// Events in a fixed window, for a rate limit: when the window began, and
/// how many so far.
#[derive(Clone, Copy, Debug)]
pub(super) struct Window {
    start: Millis,
    count: u32,
}

impl Window {
    pub(super) fn new(now: Millis) -> Self {
        Self { start: now, count: 0 }
    }

    fn roll(&mut self, now: Millis, span_ms: u64) {
        if now.saturating_sub(self.start) >= span_ms {
            *self = Self::new(now);
        }
    }

    /// Counts one at `now`; whether it stays within `limit` per `span_ms`
    /// (0: no limit).
    pub(super) fn hit(&mut self, now: Millis, span_ms: u64, limit: u32) -> bool {
        self.roll(now, span_ms);
        self.count = self.count.saturating_add(1);
        limit == 0 || self.count <= limit
    }

    /// The window has passed: nothing counts any more.
    fn expired(&self, now: Millis, span_ms: u64) -> bool {
        now.saturating_sub(self.start) >= span_ms
    }

    /// `limit` is used up in the current window (nothing counted).
    pub(super) fn exhausted(&mut self, now: Millis, span_ms: u64, limit: u32) -> bool {
        self.roll(now, span_ms);
        limit > 0 && self.count >= limit
    }
}

/// The window of the per-minute limits.
pub(super) const MINUTE_MS: u64 = 60_000;

impl Engine {
    /// A client's ephemeral message is within its limits (size, and rate
    /// per connection over one-second windows); links between nodes are
    /// not limited.
    pub(super) fn ephemeral_allowed(&mut self, now: Millis, conn: ConnId, bytes: usize) -> bool {
        let (max_bytes, per_second) = (self.config.ephemeral_max_bytes, self.config.ephemeral_per_second);
        let Some(c) = self.conns.get_mut(&conn) else { return false };
        if c.access.relay {
            return true;
        }
        if max_bytes > 0 && bytes > max_bytes {
            return false;
        }
        c.ephemeral_window.hit(now, 1000, per_second)
    }

    /// `conn` is a client past its limit of requests for documents nobody
    /// has (links between nodes are not limited).
    pub(super) fn lookups_exhausted(&mut self, now: Millis, conn: ConnId) -> bool {
        let limit = self.config.unknown_requests_per_minute;
        self.conns.get_mut(&conn).is_some_and(|c| !c.access.relay && c.misses.exhausted(now, MINUTE_MS, limit))
    }

    /// `conn` was told a document it asked for is nowhere.
    pub(super) fn count_miss(&mut self, now: Millis, conn: ConnId) {
        let limit = self.config.unknown_requests_per_minute;
        if let Some(c) = self.conns.get_mut(&conn) {
            c.misses.hit(now, MINUTE_MS, limit);
        }
    }

    /// A request answered `doc-unavailable` without a lookup (the client is
    /// past [`Self::lookups_exhausted`]); told why once per connection.
    pub(super) fn refuse_lookup(&mut self, conn: ConnId, doc_id: DocumentId) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        let first = !std::mem::replace(&mut c.told_lookup_limit, true);
        let Some(target_id) = self.first_telling(conn, doc_id, Refusal::LookupLimit) else { return };
        let sender_id = self.config.peer_id.clone();
        self.out.send(conn, Message::DocUnavailable { sender_id, target_id: target_id.clone(), document_id: doc_id });
        self.out.event(Event::Refused { conn, doc: Some(doc_id), refusal: Refusal::LookupLimit });
        if first {
            tracing::info!(%conn, "a client is past its limit of requests for unknown documents");
            let message = self.refusal_text(doc_id, Refusal::LookupLimit);
            self.out.send(
                conn,
                Message::Error { sender_id: Some(self.config.peer_id.clone()), message, target_id: Some(target_id) },
            );
        }
    }

    /// A client's changes create `doc_id` here: said with its subject
    /// (clients without one, in open dev mode, and node links are not).
    pub(super) fn created_by(&mut self, doc_id: DocumentId, conn: ConnId) {
        let Some(c) = self.conns.get(&conn).filter(|c| !c.access.relay && !c.access.subject.is_empty()) else {
            return;
        };
        let subject = c.access.subject.clone();
        self.out.event(Event::Created { doc: doc_id, conn, subject });
    }

    /// The subject of `conn` may create one more document now (counted if
    /// `count`); clients without a subject and links between nodes always
    /// may.
    pub(super) fn creation_allowed(&mut self, now: Millis, conn: ConnId, count: bool) -> bool {
        let limit = self.config.creates_per_minute;
        let Some(access) = self.conns.get(&conn).map(|c| &c.access) else { return false };
        if access.relay || access.subject.is_empty() || limit == 0 {
            return true;
        }
        let subject = access.subject.clone();
        if self.creations.len() >= MAX_SUBJECTS_TRACKED {
            self.creations.retain(|_, w| !w.expired(now, MINUTE_MS));
        }
        let window = self.creations.entry(subject).or_insert_with(|| Window::new(now));
        if count { window.hit(now, MINUTE_MS, limit) } else { !window.exhausted(now, MINUTE_MS, limit) }
    }

    /// The operations a client's `message` (of `bytes` bytes) holds, if
    /// within [`EngineConfig::max_message_ops`] and
    /// [`EngineConfig::max_ops_per_byte`]; links between nodes are not
    /// counted (0). `Err`: why it is refused.
    pub(super) fn ops_allowed(
        &self,
        conn: ConnId,
        doc_id: DocumentId,
        message: &sync::Message,
        bytes: usize,
    ) -> Result<u64, String> {
        let EngineConfig { max_message_ops, max_ops_per_byte, .. } = self.config;
        let client = self.conns.get(&conn).is_some_and(|c| !c.access.relay);
        if !client || message.changes.is_empty() {
            return Ok(0);
        }
        let ops = crate::chunks::count_ops(message.changes.iter(), MAX_INFLATED_BYTES)
            .map_err(|e| format!("the changes for {doc_id} cannot be read: {e}"))?;
        if max_message_ops > 0 && ops > max_message_ops {
            return Err(format!("a message of {ops} operations for {doc_id} is past the limit of {max_message_ops}"));
        }
        let per_byte = FREE_OPS.saturating_add(max_ops_per_byte.saturating_mul(bytes as u64));
        if max_ops_per_byte > 0 && ops > per_byte {
            return Err(format!(
                "a message of {bytes} bytes holding {ops} operations for {doc_id} is past the limit of \
                 {max_ops_per_byte} operations per byte beyond the first {FREE_OPS}"
            ));
        }
        Ok(ops)
    }
}
