//! The placer's lease and the tier's shared state: one placer at a time
//! among hubs on one store (the lease), the edges' reports every hub
//! records, the homes and pins the others follow.

use meridian_node::store::{StoredHome, StoredPin, StoredReport};
use meridian_protocol::ids::DocumentId;
use tokio::time::Instant;

use super::{EDGE_FAILOVER, HomeEdge, LEASE_NAME, Placer, RemoteEdge, STALE_REPORTS, SharedReport};
use crate::control::unix_ms;
use crate::placement::{EdgeId, Home, PlacementEngine};

impl Placer {
    /// Whether the last renewal still covers now (always, without a store).
    pub(super) fn lease_valid(&self) -> bool {
        self.control.is_none() || self.lease_until.is_some_and(|t| Instant::now() < t)
    }

    /// Takes or renews the placer's lease; takes over or steps down.
    pub async fn renew_lease(&mut self) {
        let Some(control) = self.control.clone() else { return };
        let (holder, ttl_ms) = (self.holder.clone(), self.lease_ttl.as_millis() as u64);
        let asked = Instant::now();
        let outcome = control
            .call(move |s| {
                let held = s.take_lease(LEASE_NAME, &holder, unix_ms(), ttl_ms)?;
                let current = if held { Some(holder) } else { s.lease_holder(LEASE_NAME)?.map(|(h, _)| h) };
                Ok((held, current))
            })
            .await;
        match outcome {
            Ok((held, current)) => {
                // Act for two thirds of the lease from when it was asked for:
                // the store's expiry is later, so the next placer cannot
                // start before this one stops (clocks a second apart included).
                // Held again after it had run out: another hub may have
                // placed meanwhile, so start over from the store.
                let lapsed = self.leading && !self.lease_valid();
                self.lease_until = held.then(|| asked + self.lease_ttl * 2 / 3);
                let previous = std::mem::replace(&mut self.placer, current);
                if held && (!self.leading || lapsed) {
                    self.take_over(previous).await;
                } else if !held && self.leading {
                    self.step_down("another hub holds the lease");
                }
            }
            Err(error) => {
                tracing::warn!(%error, "placement: cannot renew the placer's lease");
                if self.leading && !self.lease_valid() {
                    self.step_down("the store is unreachable");
                }
            }
        }
    }

    /// This hub became the placer: it continues from the homes and pins
    /// in the store (the engine starts over from them).
    pub(super) async fn take_over(&mut self, previous: Option<String>) {
        let Some(control) = self.control.clone() else { return };
        let loaded = control.call(|s| Ok((s.homes()?, s.pins()?))).await;
        let (homes, pins) = match loaded {
            Ok(v) => v,
            Err(error) => {
                tracing::warn!(%error, "placement: holding the lease but cannot read the homes; trying again");
                self.lease_until = None;
                return;
            }
        };
        self.engine = PlacementEngine::new(self.engine.config().clone());
        self.adopt_homes(homes);
        self.adopt_pins(pins);
        let now = self.now();
        for (doc, home) in &self.announced {
            self.engine.restore(*doc, Home::Edge(home.edge.clone()), Some(now), now);
        }
        self.handoffs.clear();
        self.leading = true;
        // Edges of a hub that died are failing over: wait for them to
        // report before a home on one of them counts as unreachable.
        self.settle_until =
            (!self.announced.is_empty()).then(|| Instant::now() + EDGE_FAILOVER + self.report_interval * STALE_REPORTS);
        self.metrics.is_placer.set(1);
        self.metrics.takeovers_total.inc();
        let previous = previous.filter(|p| *p != self.holder);
        tracing::info!(hub = %self.hub_id, previous = previous.as_deref().unwrap_or("none"), homes = self.announced.len(), pins = self.pins.len(), "placement: this hub is the placer now");
    }

    pub(super) fn step_down(&mut self, why: &str) {
        self.leading = false;
        self.handoffs.clear();
        self.remote.clear();
        self.metrics.is_placer.set(0);
        self.metrics.handoffs_pending.set(0);
        tracing::warn!(hub = %self.hub_id, why, "placement: this hub is no longer the placer");
    }

    /// Records each of this hub's edges' fresh reports in the store.
    pub(super) async fn share_reports(&mut self) {
        let Some(control) = self.control.clone() else { return };
        let at_ms = unix_ms();
        let reports: Vec<StoredReport> = self
            .edges
            .iter()
            .filter(|(_, e)| self.fresh(e))
            .filter_map(|(id, e)| {
                let shared = SharedReport {
                    rtt_us: e.reported_rtt.or(e.hub_rtt).map(|d| d.as_micros() as u64),
                    client_rtt_us: e.client_rtt.map(|d| d.as_micros() as u64),
                    peer_addr: e.peer_addr.clone(),
                    peer_fingerprint: e.peer_fingerprint.clone(),
                    demand: e.demand.iter().map(|(d, x)| (d.to_string(), (x.subscribers, x.writes_per_sec))).collect(),
                    peer_rtts_us: e.peer_rtts.iter().map(|(p, d)| (p.to_string(), d.as_micros() as u64)).collect(),
                };
                let report = serde_json::to_string(&shared).ok()?;
                // The process's holder name: unique even if two hubs share a --hub-id.
                Some(StoredReport { edge: id.to_string(), hub: self.holder.clone(), at_ms, report })
            })
            .collect();
        if reports.is_empty() {
            return;
        }
        if let Err(error) = control.call(move |s| s.put_reports(&reports)).await {
            tracing::warn!(%error, "placement: cannot record the edges' reports");
        }
    }

    /// The placer's view of the rest of the tier: fresh reports of edges
    /// connected to other hubs, and the pins.
    pub(super) async fn load_cluster(&mut self) {
        let Some(control) = self.control.clone() else { return };
        let since = unix_ms().saturating_sub((self.report_interval * STALE_REPORTS).as_millis() as u64);
        match control.call(move |s| Ok((s.reports_since(since)?, s.pins()?))).await {
            Ok((reports, pins)) => {
                self.remote = reports
                    .into_iter()
                    .filter(|r| r.hub != self.holder && !self.edges.contains_key(&EdgeId::new(r.edge.clone())))
                    .filter_map(|r| {
                        let report = serde_json::from_str(&r.report).ok()?;
                        let hub = r.hub.rsplit_once('#').map_or(r.hub.clone(), |(hub, _)| hub.to_owned());
                        Some((EdgeId::new(r.edge), RemoteEdge { hub, at_ms: r.at_ms, report }))
                    })
                    .collect();
                self.adopt_pins(pins);
            }
            Err(error) => tracing::warn!(%error, "placement: cannot read the tier's reports and pins"),
        }
    }

    /// Not the placer: follows the homes it announced (telling this hub's
    /// edges of each change) and the pins.
    pub(super) async fn follow(&mut self) {
        let Some(control) = self.control.clone() else { return };
        match control.call(|s| Ok((s.homes()?, s.pins()?))).await {
            Ok((homes, pins)) => {
                let before = std::mem::take(&mut self.announced);
                self.adopt_homes(homes);
                self.adopt_pins(pins);
                let changed: std::collections::BTreeSet<DocumentId> = before
                    .iter()
                    .filter(|(d, h)| self.announced.get(*d) != Some(*h))
                    .map(|(d, _)| *d)
                    .chain(self.announced.iter().filter(|(d, h)| before.get(*d) != Some(*h)).map(|(d, _)| *d))
                    .collect();
                if self.moves {
                    let edges: Vec<EdgeId> = self.edges.keys().cloned().collect();
                    for doc in changed {
                        let notice = self.notice(doc, &self.announced_home(&doc));
                        for e in &edges {
                            self.send_control(e, &notice);
                        }
                    }
                }
                self.metrics.docs_homed_on_edges.set(self.announced.len() as i64);
            }
            Err(error) => tracing::warn!(%error, "placement: cannot read the announced homes"),
        }
    }

    pub(super) fn adopt_homes(&mut self, homes: Vec<StoredHome>) {
        self.announced = homes
            .into_iter()
            .map(|h| {
                let home = HomeEdge { edge: EdgeId::new(h.edge), addr: h.addr, fingerprint: h.fingerprint };
                (h.doc, home)
            })
            .collect();
    }

    pub(super) fn adopt_pins(&mut self, pins: Vec<StoredPin>) {
        let engine_pins = pins
            .iter()
            .map(|p| (p.doc, p.edge.as_ref().map_or(Home::Hub, |e| Home::Edge(EdgeId::new(e.clone())))))
            .collect();
        self.engine.set_pins(engine_pins);
        self.pins = pins;
    }
}
