//! Placement with real processes on loopback (issue 6): edges report their
//! demand and uplink RTT to a `meridian-hub` process, whose admin API shows
//! the decided home of each document (`GET /placement`) and the measured
//! topology (`GET /topology`). A UDP fault proxy between one edge and the
//! hub imposes a regional latency.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use meridian_edge::client::Client;
use meridian_protocol::automerge::transaction::Transactable;
use meridian_protocol::automerge::{ROOT, ReadDoc};
use meridian_protocol::ids::DocumentId;
use meridian_tests::clients::fast;
use meridian_tests::fault_proxy::{Direction, FaultProxy};
use meridian_tests::process::{EdgeProcess, HubProcess, free_port};
use meridian_tests::regions::{get_text as get, until};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

/// A hub process with edges `eu` and `us` allowed and fast reports.
fn hub(dir: &Path, extra: &[&str]) -> Result<HubProcess> {
    let mut args = vec!["--edge", "eu=eu-secret", "--edge", "us=us-secret"];
    args.extend(["--report-interval-ms", "200", "--placement-interval-ms", "200"]);
    args.extend(extra);
    HubProcess::start(dir, free_port()?, free_port()?, &args)
}

/// An edge process federating with the hub at `hub_addr` as `id`.
fn edge(dir: &Path, hub: &HubProcess, hub_addr: &str, id: &str) -> Result<EdgeProcess> {
    edge_with(dir, hub, hub_addr, id, &[])
}

/// [`edge`] with extra flags.
fn edge_with(dir: &Path, hub: &HubProcess, hub_addr: &str, id: &str, extra: &[&str]) -> Result<EdgeProcess> {
    let ca = hub.ca_path();
    let ca = ca.to_str().context("CA path")?;
    let secret = format!("{id}-secret");
    let peer = format!("edge-{id}");
    let mut args =
        vec!["--hub", hub_addr, "--edge-id", id, "--hub-secret", &secret, "--hub-ca", ca, "--peer-id", &peer];
    args.extend(extra);
    EdgeProcess::start(dir, free_port()?, &args)
}

fn doc_entry<'a>(placement: &'a Value, doc: &DocumentId) -> Option<&'a Value> {
    let id = doc.to_string();
    placement["documents"].as_array()?.iter().find(|d| d["doc"] == id.as_str())
}

/// Writes to `doc` through `client` every 50 ms until `stop` resolves.
async fn keep_writing<T>(client: &Client, doc: DocumentId, stop: impl std::future::Future<Output = T>) -> Result<T> {
    tokio::pin!(stop);
    let mut n = 0i64;
    loop {
        tokio::select! {
            out = &mut stop => return Ok(out),
            _ = tokio::time::sleep(Duration::from_millis(50)) => {
                n += 1;
                client.change(doc, move |tx| tx.put(ROOT, "n", n).map(|_| ())).await?;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_one_edge_make_it_the_home() -> Result<()> {
    let (hub_dir, eu_dir, us_dir) = (tempfile::tempdir()?, tempfile::tempdir()?, tempfile::tempdir()?);
    // Loopback RTTs are a fraction of a millisecond: no absolute threshold.
    let hub = hub(hub_dir.path(), &["--placement-min-gain-ms", "0"])?;
    let hub_addr = format!("127.0.0.1:{}", hub.quic_port);
    let eu = edge(eu_dir.path(), &hub, &hub_addr, "eu")?;
    let _us = edge(us_dir.path(), &hub, &hub_addr, "us")?;
    until(hub.http_port, "/topology", "both edges reporting", |t| {
        t["edges"].as_array().is_some_and(|e| e.len() == 2 && e.iter().all(|e| e["fresh"] == true))
    })
    .await?;

    let client = Client::connect(&eu.ws_url(), fast()).await?;
    let doc = client.create(|tx| tx.put(ROOT, "n", 0).map(|_| ())).await?;
    client.wait_acked(doc).await?;
    let decided = until(hub.http_port, "/placement", "a home on eu", |p| {
        doc_entry(p, &doc).is_some_and(|d| d["home"]["edge"] == "eu")
    });
    let placement = keep_writing(&client, doc, decided).await??;

    let d = doc_entry(&placement, &doc).context("document in /placement")?;
    assert!(d["demand"]["eu"]["writes_per_sec"].as_f64().unwrap_or(0.0) > 0.0, "{d:#}");
    assert!(d["demand"]["eu"]["subscribers"].as_u64().unwrap_or(0) >= 1, "{d:#}");
    assert!(d["demand"].get("us").is_none(), "nobody writes through us: {d:#}");
    // The cost of every candidate is shown, the chosen one cheapest.
    let candidates = d["candidates"].as_array().context("candidates")?;
    let homes: Vec<String> = candidates.iter().map(|c| c["home"].to_string()).collect();
    assert_eq!(homes, vec![r#"{"edge":"eu"}"#, r#""hub""#, r#"{"edge":"us"}"#], "{d:#}");
    assert_eq!(candidates[0]["cost_ms"].as_f64(), Some(0.0));
    assert!(candidates[1]["cost_ms"].as_f64().unwrap_or(0.0) > 0.0);
    let moves = placement["recent_moves"].as_array().context("recent moves")?;
    assert!(moves.iter().any(|m| m["doc"] == doc.to_string().as_str() && m["to"]["edge"] == "eu"));
    assert_eq!(placement["advisory"], true);

    let metrics = get(hub.http_port, "/metrics").await?;
    let value =
        |name: &str| -> f64 { metrics.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok()).unwrap_or(-1.0) };
    assert!(value("meridian_hub_placement_moves_total") >= 1.0, "{metrics}");
    assert!(value("meridian_hub_placement_decisions_total") >= 1.0);
    assert!(value("meridian_hub_placement_docs_tracked") >= 1.0);
    assert_eq!(value("meridian_hub_placement_edges_reporting"), 2.0);
    assert!(metrics.contains("meridian_hub_connections"), "the node metrics are still there");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regional_rtt_shows_in_topology_and_decides_the_home() -> Result<()> {
    let (hub_dir, eu_dir, us_dir) = (tempfile::tempdir()?, tempfile::tempdir()?, tempfile::tempdir()?);
    // Default thresholds (5 ms and 20 %): only a real distance moves a home.
    let hub = hub(hub_dir.path(), &[])?;
    let hub_addr = format!("127.0.0.1:{}", hub.quic_port);
    // eu is 40 ms from the hub each way.
    let proxy = FaultProxy::udp("127.0.0.1:0".parse()?, hub_addr.parse()?).await?;
    proxy.handle().set_delay(Direction::ToUpstream, Duration::from_millis(40));
    proxy.handle().set_delay(Direction::ToClient, Duration::from_millis(40));
    let eu = edge(eu_dir.path(), &hub, &proxy.local_addr().to_string(), "eu")?;
    let _us = edge(us_dir.path(), &hub, &hub_addr, "us")?;

    let rtt = |t: &Value, id: &str, key: &str| -> Option<f64> {
        t["edges"].as_array()?.iter().find(|e| e["id"] == id)?["rtt_ms"][key].as_f64()
    };
    let topology = until(hub.http_port, "/topology", "an 80 ms RTT for eu", |t| {
        rtt(t, "eu", "edge_reported").is_some_and(|r| (75.0..300.0).contains(&r))
            && rtt(t, "eu", "hub_measured").is_some_and(|r| r >= 75.0)
            && rtt(t, "us", "edge_reported").is_some()
    })
    .await?;
    let us_rtt = rtt(&topology, "us", "edge_reported").unwrap_or(f64::MAX);
    assert!(us_rtt < 40.0, "us reaches the hub directly: {us_rtt} ms");
    let matrix = &topology["rtt_matrix_ms"];
    assert!(matrix["hub"]["eu"].as_f64().unwrap_or(0.0) >= 75.0, "{matrix:#}");
    assert_eq!(matrix["eu"]["eu"].as_f64(), Some(0.0));
    // Edges reach each other through the hub: eu ↔ us is at least eu ↔ hub.
    assert!(matrix["eu"]["us"].as_f64().unwrap_or(0.0) >= matrix["eu"]["hub"].as_f64().unwrap_or(f64::MAX));

    // Writes through the distant edge: its home is worth moving there.
    let client = Client::connect(&eu.ws_url(), fast()).await?;
    let doc = client.create(|tx| tx.put(ROOT, "n", 0).map(|_| ())).await?;
    let decided = until(hub.http_port, "/placement", "a home on eu", |p| {
        doc_entry(p, &doc).is_some_and(|d| d["home"]["edge"] == "eu")
    });
    let placement = keep_writing(&client, doc, decided).await??;
    eprintln!("GET /topology: {topology:#}\nGET /placement: {placement:#}");
    let moves = placement["recent_moves"].as_array().context("recent moves")?;
    let m = moves.iter().find(|m| m["doc"] == doc.to_string().as_str()).context("the move")?;
    assert_eq!((&m["from"], &m["reason"]), (&Value::from("hub"), &Value::from("latency")));
    assert!(m["gain_ms"].as_f64().unwrap_or(0.0) >= 75.0, "the gain is eu's RTT to the hub: {m:#}");
    Ok(())
}

/// Client ↔ edge RTT comes from WebSocket ping/pong (in process, to use a
/// short ping interval) and reaches the hub's topology.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_rtt_from_websocket_pings_reaches_the_topology() -> Result<()> {
    use meridian_edge::config::UplinkConfig;
    use meridian_edge::{EdgeConfig, EdgeNode};
    use meridian_hub::{Hub, HubConfig};
    use meridian_node::quic::HubTrust;

    let (hub_dir, edge_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let mut config = HubConfig::new(hub_dir.path()).ephemeral_ports().edge("eu", "s");
    config.report_interval = Duration::from_millis(100);
    let hub = Hub::start(config).await?;
    let uplink = UplinkConfig::new(hub.quic_addr(), "eu", "s", HubTrust::CaFile(hub.ca_path().to_owned()));
    let mut config = EdgeConfig::new(edge_dir.path()).ephemeral_port().uplink(uplink);
    config.ping_interval = Duration::from_millis(100);
    let edge = EdgeNode::start(config).await?;
    let client = Client::connect(&edge.ws_url(), fast()).await?;
    let doc = client.create(|tx| tx.put(ROOT, "n", 0).map(|_| ())).await?;
    let port = hub.http_addr().port();
    let clients_rtt = |t: &Value| t["edges"][0]["rtt_ms"]["clients"].as_f64();
    let seen = until(port, "/topology", "a client RTT", move |t| clients_rtt(t).is_some_and(|r| r > 0.0));
    // The client answers pings while it is reading: keep it busy.
    let topology = keep_writing(&client, doc, seen).await??;
    let rtt = clients_rtt(&topology).unwrap_or(f64::MAX);
    assert!(rtt < 100.0, "a loopback client RTT: {rtt} ms");
    let metrics = get(port, "/metrics").await?;
    assert!(metrics.contains("meridian_hub_placement_reports_total"), "served without --serve-clients too");
    Ok(())
}

/// Moves (issue 6): with `--placement-moves` a decided home is handed off
/// (the new home has caught up with the hub's durable copy) and only then
/// announced to every edge (`GET /homes` on each edge); an edge that writes
/// a document homed elsewhere links to the home directly (edge ↔ edge
/// QUIC, RTT reported to the hub), so its changes reach the home even when
/// its own link to the hub is cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_home_is_announced_after_catching_up_and_edges_sync_with_it_directly() -> Result<()> {
    let (hub_dir, eu_dir, us_dir) = (tempfile::tempdir()?, tempfile::tempdir()?, tempfile::tempdir()?);
    let hub = hub(hub_dir.path(), &["--placement-moves", "--placement-min-gain-ms", "0"])?;
    let hub_addr = format!("127.0.0.1:{}", hub.quic_port);
    let peer = ["--peer-listen", "127.0.0.1:0"];
    let eu = edge_with(eu_dir.path(), &hub, &hub_addr, "eu", &peer)?;
    // us reaches the hub through a proxy the test can cut.
    let proxy = FaultProxy::udp("127.0.0.1:0".parse()?, hub_addr.parse()?).await?;
    let us = edge_with(us_dir.path(), &hub, &proxy.local_addr().to_string(), "us", &peer)?;
    until(hub.http_port, "/topology", "both edges reporting", |t| {
        t["edges"].as_array().is_some_and(|e| e.len() == 2 && e.iter().all(|e| e["fresh"] == true))
    })
    .await?;

    // Written only through eu: decided, caught up, announced.
    let writer = Client::connect(&eu.ws_url(), fast()).await?;
    let doc = writer.create(|tx| tx.put(ROOT, "n", 0).map(|_| ())).await?;
    let announced = until(hub.http_port, "/placement", "home eu announced", |p| {
        doc_entry(p, &doc).is_some_and(|d| d["announced_home"]["edge"] == "eu")
    });
    let placement = keep_writing(&writer, doc, announced).await??;
    assert_eq!(placement["moves_enabled"], true);
    let handoffs = placement["recent_handoffs"].as_array().context("recent_handoffs")?;
    let h = handoffs.iter().find(|h| h["doc"] == doc.to_string().as_str()).context("the hand-off")?;
    assert_eq!((&h["from"], &h["to"]["edge"]), (&Value::from("hub"), &Value::from("eu")), "{h:#}");
    // Both edges were told.
    let home_is_eu = |v: &Value| {
        v["homes"]
            .as_array()
            .is_some_and(|h| h.iter().any(|h| h["doc"] == doc.to_string().as_str() && h["home"] == "eu"))
    };
    until(eu.port, "/homes", "eu told it is the home", home_is_eu).await?;
    until(us.port, "/homes", "us told eu is the home", home_is_eu).await?;

    // A client of us writes: us links to eu directly.
    let other = Client::connect(&us.ws_url(), fast()).await?;
    meridian_tests::clients::find_eventually(&other, doc).await?;
    other.change(doc, |tx| tx.put(ROOT, "from_us", 1).map(|_| ())).await?;
    other.wait_acked(doc).await?;
    until(us.port, "/homes", "a link from us to eu", |v| v["links"]["eu"]["connected"] == true).await?;
    let topology =
        until(hub.http_port, "/topology", "a measured edge-edge RTT", |t| t["edge_edge_measured"] == true).await?;
    let us_edges = topology["edges"].as_array().and_then(|e| e.iter().find(|e| e["id"] == "us")).context("us")?;
    assert!(us_edges["rtt_ms"]["edges"]["eu"].as_f64().is_some_and(|r| r < 50.0), "{topology:#}");

    // us loses the hub; its client's change still reaches the home directly.
    proxy.handle().partition_both();
    other.change(doc, |tx| tx.put(ROOT, "cut_off", 2).map(|_| ())).await?;
    other.wait_acked(doc).await?;
    let seen = writer.wait_for(doc, |d| d.get(ROOT, "cut_off").ok().flatten().is_some());
    tokio::time::timeout(Duration::from_secs(10), seen).await.context("the change reached the home")??;
    // And the home's writes reach us without the hub.
    writer.change(doc, |tx| tx.put(ROOT, "from_home", 3).map(|_| ())).await?;
    let seen = other.wait_for(doc, |d| d.get(ROOT, "from_home").ok().flatten().is_some());
    tokio::time::timeout(Duration::from_secs(10), seen).await.context("the home's change reached us")??;
    // us timed its own changes until the home confirmed them.
    let deadline = Instant::now() + WAIT;
    loop {
        let metrics = get(us.port, "/metrics").await?;
        let count = metrics.lines().find_map(|l| l.strip_prefix("meridian_edge_home_lag_seconds_count "));
        if count.and_then(|c| c.trim().parse::<u64>().ok()).unwrap_or(0) >= 1 {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "no home lag observed at us: {count:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
