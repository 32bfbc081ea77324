//! A hub keeping its documents in PostgreSQL (issue 16, `--store
//! postgres://…`): a document written through one hub is served by the
//! next hub started on the same database (with a data folder of its own),
//! and it is in PostgreSQL itself (checked directly).

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
use meridian_tests::edges::linked_edge;
use meridian_tests::pg::Postgres;

const WAIT: Duration = Duration::from_secs(20);

async fn hub_on(url: &str, dir: &std::path::Path, edge: &str) -> Result<Hub> {
    let mut config = HubConfig::new(dir).ephemeral_ports().edge(edge, &format!("{edge}-secret"));
    config.store = Some(url.to_owned());
    Ok(Hub::start(config).await?)
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
    let eu = linked_edge(&first, "eu", dirs[1].path()).await?;
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
    let us = linked_edge(&second, "us", dirs[3].path()).await?;
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
    let eu = linked_edge(&hub1, "eu", dirs[2].path()).await?;
    let us = linked_edge(&hub2, "us", dirs[3].path()).await?;

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

/// A token signed with `key`, valid for ten minutes.
fn token_of(key: &meridian_node::auth::SigningKey, sub: &str, jti: &str, admin: bool) -> String {
    key.mint(&meridian_node::auth::Claims {
        sub: sub.into(),
        jti: jti.into(),
        iat: Some(meridian_node::auth::unix_now() - 5),
        exp: meridian_node::auth::unix_now() + 600,
        read: vec!["*".into()],
        admin,
        ..Default::default()
    })
}

/// An edge of `hub` with its own key (auth on).
async fn edge_with_auth(hub: &Hub, id: &str, dir: &std::path::Path, own: &std::path::Path) -> Result<EdgeNode> {
    let uplink =
        UplinkConfig::new(hub.quic_addr(), id, &format!("{id}-secret"), HubTrust::CaFile(hub.ca_path().into()));
    let mut config = EdgeConfig::new(dir).ephemeral_port().peer_id(format!("edge-{id}")).uplink(uplink);
    config.auth_public_keys = vec![own.to_owned()];
    Ok(EdgeNode::start(config).await?)
}

/// Waits until a client with `token` joins at `edge` (or, `accepted`
/// false, is refused there).
async fn until_token(edge: &EdgeNode, token: &str, accepted: bool, what: &str) -> Result<Duration> {
    let (start, url) = (Instant::now(), format!("{}?token={token}", edge.ws_url()));
    loop {
        let joined = meridian_tests::raw::RawPeer::joined(&url, "peer-x").await.is_ok();
        if joined == accepted {
            return Ok(start.elapsed());
        }
        anyhow::ensure!(start.elapsed() < WAIT, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The tier's signing keys and revocations are kept in the store: a key
/// added through one hub is accepted at the other hub's edges, one removed
/// is refused there, and so is a token revoked through the other hub; a
/// hub's own `--auth-public-key` stays its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_keys_and_revocations_are_shared_through_the_store() -> Result<()> {
    let pg = tokio::task::spawn_blocking(Postgres::start).await??;
    let url = pg.url();
    let dirs: Vec<tempfile::TempDir> = (0..5).map(|_| tempfile::tempdir()).collect::<Result<_, _>>()?;
    let keys = dirs[4].path();
    let (a, b) = (meridian_node::auth::keygen(&keys.join("a"))?, meridian_node::auth::keygen(&keys.join("b"))?);
    meridian_node::auth::keygen(&keys.join("edge"))?;
    let edge_key = keys.join("edge/auth-public.pem");
    // h1 is started with key A; h2 with none of its own.
    let mut c1 = HubConfig::new(dirs[0].path()).ephemeral_ports().edge("eu", "eu-secret");
    c1.store = Some(url.clone());
    c1.auth_public_keys = vec![keys.join("a/auth-public.pem")];
    let h1 = Hub::start(c1).await?;
    let h2 = hub_on(&url, dirs[1].path(), "us").await?;
    let eu = edge_with_auth(&h1, "eu", dirs[2].path(), &edge_key).await?;
    let us = edge_with_auth(&h2, "us", dirs[3].path(), &edge_key).await?;
    let by_a = token_of(&a, "alice", "t-a", false);
    until_token(&eu, &by_a, true, "h1's own key at its edge").await?;
    until_token(&us, &by_a, false, "h1's own key is not the tier's").await?;

    // B added for the tier through h1 (an admin token of its key A).
    let admin = token_of(&a, "ops", "t-ops", true);
    let h1_http = h1.http_addr().to_string();
    let pem = std::fs::read_to_string(keys.join("b/auth-public.pem"))?;
    let body = serde_json::json!({ "pem": pem }).to_string();
    let (status, answer) =
        meridian_node::http::request(&h1_http, "POST", "/api/auth/keys", Some(&admin), Some(&body)).await?;
    assert_eq!(status, 200, "{answer}");
    let b_id: String = serde_json::from_str::<serde_json::Value>(&answer)?["added"].as_str().unwrap_or("").into();
    let by_b = token_of(&b, "bob", "t-b", false);
    let took = until_token(&us, &by_b, true, "a key added through h1 at h2's edge").await?;
    println!("a key added through h1 accepted at h2's edge after {took:?}");
    until_token(&eu, &by_b, true, "a key added through h1 at its own edge").await?;
    let h2_http = h2.http_addr().to_string();
    let (status, list) = meridian_node::http::request(&h2_http, "GET", "/api/auth/keys", None, None).await?;
    assert_eq!(status, 200);
    assert!(list.contains(&b_id), "{list}");

    // A token revoked through h2 (a loopback operator: h2 runs without keys
    // of its own) is refused at h1's edge.
    let revoke = r#"{"jti": "t-b"}"#;
    let (status, _) = meridian_node::http::request(&h2_http, "POST", "/api/auth/revoke", None, Some(revoke)).await?;
    assert_eq!(status, 200);
    let took = until_token(&eu, &by_b, false, "a token revoked through h2 at h1's edge").await?;
    println!("a token revoked through h2 refused at h1's edge after {took:?}");

    // h2 runs its operator routes in open dev mode: it may not change the
    // tier's keys. B removed through h1: refused at both edges.
    let by_b2 = token_of(&b, "bob", "t-b2", false);
    until_token(&us, &by_b2, true, "another token of B").await?;
    let path = format!("/api/auth/keys/{b_id}");
    let (status, answer) = meridian_node::http::request(&h2_http, "DELETE", &path, None, None).await?;
    assert_eq!(status, 403, "{answer}");
    let (status, answer) = meridian_node::http::request(&h1_http, "DELETE", &path, Some(&admin), None).await?;
    assert_eq!(status, 200, "{answer}");
    until_token(&us, &by_b2, false, "a removed key at h2's edge").await?;
    until_token(&eu, &by_b2, false, "a removed key at h1's edge").await?;
    until_token(&eu, &by_a, true, "h1's own key stays").await?;
    let (status, _) = meridian_node::http::request(&h1_http, "DELETE", &path, Some(&admin), None).await?;
    assert_eq!(status, 404, "removed already");
    eu.shutdown().await;
    us.shutdown().await;
    h1.shutdown().await;
    h2.shutdown().await;
    Ok(())
}
