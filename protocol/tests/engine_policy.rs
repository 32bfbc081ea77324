//! Node policy decided in the engine: backfill pacing, pinning and the disk
//! budget's choice of documents (with its retry), home lag, hand-off status.

use automerge::ROOT;
use automerge::transaction::Transactable;
use meridian_protocol::engine::{CatchUp, Direction, Event, HandoffTargets, Millis};
use meridian_protocol::ids::DocumentId;
use meridian_protocol::testing::{TestNode, settle};

fn ids(n: u8) -> Vec<DocumentId> {
    (0..n).map(|i| DocumentId::from_bytes([i; 16])).collect()
}

#[test]
fn a_backfill_opens_a_slice_at_once_then_one_per_interval() {
    let mut edge = TestNode::new("edge", |c| c.backfill_interval_ms = 500);
    let docs: Vec<DocumentId> = (0..600u16)
        .map(|i| {
            let mut b = [0; 16];
            b[..2].copy_from_slice(&i.to_be_bytes());
            DocumentId::from_bytes(b)
        })
        .collect();
    edge.engine.backfill(Millis(0), docs);
    edge.drain();
    assert_eq!((edge.engine.loaded_docs(), edge.engine.backfill_queued()), (256, 344));
    assert_eq!(edge.engine.poll_timeout(), Some(Millis(500)));
    edge.engine.handle_timeout(Millis(499));
    assert_eq!(edge.engine.loaded_docs(), 256, "not before the interval");
    edge.engine.handle_timeout(Millis(500));
    edge.drain();
    assert_eq!((edge.engine.loaded_docs(), edge.engine.backfill_queued()), (512, 88));
    edge.engine.handle_timeout(Millis(1000));
    edge.drain();
    assert_eq!((edge.engine.loaded_docs(), edge.engine.backfill_queued()), (600, 0));
}

#[test]
fn the_disk_budget_skips_pinned_documents_and_waits_before_trying_one_again() {
    let mut edge = TestNode::new("edge", |c| c.idle_evict_after_ms = 1_000);
    let [pinned, other] = ids(2).try_into().unwrap();
    edge.engine.pin(pinned, true);
    assert!(edge.engine.is_pinned(&pinned));
    edge.engine.relieve_disk(Millis(0), vec![pinned, other]);
    edge.drain();
    // Offloading loads a document to check it: only `other` was offered.
    assert_eq!(edge.engine.loaded_docs(), 1);
    assert!(edge.engine.document(&other).is_some());
    edge.engine.offload(Millis(0), pinned);
    edge.drain();
    assert!(edge.engine.document(&pinned).is_none(), "offload refuses a pinned document itself");
    // `other` leaves memory; offered again within 30 s it is left alone...
    edge.engine.handle_timeout(Millis(1_000));
    edge.drain();
    assert_eq!(edge.engine.loaded_docs(), 0);
    edge.engine.relieve_disk(Millis(20_000), vec![other]);
    assert_eq!(edge.engine.loaded_docs(), 0, "tried 20 s ago");
    // ...and tried again after.
    edge.engine.relieve_disk(Millis(30_000), vec![other]);
    assert_eq!(edge.engine.loaded_docs(), 1);
    // Unpinned, the other is offered too.
    edge.engine.pin(pinned, false);
    edge.engine.relieve_disk(Millis(30_000), vec![pinned]);
    assert_eq!(edge.engine.loaded_docs(), 2);
}

#[test]
fn a_change_is_followed_until_its_home_confirms_it_unless_homed_here() {
    let mut edge = TestNode::new("edge", |_| {});
    let mut client = TestNode::new("client", |c| c.track_home_lag = true);
    let e_conn = edge.engine.handle_connect(Millis(0), Direction::Incoming);
    let c_conn = client.engine.handle_connect(Millis(0), Direction::Outgoing);
    settle(&mut client, c_conn, &mut edge, e_conn);
    client.now = Millis(10);
    let doc = client.engine.create(client.now, |tx| tx.put(ROOT, "n", 1).map(|_| ())).unwrap();
    for (_, frame) in client.drain_frames() {
        edge.engine.handle_frame(Millis(10), e_conn, &frame);
    }
    // The edge's answer arrives 25 ms later.
    client.now = Millis(35);
    settle(&mut client, c_conn, &mut edge, e_conn);
    let confirmed: Vec<(DocumentId, u64)> = client
        .events
        .iter()
        .filter_map(|e| if let Event::HomeConfirmed { doc, lag_ms } = e { Some((*doc, *lag_ms)) } else { None })
        .collect();
    assert_eq!(confirmed, vec![(doc, 25)]);
    // Homed here, a change is not followed.
    client.engine.pin(doc, true);
    client.events.clear();
    client.engine.change(client.now, doc, |tx| tx.put(ROOT, "n", 2)).unwrap();
    settle(&mut client, c_conn, &mut edge, e_conn);
    assert!(!client.events.iter().any(|e| matches!(e, Event::HomeConfirmed { .. })));
}

#[test]
fn a_handoff_reports_the_new_home_catching_up_against_the_first_targets() {
    let mut hub = TestNode::new("hub", |c| c.expects_upstream = false);
    let mut edge = TestNode::new("edge", |_| {});
    let h_conn = hub.engine.handle_connect(Millis(0), Direction::Incoming);
    let e_conn = edge.engine.handle_connect(Millis(0), Direction::Outgoing);
    settle(&mut edge, e_conn, &mut hub, h_conn);
    let doc = hub.engine.create(Millis(0), |tx| tx.put(ROOT, "n", 1).map(|_| ())).unwrap();
    hub.drain();
    let first = hub.engine.handoff_status(Millis(0), doc, Some(h_conn), None, HandoffTargets::default());
    assert_eq!(first.to, Some(CatchUp::Behind));
    assert_eq!(first.targets.to, hub.engine.durable_heads(&doc), "the first check fixes the target");
    assert_eq!(first.from_covered, None);
    settle(&mut edge, e_conn, &mut hub, h_conn);
    // A later write does not move the goal of the hand-off.
    hub.engine.change(Millis(1), doc, |tx| tx.put(ROOT, "n", 2)).unwrap();
    hub.drain();
    let later = hub.engine.handoff_status(Millis(1), doc, Some(h_conn), None, first.targets.clone());
    assert_eq!(later.to, Some(CatchUp::CaughtUp));
    assert_eq!(later.targets, first.targets);
}
