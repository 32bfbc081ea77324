//! SIGKILL of the hub under write load: no change the hub had acknowledged
//! is lost, and edges catch up by themselves after it restarts.
//!
//! A writer keeps changing a document through an edge. A probe client
//! connected to the hub itself sees exactly what the hub advertises, and
//! the hub advertises only committed changes: what the probe holds when the
//! hub is killed is what the hub acknowledged. Right after the kill (before
//! any edge can re-upload anything) the dead hub's SQLite file is read
//! directly and must contain all of it. Rounds: `MERIDIAN_HUB_CRASH_ROUNDS`
//! (default 5).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use meridian_edge::client::Client;
use meridian_node::store::SqliteStore;
use meridian_protocol::automerge::transaction::Transactable;
use meridian_protocol::automerge::{Automerge, ROOT, ReadDoc};
use meridian_protocol::ids::DocumentId;
use meridian_protocol::storage::{StorageResult, StorageTask};
use meridian_tests::clients::{acked_writer, fast, find_eventually};
use meridian_tests::process::{EdgeProcess, HubProcess, free_port};
use rand::{RngExt, SeedableRng};

fn rounds() -> usize {
    std::env::var("MERIDIAN_HUB_CRASH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(5)
}

fn keys_with_prefix(d: &Automerge, prefix: &str) -> Vec<String> {
    d.keys(ROOT).filter(|k| k.starts_with(prefix)).collect()
}

/// The document as stored in the (dead) hub's SQLite file.
fn stored_at_hub(hub: &HubProcess, doc: DocumentId) -> Result<Automerge> {
    let mut store = SqliteStore::open(&hub.data.join("hub.sqlite3"))?;
    match store.execute(&StorageTask::LoadDoc { doc }) {
        StorageResult::Loaded(Some(bytes)) => Ok(Automerge::load(&bytes)?),
        other => anyhow::bail!("document missing from the hub store: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_sigkill_under_load_loses_nothing_it_acknowledged() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (quic, http) = (free_port()?, free_port()?);
    let hub_data = dir.path().join("hub");
    let mut hub = HubProcess::start(&hub_data, quic, http, &["--edge", "eu=eu-secret"])?;
    let ca = hub.ca_path();
    let hub_addr = format!("127.0.0.1:{quic}");
    let edge_args = [
        "--hub",
        hub_addr.as_str(),
        "--edge-id",
        "eu",
        "--hub-secret",
        "eu-secret",
        "--hub-ca",
        ca.to_str().unwrap_or_default(),
    ];
    let edge = EdgeProcess::start(&dir.path().join("edge"), free_port()?, &edge_args)?;

    let client = Arc::new(Client::connect(&edge.ws_url(), fast()).await?);
    let doc = client.create(|tx| tx.put(ROOT, "created", true).map(|_| ())).await?;
    client.wait_acked(doc).await?;
    let acked = Arc::new(Mutex::new(Vec::new()));
    // A steady load rather than a flat-out loop keeps the document small.
    let writing = tokio::spawn(acked_writer(client.clone(), doc, "w".into(), Duration::from_millis(2), acked.clone()));
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let (mut hub_acked_total, mut lost) = (0usize, 0usize);

    for round in 0..rounds() {
        let probe = Client::connect(&hub.ws_url(), fast()).await?;
        find_eventually(&probe, doc).await.with_context(|| format!("round {round}: probe on the hub"))?;
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..800))).await;
        hub.kill9()?;
        let seen = probe.read(doc, |d| keys_with_prefix(d, "w")).await.unwrap_or_default();
        probe.close().await;
        let stored = stored_at_hub(&hub, doc)?;
        let missing: Vec<&String> =
            seen.iter().filter(|k| stored.get(ROOT, k.as_str()).ok().flatten().is_none()).collect();
        lost += missing.len();
        assert!(
            missing.is_empty(),
            "round {round}: the hub acknowledged {} changes it lost: {missing:?}",
            missing.len()
        );
        hub_acked_total = hub_acked_total.max(seen.len());

        hub = HubProcess::start(&hub_data, quic, http, &["--edge", "eu=eu-secret"])?;
        // The edge reconnects by itself and the hub catches up with every
        // change the edge acknowledged so far.
        let target: Vec<String> = acked.lock().map(|a| a.clone()).unwrap_or_default();
        let probe = Client::connect(&hub.ws_url(), fast()).await?;
        find_eventually(&probe, doc).await?;
        // One writer: its changes form a chain, so having the last acked key
        // means having every earlier one.
        let last = target.last().cloned().unwrap_or_else(|| "created".into());
        let caught_up = probe.wait_for(doc, move |d| d.get(ROOT, last.as_str()).ok().flatten().is_some());
        // A liveness bound, not a measurement: generous for loaded CI machines.
        tokio::time::timeout(Duration::from_secs(60), caught_up)
            .await
            .with_context(|| format!("round {round}: hub did not catch up"))??;
        probe.close().await;
    }
    writing.abort();
    let written = acked.lock().map(|a| a.len()).unwrap_or_default();
    eprintln!(
        "hub crash: {} SIGKILL rounds, {written} changes written through the edge, up to {hub_acked_total} acknowledged by the hub at a kill, {lost} lost",
        rounds()
    );
    assert!(written > rounds(), "the writer made progress");
    Ok(())
}
