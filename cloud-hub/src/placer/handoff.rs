//! Hand-offs: a decided home is announced only once the new home caught
//! up with the hub and the hub with the old home.

use std::time::Duration;

use meridian_node::runtime::{NodeEvent, NodeEvents};
use meridian_node::store::{LeaseFence, StoredHome};
use meridian_protocol::engine::{CatchUp, HandoffStatus, HandoffTargets};
use meridian_protocol::ids::DocumentId;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{Announced, HANDOFF_HISTORY, Handoff, HomeEdge, LEASE_NAME, OLD_HOME_PATIENCE, Placer};
use crate::control::unix_ms;
use crate::placement::{EdgeId, Home};

impl Placer {
    /// Documents whose decided home differs from the announced one.
    pub(super) fn unsettled(&self) -> Vec<(DocumentId, Home, Home)> {
        let mut docs: std::collections::BTreeSet<DocumentId> = self.announced.keys().copied().collect();
        docs.extend(self.engine.explanations().iter().filter(|(_, e)| e.home != Home::Hub).map(|(d, _)| *d));
        docs.into_iter()
            .filter_map(|doc| {
                let decided = self.engine.home(&doc);
                let current = self.announced_home(&doc);
                (decided != current).then_some((doc, current, decided))
            })
            .collect()
    }

    /// The next step of every hand-off: asks the node runtime how far the
    /// new home (and the hub, from the old home) has caught up, and
    /// announces the homes that are ready. The runtime is asked one
    /// document at a time; each answer is a round trip through its loop.
    pub async fn advance_handoffs(&mut self, events: &NodeEvents) {
        if !self.moves || !self.leading || !self.lease_valid() {
            return;
        }
        if self.settle_until.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let unsettled = self.unsettled();
        let wanted: std::collections::BTreeSet<DocumentId> = unsettled.iter().map(|(d, _, _)| *d).collect();
        self.handoffs.retain(|d, _| wanted.contains(d));
        for (doc, from, to) in unsettled {
            let conn_of = |h: &Home| match h {
                Home::Hub => None,
                Home::Edge(e) => self.edges.get(e).and_then(|s| s.node_conn),
            };
            let (to_conn, from_conn) = (conn_of(&to), conn_of(&from));
            let fresh = || Handoff {
                to: to.clone(),
                started: Instant::now(),
                status: String::new(),
                targets: HandoffTargets::default(),
            };
            let entry = self.handoffs.entry(doc).or_insert_with(fresh);
            if entry.to != to {
                *entry = fresh();
            }
            if to != Home::Hub && to_conn.is_none() {
                entry.status = match &to {
                    Home::Edge(e) if self.remote.contains_key(e) => format!(
                        "the new home is connected to hub {}, not to the placer's (a hand-off needs it here)",
                        self.remote[e].hub
                    ),
                    _ => "the new home is not connected".into(),
                };
                continue;
            }
            let (reply, answer) = oneshot::channel();
            let targets = entry.targets.clone();
            let ask = NodeEvent::Handoff { doc, to: to_conn, from: from_conn, targets, reply };
            if events.send(ask).await.is_err() {
                return;
            }
            let Ok(status) = answer.await else { return };
            if let Some(entry) = self.handoffs.get_mut(&doc) {
                let (ready, why) = handoff_ready(&status, from_conn.is_some(), entry.started.elapsed());
                entry.status = why.into();
                // The first heads seen are the targets from now on.
                let HandoffTargets { to: to_target, from: from_target } = status.targets;
                entry.targets.to = entry.targets.to.take().or(to_target);
                entry.targets.from = entry.targets.from.take().or(from_target);
                // Only while the lease holds (the next placer may have
                // started otherwise), checked again after the store's write.
                if ready && self.lease_valid() && self.persist_home(doc, &to).await && self.lease_valid() {
                    self.announce(doc, from, to);
                }
            }
        }
        self.metrics.handoffs_pending.set(self.handoffs.len() as i64);
        self.metrics.docs_homed_on_edges.set(self.announced.len() as i64);
    }

    /// Records a home in the store before it is announced (so a placer
    /// taking over, and the other hubs, know it); `false`: not recorded, the
    /// hand-off is tried again.
    pub(super) async fn persist_home(&mut self, doc: DocumentId, to: &Home) -> bool {
        let Some(control) = self.control.clone() else { return true };
        let home = match to {
            Home::Hub => None,
            Home::Edge(e) => {
                let (addr, fingerprint) = self.reach(e);
                Some(StoredHome { doc, edge: e.to_string(), addr, fingerprint, since_ms: unix_ms() })
            }
        };
        let fence = LeaseFence { name: LEASE_NAME.into(), holder: self.holder.clone(), now_ms: unix_ms() };
        match control.call(move |s| s.set_home(&doc, home.as_ref(), &fence)).await {
            Ok(true) => true,
            Ok(false) => {
                tracing::warn!(%doc, "placement: the placer's lease was lost before the new home was recorded");
                self.lease_until = None;
                false
            }
            Err(error) => {
                tracing::warn!(%doc, %error, "placement: cannot record the new home; the hand-off waits");
                false
            }
        }
    }

    /// The new home caught up: every edge is told.
    pub(super) fn announce(&mut self, doc: DocumentId, from: Home, to: Home) {
        let Some(h) = self.handoffs.remove(&doc) else { return };
        match &to {
            Home::Hub => self.announced.remove(&doc),
            Home::Edge(e) => {
                let (addr, fingerprint) = self.reach(e);
                self.announced.insert(doc, HomeEdge { edge: e.clone(), addr, fingerprint })
            }
        };
        let took = h.started.elapsed();
        self.metrics.handoff_seconds.observe(took.as_secs_f64());
        // Often one round trip to the runtime (the new home had it all): µs.
        let took_ms = (took.as_secs_f64() * 1e6).round() / 1e3;
        tracing::info!(%doc, %from, %to, took_ms, "placement: home handed off and announced");
        let notice = self.notice(doc, &to);
        let edges: Vec<EdgeId> = self.edges.keys().cloned().collect();
        for e in edges {
            self.send_control(&e, &notice);
        }
        self.metrics.handoffs_total.inc();
        self.announced_history.push_back(Announced { at_ms: self.now().0, doc, from, to, took_ms });
        while self.announced_history.len() > HANDOFF_HISTORY {
            self.announced_history.pop_front();
        }
    }

    /// The announced home of a document.
    pub fn announced_home(&self, doc: &DocumentId) -> Home {
        self.announced.get(doc).map_or(Home::Hub, |h| Home::Edge(h.edge.clone()))
    }
}

/// Whether a hand-off may be announced, and why (not).
/// An old home that is not connected cannot be asked: what it did not give
/// the hub it gives on reconnect (it keeps its copy).
pub(super) fn handoff_ready(
    status: &HandoffStatus,
    old_home_connected: bool,
    waited: Duration,
) -> (bool, &'static str) {
    match status.to {
        Some(CatchUp::CaughtUp) | None => {}
        Some(CatchUp::Behind) => return (false, "the new home is catching up"),
        Some(CatchUp::Loading) => return (false, "the hub is loading the document"),
        Some(CatchUp::NoData) => return (false, "the hub has no copy yet"),
        Some(CatchUp::NoPeer) => return (false, "the new home is not connected"),
    }
    match status.from_covered {
        _ if !old_home_connected => (true, "caught up"),
        Some(true) => (true, "caught up"),
        Some(false) => (false, "the hub is catching up with the old home"),
        None if waited >= OLD_HOME_PATIENCE => (true, "caught up (the old home did not answer)"),
        None => (false, "waiting for the old home's heads"),
    }
}
