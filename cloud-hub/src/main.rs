//! `meridian-hub`: parses the command line, installs logging, runs the hub.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use meridian_hub::{EdgeAuth, Hub, HubConfig};

/// Meridian cloud hub: the QUIC endpoint edges federate with, and the
/// durable store of every document.
#[derive(Parser, Debug)]
#[command(name = "meridian-hub", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Accept edges over QUIC and keep the durable copy of every document.
    Serve(ServeArgs),
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// UDP address of the QUIC federation endpoint.
    #[arg(long, env = "MERIDIAN_HUB_LISTEN", default_value = "127.0.0.1:7400")]
    listen: SocketAddr,
    /// TCP address for /healthz and /metrics.
    #[arg(long, env = "MERIDIAN_HUB_HTTP", default_value = "127.0.0.1:7401")]
    http: SocketAddr,
    /// Folder for the SQLite store and the dev TLS certificates (created if missing).
    #[arg(long, env = "MERIDIAN_HUB_DATA", default_value = "./meridian-hub-data")]
    data: PathBuf,
    /// Peer id of the hub on the wire.
    #[arg(long, env = "MERIDIAN_HUB_ID", default_value = "meridian-hub")]
    hub_id: String,
    /// An edge allowed to connect, as ID=SECRET (repeatable; env: comma-separated).
    /// Without any, the hub runs in open dev mode (loopback only) and says so.
    #[arg(long = "edge", env = "MERIDIAN_HUB_EDGES", value_delimiter = ',')]
    edges: Vec<String>,
    /// Extra DNS names or IPs for the dev certificate created on first start.
    #[arg(long = "cert-name", env = "MERIDIAN_HUB_CERT_NAMES", value_delimiter = ',')]
    cert_names: Vec<String>,
    /// Seconds without activity after which a document leaves memory.
    #[arg(long, env = "MERIDIAN_IDLE_EVICT_SECS", default_value_t = 60)]
    idle_evict_secs: u64,
    /// fsync every commit (survives power loss; slower).
    #[arg(long, env = "MERIDIAN_FSYNC", default_value_t = false)]
    fsync: bool,
    /// Also accept automerge-repo WebSocket clients at /sync on the HTTP port
    /// (inspection tools and tests; clients normally connect to edges).
    #[arg(long, env = "MERIDIAN_HUB_SERVE_CLIENTS", default_value_t = false)]
    serve_clients: bool,
}

fn parse_edges(edges: &[String]) -> anyhow::Result<EdgeAuth> {
    if edges.is_empty() {
        return Ok(EdgeAuth::DevOpen);
    }
    let mut map = BTreeMap::new();
    for e in edges {
        let Some((id, secret)) = e.split_once('=') else { bail!("--edge expects ID=SECRET, got `{e}`") };
        if id.is_empty() || secret.is_empty() {
            bail!("--edge expects a non-empty ID and SECRET, got `{e}`");
        }
        map.insert(id.to_owned(), secret.to_owned());
    }
    Ok(EdgeAuth::Secrets(map))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let Command::Serve(args) = Cli::parse().command;
    let mut config = HubConfig::new(args.data);
    config.listen = args.listen;
    config.http = args.http;
    config.hub_id = args.hub_id;
    config.auth = parse_edges(&args.edges)?;
    config.cert_names.extend(args.cert_names);
    config.idle_evict_after = Duration::from_secs(args.idle_evict_secs);
    config.fsync = args.fsync;
    config.serve_clients = args.serve_clients;
    let open = matches!(config.auth, EdgeAuth::DevOpen);
    let hub = Hub::start(config).await.context("starting the hub")?;
    println!("meridian-hub listening: QUIC {} (ALPN meridian-fed/1), HTTP http://{}", hub.quic_addr(), hub.http_addr());
    println!("  edges trust it with --hub-ca {} or --hub-fingerprint {}", hub.ca_path().display(), hub.fingerprint());
    if open {
        println!("  WARNING: open dev mode — any edge id is accepted without a secret (use --edge ID=SECRET)");
    }
    meridian_edge::runtime::shutdown_signal().await;
    tracing::info!("signal received, shutting down");
    hub.shutdown().await;
    Ok(())
}
