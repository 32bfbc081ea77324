//! What the hub tells its edges about access (issue 15): revocations
//! (`meridian-hub auth revoke` stores one at the hub, which tells every
//! edge; edges close live connections holding the token within moments and
//! refuse it from then on; measured: the time from the command to the
//! client's close) and its public keys (a key added at the hub reaches the
//! edges).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use meridian_edge::config::UplinkConfig;
use meridian_edge::{EdgeConfig, EdgeNode};
use meridian_hub::{Hub, HubConfig};
use meridian_node::auth::{self, Claims, SigningKey, TokenError};
use meridian_node::quic::HubTrust;
use meridian_protocol::codec::Message;
use meridian_protocol::engine::ErrorKind;
use meridian_tests::process::workspace_binary;
use meridian_tests::raw::{RawPeer, Received};

fn token(key: &SigningKey, sub: &str, jti: &str, issued: u64) -> String {
    key.mint(&Claims {
        sub: sub.into(),
        jti: jti.into(),
        iat: Some(issued),
        exp: auth::unix_now() + 600,
        read: vec!["*".into()],
        ..Default::default()
    })
}

/// `meridian-hub auth revoke …` against the running hub; how long it took.
fn revoke(hub: &Hub, args: &[&str]) -> Result<Duration> {
    let started = Instant::now();
    let out = Command::new(workspace_binary("meridian-hub")?)
        .args(["auth", "revoke", "--hub-http", &hub.http_addr().to_string()])
        .args(args)
        .output()?;
    anyhow::ensure!(out.status.success(), "revoke failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(started.elapsed())
}

/// Waits for the `error` and the close a revoked connection gets; the
/// time from `since`.
async fn closed_as_revoked(peer: &mut RawPeer, since: Instant) -> Result<Duration> {
    loop {
        match peer.recv_within(Duration::from_secs(10)).await? {
            Received::Message(Message::Error { message, .. }) => {
                anyhow::ensure!(message == "token revoked", "unexpected error: {message}");
                let at = since.elapsed();
                anyhow::ensure!(matches!(peer.recv().await?, Received::Closed(_)), "closed after the error");
                return Ok(at);
            }
            Received::Message(_) => continue,
            Received::Closed(reason) => bail!("closed without the error ({reason:?})"),
        }
    }
}

/// A hub with `hub_keys` and an edge with `edge_keys` (auth on), linked.
async fn hub_and_edge(
    dir: &std::path::Path,
    hub_keys: Vec<PathBuf>,
    edge_keys: Vec<PathBuf>,
) -> Result<(Hub, EdgeNode)> {
    let mut hub_config = HubConfig::new(dir.join("hub")).ephemeral_ports().edge("eu", "s");
    hub_config.auth_public_keys = hub_keys;
    let hub = Hub::start(hub_config).await?;
    let mut uplink = UplinkConfig::new(hub.quic_addr(), "eu", "s", HubTrust::CaFile(hub.ca_path().to_owned()));
    uplink.min_backoff = Duration::from_millis(50);
    let mut config = EdgeConfig::new(dir.join("edge")).ephemeral_port().uplink(uplink);
    config.auth_public_keys = edge_keys;
    let edge = EdgeNode::start(config).await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while edge.metrics().uplink_connected.get() == 0 {
        anyhow::ensure!(Instant::now() < deadline, "the uplink never came up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((hub, edge))
}

/// The edge knows key A; the hub has A and a new key B. Once linked, the
/// edge accepts tokens signed with B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_added_at_the_hub_reaches_its_edges() -> Result<()> {
    let dir = tempfile::tempdir()?;
    auth::keygen(&dir.path().join("a"))?;
    let b = auth::keygen(&dir.path().join("b"))?;
    let (a_pub, b_pub) = (dir.path().join("a/auth-public.pem"), dir.path().join("b/auth-public.pem"));
    let (_hub, edge) = hub_and_edge(dir.path(), vec![a_pub.clone(), b_pub], vec![a_pub]).await?;
    let signed_by_b = token(&b, "carol", "t-carol", auth::unix_now());
    let url = format!("{}?token={signed_by_b}", edge.ws_url());
    let deadline = Instant::now() + Duration::from_secs(10);
    while RawPeer::joined(&url, "peer-carol").await.is_err() {
        anyhow::ensure!(Instant::now() < deadline, "a token signed with the hub's new key is never accepted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_closed_at_every_edge_and_refused_after() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let key = auth::keygen(&dir.path().join("keys"))?;
    let public = dir.path().join("keys/auth-public.pem");
    let (hub, edge) = hub_and_edge(dir.path(), vec![], vec![public]).await?;
    let url = |t: &str| format!("{}?token={t}", edge.ws_url());
    let issued = auth::unix_now() - 5;
    let alice = token(&key, "alice", "t-alice", issued);
    let bob = token(&key, "bob", "t-bob", issued);
    let mut alice_peer = RawPeer::joined(&url(&alice), "peer-alice").await?;
    let mut bob_peer = RawPeer::joined(&url(&bob), "peer-bob").await?;

    // One token, by id.
    let sent = Instant::now();
    let command = revoke(&hub, &["--jti", "t-alice"])?;
    let closed = closed_as_revoked(&mut alice_peer, sent).await?;
    eprintln!("revocation by jti: command {command:?}, to the client's close {closed:?}");
    assert!(
        bob_peer.recv_within(Duration::from_millis(300)).await.is_err(),
        "bob's connection is untouched (nothing arrives)"
    );
    let refused = RawPeer::connect(&url(&alice), "peer-alice").await;
    assert!(refused.is_err(), "the revoked token is refused from now on");
    assert_eq!(edge.metrics().auth_refused_of(TokenError::Revoked), 1);
    assert_eq!(edge.metrics().errors_of(ErrorKind::TokenRevoked), 1);

    // Every token of a subject issued until now; a later one holds.
    let sent = Instant::now();
    revoke(&hub, &["--sub", "bob"])?;
    let closed = closed_as_revoked(&mut bob_peer, sent).await?;
    eprintln!("revocation by sub: to the client's close {closed:?}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fresh = token(&key, "bob", "t-bob-2", auth::unix_now());
    RawPeer::joined(&url(&fresh), "peer-bob").await.context("a token minted after the revocation holds")?;

    // The hub keeps them in its store (across restarts, and for every hub on a shared one).
    let mut store = meridian_node::store::SqliteStore::open(&dir.path().join("hub/hub.sqlite3"))?;
    let stored = meridian_node::store::ControlStore::revocations(&mut store)?;
    let who: Vec<(Option<&str>, Option<&str>)> = stored.iter().map(|r| (r.jti.as_deref(), r.sub.as_deref())).collect();
    assert_eq!(who, vec![(Some("t-alice"), None), (None, Some("bob"))], "{stored:?}");
    // An empty request is refused with the reason.
    let out = Command::new(workspace_binary("meridian-hub")?)
        .args(["auth", "revoke", "--hub-http", &hub.http_addr().to_string(), "--jti", ""])
        .output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("give `jti`"), "{}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// An edge keeps what its hub revoked: restarted while the hub is down, it
/// still refuses the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_restarted_without_its_hub_still_refuses_revoked_tokens() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let key = auth::keygen(&dir.path().join("keys"))?;
    let public = dir.path().join("keys/auth-public.pem");
    let (hub, edge) = hub_and_edge(dir.path(), vec![], vec![public.clone()]).await?;
    let alice = token(&key, "alice", "t-alice", auth::unix_now() - 5);
    let mut peer = RawPeer::joined(&format!("{}?token={alice}", edge.ws_url()), "peer-alice").await?;
    let sent = Instant::now();
    revoke(&hub, &["--jti", "t-alice"])?;
    closed_as_revoked(&mut peer, sent).await?;
    hub.shutdown().await;
    edge.shutdown().await;
    assert!(std::fs::read_to_string(dir.path().join("edge/revocations.json"))?.contains("t-alice"));

    let mut config = EdgeConfig::new(dir.path().join("edge")).ephemeral_port();
    config.auth_public_keys = vec![public];
    let edge = EdgeNode::start(config).await?;
    let refused = RawPeer::connect(&format!("{}?token={alice}", edge.ws_url()), "peer-alice").await;
    assert!(refused.is_err(), "the revoked token is refused after a restart without the hub");
    assert_eq!(edge.metrics().auth_refused_of(TokenError::Revoked), 1);
    Ok(())
}

/// The hub's list of keys is the whole list: a key it no longer accepts
/// (rotated out, hub restarted without it) is dropped by its edges when
/// they reconnect; the edge's own keys stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_the_hub_drops_is_dropped_by_its_edges() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let a = auth::keygen(&dir.path().join("a"))?;
    let b = auth::keygen(&dir.path().join("b"))?;
    let (a_pub, b_pub) = (dir.path().join("a/auth-public.pem"), dir.path().join("b/auth-public.pem"));
    let (hub, edge) = hub_and_edge(dir.path(), vec![a_pub.clone(), b_pub], vec![a_pub.clone()]).await?;
    let url = |t: &str| format!("{}?token={t}", edge.ws_url());
    let deadline = Instant::now() + Duration::from_secs(10);
    while RawPeer::joined(&url(&token(&b, "carol", "t-b1", auth::unix_now())), "peer-carol").await.is_err() {
        anyhow::ensure!(Instant::now() < deadline, "the hub's key B never reached the edge");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The hub comes back (same address) with key A only.
    let quic = hub.quic_addr();
    hub.shutdown().await;
    let mut config = HubConfig::new(dir.path().join("hub")).ephemeral_ports().edge("eu", "s");
    config.listen = quic;
    config.auth_public_keys = vec![a_pub];
    // The old endpoint's socket goes once its connections are drained.
    let deadline = Instant::now() + Duration::from_secs(10);
    let _hub = loop {
        match Hub::start(config.clone()).await {
            Ok(hub) => break hub,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "the hub's address is not free yet");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while RawPeer::joined(&url(&token(&b, "carol", "t-b2", auth::unix_now())), "peer-carol").await.is_ok() {
        anyhow::ensure!(Instant::now() < deadline, "key B is still accepted after the hub dropped it");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    RawPeer::joined(&url(&token(&a, "dave", "t-a", auth::unix_now())), "peer-dave").await.context("key A holds")?;
    Ok(())
}
