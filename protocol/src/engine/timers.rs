//! Timers as data: the engine keeps its own deadlines and says when it next
//! needs to run ([`Engine::poll_timeout`]); the driver sleeps until then
//! and calls [`Engine::handle_timeout`]. Nothing scans every document on a
//! fixed tick, and the simulation jumps straight to the next deadline.
//!
//! Idle eviction keeps one entry per document in memory, keyed by a
//! deadline that may be early: touching a document costs nothing, and an
//! entry that comes due for a document touched since is moved to its real
//! deadline (each document's entry is the one its `idle_timer` names).

use std::collections::BTreeSet;

use crate::ids::{ConnId, DocumentId};

use super::conn::Conn;
use super::doc::DocState;
use super::local::EPHEMERAL_SESSION_TTL_MS;
use super::{Engine, ErrorKind, Millis};

/// A document due for eviction that cannot leave yet (a write or a load in
/// flight, messages waiting, the application waiting), or a memory budget
/// that could not be met, is looked at again this much later.
const RECHECK_MS: u64 = 1000;

#[derive(Debug, Default)]
pub(super) struct Timers {
    /// Idle-eviction deadlines by document (see the module docs).
    idle: BTreeSet<(Millis, DocumentId)>,
    /// Next check of the memory budget (set while it is exceeded).
    budget: Option<Millis>,
    /// Next sweep of old ephemeral sessions (set while any is remembered).
    ephemeral: Option<Millis>,
    /// Next backfill step (set while one is under way).
    backfill: Option<Millis>,
    /// Next sweep of changes followed to their home (set while any is).
    home_lag: Option<Millis>,
    /// Incoming connections that must have sent `join` by then.
    joins: BTreeSet<(Millis, ConnId)>,
    /// Connections whose grants end then.
    expiries: BTreeSet<(Millis, ConnId)>,
    /// Documents with messages held for peers that have not answered
    /// (`fanout::REPLY_WAIT_MS`): sent then whatever the peers did.
    replies: BTreeSet<(Millis, DocumentId)>,
}

impl Timers {
    fn next(&self) -> Option<Millis> {
        let idle = self.idle.first().map(|(at, _)| *at);
        let join = self.joins.first().map(|(at, _)| *at);
        let expiry = self.expiries.first().map(|(at, _)| *at);
        let reply = self.replies.first().map(|(at, _)| *at);
        [idle, self.budget, self.ephemeral, self.backfill, self.home_lag, join, expiry, reply]
            .into_iter()
            .flatten()
            .min()
    }

    pub(super) fn reply_by(&mut self, at: Millis, doc: DocumentId) {
        self.replies.insert((at, doc));
    }

    pub(super) fn expires(&mut self, at: Millis, conn: ConnId) {
        self.expiries.insert((at, conn));
    }

    /// The connection is gone: its grants need no deadline.
    pub(super) fn expired(&mut self, at: Millis, conn: ConnId) {
        self.expiries.remove(&(at, conn));
    }

    /// The next connection whose grants ended by `now`, with when.
    pub(super) fn take_expired(&mut self, now: Millis) -> Option<(ConnId, Millis)> {
        let &(at, conn) = self.expiries.first().filter(|(at, _)| *at <= now)?;
        self.expiries.pop_first();
        Some((conn, at))
    }

    pub(super) fn join_by(&mut self, at: Millis, conn: ConnId) {
        self.joins.insert((at, conn));
    }

    /// The connection joined (or is gone): no deadline for it any more.
    pub(super) fn joined(&mut self, at: Millis, conn: ConnId) {
        self.joins.remove(&(at, conn));
    }

    pub(super) fn backfill_at(&mut self, at: Millis) {
        self.backfill = Some(at);
    }

    pub(super) fn home_lag_at(&mut self, at: Millis) {
        self.home_lag.get_or_insert(at);
    }
}

impl Engine {
    /// When the engine next needs [`Engine::handle_timeout`]; `None`:
    /// nothing is scheduled. Ask again after handing it any input.
    pub fn poll_timeout(&self) -> Option<Millis> {
        self.timers.next()
    }

    /// Documents with messages held for peers' answers, due to go out by
    /// a deadline at the latest (the simulation is not quiet before).
    pub fn replies_awaited(&self) -> usize {
        self.timers.replies.len()
    }

    /// Time has come for what [`Engine::poll_timeout`] announced: evicts
    /// documents idle for [`super::EngineConfig::idle_evict_after_ms`],
    /// closes connections whose grants ended, sends what waited for a
    /// peer's answer too long,
    /// keeps the memory budget, forgets old ephemeral sessions, opens the
    /// next slice of a backfill, stops following changes their home never
    /// confirmed. Calling it early or late is harmless: it does what is due
    /// by `now`, and leaves every deadline after `now`.
    pub fn handle_timeout(&mut self, now: Millis) {
        self.refuse_late_joins(now);
        self.close_expired(now);
        self.send_held_for_replies(now);
        self.evict_idle(now);
        if self.timers.budget.is_some_and(|at| at <= now) {
            self.timers.budget = None;
            self.enforce_memory_budget();
            if self.over_memory_budget() {
                self.timers.budget = Some(Millis(now.0.saturating_add(RECHECK_MS)));
            }
        }
        if self.timers.ephemeral.is_some_and(|at| at <= now) {
            self.ephemeral_seen.retain(|_, (_, at)| now.saturating_sub(*at) < EPHEMERAL_SESSION_TTL_MS);
            let oldest = self.ephemeral_seen.values().map(|(_, at)| *at).min();
            self.timers.ephemeral = oldest.map(|at| Millis(at.0.saturating_add(EPHEMERAL_SESSION_TTL_MS)));
        }
        if self.timers.backfill.is_some_and(|at| at <= now) {
            let more = self.backfill_step(now);
            let next = Millis(now.0.saturating_add(self.config.backfill_interval_ms.max(1)));
            self.timers.backfill = more.then_some(next);
        }
        if self.timers.home_lag.is_some_and(|at| at <= now) {
            self.timers.home_lag = self.give_up_home_lag(now);
        }
    }

    /// Closes incoming connections still without `join` at their deadline
    /// (a connection that joined, or is gone, is passed over).
    fn refuse_late_joins(&mut self, now: Millis) {
        while let Some(&(at, conn)) = self.timers.joins.first() {
            if at > now {
                break;
            }
            self.timers.joins.pop_first();
            if self.conns.get(&conn).is_some_and(Conn::awaits_join) {
                let secs = self.config.join_timeout_ms as f64 / 1000.0;
                self.reject_connection(conn, ErrorKind::HandshakeTimeout, format!("no `join` within {secs} s"));
            }
        }
    }

    /// Sends what was held for peers that did not answer in time (see
    /// `fanout::REPLY_WAIT_MS`); a peer that answered meanwhile got it
    /// already, and the document has nothing more for it.
    fn send_held_for_replies(&mut self, now: Millis) {
        while let Some(&(at, doc_id)) = self.timers.replies.first()
            && at <= now
        {
            self.timers.replies.pop_first();
            self.sync_doc(now, doc_id);
        }
    }

    fn evict_idle(&mut self, now: Millis) {
        let idle = self.config.idle_evict_after_ms;
        while let Some(&(at, doc_id)) = self.timers.idle.first() {
            if at > now {
                break;
            }
            self.timers.idle.pop_first();
            let Some(d) = self.docs.get_mut(&doc_id).filter(|d| d.idle_timer == at) else { continue };
            let due = Millis(d.last_active.0.saturating_add(idle));
            if due > now {
                d.idle_timer = due;
            } else if d.is_quiet() {
                self.evict(doc_id);
                continue;
            } else {
                d.idle_timer = Millis(now.0.saturating_add(RECHECK_MS));
            }
            self.timers.idle.insert((d.idle_timer, doc_id));
        }
    }

    /// Puts a document in memory, with its idle deadline; past the memory
    /// budget, a check is due now.
    pub(super) fn insert_doc(&mut self, doc_id: DocumentId, mut state: DocState) {
        if let Some(old) = self.remove_doc(doc_id) {
            debug_assert!(false, "{doc_id} was in memory already ({old:?})");
        }
        state.idle_timer = Millis(state.last_active.0.saturating_add(self.config.idle_evict_after_ms));
        self.timers.idle.insert((state.idle_timer, doc_id));
        let now = state.last_active;
        self.docs.insert(doc_id, Box::new(state));
        if self.over_memory_budget() && self.timers.budget.is_none() {
            self.timers.budget = Some(now);
        }
    }

    /// Takes a document out of memory, with its idle deadline.
    pub(super) fn remove_doc(&mut self, doc_id: DocumentId) -> Option<DocState> {
        let d = self.docs.remove(&doc_id)?;
        self.timers.idle.remove(&(d.idle_timer, doc_id));
        Some(*d)
    }

    fn over_memory_budget(&self) -> bool {
        let max = self.config.max_loaded_docs;
        max > 0 && self.docs.len() > max
    }

    /// An ephemeral session was seen at `now`: it is forgotten after
    /// [`EPHEMERAL_SESSION_TTL_MS`] without news.
    pub(super) fn ephemeral_seen_at(&mut self, now: Millis) {
        if self.timers.ephemeral.is_none() {
            self.timers.ephemeral = Some(Millis(now.0.saturating_add(EPHEMERAL_SESSION_TTL_MS)));
        }
    }
}
