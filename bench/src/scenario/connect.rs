//! N clients connect, each creates its own document, and all stay
//! connected: connections per second (handshake, document created and
//! acknowledged) and the server's memory per open document.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use meridian_protocol::ids::PeerId;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{Figure, histogram, ms, wait_heads};
use crate::peer;
use crate::server::Server;
use crate::wire::Conn;
use crate::workload::{SmallDoc, doc_id, run_salt};

/// Connection attempts in flight at once (a burst of N SYNs would only
/// measure the listen backlog).
const IN_FLIGHT: usize = 64;

pub async fn run(server: &Server, n: usize) -> Result<Vec<Figure>> {
    let salt = run_salt();
    let docs: Vec<SmallDoc> = (0..n as u64).map(|i| SmallDoc::new(salt, i)).collect();
    let rss_before = server.rss_kib()?;
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for (i, doc) in docs.iter().enumerate() {
        let (url, permits, doc) = (server.url.clone(), permits.clone(), doc.clone());
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await?;
            let t = Instant::now();
            let mut conn = Conn::join(&url, PeerId::new(format!("loadgen-{salt:x}-{i}"))).await?;
            let id = doc_id(salt, i as u64);
            conn.tx.sync(id, doc.push_message()).await?;
            wait_heads(&mut conn.rx, id, doc.head, Duration::from_secs(60)).await?;
            anyhow::Ok((conn, t.elapsed()))
        });
    }
    let mut open = Vec::with_capacity(n);
    let mut latency = histogram();
    while let Some(joined) = tasks.join_next().await {
        let (conn, took) = joined.context("client task")??;
        latency.saturating_record(took.as_micros() as u64);
        open.push(conn);
    }
    let elapsed = started.elapsed();
    // Let the server settle (allocator, deferred work) before reading its memory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = server.rss_kib()?;
    verify(server, salt, &docs).await?;
    for conn in open {
        conn.tx.close().await;
    }
    Ok(vec![
        Figure::higher("connections/s (join + create + ack)", "conn/s", n as f64 / elapsed.as_secs_f64()),
        Figure::lower("connect + create latency p99", "ms", ms(&latency, 0.99)),
        Figure::lower(
            "RSS per open document (and its connection)",
            "KiB",
            rss_after.saturating_sub(rss_before) as f64 / n as f64,
        ),
        Figure::lower("RSS with all open", "MiB", super::mib(rss_after)),
    ])
}

/// A real peer fetches a few of the documents.
async fn verify(server: &Server, salt: u64, docs: &[SmallDoc]) -> Result<()> {
    for i in [0, docs.len() / 2, docs.len() - 1] {
        let id = doc_id(salt, i as u64);
        let s = peer::fetch(&server.url, &format!("verify-{i}"), id, &[docs[i].head], Duration::from_secs(30)).await?;
        if s.doc.get_heads() != vec![docs[i].head] {
            bail!("document {i} did not converge");
        }
    }
    Ok(())
}
