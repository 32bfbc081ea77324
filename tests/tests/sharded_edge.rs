//! An edge on several engine threads (`--engine-threads`): documents are
//! hashed over the engines, one client's connection reaches documents in
//! every one of them, the node's metrics add the shards up, and the store
//! they share is whole after `kill -9` whatever the number of threads the
//! edge comes back with.

use std::time::Duration;

use anyhow::{Context, Result};
use meridian_edge::client::Client;
use meridian_protocol::automerge::transaction::Transactable;
use meridian_protocol::automerge::{ROOT, ReadDoc};
use meridian_protocol::engine::Shard;
use meridian_protocol::ids::DocumentId;
use meridian_tests::clients::fast;
use meridian_tests::http::metric;
use meridian_tests::process::{EdgeProcess, free_port};

const DOCS: usize = 16;
const THREADS: usize = 4;

fn has(key: &'static str) -> impl Fn(&meridian_protocol::automerge::Automerge) -> bool + Clone + Send + Sync {
    move |d| d.get(ROOT, key).ok().flatten().is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_reaches_documents_in_every_engine_thread() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let mut edge = EdgeProcess::start(dir.path(), port, &["--engine-threads", &THREADS.to_string()])?;
    let within = |what: &'static str| move |e| anyhow::anyhow!("{what}: {e}");

    let writer = Client::connect(&edge.ws_url(), fast()).await?;
    let mut docs: Vec<DocumentId> = Vec::new();
    for i in 0..DOCS {
        let doc = writer.create(move |tx| tx.put(ROOT, "n", i as i64).map(|_| ())).await?;
        docs.push(doc);
    }
    let shards: std::collections::BTreeSet<usize> = docs.iter().map(|d| Shard::of(d, THREADS)).collect();
    assert_eq!(shards.len(), THREADS, "{DOCS} random documents should land in every one of {THREADS} shards");
    for doc in &docs {
        writer.wait_acked(*doc).await?;
    }

    // Another client, one connection, every document: it gets each, then
    // each change the writer makes afterwards.
    let reader = Client::connect(&edge.ws_url(), fast()).await?;
    for doc in &docs {
        tokio::time::timeout(Duration::from_secs(20), reader.find(*doc)).await.map_err(within("find"))??;
    }
    for doc in &docs {
        writer.change(*doc, |tx| tx.put(ROOT, "later", true).map(|_| ())).await?;
    }
    for doc in &docs {
        let seen = reader.wait_for(*doc, has("later"));
        tokio::time::timeout(Duration::from_secs(20), seen).await.map_err(within("the writer's change"))??;
        reader.change(*doc, |tx| tx.put(ROOT, "answer", true).map(|_| ())).await?;
    }
    for doc in &docs {
        let seen = writer.wait_for(*doc, has("answer"));
        tokio::time::timeout(Duration::from_secs(20), seen).await.map_err(within("the reader's change"))??;
        reader.wait_acked(*doc).await?;
    }

    // The gauge is the sum over the engines (each sets it from the figures
    // of all of them at its housekeeping, every second).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let loaded = loop {
        let loaded = metric(port, "meridian_edge_documents_loaded").context("no documents_loaded metric")?;
        if loaded == DOCS as f64 || std::time::Instant::now() > deadline {
            break loaded;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(loaded, DOCS as f64, "documents in memory over {THREADS} engine threads");
    assert_eq!(metric(port, "meridian_edge_connections"), Some(2.0), "each connection counted once");
    writer.close().await;
    reader.close().await;

    // The shards share one store: after SIGKILL an edge on one engine
    // thread serves every document with every acknowledged change.
    edge.kill9()?;
    let edge = EdgeProcess::start(dir.path(), port, &["--engine-threads", "1"])?;
    let fresh = Client::connect(&edge.ws_url(), fast()).await?;
    for (i, doc) in docs.iter().enumerate() {
        tokio::time::timeout(Duration::from_secs(20), fresh.find(*doc))
            .await
            .map_err(within("find after restart"))??;
        let got = fresh.read(*doc, |d| ["n", "later", "answer"].map(|k| d.get(ROOT, k).ok().flatten().is_some())).await;
        assert_eq!(got, Some([true; 3]), "document {i} after the restart");
    }
    fresh.close().await;
    Ok(())
}
