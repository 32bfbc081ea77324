//! Node policy the drivers used to decide themselves, here so the
//! simulation runs it: where a hand-off stands, pinned documents, which
//! stored documents the disk budget offers for offloading (and when it
//! tries one again), backfill pacing, and how long changes take to reach
//! a document's home.

use std::collections::{BTreeMap, VecDeque};

use automerge::ChangeHash;

use crate::ids::{ConnId, DocumentId};

use super::{CatchUp, Engine, Event, Millis};

/// Stored documents offered per disk-budget check, and how long one that
/// could not be dropped (not yet acknowledged by the hub, or in use) is
/// left alone.
const OFFLOAD_PER_CHECK: usize = 16;
const OFFLOAD_RETRY_MS: u64 = 30_000;

/// Stored documents opened per backfill step, and the loaded-document
/// count above which the backfill waits for evictions.
const BACKFILL_PER_STEP: usize = 256;
const BACKFILL_MAX_LOADED: usize = 4096;

/// At most this many changes are followed until their home confirms them
/// (past it, new ones are not followed), for at most this long.
const HOME_LAG_TRACKED: usize = 4096;
const HOME_LAG_GIVE_UP_MS: u64 = 60_000;

/// What a hand-off waits for: the new home to cover `to` (our durable
/// heads when it started), us to hold `from` (the old home's heads then).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HandoffTargets {
    pub to: Option<Vec<ChangeHash>>,
    pub from: Option<Vec<ChangeHash>>,
}

/// Where a hand-off stands ([`Engine::handoff_status`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandoffStatus {
    pub to: Option<CatchUp>,
    /// `None`: the old home has not told us its heads (or is gone).
    pub from_covered: Option<bool>,
    /// The heads that were checked (to keep as targets).
    pub targets: HandoffTargets,
}

/// The policy's state (see the module docs).
#[derive(Debug, Default)]
pub(super) struct Policy {
    /// Documents homed here: the hot replica, never offloaded.
    pinned: std::collections::BTreeSet<DocumentId>,
    /// Documents offered to [`Engine::offload`] recently, with when.
    offload_tried: BTreeMap<DocumentId, Millis>,
    /// Stored documents still to open so they sync with the upstream.
    backfill: VecDeque<DocumentId>,
    /// Changes durable here their home has not confirmed yet, by document,
    /// with when they became durable.
    home_lag: BTreeMap<DocumentId, Vec<(Vec<ChangeHash>, Millis)>>,
    home_lag_len: usize,
}

impl Engine {
    /// Where a hand-off of `doc` stands (the hub, before it announces a new
    /// home): the peer on `to` is made to catch up with our durable copy
    /// ([`Engine::catch_up`]), for `from` (the old home) we learn whether
    /// we hold everything it advertised. `targets` are the heads of the
    /// first check (`None`: now's), kept so that steady writes elsewhere do
    /// not move the goal.
    pub fn handoff_status(
        &mut self,
        now: Millis,
        doc: DocumentId,
        to: Option<ConnId>,
        from: Option<ConnId>,
        targets: HandoffTargets,
    ) -> HandoffStatus {
        let to_target = targets.to.or_else(|| self.durable_heads(&doc));
        let to = to.map(|c| self.catch_up(now, doc, c, to_target.as_deref()));
        let from_target = from.and_then(|c| {
            // Attached so that it tells us its heads.
            self.catch_up(now, doc, c, None);
            targets.from.clone().or_else(|| self.peer_heads(&doc, c))
        });
        let from_covered = from_target.as_ref().map(|h| self.holds_durably(&doc, h));
        HandoffStatus { to, from_covered, targets: HandoffTargets { to: to_target, from: from_target } }
    }

    /// This node is (or no longer is) the document's home: its copy is the
    /// hot replica, never offloaded, and its changes are not followed to a
    /// home elsewhere.
    pub fn pin(&mut self, doc: DocumentId, pinned: bool) {
        if pinned {
            self.policy.pinned.insert(doc);
            self.offloading.remove(&doc);
        } else {
            self.policy.pinned.remove(&doc);
        }
    }

    pub fn is_pinned(&self, doc: &DocumentId) -> bool {
        self.policy.pinned.contains(doc)
    }

    /// Over the disk budget: of the least recently written stored
    /// documents (`oldest`, oldest first), those not in memory, not in use,
    /// not pinned and not tried in the last 30 s are offered to
    /// [`Engine::offload`], a few per call.
    pub fn relieve_disk(&mut self, now: Millis, oldest: Vec<DocumentId>) {
        self.policy.offload_tried.retain(|_, at| now.saturating_sub(*at) < OFFLOAD_RETRY_MS);
        let candidates: Vec<DocumentId> = oldest
            .into_iter()
            .filter(|d| self.config.shard.owns(d))
            .filter(|d| !self.docs.contains_key(d) && !self.in_use(d) && !self.is_pinned(d))
            .filter(|d| !self.policy.offload_tried.contains_key(d))
            .take(OFFLOAD_PER_CHECK)
            .collect();
        for doc in candidates {
            self.policy.offload_tried.insert(doc, now);
            self.offload(now, doc);
        }
    }

    /// Opens the stored `docs` so they sync with the upstream that just
    /// connected (documents no application has open too: evicted ones, or
    /// ones a hub handed to this edge), a slice per step
    /// ([`super::EngineConfig::backfill_interval_ms`]), the first at once;
    /// idle ones are evicted again later. Replaces a backfill still under
    /// way.
    pub fn backfill(&mut self, now: Millis, docs: Vec<DocumentId>) {
        let shard = self.config.shard;
        self.policy.backfill = docs.into_iter().filter(|d| shard.owns(d)).collect();
        if self.backfill_step(now) {
            self.timers.backfill_at(Millis(now.0.saturating_add(self.config.backfill_interval_ms.max(1))));
        }
    }

    /// Stored documents the backfill has still to open.
    pub fn backfill_queued(&self) -> usize {
        self.policy.backfill.len()
    }

    /// One backfill step; whether more remain.
    pub(super) fn backfill_step(&mut self, now: Millis) -> bool {
        // The node's pace, shared by its shards.
        let count = self.config.shard.count.max(1);
        if self.docs.len() < BACKFILL_MAX_LOADED.div_ceil(count) {
            for _ in 0..BACKFILL_PER_STEP.div_ceil(count) {
                let Some(doc) = self.policy.backfill.pop_front() else { break };
                self.open(now, doc);
            }
        }
        !self.policy.backfill.is_empty()
    }

    /// A change became durable here (`heads`): unless the document is homed
    /// here or its home has it already, follow it until the home confirms
    /// it ([`Event::HomeConfirmed`]).
    pub(super) fn follow_to_home(&mut self, now: Millis, doc: DocumentId, heads: Vec<ChangeHash>) {
        if !self.config.track_home_lag || self.is_pinned(&doc) || self.policy.home_lag_len >= HOME_LAG_TRACKED {
            return;
        }
        if self.home_covers(&doc, &heads) != Some(false) {
            return;
        }
        self.policy.home_lag.entry(doc).or_default().push((heads, now));
        self.policy.home_lag_len += 1;
        self.timers.home_lag_at(Millis(now.0.saturating_add(HOME_LAG_GIVE_UP_MS)));
    }

    /// Changes of `doc` are followed to its home.
    pub(super) fn follows_home_lag(&self, doc: &DocumentId) -> bool {
        self.policy.home_lag.contains_key(doc)
    }

    /// After the home's message for `doc`: the changes it confirmed now.
    pub(super) fn check_home(&mut self, now: Millis, doc: DocumentId) {
        let Some(followed) = self.policy.home_lag.remove(&doc) else { return };
        let (confirmed, waiting): (Vec<_>, Vec<_>) =
            followed.into_iter().partition(|(heads, _)| self.home_covers(&doc, heads) == Some(true));
        self.policy.home_lag_len -= confirmed.len();
        for (_, since) in confirmed {
            self.out.event(Event::HomeConfirmed { doc, lag_ms: now.saturating_sub(since) });
        }
        if !waiting.is_empty() {
            self.policy.home_lag.insert(doc, waiting);
        }
    }

    /// Stops following changes its home has not confirmed in a minute;
    /// when the oldest left is due.
    pub(super) fn give_up_home_lag(&mut self, now: Millis) -> Option<Millis> {
        let policy = &mut self.policy;
        policy.home_lag.retain(|_, followed| {
            followed.retain(|(_, since)| now.saturating_sub(*since) < HOME_LAG_GIVE_UP_MS);
            !followed.is_empty()
        });
        policy.home_lag_len = policy.home_lag.values().map(Vec::len).sum();
        let oldest = policy.home_lag.values().flatten().map(|(_, since)| *since).min();
        oldest.map(|at| Millis(at.0.saturating_add(HOME_LAG_GIVE_UP_MS)))
    }
}
