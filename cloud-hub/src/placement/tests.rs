//! Unit and property tests of the placement engine.

use proptest::prelude::*;

use super::*;

fn doc(n: u8) -> DocumentId {
    DocumentId::from_bytes([n; 16])
}

fn edge(id: &str) -> EdgeId {
    EdgeId::new(id)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Edge ↔ hub round trips in milliseconds.
fn lat(edges: &[(&str, u64)]) -> Latencies {
    Latencies { edge_hub: edges.iter().map(|(e, r)| (edge(e), ms(*r))).collect(), ..Default::default() }
}

fn writes(per_edge: &[(&str, f64)]) -> BTreeMap<EdgeId, EdgeDemand> {
    per_edge.iter().map(|(e, w)| (edge(e), EdgeDemand { subscribers: 1, writes_per_sec: *w })).collect()
}

fn one(d: DocumentId, demand: BTreeMap<EdgeId, EdgeDemand>) -> DemandMap {
    BTreeMap::from([(d, demand)])
}

fn secs(s: u64) -> Millis {
    Millis(s * 1000)
}

#[test]
fn a_document_written_from_one_region_moves_to_that_edge() {
    let mut p = PlacementEngine::new(PlacementConfig::default());
    let l = lat(&[("eu", 40), ("us", 10)]);
    let moves = p.tick(secs(1), &one(doc(1), writes(&[("eu", 2.0)])), &l);
    assert_eq!(moves.len(), 1);
    assert_eq!((&moves[0].from, &moves[0].to), (&Home::Hub, &Home::Edge(edge("eu"))));
    assert_eq!(moves[0].reason, MoveReason::Latency);
    let e = &p.explanations()[&doc(1)];
    let costs: Vec<(String, Option<f64>)> = e.candidates.iter().map(|c| (c.home.to_string(), c.cost_ms)).collect();
    // Through the hub, us is 40 + 10 ms away from eu.
    assert_eq!(costs, vec![("edge:eu".into(), Some(0.0)), ("hub".into(), Some(40.0)), ("edge:us".into(), Some(50.0))]);
    assert_eq!(e.verdict, Verdict::Moved { reason: MoveReason::Latency });
    assert_eq!(e.gain_ms, 40.0);
    assert_eq!(p.home(&doc(1)), Home::Edge(edge("eu")));
}

#[test]
fn a_pin_wins_over_costs_and_dwell_while_its_edge_is_connected() {
    let config = PlacementConfig { min_dwell: Duration::from_secs(3600), ..Default::default() };
    let mut p = PlacementEngine::new(config);
    let l = lat(&[("eu", 40), ("us", 10)]);
    let demand = one(doc(1), writes(&[("eu", 2.0)]));
    assert_eq!(p.tick(secs(1), &demand, &l)[0].to, Home::Edge(edge("eu")));
    // Pinned to us although eu writes it and it just moved (dwell).
    p.set_pins(BTreeMap::from([(doc(1), Home::Edge(edge("us"))), (doc(2), Home::Edge(edge("us")))]));
    let moves = p.tick(secs(2), &demand, &l);
    let to: Vec<(DocumentId, Home, MoveReason)> = moves.iter().map(|m| (m.doc, m.to.clone(), m.reason)).collect();
    let us = Home::Edge(edge("us"));
    assert_eq!(to, vec![(doc(1), us.clone(), MoveReason::Pinned), (doc(2), us.clone(), MoveReason::Pinned)]);
    assert_eq!(p.explanations()[&doc(1)].verdict, Verdict::Moved { reason: MoveReason::Pinned });
    assert!(p.tick(secs(3), &demand, &l).is_empty(), "it stays");
    assert_eq!(p.explanations()[&doc(2)].verdict, Verdict::Pinned, "a pinned document without demand is kept");
    // us gone: placed as if unpinned (its home is unreachable: eu, where the writes are).
    let without_us = lat(&[("eu", 40)]);
    let moves = p.tick(secs(4), &demand, &without_us);
    assert!(moves.iter().any(|m| m.doc == doc(1) && m.to == Home::Edge(edge("eu"))), "{moves:?}");
    // Unpinned and back: no move without a reason.
    p.set_pins(BTreeMap::new());
    assert!(p.tick(secs(5), &demand, &l).iter().all(|m| m.doc != doc(1)));
}

#[test]
fn a_gain_under_the_absolute_threshold_does_not_move() {
    let mut p = PlacementEngine::new(PlacementConfig::default());
    let moves = p.tick(secs(1), &one(doc(1), writes(&[("eu", 2.0)])), &lat(&[("eu", 4)]));
    assert!(moves.is_empty());
    assert_eq!(p.explanations()[&doc(1)].verdict, Verdict::BelowThreshold);
    assert_eq!(p.home(&doc(1)), Home::Hub);
}

#[test]
fn distant_clients_dilute_the_relative_gain() {
    let mut p = PlacementEngine::new(PlacementConfig::default());
    let mut l = lat(&[("eu", 40)]);
    l.client_edge.insert(edge("eu"), ms(200));
    // 40 ms out of 240 is 17 %, under the 20 % threshold.
    assert!(p.tick(secs(1), &one(doc(1), writes(&[("eu", 1.0)])), &l).is_empty());
    assert_eq!(p.explanations()[&doc(1)].verdict, Verdict::BelowThreshold);
}

#[test]
fn a_document_stays_at_least_the_dwell_time() {
    let mut p = PlacementEngine::new(PlacementConfig::default());
    let l = lat(&[("eu", 40), ("ap", 90)]);
    assert_eq!(p.tick(secs(1), &one(doc(1), writes(&[("eu", 1.0)])), &l).len(), 1);
    // Demand moves to ap at once; the document waits out its dwell time.
    let ap = one(doc(1), writes(&[("ap", 1.0)]));
    assert!(p.tick(secs(11), &ap, &l).is_empty());
    assert_eq!(p.explanations()[&doc(1)].verdict, Verdict::Dwell { remaining_ms: 20_000 });
    let moves = p.tick(secs(31), &ap, &l);
    assert_eq!(moves.len(), 1);
    assert_eq!(moves[0].to, Home::Edge(edge("ap")));
    assert_eq!(moves[0].gain_ms, 130.0);
}

#[test]
fn the_rate_limit_lets_the_largest_gains_go_first() {
    let config = PlacementConfig { max_moves: 1, ..Default::default() };
    let mut p = PlacementEngine::new(config);
    let l = lat(&[("eu", 40), ("ap", 90)]);
    let demand = BTreeMap::from([(doc(1), writes(&[("eu", 1.0)])), (doc(2), writes(&[("ap", 1.0)]))]);
    let moves = p.tick(secs(1), &demand, &l);
    assert_eq!(moves.iter().map(|m| m.doc).collect::<Vec<_>>(), vec![doc(2)]);
    assert_eq!(p.explanations()[&doc(1)].verdict, Verdict::RateLimited);
    assert!(p.tick(secs(30), &demand, &l).is_empty(), "the window has not passed");
    assert_eq!(p.tick(secs(61), &demand, &l).iter().map(|m| m.doc).collect::<Vec<_>>(), vec![doc(1)]);
}

#[test]
fn without_demand_a_document_stays_at_the_hub() {
    let mut p = PlacementEngine::new(PlacementConfig::default());
    let l = lat(&[("eu", 40)]);
    let readers = one(doc(1), BTreeMap::from([(edge("eu"), EdgeDemand { subscribers: 3, writes_per_sec: 0.0 })]));
    assert!(p.tick(secs(1), &readers, &l).is_empty());
    assert_eq!(p.explanations()[&doc(1)].verdict, Verdict::NoWriters);
    assert_eq!(p.home(&doc(1)), Home::Hub);
    assert!(p.tick(secs(2), &DemandMap::new(), &l).is_empty());
    assert_eq!(p.home(&doc(2)), Home::Hub, "an unknown document is at the hub");
}

#[test]
fn an_idle_document_returns_to_the_hub_and_is_forgotten() {
    let config = PlacementConfig { idle_after: Duration::from_secs(100), ..Default::default() };
    let mut p = PlacementEngine::new(config);
    let l = lat(&[("eu", 40)]);
    p.tick(secs(1), &one(doc(1), writes(&[("eu", 1.0)])), &l);
    assert_eq!(p.home(&doc(1)), Home::Edge(edge("eu")));
    for s in 2..100 {
        assert!(p.tick(secs(s), &DemandMap::new(), &l).is_empty(), "no writers: it stays");
    }
    let moves = p.tick(secs(101), &DemandMap::new(), &l);
    assert_eq!(moves.len(), 1);
    assert_eq!((moves[0].to.clone(), moves[0].reason), (Home::Hub, MoveReason::Idle));
    p.tick(secs(300), &DemandMap::new(), &l);
    assert_eq!(p.tracked(), 0);
}

#[test]
fn an_unreachable_home_is_left_at_once() {
    let mut p = PlacementEngine::new(PlacementConfig::default());
    p.restore(doc(1), Home::Edge(edge("eu")), Some(secs(10)), secs(10));
    // eu is gone; us writes. Dwell and hysteresis do not hold it.
    let moves = p.tick(secs(11), &one(doc(1), writes(&[("us", 1.0)])), &lat(&[("us", 10)]));
    assert_eq!(moves.len(), 1);
    assert_eq!((moves[0].to.clone(), moves[0].reason), (Home::Edge(edge("us")), MoveReason::Unreachable));
    let e = &p.explanations()[&doc(1)];
    assert_eq!(e.candidates.last().map(|c| c.cost_ms), Some(None), "unreachable sorts last");
}

#[test]
fn ties_go_to_the_current_home_then_the_hub_then_the_smallest_id() {
    let l = lat(&[("a", 10), ("b", 10)]);
    let d = writes(&[("a", 1.0), ("b", 1.0)]);
    // Hub: 10; a: 20/2 = 10; b: 10. All equal.
    let order = |current: Home| -> Vec<Home> {
        candidates(&d, &l, &current, ms(100)).unwrap_or_default().into_iter().map(|c| c.home).collect()
    };
    assert_eq!(order(Home::Hub), vec![Home::Hub, Home::Edge(edge("a")), Home::Edge(edge("b"))]);
    assert_eq!(order(Home::Edge(edge("b"))), vec![Home::Edge(edge("b")), Home::Hub, Home::Edge(edge("a"))]);
}

#[test]
fn measured_edge_to_edge_rtt_beats_the_path_through_the_hub() {
    let mut l = lat(&[("eu", 40), ("us", 40)]);
    assert_eq!(l.edge_to_home(&edge("us"), &Home::Edge(edge("eu")), ms(100)), Some(ms(80)));
    l.edge_edge.insert((edge("eu"), edge("us")), ms(30));
    assert_eq!(l.edge_to_home(&edge("us"), &Home::Edge(edge("eu")), ms(100)), Some(ms(30)));
    assert_eq!(l.edge_to_home(&edge("us"), &Home::Edge(edge("ap")), ms(100)), None);
}

#[test]
fn explanations_serialize_for_the_admin_api() {
    let mut p = PlacementEngine::new(PlacementConfig::default());
    p.tick(secs(1), &one(doc(1), writes(&[("eu", 2.0)])), &lat(&[("eu", 40)]));
    let json = serde_json::to_value(&p.explanations()[&doc(1)]).unwrap();
    assert_eq!(json["home"], serde_json::json!({"edge": "eu"}));
    assert_eq!(json["verdict"]["kind"], "moved");
    assert_eq!(json["candidates"][1]["home"], "hub");
    assert_eq!(json["doc"], doc(1).to_string());
}

// ----- properties ------------------------------------------------------

const EDGES: [&str; 4] = ["a", "b", "c", "d"];

/// Edge ↔ hub, client ↔ edge and some measured edge ↔ edge round trips.
fn latencies() -> impl Strategy<Value = Latencies> {
    (
        proptest::collection::vec(1u64..200, EDGES.len()),
        proptest::collection::vec(0u64..50, EDGES.len()),
        proptest::collection::vec(proptest::option::of(1u64..300), 6),
    )
        .prop_map(|(hub, client, pairs)| {
            let mut l = Latencies::default();
            for (i, e) in EDGES.iter().enumerate() {
                l.edge_hub.insert(edge(e), ms(hub[i]));
                l.client_edge.insert(edge(e), ms(client[i]));
            }
            let all_pairs = EDGES.iter().enumerate().flat_map(|(i, a)| EDGES[i + 1..].iter().map(move |b| (*a, *b)));
            for ((a, b), r) in all_pairs.zip(pairs) {
                if let Some(r) = r {
                    l.edge_edge.insert((edge(a), edge(b)), ms(r));
                }
            }
            l
        })
}

/// Demand for documents 0..docs: per edge, writes per second (often zero).
fn demand(docs: u8) -> impl Strategy<Value = DemandMap> {
    proptest::collection::vec(
        proptest::collection::vec((0u32..3, prop_oneof![Just(0.0), 0.1f64..50.0]), 4),
        1..=docs as usize,
    )
    .prop_map(|per_doc| {
        per_doc
            .into_iter()
            .enumerate()
            .map(|(i, per_edge)| {
                let m = per_edge
                    .into_iter()
                    .enumerate()
                    .filter(|(_, (s, w))| *s > 0 || *w > 0.0)
                    .map(|(j, (s, w))| (edge(EDGES[j]), EdgeDemand { subscribers: s, writes_per_sec: w }))
                    .collect();
                (doc(i as u8), m)
            })
            .collect()
    })
}

fn any_home() -> impl Strategy<Value = Home> {
    prop_oneof![Just(Home::Hub), (0..EDGES.len()).prop_map(|i| Home::Edge(edge(EDGES[i])))]
}

/// Independent reference: demand-weighted mean write latency in ms.
fn reference_cost(d: &BTreeMap<EdgeId, EdgeDemand>, l: &Latencies, home: &Home) -> f64 {
    let (mut sum, mut total) = (0.0, 0.0);
    for (e, dem) in d {
        if dem.writes_per_sec <= 0.0 {
            continue;
        }
        let to_hub = |x: &EdgeId| l.edge_hub[x].as_secs_f64() * 1e3;
        let rtt = match home {
            Home::Hub => to_hub(e),
            Home::Edge(h) if h == e => 0.0,
            Home::Edge(h) => {
                let key = if e < h { (e.clone(), h.clone()) } else { (h.clone(), e.clone()) };
                l.edge_edge.get(&key).map_or(to_hub(e) + to_hub(h), |r| r.as_secs_f64() * 1e3)
            }
        };
        sum += dem.writes_per_sec * (l.client_edge[e].as_secs_f64() * 1e3 + rtt);
        total += dem.writes_per_sec;
    }
    sum / total
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Every latency move goes to the cheapest home and gains at least both
    /// thresholds; every document whose best gain clears them (and may move)
    /// does move.
    #[test]
    fn moves_exactly_when_the_gain_clears_both_thresholds(
        l in latencies(),
        d in demand(8),
        homes in proptest::collection::vec(any_home(), 8),
        min_gain in 0u64..40,
        min_ratio in 0.0f64..0.6,
    ) {
        let config = PlacementConfig { min_gain: ms(min_gain), min_gain_ratio: min_ratio, ..Default::default() };
        let mut p = PlacementEngine::new(config);
        for (i, h) in homes.iter().enumerate() {
            p.restore(doc(i as u8), h.clone(), None, secs(0));
        }
        let moves = p.tick(secs(1), &d, &l);
        for (docid, dd) in &d {
            let current = homes[docid.as_bytes()[0] as usize].clone();
            if !dd.values().any(|x| x.writes_per_sec > 0.0) {
                prop_assert!(moves.iter().all(|m| m.doc != *docid), "no writers, yet it moved");
                continue;
            }
            let cur = reference_cost(dd, &l, &current);
            let best = std::iter::once(Home::Hub)
                .chain(EDGES.iter().map(|e| Home::Edge(edge(e))))
                .map(|h| reference_cost(dd, &l, &h))
                .fold(f64::INFINITY, f64::min);
            let gain = cur - best;
            let moved = moves.iter().find(|m| m.doc == *docid);
            match moved {
                Some(m) => {
                    // The engine's sums round differently: allow a nanosecond.
                    let ok = gain > 0.0 && gain >= min_gain as f64 - 1e-6 && gain / cur >= min_ratio - 1e-9;
                    prop_assert!(ok, "moved {} for a gain of {} ms of {} ms", docid, gain, cur);
                    prop_assert!((reference_cost(dd, &l, &m.to) - best).abs() < 1e-6, "not to the cheapest home");
                }
                None => {
                    let clears = gain > 1e-5 && gain >= min_gain as f64 + 1e-6 && gain / cur >= min_ratio + 1e-9;
                    prop_assert!(!clears, "a gain of {} ms of {} ms cleared the thresholds but it stayed", gain, cur);
                }
            }
        }
    }

    /// Writers in one region only: the home ends at that region's edge,
    /// from wherever it started.
    #[test]
    fn single_region_demand_ends_at_that_edge(
        mut l in latencies(),
        region in 0..EDGES.len(),
        start in any_home(),
        rate in 0.1f64..100.0,
        far in 10u64..200,
    ) {
        let x = edge(EDGES[region]);
        // The region is far enough from everything for the move to be worth it.
        l.edge_hub.insert(x.clone(), ms(far));
        l.client_edge.insert(x.clone(), ms(far.min(10)));
        l.edge_edge.retain(|(a, b), r| if *a == x || *b == x { *r >= ms(10) } else { true });
        let mut p = PlacementEngine::new(PlacementConfig::default());
        p.restore(doc(0), start, Some(secs(0)), secs(0));
        let d = one(doc(0), writes(&[(EDGES[region], rate)]));
        for s in 1..=40 {
            p.tick(secs(s), &d, &l);
        }
        prop_assert_eq!(p.home(&doc(0)), Home::Edge(x));
    }

    /// Two edges writing equally (with ±5 % noise per tick) over symmetric
    /// links: at most one move (off the hub), never back and forth.
    #[test]
    fn symmetric_demand_does_not_oscillate(
        to_hub in 5u64..150,
        between in 1u64..300,
        rate in 0.5f64..50.0,
        noise in proptest::collection::vec((0.95f64..1.05, 0.95f64..1.05), 300),
    ) {
        let mut l = lat(&[("a", to_hub), ("b", to_hub)]);
        l.edge_edge.insert((edge("a"), edge("b")), ms(between));
        let config = PlacementConfig { min_dwell: Duration::ZERO, ..Default::default() };
        let mut p = PlacementEngine::new(config);
        let mut moves = Vec::new();
        for (t, (na, nb)) in noise.iter().enumerate() {
            let d = one(doc(0), writes(&[("a", rate * na), ("b", rate * nb)]));
            moves.extend(p.tick(Millis(t as u64 * 1000), &d, &l));
        }
        prop_assert!(moves.len() <= 1, "moves: {:?}", moves);
    }

    /// However demand jumps around, no window holds more than `max_moves`
    /// moves, and no document moves again before its dwell time (unless its
    /// home edge disappeared).
    #[test]
    fn rate_limit_and_dwell_hold(
        l in latencies(),
        seq in proptest::collection::vec(demand(20), 60),
        max_moves in 1u32..6,
        dwell in 0u64..20,
    ) {
        let config = PlacementConfig {
            max_moves,
            move_window: Duration::from_secs(10),
            min_dwell: Duration::from_secs(dwell),
            min_gain: Duration::ZERO,
            min_gain_ratio: 0.0,
            ..Default::default()
        };
        let mut p = PlacementEngine::new(config);
        let mut all = Vec::new();
        for (t, d) in seq.iter().enumerate() {
            all.extend(p.tick(secs(t as u64), d, &l));
        }
        for m in &all {
            let in_window = all.iter().filter(|o| o.at_ms <= m.at_ms && o.at_ms + 10_000 > m.at_ms).count();
            prop_assert!(in_window <= max_moves as usize, "{in_window} moves in the window ending at {}", m.at_ms);
            let previous = all.iter().filter(|o| o.doc == m.doc && o.at_ms < m.at_ms).map(|o| o.at_ms).max();
            if let (Some(prev), MoveReason::Latency) = (previous, m.reason) {
                prop_assert!(m.at_ms - prev >= dwell * 1000, "moved again after {} ms", m.at_ms - prev);
            }
        }
    }

    /// The same inputs give the same moves and the same explanations.
    #[test]
    fn decisions_are_deterministic(
        l in latencies(),
        seq in proptest::collection::vec(demand(10), 30),
        homes in proptest::collection::vec(any_home(), 10),
    ) {
        let run = || {
            let config = PlacementConfig { min_dwell: Duration::from_secs(3), max_moves: 4, ..Default::default() };
            let mut p = PlacementEngine::new(config);
            for (i, h) in homes.iter().enumerate() {
                p.restore(doc(i as u8), h.clone(), None, secs(0));
            }
            let mut out = Vec::new();
            for (t, d) in seq.iter().enumerate() {
                out.push((p.tick(secs(t as u64), d, &l), p.explanations().clone()));
            }
            (out, p.history().cloned().collect::<Vec<_>>())
        };
        prop_assert_eq!(run(), run());
    }

    /// With no demand, nothing ever moves to an edge, and every document
    /// ends at the hub.
    #[test]
    fn without_demand_homes_go_to_the_hub(
        l in latencies(),
        homes in proptest::collection::vec(any_home(), 1..10),
    ) {
        let config = PlacementConfig { idle_after: Duration::from_secs(20), ..Default::default() };
        let mut p = PlacementEngine::new(config);
        for (i, h) in homes.iter().enumerate() {
            p.restore(doc(i as u8), h.clone(), Some(secs(0)), secs(0));
        }
        for s in 1..60 {
            for m in p.tick(secs(s), &DemandMap::new(), &l) {
                prop_assert_eq!(m.to, Home::Hub);
            }
        }
        for i in 0..homes.len() {
            prop_assert_eq!(p.home(&doc(i as u8)), Home::Hub);
        }
    }
}
