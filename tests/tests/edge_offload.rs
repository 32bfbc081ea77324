//! Eviction to the cloud copy (issue 6): an edge over its disk budget
//! drops its copy of documents the hub holds in full and nobody here uses;
//! opening one again is a cold open that fetches it back. A document the
//! hub has not acknowledged is never dropped.

use std::time::Duration;

use anyhow::{Context, Result};
use meridian_edge::client::Client;
use meridian_edge::config::UplinkConfig;
use meridian_edge::{EdgeConfig, EdgeNode};
use meridian_hub::{Hub, HubConfig};
use meridian_node::quic::HubTrust;
use meridian_protocol::automerge::transaction::Transactable;
use meridian_protocol::automerge::{ROOT, ReadDoc};
use meridian_tests::clients::{fast, find_eventually};

async fn until(what: &str, cond: impl Fn() -> bool) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !cond() {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "{what} never happened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

fn value(d: &meridian_protocol::automerge::Automerge) -> Option<i64> {
    d.get(ROOT, "n").ok().flatten().and_then(|(v, _)| v.as_i64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_its_disk_budget_an_edge_keeps_only_what_the_hub_lacks_and_cold_opens_the_rest() -> Result<()> {
    let (hub_dir, edge_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let hub = Hub::start(HubConfig::new(hub_dir.path()).ephemeral_ports().edge("eu", "s")).await?;
    let mut uplink = UplinkConfig::new(hub.quic_addr(), "eu", "s", HubTrust::CaFile(hub.ca_path().to_owned()));
    uplink.min_backoff = Duration::from_millis(50);
    let mut config = EdgeConfig::new(edge_dir.path()).ephemeral_port().idle_evict_after(Duration::from_millis(200));
    config.tick_interval = Duration::from_millis(100);
    // Any document is over budget: everything the hub holds may go.
    config.disk_budget_bytes = 1;
    let edge = EdgeNode::start(config.uplink(uplink)).await?;
    let m = edge.metrics().clone();
    until("the uplink", || m.uplink_connected.get() == 1).await?;

    let writer = Client::connect(&edge.ws_url(), fast()).await?;
    let mut docs = Vec::new();
    for i in 0..3i64 {
        let doc = writer.create(move |tx| tx.put(ROOT, "n", i).map(|_| ())).await?;
        writer.wait_acked(doc).await?;
        docs.push(doc);
    }
    // While its writer is connected, nothing goes.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(m.offloaded.get(), 0, "documents in use stay");
    writer.close().await;
    until("three documents offloaded", || m.offloaded.get() >= 3).await?;
    until("an empty store", || m.store_bytes.get() == 0).await?;

    // A fresh client opens one: fetched back from the hub.
    let reader = Client::connect(&edge.ws_url(), fast()).await?;
    find_eventually(&reader, docs[1]).await?;
    assert_eq!(reader.read(docs[1], value).await.flatten(), Some(1));
    until("a cold open counted", || m.cold_opens.get() >= 1).await?;
    reader.close().await;

    // The hub goes away; a new document is acknowledged by the edge only.
    hub.shutdown().await;
    until("the uplink down", || m.uplink_connected.get() == 0).await?;
    let offline = Client::connect(&edge.ws_url(), fast()).await?;
    let lonely = offline.create(|tx| tx.put(ROOT, "n", 42).map(|_| ())).await?;
    offline.wait_acked(lonely).await?;
    offline.close().await;
    let before = m.offloaded.get();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(m.offloaded.get(), before, "nothing the hub lacks is dropped");
    let check = Client::connect(&edge.ws_url(), fast()).await?;
    find_eventually(&check, lonely).await.context("still stored at the edge")?;
    assert_eq!(check.read(lonely, value).await.flatten(), Some(42));
    Ok(())
}
