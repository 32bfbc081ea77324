//! In-process edges linked to an in-process hub: the edge `id` with the
//! secret `{id}-secret` (what `HubConfig::edge(id, "{id}-secret")` admits),
//! trusting the hub's CA, quick to retry and to tick.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use meridian_edge::config::UplinkConfig;
use meridian_edge::{EdgeConfig, EdgeNode};
use meridian_hub::Hub;
use meridian_node::quic::HubTrust;

/// The uplink of edge `id` to `hub`.
pub fn uplink_to(hub: &Hub, id: &str) -> UplinkConfig {
    let trust = HubTrust::CaFile(hub.ca_path().to_owned());
    let mut uplink = UplinkConfig::new(hub.quic_addr(), id, format!("{id}-secret"), trust);
    uplink.min_backoff = Duration::from_millis(50);
    uplink
}

/// The configuration of edge `id` (peer id `edge-{id}`) on `dir`, linked to `hub`.
pub fn linked_config(hub: &Hub, id: &str, dir: &Path) -> EdgeConfig {
    let mut config = EdgeConfig::new(dir).ephemeral_port().peer_id(format!("edge-{id}")).uplink(uplink_to(hub, id));
    config.tick_interval = Duration::from_millis(100);
    config
}

/// Starts `config` and waits until its uplink is up.
pub async fn start_linked(config: EdgeConfig) -> Result<EdgeNode> {
    let edge = EdgeNode::start(config).await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while edge.metrics().uplink_connected.get() == 0 {
        ensure!(Instant::now() < deadline, "the uplink did not come up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(edge)
}

/// Edge `id` on `dir`, linked to `hub`, its uplink up.
pub async fn linked_edge(hub: &Hub, id: &str, dir: &Path) -> Result<EdgeNode> {
    start_linked(linked_config(hub, id, dir)).await
}
