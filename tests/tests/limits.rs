//! Limits one client cannot push past (issue 15), against a real edge:
//! connections in all and per client address, over WebSocket and QUIC
//! together (a place comes back when a connection closes; `/healthz`
//! answers throughout), each refusal a 503 (a `refused` frame on QUIC)
//! with the limit's name, counted in `/metrics`.

use std::time::{Duration, Instant};

use anyhow::Result;
use meridian_edge::{EdgeConfig, EdgeNode};
use meridian_tests::http::request;
use meridian_tests::raw::RawPeer;

async fn edge(total: usize, per_address: usize) -> Result<(EdgeNode, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let mut config = EdgeConfig::new(dir.path()).ephemeral_port();
    config.max_connections = total;
    config.max_connections_per_address = per_address;
    Ok((EdgeNode::start(config).await?, dir))
}

/// A refused upgrade: the status and body the client got.
async fn refused(url: &str) -> Result<(u16, String)> {
    match tokio_tungstenite::connect_async(url).await {
        Ok(_) => anyhow::bail!("the connection was accepted"),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            let body = r.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default().into_owned();
            Ok((r.status().as_u16(), body))
        }
        Err(e) => anyhow::bail!("unexpected error: {e}"),
    }
}

async fn wait_admitted(url: &str, peer: &str) -> Result<RawPeer> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match RawPeer::joined(url, peer).await {
            Ok(p) => return Ok(p),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_address_are_capped_and_places_come_back() -> Result<()> {
    let (edge, _dir) = edge(0, 2).await?;
    let url = edge.ws_url();
    let a = RawPeer::joined(&url, "a").await?;
    let _b = RawPeer::joined(&url, "b").await?;
    let (status, body) = refused(&url).await?;
    assert_eq!(status, 503);
    assert!(body.contains("connections_per_address"), "{body}");
    assert_eq!(edge.metrics().limit_hits_of("connections_per_address"), 1);
    let health = request(edge.local_addr().port(), "GET", "/healthz", &[])?;
    assert_eq!(health.status, 200, "health answers while the cap is reached");
    drop(a);
    wait_admitted(&url, "c").await?;
    let metrics = edge.metrics().render();
    assert!(metrics.contains("meridian_edge_limits_hit_total{limit=\"connections_per_address\"} 1"), "{metrics}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_in_all_are_capped() -> Result<()> {
    let (edge, _dir) = edge(1, 0).await?;
    let url = edge.ws_url();
    let _only = RawPeer::joined(&url, "only").await?;
    let (status, body) = refused(&url).await?;
    assert_eq!(status, 503);
    assert!(body.contains("limit: connections"), "{body}");
    assert_eq!(edge.metrics().limit_hits_of("connections"), 1);
    Ok(())
}

/// Devices over QUIC count under the same caps as WebSockets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_devices_count_under_the_same_caps() -> Result<()> {
    use meridian_edge::client::{Client, ClientOptions};
    use meridian_node::quic::HubTrust;
    let dir = tempfile::tempdir()?;
    let mut config = EdgeConfig::new(dir.path()).ephemeral_port().quic_listen("127.0.0.1:0".parse()?);
    config.max_connections = 1;
    let edge = EdgeNode::start(config).await?;
    let _ws = RawPeer::joined(&edge.ws_url(), "ws").await?;
    let options = ClientOptions {
        quic_trust: Some(HubTrust::CaFile(dir.path().join("tls/ca.pem"))),
        min_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        ..Default::default()
    };
    let device = Client::connect(&edge.quic_url().expect("quic listener"), options).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while edge.metrics().limit_hits_of("connections") == 0 {
        anyhow::ensure!(Instant::now() < deadline, "the device was never refused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(device);
    Ok(())
}
