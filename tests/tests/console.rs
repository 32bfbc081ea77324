//! The hub's operator console in headless Chromium (`tests/js/console-e2e.mjs`
//! lists the steps): a hub with an admin token and two edges as processes, a
//! document written in three versions at `eu` and read at `us`. The console
//! lists it with both replicas, shows its replicas and history, diffs two
//! versions, shows an old one and rolls back to it; the rollback reaches the
//! reader at `us`. Screenshots go to `target/console-e2e/`.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use meridian_edge::client::Client;
use meridian_protocol::automerge::transaction::{CommitOptions, Transactable};
use meridian_protocol::automerge::{ObjType, ROOT, ReadDoc, ScalarValue, Value};
use meridian_tests::clients::{fast, find_eventually};
use meridian_tests::http;
use meridian_tests::js::run_script;
use meridian_tests::process::{EdgeProcess, HubProcess, free_port, workspace_root};

const TOKEN: &str = "console-admin-secret";

fn title(d: &meridian_protocol::automerge::Automerge) -> Option<String> {
    match d.get(ROOT, "title").ok().flatten() {
        Some((Value::Scalar(s), _)) => match s.as_ref() {
            ScalarValue::Str(t) => Some(t.to_string()),
            _ => None,
        },
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_replicas_and_history_diffs_travels_and_rolls_back() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (quic, http_port) = (free_port()?, free_port()?);
    let _hub = HubProcess::start(
        &dir.path().join("hub"),
        quic,
        http_port,
        &["--edge", "eu=eu-secret", "--edge", "us=us-secret", "--hub-id", "hub", "--admin-token", TOKEN],
    )?;
    let ca = _hub.ca_path().to_string_lossy().into_owned();
    let hub_addr = format!("127.0.0.1:{quic}");
    let edge = |id: &str, secret: &str| -> Result<EdgeProcess> {
        let args = ["--hub", &hub_addr, "--edge-id", id, "--hub-secret", secret, "--hub-ca", &ca];
        EdgeProcess::start(&dir.path().join(id), free_port()?, &args)
    };
    let eu = edge("eu", "eu-secret")?;
    let us = edge("us", "us-secret")?;

    // Three versions, with messages, written at eu; read at us.
    let writer = Client::connect(&eu.ws_url(), fast()).await?;
    let doc = writer.create(|tx| tx.put(ROOT, "title", "v1").map(|_| ())).await?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64;
    let say = |m: &str| CommitOptions::default().with_message(m.to_owned()).with_time(now);
    writer.change_with(doc, say("retitle"), |tx| tx.put(ROOT, "title", "v2").map(|_| ())).await?;
    writer
        .change_with(doc, say("tags and v3"), |tx| {
            tx.put(ROOT, "title", "v3")?;
            let tags = tx.put_object(ROOT, "tags", ObjType::List)?;
            tx.insert(&tags, 0, "a").map(|_| ())
        })
        .await?;
    writer.wait_acked(doc).await?;
    let reader = Client::connect(&us.ws_url(), fast()).await?;
    find_eventually(&reader, doc).await?;
    reader.wait_for(doc, |d| title(d).as_deref() == Some("v3")).await?;

    // The page holds no data and is served without a token; the routes it
    // reads are not.
    let page = http::request(http_port, "GET", "/console", &[])?;
    ensure!(page.status == 200 && page.text().contains("hub console"), "GET /console: {}", page.status);
    ensure!(page.header("content-security-policy").is_some_and(|p| p.contains("script-src 'self'")));
    let refused = http::request(http_port, "GET", "/api/docs", &[])?;
    ensure!(refused.status == 401, "GET /api/docs without the token: {}", refused.status);
    let listed = http::request(http_port, "GET", "/api/docs", &[("authorization", &format!("Bearer {TOKEN}"))])?;
    ensure!(listed.status == 200 && listed.text().contains(&doc.to_string()), "GET /api/docs: {}", listed.text());

    let out = workspace_root().join("target/console-e2e");
    let url = format!("http://127.0.0.1:{http_port}/console");
    let args: Vec<String> =
        [url.as_str(), "--doc", &doc.to_string(), "--token", TOKEN, "--out", &out.to_string_lossy()]
            .iter()
            .map(|a| a.to_string())
            .collect();
    let lines = tokio::task::spawn_blocking(move || {
        let mut all = vec!["--url"];
        all.extend(args.iter().map(String::as_str));
        run_script("console-e2e.mjs", &all)
    })
    .await??;
    let result = lines.last().context("no result")?;
    println!("console: {result}");
    ensure!(result["history"].as_u64() == Some(3), "three changes listed: {result}");
    let replicas = result["replicas"].to_string();
    ensure!(replicas.contains("edge eu") && replicas.contains("edge us"), "both edges are replicas: {replicas}");
    for shot in ["1-documents", "2-document", "3-diff", "4-time-travel", "5-rollback"] {
        ensure!(out.join(format!("{shot}.png")).exists(), "screenshot {shot} missing");
    }

    // The rollback is a change like any other: the reader at us gets it.
    let back =
        tokio::time::timeout(Duration::from_secs(20), reader.wait_for(doc, |d| title(d).as_deref() == Some("v1")))
            .await;
    ensure!(matches!(back, Ok(Ok(()))), "the rollback did not reach us");
    ensure!(reader.read(doc, |d| d.get(ROOT, "tags").ok().flatten().is_none()).await == Some(true));
    Ok(())
}
