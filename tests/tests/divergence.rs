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
