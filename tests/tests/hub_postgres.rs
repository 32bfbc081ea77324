//! A hub keeping its documents in PostgreSQL (issue 16, `--store
//! postgres://…`): a document written through one hub is served by the
//! next hub started on the same database (with a data folder of its own),
//! and it is in PostgreSQL itself (checked directly).

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use meridian_edge::client::Client;
use meridian_edge::config::UplinkConfig;
use meridian_edge::{EdgeConfig, EdgeNode};
use meridian_hub::{Hub, HubConfig};
use meridian_node::quic::HubTrust;
use meridian_protocol::automerge::transaction::Transactable;
use meridian_protocol::automerge::{ROOT, ReadDoc};
use meridian_protocol::ids::DocumentId;
use meridian_tests::clients::{fast, find_eventually};
use meridian_tests::pg::Postgres;

const WAIT: Duration = Duration::from_secs(20);

async fn hub_on(url: &str, dir: &std::path::Path, edge: &str) -> Result<Hub> {
    let mut config = HubConfig::new(dir).ephemeral_ports().edge(edge, &format!("{edge}-secret"));
    config.store = Some(url.to_owned());
    Ok(Hub::start(config).await?)
}

async fn edge_of(hub: &Hub, id: &str, dir: &std::path::Path) -> Result<EdgeNode> {
    let mut uplink =
        UplinkConfig::new(hub.quic_addr(), id, &format!("{id}-secret"), HubTrust::CaFile(hub.ca_path().to_owned()));
    uplink.min_backoff = Duration::from_millis(50);
    let mut config = EdgeConfig::new(dir).ephemeral_port().peer_id(format!("edge-{id}")).uplink(uplink);
    config.tick_interval = Duration::from_millis(100);
    let edge = EdgeNode::start(config).await?;
    let deadline = Instant::now() + WAIT;
    while edge.metrics().uplink_connected.load(Relaxed) == 0 {
        anyhow::ensure!(Instant::now() < deadline, "the uplink did not come up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(edge)
}

/// Chunks of `doc` in the database, read directly.
async fn rows_of(pg_url: &str, doc: DocumentId) -> Result<i64> {
    let url = pg_url.to_owned();
    tokio::task::spawn_blocking(move || -> Result<i64> {
        let mut c = postgres::Client::connect(&url, postgres::NoTls)?;
        Ok(c.query_one("SELECT COUNT(*) FROM chunks WHERE doc_id = $1", &[&doc.as_bytes().as_slice()])?.get(0))
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_hub_on_the_same_database_serves_what_the_first_stored() -> Result<()> {
    let pg = tokio::task::spawn_blocking(Postgres::start).await??;
    let url = pg.url();
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir()).collect::<Result<_, _>>()?;

    let first = hub_on(&url, dirs[0].path(), "eu").await?;
    let eu = edge_of(&first, "eu", dirs[1].path()).await?;
    let writer = Client::connect(&eu.ws_url(), fast()).await?;
    let doc = writer.create(|tx| tx.put(ROOT, "title", "kept in postgres").map(|_| ())).await?;
    writer.wait_acked(doc).await?;
    let deadline = Instant::now() + WAIT;
    while rows_of(&url, doc).await? == 0 {
        anyhow::ensure!(Instant::now() < deadline, "the hub never stored the document in PostgreSQL");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    writer.close().await;
    eu.shutdown().await;
    first.shutdown().await;

    // Another hub, another data folder, the same database.
    let second = hub_on(&url, dirs[2].path(), "us").await?;
    let us = edge_of(&second, "us", dirs[3].path()).await?;
    let reader = Client::connect(&us.ws_url(), fast()).await?;
    find_eventually(&reader, doc).await.context("the document through the second hub")?;
    let title = reader.read(doc, |d| d.get(ROOT, "title").ok().flatten().map(|(v, _)| v.to_string())).await.flatten();
    assert_eq!(title.as_deref(), Some("\"kept in postgres\""));
    reader.close().await;
    us.shutdown().await;
    second.shutdown().await;
    Ok(())
}

/// `meridian-hub serve --store` takes `sqlite` or a postgres:// URL and
/// says so when given anything else.
#[test]
fn the_store_flag_refuses_what_it_does_not_know() -> Result<()> {
    let bin = meridian_tests::process::workspace_binary("meridian-hub")?;
    let dir = tempfile::tempdir()?;
    let out =
        std::process::Command::new(bin).args(["serve", "--store", "mysql://x", "--data"]).arg(dir.path()).output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--store takes `sqlite` or a postgres:// URL"), "{stderr}");
    Ok(())
}

/// Two hubs on one database with the NATS bus between them: a document
/// written through edge A on hub 1 opens through edge B on hub 2, and
/// every later change crosses live, both ways, converging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hubs_on_one_database_share_changes_over_the_bus() -> Result<()> {
    let pg = tokio::task::spawn_blocking(Postgres::start).await??;
    let nats = meridian_tests::nats::Nats::start()?;
    let url = pg.url();
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir()).collect::<Result<_, _>>()?;
    let on_bus = |dir: &std::path::Path, edge: &str| {
        let mut config = HubConfig::new(dir).ephemeral_ports().edge(edge, &format!("{edge}-secret"));
        config.store = Some(url.clone());
        config.bus = vec![nats.url()];
        config
    };
    let hub1 = Hub::start(on_bus(dirs[0].path(), "eu")).await?;
    let hub2 = Hub::start(on_bus(dirs[1].path(), "us")).await?;
    let eu = edge_of(&hub1, "eu", dirs[2].path()).await?;
    let us = edge_of(&hub2, "us", dirs[3].path()).await?;

    let a = Client::connect(&eu.ws_url(), fast()).await?;
    let doc = a.create(|tx| tx.put(ROOT, "n", 1).map(|_| ())).await?;
    a.wait_acked(doc).await?;
    let b = Client::connect(&us.ws_url(), fast()).await?;
    find_eventually(&b, doc).await.context("through the other hub")?;

    // Live both ways now that both hubs hold it.
    a.change(doc, |tx| tx.put(ROOT, "from_a", "eu").map(|_| ())).await?;
    b.change(doc, |tx| tx.put(ROOT, "from_b", "us").map(|_| ())).await?;
    let deadline = Instant::now() + WAIT;
    loop {
        let keys_a = a.read(doc, |d| d.keys(ROOT).collect::<Vec<_>>()).await.unwrap_or_default();
        let keys_b = b.read(doc, |d| d.keys(ROOT).collect::<Vec<_>>()).await.unwrap_or_default();
        let heads_a = a.read(doc, |d| d.get_heads()).await;
        let heads_b = b.read(doc, |d| d.get_heads()).await;
        if keys_a.len() == 3 && keys_a == keys_b && heads_a == heads_b {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "not converged: {keys_a:?} / {keys_b:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for c in [a, b] {
        c.close().await;
    }
    eu.shutdown().await;
    us.shutdown().await;
    hub1.shutdown().await;
    hub2.shutdown().await;
    Ok(())
}
