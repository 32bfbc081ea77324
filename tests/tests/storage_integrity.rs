//! Chunks corrupted on an edge's disk (bytes flipped in the real SQLite
//! file) are found — when the document loads, by the background scrub, or
//! by `meridian-edge scrub` — moved to the quarantine table (kept, never
//! served) and counted; the document is healed (from the hub, or written
//! again from memory), and what heals it is stored again.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use meridian_edge::client::Client;
use meridian_edge::{EdgeConfig, EdgeNode};
use meridian_hub::{Hub, HubConfig};
use meridian_protocol::automerge::transaction::Transactable;
use meridian_protocol::automerge::{Automerge, ROOT, ReadDoc};
use meridian_protocol::ids::DocumentId;
use meridian_tests::clients::{fast, find_eventually};
use meridian_tests::disk;
use meridian_tests::edges::linked_config;

const WAIT: Duration = Duration::from_secs(20);
const KEYS: i64 = 10;

/// How many of the keys `k0..` the document holds.
fn keys_in(d: &Automerge) -> i64 {
    (0..KEYS).filter(|i| d.get(ROOT, format!("k{i}")).ok().flatten().is_some()).count() as i64
}

/// The document as the edge's chunks table holds it (read directly), and
/// how many chunks are in the quarantine table.
fn stored(db: &std::path::Path, doc: DocumentId) -> Result<(Automerge, i64)> {
    let conn = disk::open(db)?;
    let mut bytes = Vec::new();
    let mut stmt = conn.prepare("SELECT data FROM chunks WHERE doc_id = ?1 ORDER BY kind <> 'snapshot', seq")?;
    let mut rows = stmt.query([doc.as_bytes().as_slice()])?;
    while let Some(row) = rows.next()? {
        bytes.extend_from_slice(&row.get::<_, Vec<u8>>(0)?);
    }
    let quarantined: i64 = conn.query_row("SELECT COUNT(*) FROM quarantine", [], |r| r.get(0))?;
    // Unreadable (a corrupt chunk still there): holds nothing yet.
    let mut d = Automerge::new();
    if d.load_incremental(&bytes).is_err() {
        d = Automerge::new();
    }
    Ok((d, quarantined))
}

/// Flips a byte in `doc`'s snapshot, in the file (as a failing disk
/// would, behind the store's back); nothing is quarantined before.
fn flip_a_byte(db: &std::path::Path, doc: DocumentId) -> Result<()> {
    meridian_tests::disk::flip_a_byte(db, doc)?;
    let quarantined: i64 = disk::open(db)?.query_row("SELECT COUNT(*) FROM quarantine", [], |r| r.get(0))?;
    ensure!(quarantined == 0, "nothing quarantined yet");
    Ok(())
}

/// An edge without a hub, its document written with `KEYS` changes.
async fn edge_with_a_document(dir: &std::path::Path, scrub: u64) -> Result<(EdgeNode, Client, DocumentId)> {
    let mut config = EdgeConfig::new(dir).ephemeral_port();
    config.tick_interval = Duration::from_millis(100);
    config.scrub_bytes_per_sec = scrub;
    let edge = EdgeNode::start(config).await?;
    let (client, doc) = write_keys(&edge).await?;
    Ok((edge, client, doc))
}

/// A client of `edge` writes a document with the keys `k0..`, one change
/// each, acknowledged.
async fn write_keys(edge: &EdgeNode) -> Result<(Client, DocumentId)> {
    let client = Client::connect(&edge.ws_url(), fast()).await?;
    let doc = client.create(|tx| tx.put(ROOT, "k0", 0).map(|_| ())).await?;
    for i in 1..KEYS {
        client.change(doc, move |tx| tx.put(ROOT, format!("k{i}"), i).map(|_| ())).await?;
    }
    client.wait_acked(doc).await?;
    Ok((client, doc))
}

/// The document in memory, the chunk under it corrupted: the background
/// scrub finds it, and the edge writes the document again from memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_scrub_finds_a_corrupt_chunk_and_the_document_is_written_again() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (edge, client, doc) = edge_with_a_document(dir.path(), 64 << 20).await?;
    let db = EdgeConfig::new(dir.path()).database_path();
    flip_a_byte(&db, doc)?;
    let deadline = Instant::now() + WAIT;
    loop {
        let (kept, quarantined) = stored(&db, doc)?;
        if quarantined == 1 && keys_in(&kept) == KEYS {
            break;
        }
        ensure!(Instant::now() < deadline, "not healed: {quarantined} quarantined, {} keys stored", keys_in(&kept));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let m = edge.metrics();
    assert_eq!(m.chunks_quarantined.get(), 1);
    assert!(m.scrub_chunks.get() >= 1 && m.scrub_bytes.get() > 0 && m.scrub_passes.get() >= 1);
    assert_eq!(client.read(doc, keys_in).await, Some(KEYS), "the client never noticed");
    Ok(())
}

/// `meridian-edge scrub` on a stopped edge's store: the corrupt chunk is
/// reported (exit status 1) and quarantined; a second run finds the store
/// sound (0); a folder with no store is an error (2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meridian_edge_scrub_reports_and_quarantines_corruption() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (edge, client, doc) = edge_with_a_document(dir.path(), 0).await?;
    drop(client);
    edge.shutdown().await;
    let db = EdgeConfig::new(dir.path()).database_path();
    flip_a_byte(&db, doc)?;
    let bin = meridian_tests::process::workspace_binary("meridian-edge")?;
    let scrub = |data: &std::path::Path| std::process::Command::new(&bin).arg("scrub").arg("--data").arg(data).output();
    let first = scrub(dir.path())?;
    let out = String::from_utf8_lossy(&first.stdout);
    assert_eq!(first.status.code(), Some(1), "{out}");
    assert!(out.contains(&format!("corrupt: document {doc}, chunk ")) && out.contains("checksum mismatch"), "{out}");
    assert!(out.contains(": 1 corrupt"), "{out}");
    let (_, quarantined) = stored(&db, doc)?;
    assert_eq!(quarantined, 1);
    let second = scrub(dir.path())?;
    let out = String::from_utf8_lossy(&second.stdout);
    assert_eq!(second.status.code(), Some(0), "{out}");
    assert!(out.contains(": 0 corrupt"), "{out}");
    let none = scrub(&dir.path().join("nowhere"))?;
    assert_eq!(none.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&none.stderr).contains("no edge store at"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_corrupted_on_disk_is_quarantined_and_healed_from_the_hub() -> Result<()> {
    let (hub_dir, edge_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let hub = Hub::start(HubConfig::new(hub_dir.path()).ephemeral_ports().edge("eu", "eu-secret")).await?;
    let config = linked_config(&hub, "eu", edge_dir.path());
    let db = config.database_path();
    let edge = EdgeNode::start(config).await?;
    let (client, doc) = write_keys(&edge).await?;
    let deadline = Instant::now() + WAIT;
    while edge.metrics().docs_synced_upstream.get() < 1 || edge.metrics().docs_pending_upstream.get() > 0 {
        ensure!(Instant::now() < deadline, "the hub never acknowledged the document");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(client);
    edge.shutdown().await;

    // A byte flips in the document's first chunk, in the file itself.
    flip_a_byte(&db, doc)?;

    let edge = EdgeNode::start(linked_config(&hub, "eu", edge_dir.path())).await?;
    let client = Client::connect(&edge.ws_url(), fast()).await?;
    find_eventually(&client, doc).await.context("the document opens again")?;
    let deadline = Instant::now() + WAIT;
    loop {
        let seen = client.read(doc, keys_in).await.unwrap_or(0);
        let (kept, quarantined) = stored(&db, doc)?;
        if seen == KEYS && keys_in(&kept) == KEYS {
            assert_eq!(quarantined, 1, "the corrupt chunk is kept in the quarantine table");
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "not healed: the client sees {seen} keys, the store holds {}",
            keys_in(&kept)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(edge.metrics().chunks_quarantined.get(), 1);
    let page = edge.metrics().render();
    assert!(page.contains("meridian_edge_chunks_quarantined_total 1\n"), "{page}");
    Ok(())
}
