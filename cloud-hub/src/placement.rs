//! The placement engine: decides each document's **home** (DESIGN §5).
//!
//! A pure, deterministic state machine in the style of `quinn-proto`: no IO,
//! no clock, no randomness. The driver (the hub's placement task) calls
//! [`PlacementEngine::tick`] with `now`, the demand reported by edges and
//! the latency matrix, and gets back the moves it decided; everything it
//! iterates is a `BTreeMap`, so the same inputs always give the same
//! outputs, in the same order.
//!
//! ## The model
//!
//! A writer at edge `e` sees a write latency to home `h` of
//! `client↔e + e↔h` (round trips: a write is acknowledged once durable at
//! its home). The cost of a candidate home is the mean of that latency over
//! the document's writers, weighted by their write rate. The client↔edge
//! term is the same for every candidate, so it never changes which home is
//! cheapest; it does make the relative gain honest (a 5 ms gain matters less
//! to clients 200 ms away). Edge↔edge round trips that were not measured
//! are taken as the path through the hub (`e↔hub + hub↔f`), which is how
//! edges reach each other today.
//!
//! ## Stability
//!
//! A document moves from its current home to the cheapest candidate only if
//! - the gain is at least [`PlacementConfig::min_gain`] **and** at least
//!   [`PlacementConfig::min_gain_ratio`] of the current cost (hysteresis:
//!   noise around a tie never moves anything);
//! - it has stayed at least [`PlacementConfig::min_dwell`] where it is;
//! - fewer than [`PlacementConfig::max_moves`] moves happened in the last
//!   [`PlacementConfig::move_window`] (a global rate limit; when it binds,
//!   the largest gains go first).
//!
//! Ties between candidates go to the current home, then the hub, then the
//! edge with the smallest id. A document without writers stays where it is;
//! once it has had no demand at all (no writers, no subscribers) for
//! [`PlacementConfig::idle_after`] its home returns to the hub and the
//! engine forgets it. A home on an edge that is no longer connected is left
//! at once (dwell and hysteresis do not apply; the rate limit does, with
//! priority).
//!
//! Acting on a decision (hand-off, then announcement) is the placer's job
//! ([`crate::placer`]; see ARCHITECTURE.md, "Placement").

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::time::Duration;

use meridian_protocol::engine::Millis;
use meridian_protocol::ids::DocumentId;
use serde::Serialize;

/// An edge's id at the hub (the `nodeId` of its `hello`).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize)]
#[serde(transparent)]
pub struct EdgeId(String);

impl EdgeId {
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EdgeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a document's hot replica lives. In JSON: `"hub"` or `{"edge": "eu"}`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Debug, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Home {
    Hub,
    Edge(EdgeId),
}

impl fmt::Display for Home {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Home::Hub => f.write_str("hub"),
            Home::Edge(e) => write!(f, "edge:{e}"),
        }
    }
}

/// One edge's demand for one document.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct EdgeDemand {
    /// Open client subscriptions at the edge.
    pub subscribers: u32,
    /// Changes written by the edge's clients per second (over the edge's
    /// report window).
    pub writes_per_sec: f64,
}

impl EdgeDemand {
    fn write_rate(&self) -> f64 {
        if self.writes_per_sec.is_finite() && self.writes_per_sec > 0.0 { self.writes_per_sec } else { 0.0 }
    }

    fn is_demand(&self) -> bool {
        self.subscribers > 0 || self.write_rate() > 0.0
    }
}

/// Demand per document, per edge.
pub type DemandMap = BTreeMap<DocumentId, BTreeMap<EdgeId, EdgeDemand>>;

/// The measured round-trip times.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Latencies {
    /// Edge ↔ hub. The edges present here are the connected ones: the only
    /// edges that can be a home.
    pub edge_hub: BTreeMap<EdgeId, Duration>,
    /// Edge ↔ edge, keyed by the pair in id order; a missing pair is taken
    /// as the path through the hub.
    pub edge_edge: BTreeMap<(EdgeId, EdgeId), Duration>,
    /// A typical client ↔ edge round trip at each edge (absent: zero).
    pub client_edge: BTreeMap<EdgeId, Duration>,
}

impl Latencies {
    /// Round trip from edge `from` to `home`; `None` if `home` is an edge
    /// that is not connected.
    pub fn edge_to_home(&self, from: &EdgeId, home: &Home, unknown: Duration) -> Option<Duration> {
        let to_hub = |e: &EdgeId| self.edge_hub.get(e).copied().unwrap_or(unknown);
        match home {
            Home::Hub => Some(to_hub(from)),
            Home::Edge(h) if h == from => Some(Duration::ZERO),
            Home::Edge(h) => {
                if !self.edge_hub.contains_key(h) {
                    return None;
                }
                let key = if from < h { (from.clone(), h.clone()) } else { (h.clone(), from.clone()) };
                Some(self.edge_edge.get(&key).copied().unwrap_or_else(|| to_hub(from) + to_hub(h)))
            }
        }
    }

    fn client_rtt(&self, edge: &EdgeId) -> Duration {
        self.client_edge.get(edge).copied().unwrap_or_default()
    }
}

/// The knobs; see the module docs for what each one guards against.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlacementConfig {
    /// Minimum relative gain (of the current cost) for a move.
    pub min_gain_ratio: f64,
    /// Minimum absolute gain (mean write latency) for a move.
    #[serde(serialize_with = "as_ms", rename = "min_gain_ms")]
    pub min_gain: Duration,
    /// Minimum time a document stays at a home before it moves again.
    #[serde(serialize_with = "as_ms", rename = "min_dwell_ms")]
    pub min_dwell: Duration,
    /// At most this many moves per `move_window`, over all documents.
    pub max_moves: u32,
    #[serde(serialize_with = "as_ms", rename = "move_window_ms")]
    pub move_window: Duration,
    /// After this long without any demand a document's home returns to the
    /// hub and the engine forgets it.
    #[serde(serialize_with = "as_ms", rename = "idle_after_ms")]
    pub idle_after: Duration,
    /// Assumed edge ↔ hub round trip of an edge that has not measured one.
    #[serde(serialize_with = "as_ms", rename = "unknown_rtt_ms")]
    pub unknown_rtt: Duration,
    /// How many recent moves are kept for the admin API.
    pub history: usize,
}

impl Default for PlacementConfig {
    fn default() -> Self {
        Self {
            min_gain_ratio: 0.2,
            min_gain: Duration::from_millis(5),
            min_dwell: Duration::from_secs(30),
            max_moves: 120,
            move_window: Duration::from_secs(60),
            idle_after: Duration::from_secs(300),
            unknown_rtt: Duration::from_millis(100),
            history: 256,
        }
    }
}

fn as_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1e3)
}

fn doc_str<S: serde::Serializer>(d: &DocumentId, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(d)
}

/// One candidate home and its cost.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Candidate {
    pub home: Home,
    /// Demand-weighted mean write latency in milliseconds; `None` for an
    /// edge that is not connected.
    pub cost_ms: Option<f64>,
}

/// What was decided for a document in the last tick, and why.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Verdict {
    /// It moved in this tick.
    Moved { reason: MoveReason },
    /// Nobody writes it: it stays where it is.
    NoWriters,
    /// The current home is the cheapest candidate.
    AlreadyBest,
    /// A cheaper home exists but the gain is under the thresholds.
    BelowThreshold,
    /// It moved too recently.
    Dwell { remaining_ms: u64 },
    /// An operator pinned it here.
    Pinned,
    /// The global move budget was spent; it is retried next tick.
    RateLimited,
}

/// Why a document moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MoveReason {
    /// A cheaper home past the thresholds.
    Latency,
    /// No demand for `idle_after`: back to the hub.
    Idle,
    /// Its home edge is not connected.
    Unreachable,
    /// An operator pinned it (`meridian-hub placement pin`).
    Pinned,
}

impl MoveReason {
    /// The name the admin API uses (serde's), for log lines.
    pub fn as_str(self) -> &'static str {
        match self {
            MoveReason::Latency => "latency",
            MoveReason::Idle => "idle",
            MoveReason::Unreachable => "unreachable",
            MoveReason::Pinned => "pinned",
        }
    }
}

/// The explanation of one document's decision, for the admin API.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Explanation {
    #[serde(serialize_with = "doc_str")]
    pub doc: DocumentId,
    /// Home after this tick.
    pub home: Home,
    /// When the document last moved (`None`: never, it is where it started).
    pub since_ms: Option<u64>,
    pub demand: BTreeMap<EdgeId, EdgeDemand>,
    /// Every candidate, cheapest first (in tie-break order).
    pub candidates: Vec<Candidate>,
    /// Cost at the home before the tick minus the cheapest cost.
    pub gain_ms: f64,
    pub gain_ratio: f64,
    pub verdict: Verdict,
}

/// A decided move.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Move {
    pub at_ms: u64,
    #[serde(serialize_with = "doc_str")]
    pub doc: DocumentId,
    pub from: Home,
    pub to: Home,
    pub reason: MoveReason,
    pub gain_ms: f64,
}

#[derive(Clone, Debug)]
struct Placed {
    home: Home,
    /// When it last moved; `None` if it never did (dwell is then satisfied).
    since: Option<Millis>,
    last_demand: Millis,
}

/// A move wanted in this tick, before the rate limit.
struct Wanted {
    doc: DocumentId,
    to: Home,
    reason: MoveReason,
    gain_ms: f64,
}

/// The placement state machine. See the module docs.
#[derive(Debug)]
pub struct PlacementEngine {
    config: PlacementConfig,
    docs: BTreeMap<DocumentId, Placed>,
    /// Times of the moves inside the current rate-limit window.
    window: VecDeque<Millis>,
    history: VecDeque<Move>,
    explanations: BTreeMap<DocumentId, Explanation>,
    decisions: u64,
    /// Operators' pins: honoured while the pinned edge is connected (a pin
    /// to an edge that is not is placed as if unpinned until it is back).
    pins: BTreeMap<DocumentId, Home>,
}

impl PlacementEngine {
    pub fn new(config: PlacementConfig) -> Self {
        Self {
            config,
            docs: BTreeMap::new(),
            window: VecDeque::new(),
            history: VecDeque::new(),
            explanations: BTreeMap::new(),
            decisions: 0,
            pins: BTreeMap::new(),
        }
    }

    /// Replaces the operators' pins (taken into account from the next tick).
    pub fn set_pins(&mut self, pins: BTreeMap<DocumentId, Home>) {
        self.pins = pins;
    }

    pub fn pins(&self) -> &BTreeMap<DocumentId, Home> {
        &self.pins
    }

    pub fn config(&self) -> &PlacementConfig {
        &self.config
    }

    /// Seeds a document's home (e.g. from a persisted placement); `since`
    /// is when it moved there.
    pub fn restore(&mut self, doc: DocumentId, home: Home, since: Option<Millis>, now: Millis) {
        self.docs.insert(doc, Placed { home, since, last_demand: now });
    }

    /// A document's home; the hub for documents the engine does not track.
    pub fn home(&self, doc: &DocumentId) -> Home {
        self.docs.get(doc).map_or(Home::Hub, |p| p.home.clone())
    }

    /// Number of documents tracked.
    pub fn tracked(&self) -> usize {
        self.docs.len()
    }

    /// Decisions taken since start (one per tracked document per tick).
    pub fn decisions(&self) -> u64 {
        self.decisions
    }

    /// The last tick's explanation for every tracked document.
    pub fn explanations(&self) -> &BTreeMap<DocumentId, Explanation> {
        &self.explanations
    }

    /// The most recent moves, oldest first.
    pub fn history(&self) -> impl Iterator<Item = &Move> {
        self.history.iter()
    }

    /// Decides every document's home at `now`; returns the moves, in the
    /// order they were granted.
    pub fn tick(&mut self, now: Millis, demand: &DemandMap, latencies: &Latencies) -> Vec<Move> {
        let window = self.config.move_window.as_millis() as u64;
        while self.window.front().is_some_and(|t| now.0.saturating_sub(t.0) >= window) {
            self.window.pop_front();
        }
        let empty = BTreeMap::new();
        let ids: BTreeSet<DocumentId> =
            demand.keys().chain(self.docs.keys()).chain(self.pins.keys()).copied().collect();
        let mut wanted = Vec::new();
        for doc in ids {
            let doc_demand = demand.get(&doc).unwrap_or(&empty);
            let placed = self.docs.entry(doc).or_insert(Placed { home: Home::Hub, since: None, last_demand: now });
            if doc_demand.values().any(EdgeDemand::is_demand) {
                placed.last_demand = now;
            }
            let pin = self.pins.get(&doc).filter(|p| match p {
                Home::Hub => true,
                Home::Edge(e) => latencies.edge_hub.contains_key(e),
            });
            let (explanation, want) = match pin {
                Some(pin) => pinned(doc, pin, doc_demand, placed),
                None => evaluate(&self.config, doc, doc_demand, latencies, placed, now),
            };
            wanted.extend(want);
            self.explanations.insert(doc, explanation);
            self.decisions += 1;
        }
        let moves = self.grant(now, wanted);
        self.forget_idle(now);
        moves
    }

    /// Applies the rate limit: unreachable homes first, then the largest
    /// gains, then document order.
    fn grant(&mut self, now: Millis, mut wanted: Vec<Wanted>) -> Vec<Move> {
        wanted.sort_by(|a, b| {
            let urgent = |w: &Wanted| !matches!(w.reason, MoveReason::Unreachable | MoveReason::Pinned);
            urgent(a).cmp(&urgent(b)).then(b.gain_ms.total_cmp(&a.gain_ms)).then(a.doc.cmp(&b.doc))
        });
        let mut moves = Vec::new();
        for w in wanted {
            let explanation = self.explanations.get_mut(&w.doc);
            if self.window.len() >= self.config.max_moves as usize {
                if let Some(e) = explanation {
                    e.verdict = Verdict::RateLimited;
                }
                continue;
            }
            let Some(placed) = self.docs.get_mut(&w.doc) else { continue };
            let m = Move {
                at_ms: now.0,
                doc: w.doc,
                from: std::mem::replace(&mut placed.home, w.to.clone()),
                to: w.to,
                reason: w.reason,
                gain_ms: w.gain_ms,
            };
            placed.since = Some(now);
            if let Some(e) = explanation {
                e.home = m.to.clone();
                e.since_ms = Some(now.0);
                e.verdict = Verdict::Moved { reason: m.reason };
            }
            self.window.push_back(now);
            self.history.push_back(m.clone());
            moves.push(m);
        }
        while self.history.len() > self.config.history {
            self.history.pop_front();
        }
        moves
    }

    /// Documents at the hub without demand for `idle_after` are dropped.
    fn forget_idle(&mut self, now: Millis) {
        let idle = self.config.idle_after.as_millis() as u64;
        let gone: Vec<DocumentId> = self
            .docs
            .iter()
            .filter(|(d, p)| {
                p.home == Home::Hub && now.0.saturating_sub(p.last_demand.0) >= idle && !self.pins.contains_key(*d)
            })
            .map(|(d, _)| *d)
            .collect();
        for doc in gone {
            self.docs.remove(&doc);
            self.explanations.remove(&doc);
        }
    }
}

/// Gains at or under this (in ms) are rounding between equal costs.
const GAIN_EPSILON_MS: f64 = 1e-6;

/// The cost of every candidate home for one document, cheapest first in
/// tie-break order; `None` if the document has no writers.
pub fn candidates(
    demand: &BTreeMap<EdgeId, EdgeDemand>,
    latencies: &Latencies,
    current: &Home,
    unknown_rtt: Duration,
) -> Option<Vec<Candidate>> {
    let total: f64 = demand.values().map(EdgeDemand::write_rate).sum();
    if total <= 0.0 {
        return None;
    }
    let mut homes: BTreeSet<Home> = latencies.edge_hub.keys().cloned().map(Home::Edge).collect();
    homes.insert(Home::Hub);
    homes.insert(current.clone());
    let mut out: Vec<Candidate> = homes
        .into_iter()
        .map(|home| {
            let mut sum = 0.0;
            for (edge, d) in demand.iter().filter(|(_, d)| d.write_rate() > 0.0) {
                let Some(rtt) = latencies.edge_to_home(edge, &home, unknown_rtt) else {
                    return Candidate { home, cost_ms: None };
                };
                sum += d.write_rate() * (latencies.client_rtt(edge) + rtt).as_secs_f64() * 1e3;
            }
            Candidate { home, cost_ms: Some(sum / total) }
        })
        .collect();
    // Unreachable last; then cost; then the current home, the hub, edge ids.
    let rank = |h: &Home| (h != current, h.clone());
    out.sort_by(|a, b| {
        let cost = |c: &Candidate| c.cost_ms.unwrap_or(f64::INFINITY);
        cost(a).total_cmp(&cost(b)).then_with(|| rank(&a.home).cmp(&rank(&b.home)))
    });
    Some(out)
}

/// Decides one document: its explanation, and the move it wants (before
/// the rate limit).
/// A document pinned to a reachable `pin`: it goes there, whatever the
/// costs, thresholds and dwell say.
fn pinned(
    doc: DocumentId,
    pin: &Home,
    demand: &BTreeMap<EdgeId, EdgeDemand>,
    placed: &Placed,
) -> (Explanation, Option<Wanted>) {
    let e = Explanation {
        doc,
        home: placed.home.clone(),
        since_ms: placed.since.map(|t| t.0),
        demand: demand.clone(),
        candidates: vec![Candidate { home: pin.clone(), cost_ms: None }],
        gain_ms: 0.0,
        gain_ratio: 0.0,
        verdict: Verdict::Pinned,
    };
    let want = (placed.home != *pin).then(|| Wanted { doc, to: pin.clone(), reason: MoveReason::Pinned, gain_ms: 0.0 });
    (e, want)
}

fn evaluate(
    config: &PlacementConfig,
    doc: DocumentId,
    demand: &BTreeMap<EdgeId, EdgeDemand>,
    latencies: &Latencies,
    placed: &Placed,
    now: Millis,
) -> (Explanation, Option<Wanted>) {
    let mut e = Explanation {
        doc,
        home: placed.home.clone(),
        since_ms: placed.since.map(|t| t.0),
        demand: demand.clone(),
        candidates: Vec::new(),
        gain_ms: 0.0,
        gain_ratio: 0.0,
        verdict: Verdict::NoWriters,
    };
    let unreachable = matches!(&placed.home, Home::Edge(h) if !latencies.edge_hub.contains_key(h));
    let Some(cands) = candidates(demand, latencies, &placed.home, config.unknown_rtt) else {
        let idle = now.0.saturating_sub(placed.last_demand.0) >= config.idle_after.as_millis() as u64;
        let want = match placed.home {
            Home::Hub => None,
            _ if unreachable => Some(MoveReason::Unreachable),
            _ if idle => Some(MoveReason::Idle),
            _ => None,
        };
        return (e, want.map(|reason| Wanted { doc, to: Home::Hub, reason, gain_ms: 0.0 }));
    };
    let best = cands[0].clone();
    let current_cost = cands.iter().find(|c| c.home == placed.home).and_then(|c| c.cost_ms);
    e.candidates = cands;
    let best_cost = best.cost_ms.unwrap_or(f64::INFINITY);
    let Some(current_cost) = current_cost else {
        // The home edge is gone: leave it for the cheapest reachable home.
        e.gain_ms = f64::INFINITY;
        e.gain_ratio = 1.0;
        return (e, Some(Wanted { doc, to: best.home, reason: MoveReason::Unreachable, gain_ms: f64::MAX }));
    };
    let gain = current_cost - best_cost;
    // A gain of a nanosecond is float noise between equal costs: a tie.
    if best.home == placed.home || gain <= GAIN_EPSILON_MS {
        e.verdict = Verdict::AlreadyBest;
        return (e, None);
    }
    e.gain_ms = gain;
    e.gain_ratio = if current_cost > 0.0 { gain / current_cost } else { 0.0 };
    if gain < config.min_gain.as_secs_f64() * 1e3 || e.gain_ratio < config.min_gain_ratio {
        e.verdict = Verdict::BelowThreshold;
        return (e, None);
    }
    let dwell = config.min_dwell.as_millis() as u64;
    if let Some(since) = placed.since {
        let stayed = now.0.saturating_sub(since.0);
        if stayed < dwell {
            e.verdict = Verdict::Dwell { remaining_ms: dwell - stayed };
            return (e, None);
        }
    }
    (e, Some(Wanted { doc, to: best.home, reason: MoveReason::Latency, gain_ms: gain }))
}

#[cfg(test)]
mod tests;
