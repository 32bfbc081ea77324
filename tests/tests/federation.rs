//! Edges federating with a hub over real QUIC (TLS 1.3) on loopback:
//! documents cross edges through the hub, concurrent edits converge, a
//! partitioned edge keeps serving and merges on heal, a wrong credential is
//! refused, and a device client's offline edits reach another edge.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use meridian_edge::client::{Client, ClientOptions};
use meridian_edge::config::UplinkConfig;
use meridian_edge::{EdgeConfig, EdgeNode};
use meridian_hub::{Hub, HubConfig};
use meridian_node::quic::HubTrust;
use meridian_protocol::automerge::transaction::Transactable;
use meridian_protocol::automerge::{Automerge, ROOT, ReadDoc};
use meridian_tests::clients::{fast, find_eventually};
use meridian_tests::fault_proxy::FaultProxy;

const WAIT: Duration = Duration::from_secs(20);

struct Cluster {
    hub: Hub,
    edges: Vec<EdgeNode>,
    _dirs: Vec<tempfile::TempDir>,
}

fn uplink(hub_addr: std::net::SocketAddr, hub: &Hub, id: &str, secret: &str) -> UplinkConfig {
    let mut u = UplinkConfig::new(hub_addr, id, secret, HubTrust::CaFile(hub.ca_path().to_owned()));
    u.min_backoff = Duration::from_millis(50);
    u.max_backoff = Duration::from_millis(500);
    u
}

async fn start_edge(
    hub_addr: std::net::SocketAddr,
    hub: &Hub,
    id: &str,
    secret: &str,
) -> Result<(EdgeNode, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let mut config = EdgeConfig::new(dir.path())
        .ephemeral_port()
        .peer_id(format!("edge-{id}"))
        .uplink(uplink(hub_addr, hub, id, secret));
    config.tick_interval = Duration::from_millis(100);
    Ok((EdgeNode::start(config).await?, dir))
}

async fn wait_uplinks(edges: &[&EdgeNode]) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    while edges.iter().any(|e| e.metrics().uplink_connected.get() == 0) {
        anyhow::ensure!(Instant::now() < deadline, "uplinks did not come up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// A hub with edges `eu` and `us`, each edge reaching the hub directly.
async fn cluster() -> Result<Cluster> {
    let hub_dir = tempfile::tempdir()?;
    let hub = Hub::start(
        HubConfig::new(hub_dir.path())
            .ephemeral_ports()
            .edge("eu", "eu-secret")
            .edge("us", "us-secret")
            .edge("ap", "ap-secret"),
    )
    .await?;
    let (eu, eu_dir) = start_edge(hub.quic_addr(), &hub, "eu", "eu-secret").await?;
    let (us, us_dir) = start_edge(hub.quic_addr(), &hub, "us", "us-secret").await?;
    wait_uplinks(&[&eu, &us]).await?;
    Ok(Cluster { hub, edges: vec![eu, us], _dirs: vec![hub_dir, eu_dir, us_dir] })
}

fn int(d: &Automerge, key: &str) -> Option<i64> {
    d.get(ROOT, key).ok().flatten().and_then(|(v, _)| v.as_i64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn document_created_on_one_edge_opens_on_another() -> Result<()> {
    let c = cluster().await?;
    let a = Client::connect(&c.edges[0].ws_url(), fast()).await?;
    let doc = a.create(|tx| tx.put(ROOT, "n", 7).map(|_| ())).await?;
    a.wait_acked(doc).await?;
    let b = Client::connect(&c.edges[1].ws_url(), fast()).await?;
    find_eventually(&b, doc).await.context("find on the other edge")?;
    assert_eq!(b.read(doc, |d| int(d, "n")).await.flatten(), Some(7));
    // The federation metrics say the hub has it.
    let m = c.edges[0].metrics();
    let deadline = Instant::now() + WAIT;
    while m.docs_synced_upstream.get() < 1 || m.docs_pending_upstream.get() > 0 {
        anyhow::ensure!(Instant::now() < deadline, "metrics never showed the document synced with the hub");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(m.uplink_rtt_seconds.get() > 0.0, "QUIC RTT to the hub is measured");
    Ok(())
}

/// Edges started without --peer-id all join the hub as `meridian-edge`
/// (the README's setup): the hub tells them apart by the id their `hello`
/// authenticated, so neither replaces the other (they used to, tens of
/// times a second) and documents cross between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_with_the_same_peer_id_are_told_apart_by_their_hello() -> Result<()> {
    let hub_dir = tempfile::tempdir()?;
    let hub =
        Hub::start(HubConfig::new(hub_dir.path()).ephemeral_ports().edge("eu", "eu-s").edge("us", "us-s")).await?;
    let mut edges = Vec::new();
    let mut dirs = Vec::new();
    for (id, secret) in [("eu", "eu-s"), ("us", "us-s")] {
        let dir = tempfile::tempdir()?;
        let config = EdgeConfig::new(dir.path()).ephemeral_port().uplink(uplink(hub.quic_addr(), &hub, id, secret));
        assert_eq!(config.peer_id, "meridian-edge", "the default peer id");
        edges.push(EdgeNode::start(config).await?);
        dirs.push(dir);
    }
    wait_uplinks(&[&edges[0], &edges[1]]).await?;
    let a = Client::connect(&edges[0].ws_url(), fast()).await?;
    let doc = a.create(|tx| tx.put(ROOT, "n", 7).map(|_| ())).await?;
    a.wait_acked(doc).await?;
    let b = Client::connect(&edges[1].ws_url(), fast()).await?;
    find_eventually(&b, doc).await.context("find on the other edge")?;
    assert_eq!(b.read(doc, |d| int(d, "n")).await.flatten(), Some(7));
    tokio::time::sleep(Duration::from_secs(1)).await;
    for e in &edges {
        assert_eq!(e.metrics().uplink_connects_total.get(), 1, "the uplink never dropped");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_document_is_unavailable_only_after_the_hub_says_so() -> Result<()> {
    let c = cluster().await?;
    let b = Client::connect(&c.edges[1].ws_url(), fast()).await?;
    let missing = meridian_protocol::ids::DocumentId::from_bytes([42; 16]);
    let r = tokio::time::timeout(WAIT, b.find(missing)).await.context("find must answer")?;
    assert!(matches!(r, Err(meridian_edge::client::ClientError::Unavailable(_))), "got {r:?}");
    let asked = c.hub.metrics().map_or(0, |m| m.messages_in_of("request"));
    assert!(asked >= 1, "the edge asked the hub before answering unavailable");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_edits_through_two_edges_converge() -> Result<()> {
    let c = cluster().await?;
    let a = Client::connect(&c.edges[0].ws_url(), fast()).await?;
    let b = Client::connect(&c.edges[1].ws_url(), fast()).await?;
    let doc = a.create(|tx| tx.put(ROOT, "start", 0).map(|_| ())).await?;
    a.wait_acked(doc).await?;
    find_eventually(&b, doc).await?;
    for i in 0..20i64 {
        a.change(doc, move |tx| tx.put(ROOT, format!("a{i}"), i).map(|_| ())).await?;
        b.change(doc, move |tx| tx.put(ROOT, format!("b{i}"), i).map(|_| ())).await?;
        a.change(doc, move |tx| tx.put(ROOT, "shared", i).map(|_| ())).await?;
        b.change(doc, move |tx| tx.put(ROOT, "shared", 100 + i).map(|_| ())).await?;
    }
    let all = |d: &Automerge| (0..20).all(|i| int(d, &format!("a{i}")).is_some() && int(d, &format!("b{i}")).is_some());
    tokio::time::timeout(WAIT, a.wait_for(doc, all)).await??;
    tokio::time::timeout(WAIT, b.wait_for(doc, all)).await??;
    converged(&a, &b, doc).await
}

/// Both clients reach the same heads (polling the heads each side has).
async fn converged(a: &Client, b: &Client, doc: meridian_protocol::ids::DocumentId) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    loop {
        let ha = a.read(doc, |d| d.get_heads()).await;
        let hb = b.read(doc, |d| d.get_heads()).await;
        if ha.is_some() && ha == hb {
            let va = a.read(doc, |d| int(d, "shared")).await;
            assert_eq!(va, b.read(doc, |d| int(d, "shared")).await, "same heads, same value");
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "no convergence: {ha:?} vs {hb:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_with_a_wrong_secret_is_refused() -> Result<()> {
    let hub_dir = tempfile::tempdir()?;
    let hub = Hub::start(HubConfig::new(hub_dir.path()).ephemeral_ports().edge("eu", "right")).await?;
    let (edge, _dir) = start_edge(hub.quic_addr(), &hub, "eu", "wrong").await?;
    let deadline = Instant::now() + WAIT;
    while edge.metrics().uplink_refusals_total.get() < 2 {
        anyhow::ensure!(Instant::now() < deadline, "the edge never heard it was refused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(edge.metrics().uplink_connected.get(), 0);
    assert_eq!(edge.metrics().uplink_connects_total.get(), 0, "never welcomed");
    // The edge still serves its own clients.
    let c = Client::connect(&edge.ws_url(), fast()).await?;
    let doc = c.create(|tx| tx.put(ROOT, "local", 1).map(|_| ())).await?;
    c.wait_acked(doc).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_edge_keeps_serving_and_merges_on_heal() -> Result<()> {
    let hub_dir = tempfile::tempdir()?;
    let hub = Hub::start(HubConfig::new(hub_dir.path()).ephemeral_ports().edge("eu", "e").edge("us", "u")).await?;
    // eu reaches the hub through a UDP fault proxy.
    let proxy = FaultProxy::udp("127.0.0.1:0".parse()?, hub.quic_addr()).await?;
    let (eu, _d1) = start_edge(proxy.local_addr(), &hub, "eu", "e").await?;
    let (us, _d2) = start_edge(hub.quic_addr(), &hub, "us", "u").await?;
    wait_uplinks(&[&eu, &us]).await?;
    let a = Client::connect(&eu.ws_url(), fast()).await?;
    let b = Client::connect(&us.ws_url(), fast()).await?;
    let doc = a.create(|tx| tx.put(ROOT, "v", 0).map(|_| ())).await?;
    a.wait_acked(doc).await?;
    find_eventually(&b, doc).await?;

    let started = Instant::now();
    proxy.handle().partition_both();
    // Both sides keep editing for several seconds while cut off.
    let mut n = 0i64;
    while started.elapsed() < Duration::from_secs(5) {
        a.change(doc, move |tx| tx.put(ROOT, format!("eu{n}"), n).map(|_| ())).await?;
        b.change(doc, move |tx| tx.put(ROOT, format!("us{n}"), n).map(|_| ())).await?;
        a.wait_acked(doc).await?; // the partitioned edge still accepts writes
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxy.handle().heal();
    let healed = Instant::now();
    let total = n;
    let all = move |d: &Automerge| {
        (0..total).all(|i| int(d, &format!("eu{i}")).is_some() && int(d, &format!("us{i}")).is_some())
    };
    tokio::time::timeout(Duration::from_secs(60), a.wait_for(doc, all.clone()))
        .await
        .context("eu side after heal")??;
    tokio::time::timeout(Duration::from_secs(60), b.wait_for(doc, all)).await.context("us side after heal")??;
    converged(&a, &b, doc).await?;
    eprintln!("partition: {total} writes per side over 5 s; converged {:?} after heal", healed.elapsed());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_edits_offline_then_reach_a_client_on_another_edge() -> Result<()> {
    let c = cluster().await?;
    let device_dir = tempfile::tempdir()?;
    // The device's edge is not up yet: it works from its local SQLite replica.
    let port = meridian_tests::process::free_port()?;
    let options = ClientOptions { store_path: Some(device_dir.path().join("device.sqlite3")), ..fast() };
    let device = Client::connect(&format!("ws://127.0.0.1:{port}/sync"), options).await?;
    let doc = device.create(|tx| tx.put(ROOT, "offline", 1).map(|_| ())).await?;
    for i in 0..10i64 {
        device.change(doc, move |tx| tx.put(ROOT, format!("k{i}"), i).map(|_| ())).await?;
    }
    // Its edge comes up (federated with the hub); the device reconnects.
    let dir = tempfile::tempdir()?;
    let mut config = EdgeConfig::new(dir.path()).listen(format!("127.0.0.1:{port}").parse()?).uplink(uplink(
        c.hub.quic_addr(),
        &c.hub,
        "ap",
        "ap-secret",
    ));
    config.tick_interval = Duration::from_millis(100);
    let _device_edge = EdgeNode::start(config).await?;
    tokio::time::timeout(WAIT, device.wait_acked(doc)).await.context("device never synced")??;
    // A browser-protocol client on the other edge sees every offline edit.
    let reader = Client::connect(&c.edges[1].ws_url(), fast()).await?;
    find_eventually(&reader, doc).await?;
    let all = |d: &Automerge| int(d, "offline") == Some(1) && (0..10).all(|i| int(d, &format!("k{i}")) == Some(i));
    tokio::time::timeout(WAIT, reader.wait_for(doc, all)).await??;
    Ok(())
}

/// Guessing an edge's secret is slow: past a few refused `hello`s a minute
/// from one address, connections from it are closed at once (counted),
/// even with the right secret, until the minute is over. A connection that
/// opens no stream in time is closed (counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_edge_authentications_are_limited_per_address_and_silent_connections_closed() -> Result<()> {
    let hub_dir = tempfile::tempdir()?;
    let mut config = HubConfig::new(hub_dir.path()).ephemeral_ports().edge("eu", "right").edge("us", "u");
    config.max_auth_failures_per_minute = 3;
    config.hello_timeout = Duration::from_millis(300);
    let hub = Hub::start(config).await?;
    let metrics = hub.metrics().context("hub metrics")?.clone();
    // A connection that opens no stream is closed at the hello timeout.
    let trust = HubTrust::CaFile(hub.ca_path().to_owned());
    let endpoint = meridian_node::quic::client_endpoint(hub.quic_addr(), &trust, meridian_node::quic::FEDERATION_ALPN)?;
    let silent = endpoint.connect(hub.quic_addr(), "localhost")?.await?;
    let opened = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), silent.closed()).await.context("a silent connection stayed open")?;
    eprintln!("a connection that opened no stream was closed after {:?} (timeout 300 ms)", opened.elapsed());
    assert_eq!(metrics.limit_hits_of("handshake_timeout"), 1);
    assert_eq!(metrics.limit_hits_of("edge_auth_failures"), 0, "a timeout is not a failed authentication");
    let (guesser, _dir) = start_edge(hub.quic_addr(), &hub, "eu", "wrong").await?;
    let deadline = Instant::now() + WAIT;
    while metrics.limit_hits_of("edge_auth_failures") == 0 {
        anyhow::ensure!(Instant::now() < deadline, "repeated wrong secrets were never limited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refusals = guesser.metrics().uplink_refusals_total.get();
    assert_eq!(refusals, 3, "three hellos were judged, the later attempts were not");
    drop(guesser);
    // The right secret from the same address waits out the minute too.
    let (us, _dir2) = start_edge(hub.quic_addr(), &hub, "us", "u").await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(us.metrics().uplink_connected.get(), 0, "blocked for the rest of the minute");
    Ok(())
}
