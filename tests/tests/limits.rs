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
    // Read while the one refusal is the only one: the retries below may be
    // refused too until the freed place is seen.
    let metrics = edge.metrics().render();
    assert!(metrics.contains("meridian_edge_limits_hit_total{limit=\"connections_per_address\"} 1"), "{metrics}");
    drop(a);
    wait_admitted(&url, "c").await?;
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

/// Slowloris: connections that never finish their request headers are cut
/// off at the header timeout, and past the cap on connections still
/// speaking HTTP a new one is closed at once; both counted. A well-behaved
/// client is served as soon as a place is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off_and_http_connections_are_capped() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir()?;
    let mut config = EdgeConfig::new(dir.path()).ephemeral_port();
    config.max_connections = 4;
    config.header_read_timeout = Duration::from_millis(800);
    let edge = EdgeNode::start(config).await?;
    let addr = edge.local_addr();
    // Four clients send a request line and a header, never the blank line.
    let mut slow = Vec::new();
    for _ in 0..4 {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n").await?;
        slow.push(s);
    }
    let started = Instant::now();
    // A fifth connection is closed at once (end of stream, or a reset).
    let deadline = Instant::now() + Duration::from_secs(5);
    while edge.metrics().limit_hits_of("http_connections") == 0 {
        anyhow::ensure!(Instant::now() < deadline, "a fifth connection was never refused");
        let mut extra = tokio::net::TcpStream::connect(addr).await?;
        let _ = extra.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await;
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(500), extra.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => {}
            Ok(Ok(n)) => anyhow::bail!("served past the cap: {}", String::from_utf8_lossy(&buf[..n])),
            Err(_) => anyhow::bail!("a connection past the cap was left open"),
        }
    }
    // The slow ones are closed at the header timeout.
    for s in &mut slow {
        let mut buf = [0u8; 256];
        let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
        assert!(read.is_ok(), "a connection with unfinished headers stayed open");
    }
    let cut_after = started.elapsed();
    eprintln!("4 slow connections cut after {cut_after:?} (timeout 800 ms)");
    assert!(cut_after >= Duration::from_millis(600), "cut before the timeout: {cut_after:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while edge.metrics().limit_hits_of("header_timeout") < 4 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "header timeouts counted: {}",
            edge.metrics().limit_hits_of("header_timeout")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let health = request(addr.port(), "GET", "/healthz", &[])?;
    assert_eq!(health.status, 200);
    let metrics = edge.metrics().render();
    assert!(metrics.contains("meridian_edge_limits_hit_total{limit=\"header_timeout\"} 4"), "{metrics}");
    Ok(())
}

/// A client over its rate of messages is not read for a while
/// (backpressure): the edge handles about the rate, the client stays
/// connected, nothing is dropped, and another client is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_is_read_at_its_rate_and_others_are_served() -> Result<()> {
    use meridian_protocol::codec::Message;
    use meridian_protocol::ids::{DocumentId, PeerId};
    let dir = tempfile::tempdir()?;
    let mut config = EdgeConfig::new(dir.path()).ephemeral_port();
    config.rates = meridian_node::throttle::Rates { messages_per_second: 20, bytes_per_second: 0 };
    let edge = EdgeNode::start(config).await?;
    let url = edge.ws_url();
    let mut flood = RawPeer::joined(&url, "flood").await?;
    let doc = DocumentId::from_bytes([5; 16]);
    let started = Instant::now();
    for count in 0..100u64 {
        flood
            .send(&Message::Ephemeral {
                sender_id: PeerId::new("flood"),
                target_id: PeerId::new("edge"),
                document_id: doc,
                session_id: "s".into(),
                count,
                data: vec![0xa0],
            })
            .await?;
    }
    // Meanwhile another client joins and is answered.
    let honest = RawPeer::joined(&url, "honest").await;
    assert!(honest.is_ok(), "another client is served during the flood");
    tokio::time::sleep(Duration::from_secs(2).saturating_sub(started.elapsed())).await;
    let handled = edge.metrics().messages_in_of("ephemeral");
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!("{handled} of 100 messages handled in {elapsed:.2} s at 20 a second (burst 20)");
    assert!(handled >= 20, "the burst is handled: {handled}");
    assert!((handled as f64) <= 20.0 + 20.0 * elapsed + 3.0, "read at the rate: {handled} in {elapsed:.2} s");
    assert!(edge.metrics().limit_hits_of("message_rate") >= 1);
    // Still connected: the rest arrive in time.
    let deadline = Instant::now() + Duration::from_secs(20);
    while edge.metrics().messages_in_of("ephemeral") < 100 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "messages were lost: {}",
            edge.metrics().messages_in_of("ephemeral")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(flood);
    Ok(())
}
