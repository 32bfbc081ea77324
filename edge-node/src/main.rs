//! `meridian-edge`: parses the command line, installs logging, runs the edge.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use meridian_edge::config::DEFAULT_MAX_MESSAGE_BYTES;
use meridian_edge::quic::HubTrust;
use meridian_edge::uplink::UplinkConfig;
use meridian_edge::{EdgeConfig, EdgeNode};

/// Meridian edge node: an automerge-repo compatible sync server with a
/// local SQLite store.
#[derive(Parser, Debug)]
#[command(name = "meridian-edge", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve automerge-repo clients over WebSocket (at /sync and /).
    Serve(ServeArgs),
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Address for WebSocket and HTTP (/sync, /healthz, /metrics).
    #[arg(long, env = "MERIDIAN_LISTEN", default_value = "127.0.0.1:7300")]
    listen: SocketAddr,
    /// Folder for the SQLite store (created if missing).
    #[arg(long, env = "MERIDIAN_DATA", default_value = "./meridian-data")]
    data: PathBuf,
    /// Peer id announced to clients.
    #[arg(long, env = "MERIDIAN_PEER_ID", default_value = "meridian-edge")]
    peer_id: String,
    /// Largest accepted WebSocket message in bytes; larger ones get an error and a close.
    #[arg(long, env = "MERIDIAN_MAX_MESSAGE_BYTES", default_value_t = DEFAULT_MAX_MESSAGE_BYTES)]
    max_message_bytes: usize,
    /// Seconds without activity after which a document leaves memory.
    #[arg(long, env = "MERIDIAN_IDLE_EVICT_SECS", default_value_t = 60)]
    idle_evict_secs: u64,
    /// fsync every commit (survives power loss; slower). Without it commits survive process crashes.
    #[arg(long, env = "MERIDIAN_FSYNC", default_value_t = false)]
    fsync: bool,
    /// QUIC address of the hub to federate with (e.g. 127.0.0.1:7400). Without it the edge runs alone.
    #[arg(long, env = "MERIDIAN_HUB")]
    hub: Option<SocketAddr>,
    /// This edge's id at the hub.
    #[arg(long, env = "MERIDIAN_EDGE_ID", default_value = "edge")]
    edge_id: String,
    /// This edge's secret at the hub (the hub's --edge ID=SECRET).
    #[arg(long, env = "MERIDIAN_HUB_SECRET", default_value = "")]
    hub_secret: String,
    /// CA certificate to trust for the hub (the hub prints its path, e.g. <hub data>/tls/ca.pem).
    #[arg(long, env = "MERIDIAN_HUB_CA")]
    hub_ca: Option<PathBuf>,
    /// Trust exactly the hub certificate with this SHA-256 fingerprint (hex; the hub prints it).
    #[arg(long, env = "MERIDIAN_HUB_FINGERPRINT", conflicts_with = "hub_ca")]
    hub_fingerprint: Option<String>,
    /// Name the hub certificate must carry.
    #[arg(long, env = "MERIDIAN_HUB_NAME", default_value = "localhost")]
    hub_name: String,
    /// DANGEROUS: accept any hub certificate (anyone on the path can impersonate the hub).
    #[arg(long, env = "MERIDIAN_DANGEROUS_SKIP_HUB_VERIFY", default_value_t = false)]
    dangerous_skip_hub_verify: bool,
}

impl ServeArgs {
    fn uplink(&self) -> anyhow::Result<Option<UplinkConfig>> {
        let Some(hub) = self.hub else { return Ok(None) };
        let trust = match (&self.hub_ca, &self.hub_fingerprint, self.dangerous_skip_hub_verify) {
            (Some(ca), _, _) => HubTrust::CaFile(ca.clone()),
            (None, Some(fp), _) => HubTrust::Fingerprint(fp.clone()),
            (None, None, true) => {
                tracing::warn!("--dangerous-skip-hub-verify: the hub's certificate is NOT checked");
                HubTrust::DangerousSkipVerify
            }
            (None, None, false) => anyhow::bail!(
                "--hub needs a way to trust the hub: --hub-ca <hub data>/tls/ca.pem or --hub-fingerprint <sha256>"
            ),
        };
        let mut u = UplinkConfig::new(hub, self.edge_id.clone(), self.hub_secret.clone(), trust);
        u.server_name = self.hub_name.clone();
        u.max_frame_bytes = self.max_message_bytes;
        Ok(Some(u))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let Command::Serve(args) = Cli::parse().command;
    let uplink = args.uplink()?;
    let mut config = EdgeConfig::new(args.data)
        .listen(args.listen)
        .peer_id(args.peer_id)
        .max_message_bytes(args.max_message_bytes)
        .idle_evict_after(Duration::from_secs(args.idle_evict_secs));
    config.fsync = args.fsync;
    config.uplink = uplink;
    let node = EdgeNode::start(config).await.context("starting the edge")?;
    println!("meridian-edge listening on {} (WebSocket: {})", node.local_addr(), node.ws_url());
    shutdown_signal().await;
    tracing::info!("signal received, shutting down");
    node.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
