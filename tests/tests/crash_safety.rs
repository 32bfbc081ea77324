//! Durable before advertised (DESIGN.md §4.2): once an edge's heads cover a
//! change, `kill -9` of the edge loses nothing.
//!
//! Writers keep changing documents and record every change the edge has
//! acknowledged; at a random moment the edge process gets SIGKILL, is
//! restarted on the same data directory, and a fresh client checks that
//! every acknowledged change is there. Rounds: `MERIDIAN_CRASH_ROUNDS`
//! (default 12).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use meridian_edge::client::Client;
use meridian_protocol::automerge::transaction::Transactable;
use meridian_protocol::automerge::{Automerge, ROOT, ReadDoc};
use meridian_protocol::ids::DocumentId;
use meridian_tests::clients::{acked_writer, fast};
use meridian_tests::process::{EdgeProcess, free_port};
use rand::{RngExt, SeedableRng};

const WRITERS: usize = 3;

fn rounds() -> usize {
    std::env::var("MERIDIAN_CRASH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(12)
}

fn missing_keys(doc: &Automerge, keys: &[String]) -> Vec<String> {
    keys.iter().filter(|k| doc.get(ROOT, k.as_str()).ok().flatten().is_none()).cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_no_acknowledged_change() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let mut edge = EdgeProcess::start(dir.path(), port, &[])?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);

    // One document per writer, created once and written in every round.
    let setup = Client::connect(&edge.ws_url(), fast()).await?;
    let mut docs = Vec::new();
    for _ in 0..WRITERS {
        let doc = setup.create(|tx| tx.put(ROOT, "created", true).map(|_| ())).await?;
        setup.wait_acked(doc).await?;
        docs.push(doc);
    }
    drop(setup);

    let mut all_acked: Vec<(DocumentId, String)> = Vec::new();
    for round in 0..rounds() {
        let acked: Vec<Arc<Mutex<Vec<String>>>> = (0..WRITERS).map(|_| Arc::default()).collect();
        let mut tasks = Vec::new();
        let mut clients = Vec::new();
        for (w, doc) in docs.iter().enumerate() {
            let client = Arc::new(Client::connect(&edge.ws_url(), fast()).await?);
            tokio::time::timeout(Duration::from_secs(20), client.find(*doc)).await.context("find timed out")??;
            tasks.push(tokio::spawn(acked_writer(
                client.clone(),
                *doc,
                format!("r{round}w{w}"),
                Duration::ZERO,
                acked[w].clone(),
            )));
            clients.push(client);
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..600))).await;
        edge.kill9()?;
        // Stop the writers for good before the edge comes back: a client
        // that reconnected would upload its changes again and hide a loss.
        for t in tasks {
            t.abort();
            let _ = t.await;
        }
        for c in clients {
            if let Ok(c) = Arc::try_unwrap(c) {
                c.close().await;
            } else {
                anyhow::bail!("a writer still holds its client");
            }
        }
        for (w, doc) in docs.iter().enumerate() {
            let keys = acked[w].lock().map(|a| a.clone()).unwrap_or_default();
            all_acked.extend(keys.into_iter().map(|k| (*doc, k)));
        }
        edge = EdgeProcess::start(dir.path(), port, &[])?;
        verify(&edge, &docs, &all_acked).await.with_context(|| format!("round {round}"))?;
    }
    eprintln!("crash safety: {} SIGKILL rounds, {} acknowledged changes, 0 lost", rounds(), all_acked.len());
    assert!(all_acked.len() > rounds(), "writers must have made progress between kills");
    Ok(())
}

/// A fresh client sees every acknowledged change.
async fn verify(edge: &EdgeProcess, docs: &[DocumentId], acked: &[(DocumentId, String)]) -> Result<()> {
    let reader = Client::connect(&edge.ws_url(), fast()).await?;
    for doc in docs {
        tokio::time::timeout(Duration::from_secs(20), reader.find(*doc)).await.context("find timed out")??;
        let keys: Vec<String> = acked.iter().filter(|(d, _)| d == doc).map(|(_, k)| k.clone()).collect();
        let k2 = keys.clone();
        let synced = tokio::time::timeout(
            Duration::from_secs(20),
            reader.wait_for(*doc, move |d| missing_keys(d, &k2).is_empty()),
        )
        .await;
        if synced.is_err() {
            let missing = reader.read(*doc, move |d| missing_keys(d, &keys)).await.unwrap_or_default();
            anyhow::bail!(
                "{} acknowledged changes lost in {doc}: {:?}",
                missing.len(),
                &missing[..missing.len().min(10)]
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_down_cleanly_and_keeps_data() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let mut edge = EdgeProcess::start(dir.path(), port, &[])?;
    let client = Client::connect(&edge.ws_url(), fast()).await?;
    let doc = client.create(|tx| tx.put(ROOT, "kept", "yes").map(|_| ())).await?;
    client.wait_acked(doc).await?;
    let status = edge.terminate()?;
    assert!(status.success(), "edge exited with {status} on SIGTERM");
    drop(client);
    let edge = EdgeProcess::start(dir.path(), port, &[])?;
    let reader = Client::connect(&edge.ws_url(), fast()).await?;
    tokio::time::timeout(Duration::from_secs(10), reader.find(doc)).await??;
    let kept = reader.read(doc, |d| d.get(ROOT, "kept").ok().flatten().is_some()).await;
    assert_eq!(kept, Some(true));
    Ok(())
}
