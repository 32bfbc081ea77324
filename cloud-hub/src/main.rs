//! `meridian-hub`: parses the command line, installs logging, runs the hub.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use meridian_hub::{EdgeAuth, Hub, HubConfig};
use meridian_node::telemetry;

/// Meridian cloud hub: the QUIC endpoint edges federate with, and the
/// durable store of every document.
#[derive(Parser, Debug)]
#[command(name = "meridian-hub", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start: the size of the `serve` variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Accept edges over QUIC and keep the durable copy of every document.
    Serve(ServeArgs),
    /// Access tokens: `auth keygen --out DIR`, `auth token --key FILE ...`,
    /// `auth revoke --jti ID | --sub NAME`, `auth keys list|add FILE|remove ID`.
    Auth(HubAuthArgs),
    /// Pin a document's home to an edge or the hub (`placement pin DOC --to
    /// EDGE`), or remove the pin (`placement unpin DOC`), on a running hub.
    Placement(PlacementArgs),
    /// Configuration files: `config example` prints a commented example of
    /// `serve --config FILE.toml` with every key and its default.
    Config(meridian_node::config_file::ConfigArgs),
    /// Print the change feed: every change committed to the shared store
    /// (hubs with --store postgres://, --bus and --feed), as JSON lines, from the
    /// NATS JetStream stream MERIDIAN_CHANGES; at least once, in causal order
    /// per document.
    Feed(FeedArgs),
}

#[derive(clap::Args, Debug)]
struct FeedArgs {
    /// The NATS servers the hubs use as their bus.
    #[arg(long, env = "MERIDIAN_HUB_BUS", value_delimiter = ',', value_name = "nats://HOST:PORT", required = true)]
    bus: Vec<String>,
    /// Only this document's changes (an id or automerge: URL).
    #[arg(long)]
    doc: Option<String>,
    /// Start at this stream sequence (each line gives its `stream_seq`:
    /// resume after the last one printed). Default: the oldest kept.
    #[arg(long, value_name = "SEQ")]
    from: Option<u64>,
    /// Add each change's patches (computed from the changes printed before:
    /// `null` for a change whose dependencies were not read, e.g. after --from).
    #[arg(long)]
    patches: bool,
    /// Exit once caught up instead of waiting for new changes.
    #[arg(long)]
    no_follow: bool,
}

#[derive(clap::Args, Debug)]
struct PlacementArgs {
    #[command(subcommand)]
    op: PlacementOp,
    /// The hub's operator address (its --admin-listen, else its --http).
    #[arg(long, global = true, env = "MERIDIAN_HUB_HTTP", default_value = "127.0.0.1:7401")]
    hub_http: String,
    /// An admin token (or the hub's --admin-token), needed when the hub runs
    /// with --auth-public-key or --admin-token; otherwise loopback suffices.
    #[arg(long, global = true, env = "MERIDIAN_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
}

#[derive(clap::Subcommand, Debug)]
enum PlacementOp {
    /// Keep DOC's home on EDGE (or on the hub: `--to hub`), whatever the
    /// latencies say, while EDGE is connected; kept in the hub's store and
    /// honoured by whichever hub places documents (needs --placement-moves
    /// on the hubs to move it; otherwise it is shown at /placement only).
    Pin {
        /// A document id or automerge: URL.
        doc: String,
        /// An edge id (its --edge-id), or `hub`.
        #[arg(long)]
        to: String,
    },
    /// Remove DOC's pin: it is placed by latency again.
    Unpin {
        /// A document id or automerge: URL.
        doc: String,
    },
}

/// `PUT` or `DELETE /api/placement/pins/{doc}` on the running hub; its answer.
async fn placement(args: PlacementArgs) -> anyhow::Result<String> {
    let (method, doc, body) = match &args.op {
        PlacementOp::Pin { doc, to } => ("PUT", doc, Some(serde_json::json!({ "to": to }).to_string())),
        PlacementOp::Unpin { doc } => ("DELETE", doc, None),
    };
    let Some(doc) = meridian_node::auth::parse_doc(doc) else {
        bail!("`{doc}` is neither a document id nor an automerge: URL");
    };
    let path = format!("/api/placement/pins/{doc}");
    let hub_http = &args.hub_http;
    let (status, answer) =
        meridian_node::http::request(hub_http, method, &path, args.admin_token.as_deref(), body.as_deref())
            .await
            .with_context(|| format!("connecting to the hub at {hub_http} (its --admin-listen or --http address)"))?;
    anyhow::ensure!(status == 200, "the hub answered {status}: {}", answer.trim());
    Ok(answer.trim().to_owned())
}

#[derive(clap::Args, Debug)]
struct HubAuthArgs {
    #[command(subcommand)]
    op: HubAuthOp,
}

#[derive(clap::Subcommand, Debug)]
enum HubAuthOp {
    #[command(flatten)]
    Common(meridian_node::auth::cli::AuthOp),
    /// Revoke one token (--jti) or every token of a subject issued until now
    /// (--sub; tokens minted later hold). The running hub stores it and tells
    /// every edge, which refuse the token and close live connections holding it.
    Revoke {
        /// The hub's operator address (its --admin-listen, else its --http).
        #[arg(long, env = "MERIDIAN_HUB_HTTP", default_value = "127.0.0.1:7401")]
        hub_http: String,
        /// The token's id (its `jti` claim).
        #[arg(long, required_unless_present = "sub")]
        jti: Option<String>,
        /// The subject (`sub` claim) whose tokens are revoked.
        #[arg(long)]
        sub: Option<String>,
        /// An admin token (or the hub's --admin-token), needed when the hub runs
        /// with --auth-public-key or --admin-token; otherwise loopback suffices.
        #[arg(long, env = "MERIDIAN_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
    },
    /// The tier's token-signing public keys, kept in the hub's store and
    /// followed by every hub on it: `auth keys list`, `auth keys add FILE`,
    /// `auth keys remove ID`.
    Keys {
        #[command(subcommand)]
        op: KeysOp,
        /// The hub's operator address (its --admin-listen, else its --http).
        #[arg(long, global = true, env = "MERIDIAN_HUB_HTTP", default_value = "127.0.0.1:7401")]
        hub_http: String,
        /// An admin token (or the hub's --admin-token), needed when the hub runs
        /// with --auth-public-key or --admin-token; otherwise loopback suffices.
        #[arg(long, global = true, env = "MERIDIAN_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
    },
}

#[derive(clap::Subcommand, Debug)]
enum KeysOp {
    /// List the tier's keys (in the hub's store).
    List,
    /// Accept tokens signed with this key (a PEM public key from `auth
    /// keygen`) on every hub of the store and their edges.
    Add {
        /// The public key file (auth-public.pem).
        file: std::path::PathBuf,
    },
    /// Stop accepting a key (its id, from `list`) on every hub not started
    /// with it (--auth-public-key) and their edges.
    Remove {
        /// The key's id.
        id: String,
    },
}

/// The key routes of the running hub; their answer.
async fn keys(hub_http: &str, op: KeysOp, admin: Option<String>) -> anyhow::Result<String> {
    let (method, path, body) = match op {
        KeysOp::List => ("GET", "/api/auth/keys".to_owned(), None),
        KeysOp::Add { file } => {
            let pem = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            ("POST", "/api/auth/keys".to_owned(), Some(serde_json::json!({ "pem": pem }).to_string()))
        }
        KeysOp::Remove { id } => {
            anyhow::ensure!(
                !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                "`{id}` is not a key id (see `auth keys list`)"
            );
            ("DELETE", format!("/api/auth/keys/{id}"), None)
        }
    };
    let (status, answer) = meridian_node::http::request(hub_http, method, &path, admin.as_deref(), body.as_deref())
        .await
        .with_context(|| format!("connecting to the hub at {hub_http} (its --admin-listen or --http address)"))?;
    anyhow::ensure!(status == 200, "the hub answered {status}: {}", answer.trim());
    Ok(answer.trim().to_owned())
}

/// `POST /api/auth/revoke` on the running hub; its answer.
async fn revoke(
    hub_http: &str,
    jti: Option<String>,
    sub: Option<String>,
    admin: Option<String>,
) -> anyhow::Result<String> {
    let body = serde_json::json!({ "jti": jti, "sub": sub }).to_string();
    let (status, body) =
        meridian_node::http::request(hub_http, "POST", "/api/auth/revoke", admin.as_deref(), Some(&body))
            .await
            .with_context(|| format!("connecting to the hub at {hub_http} (its --admin-listen or --http address)"))?;
    anyhow::ensure!(status == 200, "the hub answered {status}: {}", body.trim());
    Ok(body.trim().to_owned())
}

/// `config example`: generated from `serve`'s flags.
fn config_example() -> String {
    meridian_node::config_file::example_of::<Cli>("serve")
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Read settings from this TOML file: every flag below is a key (e.g.
    /// `max-connections = 500`); a flag or its environment variable wins over
    /// the file. `meridian-hub config example` prints one with every key.
    #[arg(long, env = "MERIDIAN_HUB_CONFIG", value_name = "FILE.toml")]
    config: Option<PathBuf>,
    /// UDP address of the QUIC federation endpoint.
    #[arg(long, env = "MERIDIAN_HUB_LISTEN", default_value = "127.0.0.1:7400")]
    listen: SocketAddr,
    /// TCP address for /healthz, /metrics and (without --admin-listen) the
    /// operator console (/console) and routes: GET /placement, GET /topology,
    /// POST /api/auth/revoke, GET|PUT|DELETE /api/placement/pins,
    /// GET|POST|DELETE /api/auth/keys, GET /api/docs, GET /api/divergence,
    /// GET /api/docs/{doc}[?at=HASH], /replicas, /history, /export, POST
    /// /api/docs/{doc}/rollback?to=HASH.
    #[arg(long, env = "MERIDIAN_HUB_HTTP", default_value = "127.0.0.1:7401")]
    http: SocketAddr,
    /// Folder for the SQLite store and the dev TLS certificates (created if missing).
    #[arg(long, env = "MERIDIAN_HUB_DATA", default_value = "./meridian-hub-data")]
    data: PathBuf,
    /// Where documents are stored: `sqlite` (a file in --data, the default)
    /// or a PostgreSQL-protocol database, `postgres://USER[:PASSWORD]@HOST:PORT/DB`
    /// (shared by every hub on it; see docs/SCALING.md).
    #[arg(
        long,
        env = "MERIDIAN_HUB_STORE",
        default_value = "sqlite",
        hide_env_values = true,
        value_name = "sqlite|URL"
    )]
    store: String,
    /// NATS servers of the bus between hubs sharing a --store database
    /// (nats://HOST:PORT, comma-separated for a cluster, tried in that
    /// order): each hub publishes what it commits and applies what the
    /// others did.
    #[arg(long, env = "MERIDIAN_HUB_BUS", value_delimiter = ',', value_name = "nats://HOST:PORT")]
    bus: Vec<String>,
    /// Keep the change feed: every change committed to the PostgreSQL
    /// --store goes to the NATS JetStream stream MERIDIAN_CHANGES (read it
    /// with `meridian-hub feed`). Needs --bus servers running JetStream
    /// (nats-server -js). Once a hub ran with it, the database keeps the
    /// feed's outbox for every hub on it (chunks wait in the store until
    /// the feed carried them; one hub with --feed relays at a time).
    #[arg(long, env = "MERIDIAN_HUB_FEED", default_value_t = false)]
    feed: bool,
    /// Peer id of the hub on the wire.
    #[arg(long, env = "MERIDIAN_HUB_ID", default_value = "meridian-hub")]
    hub_id: String,
    /// Export traces over OTLP/HTTP (protobuf) to this collector: its base
    /// URL, e.g. http://127.0.0.1:4318 (spans go to /v1/traces). Spans: each
    /// connection, document message, storage write and message to another
    /// node; a change's way across edges and hubs is one trace. Off unless set.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// An edge allowed to connect, as ID=SECRET (repeatable; env: comma-separated).
    /// Without any, the hub runs in open dev mode (loopback only) and says so.
    #[arg(long = "edge", env = "MERIDIAN_HUB_EDGES", value_delimiter = ',')]
    edges: Vec<String>,
    /// An edge the hub does not trust (a device in the open), as ID=SECRET
    /// (repeatable; env: comma-separated): it is served only the documents
    /// its clients' tokens grant, which it forwards and the hub verifies
    /// (needs --auth-public-key). Edges of --edge are trusted with every
    /// document.
    #[arg(long = "untrusted-edge", env = "MERIDIAN_HUB_UNTRUSTED_EDGES", value_delimiter = ',')]
    untrusted_edges: Vec<String>,
    /// Extra DNS names or IPs for the dev certificate created on first start.
    #[arg(long = "cert-name", env = "MERIDIAN_HUB_CERT_NAMES", value_delimiter = ',')]
    cert_names: Vec<String>,
    /// Seconds without activity after which a document leaves memory.
    #[arg(long, env = "MERIDIAN_IDLE_EVICT_SECS", default_value_t = 60)]
    idle_evict_secs: u64,
    /// Do not fsync commits to the SQLite store. By default every change the
    /// hub acknowledges has been fsynced: it survives power loss and an OS
    /// crash. With this flag it survives a crash of the process only
    /// (kill -9). For throwaway data and tests. (PostgreSQL keeps its own
    /// durability setting.)
    #[arg(long, env = "MERIDIAN_UNSAFE_NO_FSYNC", default_value_t = false)]
    unsafe_no_fsync: bool,
    /// fsync every commit: the default (kept for scripts that pass it).
    #[arg(long, hide = true, conflicts_with = "unsafe_no_fsync")]
    fsync: bool,
    /// Bytes of the store's chunks checked per second in the background for
    /// corruption (SQLite or PostgreSQL: every hub on a shared database
    /// scrubs it); a corrupt chunk is quarantined and its document written
    /// again from memory or synced back from the edges (0: off; every chunk
    /// is also checked when it loads).
    #[arg(long, env = "MERIDIAN_SCRUB_BYTES_PER_SEC", default_value_t = meridian_node::runtime::DEFAULT_SCRUB_BYTES_PER_SEC)]
    scrub_bytes_per_sec: u64,
    /// Seconds a replica (an edge's copy of a document) may stay apart from
    /// the hub's — what either had not reaching the other — before it is
    /// divergent: logged, counted, listed at /api/divergence and resynced
    /// from scratch (up to 3 times in a row); 0: not checked.
    #[arg(long, env = "MERIDIAN_DIVERGENCE_AFTER_SECS", default_value_t = 30)]
    divergence_after_secs: u64,
    /// Also accept automerge-repo WebSocket clients at /sync on the HTTP port
    /// (inspection tools and tests; clients normally connect to edges).
    #[arg(long, env = "MERIDIAN_HUB_SERVE_CLIENTS", default_value_t = false)]
    serve_clients: bool,
    /// Public key (PEM, from `meridian-hub auth keygen`) that tokens of clients
    /// at /sync (--serve-clients) must be signed with; repeatable (env:
    /// comma-separated) for key rotation. Without it those clients are served
    /// in open dev mode, on a loopback --http only.
    #[arg(long = "auth-public-key", env = "MERIDIAN_AUTH_PUBLIC_KEY", value_delimiter = ',', value_name = "FILE")]
    auth_public_keys: Vec<PathBuf>,
    /// A fixed secret the operator routes accept as `Authorization: Bearer`.
    /// With --auth-public-key they also take admin tokens (`auth token
    /// --admin`); with neither they answer loopback requests only.
    #[arg(long, env = "MERIDIAN_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Serve the operator console and routes (/console, /placement,
    /// /topology, /api/…) on this TCP address only, instead of on --http.
    #[arg(long, env = "MERIDIAN_HUB_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
    /// Seconds a client may take to send its request headers on the HTTP
    /// listeners, and the longest idle time of a kept-alive connection.
    #[arg(long, env = "MERIDIAN_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    header_timeout_secs: u64,
    /// Refused edge `hello`s (unknown id, wrong secret) from one address per
    /// minute; past it, connections from that address are closed at once for
    /// the rest of the minute (0: no limit). An edge must open its stream and
    /// send `hello` within 10 s of connecting.
    #[arg(long, env = "MERIDIAN_HUB_MAX_AUTH_FAILURES_PER_MINUTE", default_value_t = 10)]
    max_auth_failures_per_minute: u32,
    /// Milliseconds between an edge's demand and RTT reports (told to each
    /// edge when it connects).
    #[arg(long, env = "MERIDIAN_HUB_REPORT_INTERVAL_MS", default_value_t = 2000)]
    report_interval_ms: u64,
    /// Milliseconds between placement decisions. Each document's decided
    /// home is shown at GET /placement (with the demand, RTTs and cost per
    /// candidate behind it) and counted in /metrics; without
    /// --placement-moves that is all (advisory).
    #[arg(long, env = "MERIDIAN_HUB_PLACEMENT_INTERVAL_MS", default_value_t = 2000)]
    placement_interval_ms: u64,
    /// Act on placement: hand each decided home off (the new home first
    /// catches up with the hub's durable copy, and the hub with the old
    /// home's) and only then announce it to every edge, which routes the
    /// document to its home edge over a direct edge-to-edge link (edges
    /// started with --peer-listen), still syncing it through the hub too.
    /// Off by default: decisions stay advisory.
    #[arg(long, env = "MERIDIAN_HUB_PLACEMENT_MOVES", default_value_t = false)]
    placement_moves: bool,
    /// A document moves only if its writers' mean latency improves by at least this many ms ...
    #[arg(long, env = "MERIDIAN_HUB_PLACEMENT_MIN_GAIN_MS", default_value_t = 5.0)]
    placement_min_gain_ms: f64,
    /// ... and by at least this fraction of the current latency (hysteresis).
    #[arg(long, env = "MERIDIAN_HUB_PLACEMENT_MIN_GAIN_RATIO", default_value_t = 0.2)]
    placement_min_gain_ratio: f64,
    /// Seconds a document stays at a home before it may move again.
    #[arg(long, env = "MERIDIAN_HUB_PLACEMENT_DWELL_SECS", default_value_t = 30)]
    placement_dwell_secs: u64,
    /// At most this many moves per minute over all documents.
    #[arg(long, env = "MERIDIAN_HUB_PLACEMENT_MAX_MOVES_PER_MIN", default_value_t = 120)]
    placement_max_moves_per_min: u32,
    /// Milliseconds the placer's lease in the store lasts without renewal
    /// (renewed every third of it). Of the hubs sharing a --store, the one
    /// holding it places documents; when that hub dies another takes over
    /// within about this long, from the homes, pins and reports in the store.
    #[arg(long, env = "MERIDIAN_HUB_PLACER_LEASE_MS", default_value_t = 3000)]
    placer_lease_ms: u64,
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

/// jemalloc, whose background thread gives memory freed after a flood of
/// documents (evicted since) back to the system; glibc's malloc keeps it.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() {
    let cli =
        meridian_node::config_file::parse::<Cli>(std::env::args_os().collect(), "serve").unwrap_or_else(|e| e.exit());
    if let Err(error) = run(cli).await {
        meridian_node::startup::exit_with("meridian-hub", &error);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let (otlp, instance) = match &cli.command {
        Command::Serve(args) => (args.otlp_endpoint.as_deref(), args.hub_id.clone()),
        _ => (None, String::new()),
    };
    let _telemetry = telemetry::init("info", otlp, &telemetry::Service { name: "meridian-hub", instance })?;
    let args = match cli.command {
        Command::Serve(args) => args,
        Command::Auth(HubAuthArgs { op: HubAuthOp::Common(op) }) => {
            println!("{}", meridian_node::auth::cli::run(meridian_node::auth::cli::AuthArgs { op })?);
            return Ok(());
        }
        Command::Auth(HubAuthArgs { op: HubAuthOp::Revoke { hub_http, jti, sub, admin_token } }) => {
            println!("{}", revoke(&hub_http, jti, sub, admin_token).await?);
            return Ok(());
        }
        Command::Auth(HubAuthArgs { op: HubAuthOp::Keys { op, hub_http, admin_token } }) => {
            println!("{}", keys(&hub_http, op, admin_token).await?);
            return Ok(());
        }
        Command::Placement(args) => {
            println!("{}", placement(args).await?);
            return Ok(());
        }
        Command::Config(meridian_node::config_file::ConfigArgs {
            op: meridian_node::config_file::ConfigOp::Example,
        }) => {
            print!("{}", config_example());
            return Ok(());
        }
        Command::Feed(args) => {
            let doc = match &args.doc {
                Some(d) => Some(
                    meridian_node::auth::parse_doc(d)
                        .with_context(|| format!("`{d}` is neither a document id nor an automerge: URL"))?,
                ),
                None => None,
            };
            let mut what =
                meridian_hub::feed::Consume { doc, from: args.from, patches: args.patches, follow: !args.no_follow };
            let mut stdout = std::io::stdout().lock();
            meridian_hub::feed::consume(&args.bus, &mut what, &mut stdout).await.map_err(anyhow::Error::msg)?;
            return Ok(());
        }
    };
    let mut config = HubConfig::new(args.data);
    config.listen = args.listen;
    config.http = args.http;
    config.hub_id = args.hub_id;
    let all: Vec<String> = args.edges.iter().chain(&args.untrusted_edges).cloned().collect();
    config.auth = parse_edges(&all)?;
    config.untrusted_edges = match parse_edges(&args.untrusted_edges)? {
        EdgeAuth::Secrets(map) => map.into_keys().collect(),
        EdgeAuth::DevOpen => Default::default(),
    };
    config.cert_names.extend(args.cert_names);
    config.idle_evict_after = Duration::from_secs(args.idle_evict_secs);
    config.fsync = !args.unsafe_no_fsync;
    config.scrub_bytes_per_sec = args.scrub_bytes_per_sec;
    config.divergence_after = Duration::from_secs(args.divergence_after_secs);
    config.bus = args.bus;
    config.feed = args.feed;
    config.store = match args.store.as_str() {
        "sqlite" => None,
        url if url.starts_with("postgres://") || url.starts_with("postgresql://") => Some(url.to_owned()),
        other => anyhow::bail!("--store takes `sqlite` or a postgres:// URL, not `{other}`"),
    };
    config.serve_clients = args.serve_clients;
    config.auth_public_keys = args.auth_public_keys;
    config.admin_token = args.admin_token.filter(|t| !t.is_empty());
    config.admin_listen = args.admin_listen;
    config.header_read_timeout = Duration::from_secs(args.header_timeout_secs.max(1));
    config.max_auth_failures_per_minute = args.max_auth_failures_per_minute;
    config.report_interval = Duration::from_millis(args.report_interval_ms);
    config.placement_interval = Duration::from_millis(args.placement_interval_ms);
    config.placement_moves = args.placement_moves;
    if args.placer_lease_ms < 300 {
        bail!("--placer-lease-ms must be at least 300");
    }
    config.placer_lease = Duration::from_millis(args.placer_lease_ms);
    if !(args.placement_min_gain_ms.is_finite() && args.placement_min_gain_ms >= 0.0) {
        bail!("--placement-min-gain-ms must be a non-negative number");
    }
    config.placement.min_gain = Duration::from_secs_f64(args.placement_min_gain_ms / 1e3);
    config.placement.min_gain_ratio = args.placement_min_gain_ratio;
    config.placement.min_dwell = Duration::from_secs(args.placement_dwell_secs);
    config.placement.max_moves = args.placement_max_moves_per_min;
    config.placement.move_window = Duration::from_secs(60);
    let open = matches!(config.auth, EdgeAuth::DevOpen);
    let hub = Hub::start(config).await.context("starting the hub")?;
    println!("meridian-hub listening: QUIC {} (ALPN meridian-fed/1), HTTP http://{}", hub.quic_addr(), hub.http_addr());
    let mode = if args.placement_moves { "moves on" } else { "advisory" };
    let ops = hub.admin_addr().unwrap_or(hub.http_addr());
    println!("  placement ({mode}): http://{ops}/placement, topology: http://{ops}/topology (operator routes)");
    println!("  edges trust it with --hub-ca {} or --hub-fingerprint {}", hub.ca_path().display(), hub.fingerprint());
    if open {
        println!("  WARNING: open dev mode — any edge id is accepted without a secret (use --edge ID=SECRET)");
    }
    meridian_node::shutdown::shutdown_signal().await;
    tracing::info!("signal received, shutting down");
    hub.shutdown().await;
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
