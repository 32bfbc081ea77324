//! Replication lag per hop: a change durable at the hub is followed until
//! each edge syncing the document confirms it (`meridian_hub_replica_lag_seconds`,
//! `lag_ms` per replica in `/api/docs/{doc}/replicas`), and a change
//! durable at an edge until the hub confirms it
//! (`meridian_edge_replica_lag_seconds`). Real hub and edges over QUIC.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use meridian_edge::client::Client;
use meridian_hub::{Hub, HubConfig};
use meridian_protocol::automerge::ROOT;
use meridian_protocol::automerge::transaction::Transactable;
use meridian_tests::clients::{fast, find_eventually};
use meridian_tests::edges::linked_edge;
use meridian_tests::http;

const WAIT: Duration = Duration::from_secs(20);
const CHANGES: i64 = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_hop_of_replication_is_measured() -> Result<()> {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir()).collect::<Result<_, _>>()?;
    let mut config = HubConfig::new(dirs[0].path()).ephemeral_ports().edge("eu", "eu-secret").edge("us", "us-secret");
    config.tick_interval = Duration::from_millis(100);
    let hub = Hub::start(config).await?;
    let (eu, us) = (linked_edge(&hub, "eu", dirs[1].path()).await?, linked_edge(&hub, "us", dirs[2].path()).await?);

    let writer = Client::connect(&eu.ws_url(), fast()).await?;
    let doc = writer.create(|tx| tx.put(ROOT, "n", 0).map(|_| ())).await?;
    writer.wait_acked(doc).await?;
    let reader = Client::connect(&us.ws_url(), fast()).await?;
    find_eventually(&reader, doc).await?;
    for i in 1..=CHANGES {
        writer.change(doc, move |tx| tx.put(ROOT, "n", i).map(|_| ())).await?;
        writer.wait_acked(doc).await?;
    }
    let deadline = Instant::now() + WAIT;
    while reader
        .read(doc, |d| {
            meridian_protocol::automerge::ReadDoc::get(d, ROOT, "n").ok().flatten().and_then(|(v, _)| v.as_i64())
        })
        .await
        .flatten()
        != Some(CHANGES)
    {
        ensure!(Instant::now() < deadline, "the reader never saw the last change");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Hub → us: each change the hub made durable, confirmed by us.
    let hub_port = hub.http_addr().port();
    let deadline = Instant::now() + WAIT;
    let (count, sum) = loop {
        let page = hub.metrics().map(|m| m.render()).unwrap_or_default();
        let count = hub.metrics().map_or(0, |m| m.replica_lag_seconds.get_sample_count());
        let sum = hub.metrics().map_or(0.0, |m| m.replica_lag_seconds.get_sample_sum());
        if count >= CHANGES as u64 / 2 {
            assert!(page.contains("meridian_hub_replica_lag_seconds_count"), "{page}");
            break (count, sum);
        }
        ensure!(Instant::now() < deadline, "hub → edge lag measured {count} times");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    ensure!(sum / (count as f64) < 2.0, "a mean hop of {:.3} s on loopback", sum / count as f64);
    let path = format!("/api/docs/{doc}/replicas");
    let answer = tokio::task::spawn_blocking(move || http::request(hub_port, "GET", &path, &[])?.json()).await??;
    let replicas = answer["replicas"].as_array().cloned().unwrap_or_default();
    ensure!(replicas.len() == 2, "both edges are replicas: {answer}");
    ensure!(replicas.iter().any(|r| r["lag_ms"].as_u64().is_some_and(|ms| ms < 2000)), "{answer}");
    // eu → hub: each change eu made durable, confirmed by the hub.
    let eu_count = eu.metrics().replica_lag_seconds.get_sample_count();
    ensure!(eu_count >= CHANGES as u64 / 2, "edge → hub lag measured {eu_count} times");
    eprintln!(
        "hub → edge: {count} changes, mean {:.2} ms; edge → hub and clients: {eu_count} confirmations",
        sum * 1000.0 / count as f64
    );
    Ok(())
}
