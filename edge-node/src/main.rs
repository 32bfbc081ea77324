//! `meridian-edge`: parses the command line, installs logging, runs the edge.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use meridian_edge::config::UplinkConfig;
use meridian_edge::{EdgeConfig, EdgeNode};
use meridian_node::DEFAULT_MAX_MESSAGE_BYTES;
use meridian_node::quic::HubTrust;
use meridian_node::telemetry;

mod cli_client;

/// Meridian edge node: an automerge-repo compatible sync server with a
/// local SQLite store.
#[derive(Parser, Debug)]
#[command(name = "meridian-edge", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once at start; boxing buys nothing
enum Command {
    /// Serve automerge-repo clients over WebSocket (at /sync and /) and devices over QUIC.
    Serve(ServeArgs),
    /// Device-script client: create, change, print and watch documents on an edge.
    Client(ClientArgs),
    /// Access tokens: `auth keygen --out DIR`, `auth token --key FILE ...`.
    Auth(meridian_node::auth::cli::AuthArgs),
    /// Configuration files: `config example` prints a commented example of
    /// `serve --config FILE.toml` with every key and its default.
    Config(meridian_node::config_file::ConfigArgs),
    /// Check every stored chunk for corruption now (as the background scrub
    /// does slowly); corrupt ones are moved to the store's quarantine table.
    /// Exit status 0: all sound; 1: corrupt chunks found (quarantined: a
    /// running edge heals their documents from the hub or peers when they
    /// load); 2: the store could not be read. Safe while the edge runs.
    Scrub(ScrubArgs),
}

#[derive(clap::Args, Debug)]
struct ScrubArgs {
    /// The edge's data folder (its --data).
    #[arg(long, env = "MERIDIAN_DATA", default_value = "./meridian-data")]
    data: PathBuf,
}

/// `meridian-edge scrub`: the whole store, then a report; `true` if sound.
fn scrub(args: &ScrubArgs) -> anyhow::Result<bool> {
    use meridian_node::store::DocStore;
    let path = EdgeConfig::new(&args.data).database_path();
    anyhow::ensure!(path.exists(), "no edge store at {} (is --data the edge's data folder?)", path.display());
    let mut store =
        meridian_node::store::SqliteStore::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let started = std::time::Instant::now();
    let (mut after, mut chunks, mut bytes, mut corrupt) = (0, 0u64, 0u64, Vec::new());
    loop {
        let step = store.scrub(after, 64 << 20)?.context("this store cannot be scrubbed")?;
        chunks += step.chunks;
        bytes += step.bytes;
        corrupt.extend(step.corrupt);
        match step.next {
            Some(next) => after = next,
            None => break,
        }
    }
    for (doc, seq, why) in &corrupt {
        println!("corrupt: document {doc}, chunk {seq}: {why} (moved to the quarantine table)");
    }
    println!(
        "scrubbed {}: {chunks} chunks, {:.1} MiB in {:.2} s: {} corrupt",
        path.display(),
        bytes as f64 / (1 << 20) as f64,
        started.elapsed().as_secs_f64(),
        corrupt.len()
    );
    Ok(corrupt.is_empty())
}

#[derive(clap::Args, Debug)]
struct ClientArgs {
    /// Edge to sync with: ws://HOST:PORT/sync or quic://HOST:PORT.
    #[arg(long, global = true, env = "MERIDIAN_URL", default_value = "ws://127.0.0.1:7300/sync")]
    url: String,
    /// Local SQLite replica: edits work offline and sync on the next run.
    #[arg(long, global = true, env = "MERIDIAN_CLIENT_STORE")]
    store: Option<PathBuf>,
    /// CA certificate of the edge (for quic:// URLs; the edge's <data>/tls/ca.pem).
    #[arg(long, global = true, env = "MERIDIAN_EDGE_CA")]
    edge_ca: Option<PathBuf>,
    /// Seconds to wait for the edge: to reach it and get a document, and to
    /// acknowledge a change. Past it a read fails ("cannot reach …") and a
    /// write says it is kept locally. 0: writes do not wait for the
    /// acknowledgement (reads still wait up to 10 s).
    #[arg(long, global = true, env = "MERIDIAN_WAIT_SECS", default_value_t = 10)]
    wait_secs: u64,
    /// Access token for an edge with auth on (`meridian-edge auth token`).
    #[arg(long, global = true, env = "MERIDIAN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    op: ClientOp,
}

#[derive(Subcommand, Debug)]
enum ClientOp {
    /// Create a document from JSON and print its automerge: URL.
    Create {
        #[arg(default_value = "{}")]
        json: String,
    },
    /// Set the value at a dotted path (e.g. meta.title) to JSON.
    Set {
        #[arg(value_name = "AUTOMERGE_URL")]
        doc: String,
        path: String,
        json: String,
    },
    /// Append text at a dotted path (creating the text if missing).
    Append {
        #[arg(value_name = "AUTOMERGE_URL")]
        doc: String,
        path: String,
        text: String,
    },
    /// Print the document as JSON.
    Print {
        #[arg(value_name = "AUTOMERGE_URL")]
        doc: String,
    },
    /// List the document's changes (hash, time, author, message), newest last.
    History {
        #[arg(value_name = "AUTOMERGE_URL")]
        doc: String,
        /// Show only the last N changes (0: all).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// One JSON object per change instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print the document as it was at earlier heads (change hashes from `history`).
    Show {
        #[arg(value_name = "AUTOMERGE_URL")]
        doc: String,
        /// Change hashes (comma-separated; unique prefixes of 6+ hex digits work).
        #[arg(long, value_name = "HASH[,HASH]")]
        at: String,
    },
    /// Restore the document to its state at earlier heads, as a new change
    /// that syncs to everyone (undo it by rolling back to the heads before).
    Rollback {
        #[arg(value_name = "AUTOMERGE_URL")]
        doc: String,
        /// Change hashes to go back to (comma-separated; unique prefixes of 6+ hex digits work).
        #[arg(long, value_name = "HASH[,HASH]")]
        to: String,
    },
    /// Save the document, with its whole history, to an .automerge file
    /// (an existing file, or a link, is left alone unless --force).
    Export {
        #[arg(value_name = "AUTOMERGE_URL")]
        doc: String,
        file: PathBuf,
        /// Replace FILE if it exists (a symbolic link is replaced, not written through).
        #[arg(long)]
        force: bool,
    },
    /// Create a new document from an .automerge file and print its URL.
    Import { file: PathBuf },
    /// Print the document as JSON every time it changes, until Ctrl-C.
    Watch {
        #[arg(value_name = "AUTOMERGE_URL")]
        doc: String,
    },
}

/// `config example`: generated from `serve`'s flags.
fn config_example() -> String {
    meridian_node::config_file::example_of::<Cli>("serve")
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Read settings from this TOML file: every flag below is a key (e.g.
    /// `max-connections = 500`); a flag or its environment variable wins over
    /// the file. `meridian-edge config example` prints one with every key.
    #[arg(long, env = "MERIDIAN_CONFIG", value_name = "FILE.toml")]
    config: Option<PathBuf>,
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
    /// Seconds a client may take to send `join` after connecting; then it
    /// gets an `error` and is closed (0: no limit).
    #[arg(long, env = "MERIDIAN_JOIN_TIMEOUT_SECS", default_value_t = 10)]
    join_timeout_secs: u64,
    /// Do not fsync commits. By default every acknowledged change has been
    /// fsynced: it survives power loss and an OS crash. With this flag it
    /// survives a crash of the process only (kill -9), and may be lost when
    /// the device loses power. For throwaway data and tests.
    #[arg(long, env = "MERIDIAN_UNSAFE_NO_FSYNC", default_value_t = false)]
    unsafe_no_fsync: bool,
    /// fsync every commit: the default (kept for scripts that pass it).
    #[arg(long, hide = true, conflicts_with = "unsafe_no_fsync")]
    fsync: bool,
    /// UDP address of the QUIC listener for device clients (ALPN meridian/1)
    /// [default: the --listen address and port, on UDP]; "off" disables it.
    #[arg(long, env = "MERIDIAN_QUIC_LISTEN", value_name = "HOST:PORT|off")]
    quic_listen: Option<String>,
    /// QUIC address of the hub to federate with (e.g. 127.0.0.1:7400).
    /// Several, comma-separated, for hubs sharing one store (`meridian-hub
    /// serve --store postgres://…`): one is in use, the next is tried when
    /// it fails; they must present certificates --hub-ca trusts (put their
    /// CA certificates in one file). Without it the edge runs alone.
    #[arg(long, env = "MERIDIAN_HUB", value_delimiter = ',')]
    hub: Vec<SocketAddr>,
    /// This edge's id at the hub.
    #[arg(long, env = "MERIDIAN_EDGE_ID", default_value = "edge")]
    edge_id: String,
    /// Export traces over OTLP/HTTP (protobuf) to this collector: its base
    /// URL, e.g. http://127.0.0.1:4318 (spans go to /v1/traces). Spans: each
    /// connection, document message, storage write and message to another
    /// node; a change's way across edges and hubs is one trace. Off unless set.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// This edge's secret at the hub (the hub's --edge ID=SECRET); needed
    /// with --hub (a hub in open dev mode takes any: pass any word).
    #[arg(long, env = "MERIDIAN_HUB_SECRET", hide_env_values = true)]
    hub_secret: Option<String>,
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
    /// UDP address where other edges link to this one when the hub makes it a
    /// document's home (QUIC, ALPN meridian-peer/1; they present the peer
    /// secret the hub gives its edges). "off": never dialled; documents homed
    /// here then reach it through the hub. Needs --hub.
    #[arg(long, env = "MERIDIAN_PEER_LISTEN", default_value = "off")]
    peer_listen: String,
    /// Address of the peer listener to tell the hub (default: the bound address).
    #[arg(long, env = "MERIDIAN_PEER_ADVERTISE")]
    peer_advertise: Option<String>,
    /// Dial home edge ID at ADDR instead of the address the hub announced, as
    /// ID=ADDR (repeatable; env: comma-separated). For NAT or latency proxies.
    #[arg(long = "peer-route", env = "MERIDIAN_PEER_ROUTES", value_delimiter = ',')]
    peer_routes: Vec<String>,
    /// A fixed secret for the operator routes (the admin API /api/docs/{doc},
    /// /history, /rollback, /export, and /homes) as `Authorization: Bearer
    /// TOKEN`. With --auth-public-key they also take access tokens with the
    /// admin right; in open dev mode without it, loopback requests only.
    #[arg(long, env = "MERIDIAN_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Serve the operator routes (admin API, /homes) on this TCP address
    /// only, instead of beside /sync on --listen (e.g. a private interface).
    #[arg(long, env = "MERIDIAN_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
    /// Public key (PEM, from `meridian-edge auth keygen`) that clients' tokens
    /// must be signed with; repeat it (env: comma-separated) to accept several
    /// during a key rotation. Without it the edge runs in open dev mode: every
    /// client may read and write everything, on loopback addresses only.
    #[arg(long = "auth-public-key", env = "MERIDIAN_AUTH_PUBLIC_KEY", value_delimiter = ',', value_name = "FILE")]
    auth_public_keys: Vec<PathBuf>,
    /// Open WebSocket connections at most (0: no cap); past it an upgrade gets
    /// 503 and is counted in meridian_edge_limits_hit_total. Keep it under the
    /// process's open-file limit (ulimit -n).
    #[arg(long, env = "MERIDIAN_MAX_CONNECTIONS", default_value_t = 10_000)]
    max_connections: usize,
    /// Open WebSocket connections from one client address at most (0: no cap).
    #[arg(long, env = "MERIDIAN_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 256)]
    max_connections_per_address: usize,
    /// Messages one client connection may send per second (one second of
    /// burst); past it the edge stops reading that connection until it may
    /// go on, so the client's socket backs up (0: no limit).
    #[arg(long, env = "MERIDIAN_MAX_MESSAGES_PER_SECOND", default_value_t = meridian_node::throttle::DEFAULT_MESSAGES_PER_SECOND)]
    max_messages_per_second: u32,
    /// Bytes one client connection may send per second, the same way (0: no limit).
    #[arg(long, env = "MERIDIAN_MAX_BYTES_PER_SECOND", default_value_t = meridian_node::throttle::DEFAULT_BYTES_PER_SECOND)]
    max_bytes_per_second: u64,
    /// Operations one client message may hold (counted before anything is
    /// loaded); past it the message is refused with an error and the
    /// connection closed (0: no limit).
    #[arg(long, env = "MERIDIAN_MAX_MESSAGE_OPS", default_value_t = 2_000_000)]
    max_message_ops: u64,
    /// Operations per byte of a client message beyond its first 100,000 (a
    /// 1.2 KB saved document can expand to a million operations); past it
    /// the message is refused the same way (0: no limit).
    #[arg(long, env = "MERIDIAN_MAX_OPS_PER_BYTE", default_value_t = 64)]
    max_ops_per_byte: u64,
    /// Operations a client's changes may take a document to (0: no limit).
    #[arg(long, env = "MERIDIAN_MAX_DOCUMENT_OPS", default_value_t = 10_000_000)]
    max_document_ops: u64,
    /// Apply a document's incoming changes on a thread of their own when the
    /// document and the changes hold more operations than this, so one large
    /// document never stalls the others (automerge applies a change to a long
    /// text in time that grows with the text); 0: always on the main loop.
    #[arg(long, env = "MERIDIAN_APPLY_OFF_LOOP_OPS", default_value_t = meridian_node::runtime::APPLY_OFF_LOOP_OPS)]
    apply_off_loop_ops: u64,
    /// Certificate chain (PEM, leaf first) to serve https:// and wss:// on
    /// --listen (and --admin-listen), for browsers reaching the edge directly.
    #[arg(long, env = "MERIDIAN_TLS_CERT", requires = "tls_key", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "MERIDIAN_TLS_KEY", requires = "tls_cert", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Seconds a client may take to send its request headers, and the longest
    /// idle time of a kept-alive HTTP connection (slowloris); then the
    /// connection is closed. Connections still speaking HTTP are capped at
    /// --max-connections too.
    #[arg(long, env = "MERIDIAN_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    header_timeout_secs: u64,
    /// A client's requests for documents nobody has (answered doc-unavailable)
    /// per minute; past it, its requests for documents not in memory are
    /// answered doc-unavailable at once, with no storage read and no lookup
    /// at the hub, and it is told once (0: no limit).
    #[arg(long, env = "MERIDIAN_MAX_UNKNOWN_REQUESTS_PER_MINUTE", default_value_t = 120)]
    max_unknown_requests_per_minute: u32,
    /// Documents one token subject (`sub`) may create per minute; past it its
    /// changes creating documents are refused and it is told once (0: no limit;
    /// clients in open dev mode are not limited).
    #[arg(long, env = "MERIDIAN_MAX_CREATES_PER_MINUTE", default_value_t = 120)]
    max_creates_per_minute: u32,
    /// Memory budget: at most this many documents in memory; past it the least
    /// recently used leave before their idle time is up (0: no limit).
    #[arg(long, env = "MERIDIAN_MEMORY_BUDGET_DOCS", default_value_t = 0)]
    memory_budget_docs: usize,
    /// Disk budget in MB of document data (0: no limit; needs --hub). Past it,
    /// the least recently written documents that the hub holds in full and no
    /// client here uses are dropped locally (the hub's copy is the cloud copy);
    /// opening one again fetches it from the hub or its home edge.
    #[arg(long, env = "MERIDIAN_DISK_BUDGET_MB", default_value_t = 0.0)]
    disk_budget_mb: f64,
    /// Engine threads: documents are spread over this many sync engines, each
    /// on its own core (default: the number of cores here). 1 runs every
    /// document on one engine.
    #[arg(long, env = "MERIDIAN_ENGINE_THREADS", value_parser = clap::value_parser!(u16).range(1..=256))]
    engine_threads: Option<u16>,
    /// Bytes of stored chunks checked per second in the background for
    /// corruption (a flipped bit on disk); a corrupt chunk is quarantined
    /// and its document healed (0: off; every chunk is also checked when it
    /// loads). `meridian-edge scrub` checks the whole store at once.
    #[arg(long, env = "MERIDIAN_SCRUB_BYTES_PER_SEC", default_value_t = meridian_node::runtime::DEFAULT_SCRUB_BYTES_PER_SEC)]
    scrub_bytes_per_sec: u64,
    /// Seconds a replica (the hub's, a peer edge's or a client's copy of a
    /// document) may stay apart from this edge's — what either had not
    /// reaching the other — before it is divergent: logged, counted and
    /// resynced from scratch (up to 3 times in a row); 0: not checked.
    #[arg(long, env = "MERIDIAN_DIVERGENCE_AFTER_SECS", default_value_t = 30)]
    divergence_after_secs: u64,
}

impl ServeArgs {
    fn uplink(&self) -> anyhow::Result<Option<UplinkConfig>> {
        let Some((&hub, fallbacks)) = self.hub.split_first() else { return Ok(None) };
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
        let secret = self.hub_secret.clone().filter(|s| !s.is_empty()).context(
            "--hub needs --hub-secret: this edge's secret at the hub (the hub's --edge ID=SECRET; \
             a hub in open dev mode takes any)",
        )?;
        let mut u = UplinkConfig::new(hub, self.edge_id.clone(), secret, trust);
        u.hubs.extend(fallbacks);
        u.server_name = self.hub_name.clone();
        u.max_frame_bytes = self.max_message_bytes;
        Ok(Some(u))
    }
}

/// jemalloc, whose background thread gives memory freed after a flood of
/// documents (evicted since) back to the system; glibc's malloc keeps it.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() {
    let cli =
        meridian_node::config_file::parse::<Cli>(std::env::args_os().collect(), "serve").unwrap_or_else(|e| e.exit());
    if let Err(error) = run(cli).await {
        meridian_node::startup::exit_with("meridian-edge", &error);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    // Device scripts read stdout; keep their logs quiet unless asked.
    let default_filter = if matches!(cli.command, Command::Serve(_)) { "info" } else { "warn" };
    let (otlp, instance) = match &cli.command {
        Command::Serve(args) => (args.otlp_endpoint.as_deref(), args.edge_id.clone()),
        _ => (None, String::new()),
    };
    let _telemetry = telemetry::init(default_filter, otlp, &telemetry::Service { name: "meridian-edge", instance })?;
    let args = match cli.command {
        Command::Serve(args) => args,
        Command::Client(args) => return cli_client::run(args).await,
        Command::Config(meridian_node::config_file::ConfigArgs {
            op: meridian_node::config_file::ConfigOp::Example,
        }) => {
            print!("{}", config_example());
            return Ok(());
        }
        Command::Scrub(args) => match scrub(&args) {
            Ok(true) => return Ok(()),
            Ok(false) => std::process::exit(1),
            Err(error) => {
                eprintln!("meridian-edge scrub: {error:#}");
                std::process::exit(2);
            }
        },
        Command::Auth(args) => {
            println!("{}", meridian_node::auth::cli::run(args)?);
            return Ok(());
        }
    };
    let uplink = args.uplink()?;
    let mut config = EdgeConfig::new(args.data)
        .listen(args.listen)
        .peer_id(args.peer_id)
        .max_message_bytes(args.max_message_bytes)
        .idle_evict_after(Duration::from_secs(args.idle_evict_secs));
    config.fsync = !args.unsafe_no_fsync;
    config.join_timeout = Duration::from_secs(args.join_timeout_secs);
    config.uplink = uplink;
    config.quic_listen = match args.quic_listen.as_deref() {
        None => Some(args.listen),
        Some("off") => None,
        Some(addr) => Some(addr.parse().context("--quic-listen expects HOST:PORT or off")?),
    };
    if args.peer_listen != "off" {
        config.peer_listen = Some(args.peer_listen.parse().context("--peer-listen expects HOST:PORT or off")?);
    }
    config.peer_advertise = args.peer_advertise;
    config.memory_budget_docs = args.memory_budget_docs;
    config.admin_token = args.admin_token.filter(|t| !t.is_empty());
    config.admin_listen = args.admin_listen;
    config.auth_public_keys = args.auth_public_keys;
    config.max_connections = args.max_connections;
    config.max_connections_per_address = args.max_connections_per_address;
    config.header_read_timeout = Duration::from_secs(args.header_timeout_secs.max(1));
    config.unknown_requests_per_minute = args.max_unknown_requests_per_minute;
    config.tls = args.tls_cert.zip(args.tls_key);
    config.max_message_ops = args.max_message_ops;
    config.max_ops_per_byte = args.max_ops_per_byte;
    config.max_document_ops = args.max_document_ops;
    config.apply_off_loop_ops = args.apply_off_loop_ops;
    config.rates = meridian_node::throttle::Rates {
        messages_per_second: args.max_messages_per_second,
        bytes_per_second: args.max_bytes_per_second,
    };
    config.creates_per_minute = args.max_creates_per_minute;
    anyhow::ensure!(args.disk_budget_mb >= 0.0, "--disk-budget-mb must not be negative");
    config.disk_budget_bytes = (args.disk_budget_mb * 1e6) as u64;
    if let Some(n) = args.engine_threads {
        config.engine_threads = n.into();
    }
    config.scrub_bytes_per_sec = args.scrub_bytes_per_sec;
    config.divergence_after = Duration::from_secs(args.divergence_after_secs);
    for r in &args.peer_routes {
        let (id, addr) = r.split_once('=').context("--peer-route expects ID=ADDR")?;
        config.peer_routes.insert(id.to_owned(), addr.parse().context("--peer-route expects ID=HOST:PORT")?);
    }
    let node = EdgeNode::start(config).await.context("starting the edge")?;
    println!("meridian-edge listening on {} (WebSocket: {})", node.local_addr(), node.ws_url());
    if let Some(q) = node.quic_url() {
        println!("  devices over QUIC: {q} (trust <data>/tls/ca.pem)");
    }
    meridian_node::shutdown::shutdown_signal().await;
    tracing::info!("signal received, shutting down");
    node.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(args: &[&str]) -> Result<ServeArgs, clap::Error> {
        let all = ["node", "serve"].iter().chain(args).copied();
        match Cli::try_parse_from(all)?.command {
            Command::Serve(a) => Ok(a),
            _ => unreachable!("serve parses as serve"),
        }
    }

    /// `serve ARGS` with `--config` set to a file holding `toml`.
    fn serve_with(toml: &str, args: &[&str]) -> Result<ServeArgs, clap::Error> {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("edge.toml");
        std::fs::write(&file, toml).expect("write the config");
        let argv = ["meridian-edge", "serve", "--config", file.to_str().expect("utf-8 path")]
            .iter()
            .chain(args)
            .map(std::ffi::OsString::from)
            .collect();
        match meridian_node::config_file::parse::<Cli>(argv, "serve")?.command {
            Command::Serve(a) => Ok(a),
            _ => unreachable!("serve parses as serve"),
        }
    }

    #[test]
    fn a_config_file_sets_flags_and_a_flag_wins_over_it() {
        let file = r#"
            listen = "127.0.0.1:9999"
            max-connections = 5
            unsafe_no_fsync = true
            hub = ["127.0.0.1:1", "127.0.0.1:2"]
            disk-budget-mb = 1.5
        "#;
        let a = serve_with(file, &["--listen", "127.0.0.1:8888"]).unwrap();
        assert_eq!(a.listen.port(), 8888, "the flag wins over the file");
        assert_eq!(a.max_connections, 5);
        assert!(a.unsafe_no_fsync);
        assert_eq!(a.hub.len(), 2);
        assert_eq!(a.disk_budget_mb, 1.5);
        let a = serve_with(file, &[]).unwrap();
        assert_eq!(a.listen.port(), 9999, "the file wins over the default");
        let a = serve_with("", &[]).unwrap();
        assert_eq!(a.max_connections, 10_000, "the default without the key");
    }

    #[test]
    fn unknown_keys_and_bad_values_in_a_config_file_are_errors() {
        let e = serve_with("max-conections = 5", &[]).unwrap_err().to_string();
        assert!(e.contains("unknown key `max-conections`"), "{e}");
        let e = serve_with("max-connections = \"many\"", &[]).unwrap_err().to_string();
        assert!(e.contains("many") && e.contains("--max-connections"), "{e}");
        let e = serve_with("unsafe-no-fsync = \"yes\"", &[]).unwrap_err().to_string();
        assert!(e.contains("switch"), "{e}");
        let e = serve_with("listen = [", &[]).unwrap_err().to_string();
        assert!(e.contains("not valid TOML"), "{e}");
    }

    #[test]
    fn the_example_config_names_every_flag_and_uncommented_gives_the_defaults() {
        let example = config_example();
        let mut uncommented = String::new();
        for line in example.lines() {
            let Some(setting) = line.strip_prefix("# ") else { continue };
            let Some((key, _)) = setting.split_once(" = ") else { continue };
            if !key.contains(' ') && !setting.contains(meridian_node::config_file::NOT_SET) {
                uncommented.push_str(setting);
                uncommented.push('\n');
            }
        }
        for flag in ["listen", "quic-listen", "max-connections", "hub", "auth-public-key", "engine-threads"] {
            assert!(example.contains(&format!("\n# {flag} = ")), "{flag} missing from:\n{example}");
        }
        let from_file = format!("{:?}", ServeArgs { config: None, ..serve_with(&uncommented, &[]).unwrap() });
        let defaults = format!("{:?}", serve(&[]).unwrap());
        assert_eq!(from_file, defaults, "the example, uncommented:\n{uncommented}");
    }

    #[test]
    fn commits_are_fsynced_unless_the_risk_is_named() {
        assert!(!serve(&[]).unwrap().unsafe_no_fsync, "fsync by default");
        assert!(serve(&["--unsafe-no-fsync"]).unwrap().unsafe_no_fsync);
        assert!(!serve(&["--fsync"]).unwrap().unsafe_no_fsync, "--fsync is still accepted");
        assert!(serve(&["--fsync", "--unsafe-no-fsync"]).is_err(), "both: refused");
        let help = Cli::try_parse_from(["node", "serve", "--help"]).unwrap_err().to_string();
        assert!(help.contains("--unsafe-no-fsync") && help.contains("power loss"), "{help}");
    }
}
