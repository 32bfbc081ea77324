//! Divergence detection and repair at the hub: a replica that advertises a
//! change and never sends it (sync stuck) is found divergent after the
//! threshold — logged, counted, listed at `/api/divergence` and in
//! `/api/docs/{doc}/replicas` — and resynced from scratch; once it syncs
//! properly it is healed and the time it took is measured. A replica in
//! step is never flagged.

use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use meridian_edge::client::Client;
use meridian_hub::{Hub, HubConfig};
use meridian_protocol::automerge::sync::{self, SyncDoc};
use meridian_protocol::automerge::transaction::Transactable;
use meridian_protocol::automerge::{AutoCommit, Automerge, ROOT, ReadDoc};
use meridian_protocol::codec::Message;
use meridian_protocol::ids::{DocumentId, PeerId};
use meridian_tests::clients::fast;
use meridian_tests::http;
use meridian_tests::raw::{RawPeer, Received};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

async fn get(port: u16, path: &str) -> Result<Value> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let r = http::request(port, "GET", &path, &[])?;
        ensure!(r.status == 200, "GET {path}: {} {}", r.status, r.text());
        r.json()
    })
    .await?
}

async fn metrics(port: u16) -> Result<String> {
    tokio::task::spawn_blocking(move || Ok(http::request(port, "GET", "/metrics", &[])?.text())).await?
}

/// The replica of `peer` in a `/replicas` answer.
fn replica<'a>(answer: &'a Value, peer: &str) -> Option<&'a Value> {
    answer["replicas"].as_array()?.iter().find(|r| r["peer"] == peer)
}

/// Sends `doc`'s next sync message from `state` to the hub, if there is one.
async fn send_sync(raw: &mut RawPeer, doc: DocumentId, fake: &Automerge, state: &mut sync::State) -> Result<()> {
    if let Some(m) = fake.generate_sync_message(state) {
        let data = m.encode();
        let sync = Message::Sync {
            sender_id: raw.peer_id.clone(),
            target_id: PeerId::new("meridian-hub"),
            document_id: doc,
            data,
        };
        raw.send(&sync).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_replica_is_found_divergent_resynced_and_healed() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = HubConfig::new(dir.path()).ephemeral_ports();
    config.serve_clients = true;
    config.tick_interval = Duration::from_millis(100);
    config.divergence_after = Duration::from_millis(500);
    let hub = Hub::start(config).await?;
    let port = hub.http_addr().port();
    let url = format!("ws://{}/sync", hub.http_addr());

    // A well-behaved replica writes the document.
    let good = Client::connect(&url, fast()).await?;
    let doc = good.create(|tx| tx.put(ROOT, "n", 1).map(|_| ())).await?;
    good.wait_acked(doc).await?;
    let saved = good.read(doc, |d| d.save()).await.ok_or_else(|| anyhow::anyhow!("read"))?;

    // The stuck replica: it has the document and one change more, says so
    // (its heads) and then never sends that change.
    let mut fake = AutoCommit::load(&saved)?;
    fake.put(ROOT, "withheld", true)?;
    fake.commit();
    let mut fake = fake.document().clone();
    let mut raw = RawPeer::joined(&url, "stuck").await?;
    let mut state = sync::State::new();
    send_sync(&mut raw, doc, &fake, &mut state).await?;

    // Found divergent, resynced (the hub starts over: more sync messages
    // come), listed and counted.
    let started = Instant::now();
    let mut from_hub = 0;
    let detected = loop {
        while let Ok(Received::Message(Message::Sync { .. })) = raw.recv_within(Duration::from_millis(20)).await {
            from_hub += 1;
        }
        let answer = get(port, &format!("/api/docs/{doc}/replicas")).await?;
        let stuck = replica(&answer, "stuck").cloned().unwrap_or_default();
        if stuck["divergent"] == true && stuck["repairs"].as_u64() >= Some(1) {
            let ok = replica(&answer, &good.peer_id().to_string()).cloned().unwrap_or_default();
            assert_eq!(ok["in_sync"], true, "{answer}");
            assert_eq!(ok["divergent"], false, "{answer}");
            assert_eq!(stuck["in_sync"], false);
            assert!(stuck["apart_ms"].as_u64() >= Some(500), "{answer}");
            break started.elapsed();
        }
        ensure!(started.elapsed() < WAIT, "never found divergent: {answer}");
    };
    let listed = get(port, "/api/divergence").await?;
    assert_eq!(listed["divergent"][0]["doc"], doc.to_string(), "{listed}");
    assert_eq!(listed["divergent"][0]["replica"], "stuck");
    let page = metrics(port).await?;
    assert_eq!(http::metric_value(&page, "meridian_hub_divergent_replicas"), Some(1.0), "{page}");
    assert_eq!(http::metric_value(&page, "meridian_hub_divergent_documents"), Some(1.0));
    assert_eq!(http::metric_value(&page, "meridian_hub_divergence_detected_total"), Some(1.0));
    assert!(http::metric_value(&page, "meridian_hub_divergence_repairs_total") >= Some(1.0));
    // The resync: besides its answer to the one message the replica sent,
    // the hub sent its side again after starting over.
    let deadline = Instant::now() + Duration::from_secs(5);
    while from_hub < 2 && Instant::now() < deadline {
        if let Ok(Received::Message(Message::Sync { .. })) = raw.recv_within(Duration::from_millis(100)).await {
            from_hub += 1;
        }
    }
    ensure!(from_hub >= 2, "the hub sent the stuck replica {from_hub} sync messages: no resync");

    // The replica now syncs properly: it answers the hub's messages.
    let mut state = sync::State::new();
    send_sync(&mut raw, doc, &fake, &mut state).await?;
    let healed_at = Instant::now();
    loop {
        match raw.recv_within(Duration::from_millis(200)).await {
            Ok(Received::Message(Message::Sync { data, .. })) => {
                fake.receive_sync_message(&mut state, sync::Message::decode(&data)?)?;
                send_sync(&mut raw, doc, &fake, &mut state).await?;
            }
            Ok(Received::Closed(reason)) => bail!("closed: {reason:?}"),
            _ => {}
        }
        let page = metrics(port).await?;
        if http::metric_value(&page, "meridian_hub_divergence_healed_total") == Some(1.0)
            && http::metric_value(&page, "meridian_hub_divergent_replicas") == Some(0.0)
        {
            assert_eq!(
                http::metric_value(&page, "meridian_hub_divergence_recovery_seconds_count"),
                Some(1.0),
                "{page}"
            );
            break;
        }
        ensure!(healed_at.elapsed() < WAIT, "never healed:\n{page}");
    }
    // The withheld change reached the hub, and the good replica.
    let deadline = Instant::now() + WAIT;
    while good.read(doc, |d| d.get(ROOT, "withheld").ok().flatten().is_some()).await != Some(true) {
        ensure!(Instant::now() < deadline, "the change never reached the other replica");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let listed = get(port, "/api/divergence").await?;
    assert_eq!(listed["divergent"].as_array().map(Vec::len), Some(0), "{listed}");
    eprintln!(
        "detected {:.2} s after the replica parted (threshold 0.5 s); healed {:.2} s after it synced again",
        detected.as_secs_f64(),
        healed_at.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Pushes `copy` of `doc` to the node behind `raw` (as a client that has
/// it) until the node advertises the same heads: it is stored there.
async fn push(raw: &mut RawPeer, target: &str, doc: DocumentId, copy: &Automerge) -> Result<()> {
    let (mut copy, mut state) = (copy.clone(), sync::State::new());
    let mut want = copy.get_heads();
    want.sort();
    let deadline = Instant::now() + WAIT;
    let mut next = copy.generate_sync_message(&mut state);
    loop {
        if let Some(m) = next.take() {
            let (sender_id, target_id, data) = (raw.peer_id.clone(), PeerId::new(target), m.encode());
            raw.send(&Message::Sync { sender_id, target_id, document_id: doc, data }).await?;
        }
        match raw.recv_within(Duration::from_millis(200)).await {
            // `request`: it has nothing yet.
            Ok(Received::Message(Message::Sync { data, .. } | Message::Request { data, .. })) => {
                copy.receive_sync_message(&mut state, sync::Message::decode(&data)?)?;
                let mut theirs = state.their_heads.clone().unwrap_or_default();
                theirs.sort();
                if theirs == want {
                    return Ok(());
                }
                next = copy.generate_sync_message(&mut state);
            }
            Ok(Received::Closed(reason)) => bail!("{target} closed: {reason:?}"),
            _ => ensure!(Instant::now() < deadline, "{target} never stored the copy"),
        }
    }
}

/// The keys at the root of `doc` as a client of `url` reads it, once it
/// reads them at all.
async fn keys_at(client: &Client, doc: DocumentId) -> Option<Vec<String>> {
    client.read(doc, |d| d.keys(ROOT).collect::<Vec<_>>()).await
}

/// The last resort (`refetch` in the engine), on real nodes: an actor's
/// sequence forked (a cloned device wrote `x` at the edge while the edge
/// was cut off, and `y` at the hub, both its first change), so the edge's
/// copy refuses the hub's change and no resync helps. The edge stays
/// linked (another document syncs meanwhile), resyncs three times, then
/// quarantines its copy in its SQLite file and fetches the hub's again,
/// keeping the change of another client that the hub never had; both
/// copies meet, and the edge's metrics count it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_copy_that_refuses_the_hubs_changes_is_quarantined_and_fetched_again() -> Result<()> {
    use meridian_edge::config::UplinkConfig;
    use meridian_edge::{EdgeConfig, EdgeNode};
    use meridian_node::quic::HubTrust;
    use meridian_protocol::automerge::ActorId;

    let (hub_dir, edge_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let doc = DocumentId::from_bytes(*b"forked-actor-doc");
    let mut base = AutoCommit::new();
    base.put(ROOT, "title", "shared")?;
    base.commit();
    let cloned = ActorId::random();
    let mut x = base.fork().with_actor(cloned.clone());
    x.put(ROOT, "x", "written at the edge")?;
    x.commit();
    let mut y = base.fork().with_actor(cloned);
    y.put(ROOT, "y", "written at the hub")?;
    y.commit();
    // At the edge, besides x: another client's change on the base (kept),
    // and one on x (left out with it).
    let mut edge_copy = x.clone();
    let mut z = base.fork();
    z.put(ROOT, "z", "another client, offline")?;
    z.commit();
    edge_copy.merge(&mut z)?;
    let mut w = x.fork();
    w.put(ROOT, "w", "on top of x")?;
    w.commit();
    edge_copy.merge(&mut w)?;

    // The edge alone, cut off from the hub, stores its copy.
    let edge_config = |uplink: Option<UplinkConfig>| {
        let mut c = EdgeConfig::new(edge_dir.path()).ephemeral_port();
        c.tick_interval = Duration::from_millis(100);
        c.divergence_after = Duration::from_millis(500);
        c.uplink = uplink;
        c
    };
    let offline = EdgeNode::start(edge_config(None)).await?;
    let mut raw = RawPeer::joined(&offline.ws_url(), "cloned-device").await?;
    push(&mut raw, "meridian-edge", doc, edge_copy.document()).await?;
    drop(raw);
    offline.shutdown().await;

    // The hub has the document with y.
    let mut hub_config = HubConfig::new(hub_dir.path()).ephemeral_ports().edge("eu", "s");
    hub_config.serve_clients = true;
    hub_config.tick_interval = Duration::from_millis(100);
    hub_config.divergence_after = Duration::from_millis(500);
    let hub = Hub::start(hub_config).await?;
    let hub_url = format!("ws://{}/sync", hub.http_addr());
    let mut raw = RawPeer::joined(&hub_url, "cloned-device-2").await?;
    push(&mut raw, "meridian-hub", doc, y.document()).await?;
    drop(raw);

    // The edge comes back with its uplink.
    let mut uplink = UplinkConfig::new(hub.quic_addr(), "eu", "s", HubTrust::CaFile(hub.ca_path().to_owned()));
    uplink.min_backoff = Duration::from_millis(50);
    let started = Instant::now();
    let edge = EdgeNode::start(edge_config(Some(uplink))).await?;
    let m = edge.metrics().clone();
    let deadline = Instant::now() + WAIT;
    while m.uplink_connected.get() != 1 {
        ensure!(Instant::now() < deadline, "the uplink never came up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The link carries other documents meanwhile.
    let writer = Client::connect(&edge.ws_url(), fast()).await?;
    let other = writer.create(|tx| tx.put(ROOT, "n", 1).map(|_| ())).await?;
    let at_hub = Client::connect(&hub_url, fast()).await?;
    let deadline = Instant::now() + WAIT;
    while at_hub.find(other).await.is_err() {
        ensure!(Instant::now() < deadline, "another document never crossed the link");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Refused, resynced, then refetched; the copies meet. (Read by a
    // client that opens it afterwards: one that loaded the old copy holds
    // the refused change itself, and is refused as bad input.)
    let expected = vec!["title".to_owned(), "y".into(), "z".into()];
    at_hub.find(doc).await?;
    let deadline = Instant::now() + WAIT;
    while m.divergence_refetches.get() != 1 || keys_at(&at_hub, doc).await.as_ref() != Some(&expected) {
        ensure!(
            Instant::now() < deadline,
            "never refetched: hub {:?}, refetches {}",
            keys_at(&at_hub, doc).await,
            m.divergence_refetches.get()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reader = Client::connect(&edge.ws_url(), fast()).await?;
    reader.find(doc).await?;
    assert_eq!(keys_at(&reader, doc).await, Some(expected));
    let recovered = started.elapsed();
    let page = metrics(edge.local_addr().port()).await?;
    assert!(http::metric_value(&page, "meridian_edge_unapplicable_total") >= Some(1.0), "{page}");
    assert_eq!(http::metric_value(&page, "meridian_edge_divergence_repairs_total"), Some(3.0), "{page}");
    assert_eq!(http::metric_value(&page, "meridian_edge_divergence_refetches_total"), Some(1.0));
    assert_eq!(m.uplink_connects_total.get(), 1, "the uplink never dropped");
    // Healed at the hub too: nothing divergent is left.
    let deadline = Instant::now() + WAIT;
    loop {
        let listed = get(hub.http_addr().port(), "/api/divergence").await?;
        if listed["divergent"].as_array().is_some_and(Vec::is_empty) {
            break;
        }
        ensure!(Instant::now() < deadline, "the hub still lists divergence: {listed}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for c in [writer, reader, at_hub] {
        c.close().await;
    }
    edge.shutdown().await;

    // The old copy is in the edge's quarantine table, as it was.
    let db = rusqlite::Connection::open(edge_dir.path().join("edge.sqlite3"))?;
    let rows: Vec<(Vec<u8>, String)> = db
        .prepare("SELECT data, reason FROM quarantine WHERE doc_id = ?1")?
        .query_map([doc.as_bytes().as_slice()], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    ensure!(!rows.is_empty(), "nothing in the quarantine");
    let mut old = Automerge::new();
    for (data, reason) in &rows {
        old.load_incremental(data)?;
        assert!(reason.contains("divergent"), "{reason}");
    }
    assert_eq!(old.keys(ROOT).collect::<Vec<_>>(), vec!["title", "w", "x", "z"]);
    eprintln!("refetched and met {:.2} s after the edge came back", recovered.as_secs_f64());
    hub.shutdown().await;
    Ok(())
}
