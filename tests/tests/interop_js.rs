//! Interop with the real JS automerge-repo 2.5.6 from npm, in both
//! directions: JS clients through a Meridian edge, and a Meridian client
//! with the JS sync server.

use std::time::Duration;

use anyhow::Result;
use meridian_edge::client::{Client, ClientOptions};
use meridian_edge::{EdgeConfig, EdgeNode};
use meridian_protocol::automerge::transaction::Transactable;
use meridian_protocol::automerge::{ROOT, ReadDoc};
use meridian_protocol::ids::AutomergeUrl;
use meridian_tests::js::{JsServer, scenario};
use serde_json::Value;

async fn edge() -> Result<(EdgeNode, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let edge = EdgeNode::start(EdgeConfig::new(dir.path()).ephemeral_port()).await?;
    Ok((edge, dir))
}

/// Runs a JS scenario against a Meridian edge (off the async runtime).
async fn js_through_edge(case: &'static str, extra: &'static [&'static str]) -> Result<Value> {
    let (edge, _dir) = edge().await?;
    let url = edge.ws_url();
    let result = tokio::task::spawn_blocking(move || scenario(&url, case, extra)).await??;
    edge.shutdown().await;
    Ok(result)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_create_then_find_through_edge() -> Result<()> {
    js_through_edge("create-find", &[]).await.map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_concurrent_edits_converge_through_edge() -> Result<()> {
    js_through_edge("concurrent", &[]).await.map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_unknown_document_is_unavailable() -> Result<()> {
    js_through_edge("unavailable", &[]).await.map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_requester_gets_document_that_appears_later() -> Result<()> {
    js_through_edge("unavailable-then-appears", &[]).await.map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_ephemeral_messages_are_relayed() -> Result<()> {
    js_through_edge("ephemeral", &[]).await.map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_big_document_reaches_fresh_peer() -> Result<()> {
    let r = js_through_edge("big-doc", &["--changes", "3000"]).await?;
    eprintln!("big-doc through the edge: {r}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meridian_client_syncs_with_js_sync_server() -> Result<()> {
    let server = JsServer::start()?;
    let url = server.ws_url();

    // Meridian → JS server → fresh JS peer.
    let client = Client::connect(&url, ClientOptions::default()).await?;
    let doc = client.create(|tx| tx.put(ROOT, "from", "meridian").map(|_| ())).await?;
    tokio::time::timeout(Duration::from_secs(20), client.wait_acked(doc)).await??;
    let doc_url = doc.url().to_string();
    let u = url.clone();
    let fetched = tokio::task::spawn_blocking(move || {
        scenario(&u, "fetch", &["--doc", &doc_url, "--expect-json", r#"{"from":"meridian"}"#])
    })
    .await??;
    assert_eq!(fetched["ok"], Value::Bool(true));

    // JS peer → JS server → Meridian client.
    let u = url.clone();
    let uploaded =
        tokio::task::spawn_blocking(move || scenario(&u, "upload", &["--content", r#"{"from":"js"}"#])).await??;
    let js_url: AutomergeUrl = uploaded["url"].as_str().unwrap_or_default().parse()?;
    let reader = Client::connect(&url, ClientOptions::default()).await?;
    tokio::time::timeout(Duration::from_secs(20), reader.find(js_url.document_id)).await??;
    // JS automerge 3 stores strings as text objects.
    let from = reader
        .read(js_url.document_id, |d| {
            let (_, id) = d.get(ROOT, "from").ok().flatten()?;
            d.text(&id).ok()
        })
        .await
        .flatten();
    assert_eq!(from.as_deref(), Some("js"));
    Ok(())
}
