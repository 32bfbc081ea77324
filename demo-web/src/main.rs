//! `meridian-demo`: the local cluster's front door.
//!
//! - One static web site per region (`--site eu=127.0.0.1:7380=127.0.0.1:7300`):
//!   the editor app from `web/`, the `@meridian/client` package at `/pkg/`,
//!   and `/config.json` telling the page which edge is "nearest". Each region
//!   is its own origin, so each has its own IndexedDB, like separate users.
//!   The sites do not depend on the edges: with every edge stopped a page
//!   still loads and shows its documents from IndexedDB.
//! - The app's backend, with `--auth-key` (edges and hub run with auth on):
//!   `GET /token` mints the page an editor's token (every document, may
//!   create), `GET /token?read=DOC` a read-only token for one document (the
//!   share panel's read-only links); the page fetches them through
//!   `@meridian/client`'s `getToken`, again on every reconnect. `GET
//!   /hub/placement` relays the hub's placement view (an operator route)
//!   with an admin token the site mints for itself.
//! - Simulated geography (`--link eu=127.0.0.1:7390=127.0.0.1:7400=40`): a
//!   UDP fault proxy per region between that edge and the hub, and per pair
//!   of edges (`--link eu-ap=...`), adding the one-way delay (each
//!   direction), so QUIC federation and edge-to-edge links see real RTTs.
//!
//! `cargo xtask demo` starts it with the hub and the edges.

use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use clap::Parser;
use meridian_netsim::{Direction, FaultProxy};
use meridian_node::auth::{self, Claims, SigningKey};

/// How long a page's token lives (the page fetches another on reconnect).
const TOKEN_TTL_SECS: u64 = 15 * 60;

/// Serves the Meridian editor demo (one site per region) and the simulated
/// inter-region latency between edges and the hub.
#[derive(Parser, Debug)]
#[command(name = "meridian-demo", version, about, long_about = None)]
struct Cli {
    /// A regional site: REGION=LISTEN=EDGE, e.g. eu=127.0.0.1:7380=127.0.0.1:7300
    /// (the page syncs with ws://EDGE/sync). Repeat for each region.
    #[arg(long = "site", value_parser = parse_site, required = true)]
    sites: Vec<Site>,
    /// A latency link: NAME=LISTEN=UPSTREAM=MS, a UDP proxy adding MS
    /// milliseconds each way. NAME is a region for its edge's link to the hub
    /// (point the edge's `--hub` at LISTEN), or `a-b` for edge a's link to
    /// edge b (`--peer-route b=LISTEN` on edge a).
    #[arg(long = "link", value_parser = parse_link)]
    links: Vec<Link>,
    /// The hub's HTTP address, shown in the pages (metrics).
    #[arg(long, default_value = "127.0.0.1:7401")]
    hub_http: SocketAddr,
    /// The hub's operator address (its --admin-listen), where the sites read
    /// the placement view for the pages (default: --hub-http).
    #[arg(long)]
    hub_admin: Option<SocketAddr>,
    /// Private key (PEM, from `meridian-edge auth keygen`) the sites mint
    /// access tokens with, playing the app's backend; the edges and the hub
    /// then run with its public key (--auth-public-key). Without it the pages
    /// connect without tokens (edges in open dev mode).
    #[arg(long, env = "MERIDIAN_DEMO_AUTH_KEY", value_name = "FILE")]
    auth_key: Option<PathBuf>,
    /// Folder of the web app.
    #[arg(long, env = "MERIDIAN_DEMO_WEB", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/web"))]
    web: PathBuf,
    /// Folder of the built `@meridian/client` package (`cargo xtask build-js`).
    #[arg(long, env = "MERIDIAN_DEMO_PKG", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../client-wasm/pkg"))]
    pkg: PathBuf,
}

#[derive(Clone, Debug)]
struct Site {
    region: String,
    listen: SocketAddr,
    edge: SocketAddr,
}

#[derive(Clone, Debug)]
struct Link {
    region: String,
    listen: SocketAddr,
    upstream: SocketAddr,
    delay: Duration,
}

fn parse_site(s: &str) -> Result<Site, String> {
    let parts: Vec<&str> = s.split('=').collect();
    let [region, listen, edge] = parts[..] else { return Err("expected REGION=LISTEN=EDGE".into()) };
    Ok(Site {
        region: region.to_owned(),
        listen: listen.parse().map_err(|e| format!("LISTEN `{listen}`: {e}"))?,
        edge: edge.parse().map_err(|e| format!("EDGE `{edge}`: {e}"))?,
    })
}

fn parse_link(s: &str) -> Result<Link, String> {
    let parts: Vec<&str> = s.split('=').collect();
    let [region, listen, upstream, ms] = parts[..] else { return Err("expected NAME=LISTEN=UPSTREAM=MS".into()) };
    Ok(Link {
        region: region.to_owned(),
        listen: listen.parse().map_err(|e| format!("LISTEN `{listen}`: {e}"))?,
        upstream: upstream.parse().map_err(|e| format!("UPSTREAM `{upstream}`: {e}"))?,
        delay: Duration::from_millis(ms.parse().map_err(|e| format!("MS `{ms}`: {e}"))?),
    })
}

/// What one site serves.
#[derive(Clone, Debug)]
struct SiteState {
    web: PathBuf,
    pkg: PathBuf,
    config: serde_json::Value,
    region: String,
    /// Mints the pages' tokens (and the site's admin token), with auth on.
    key: Option<std::sync::Arc<SigningKey>>,
    hub_admin: SocketAddr,
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "meridian_demo=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if !cli.pkg.join("index.js").exists() {
        bail!("{} has no index.js: build the browser package first (`cargo xtask build-js`)", cli.pkg.display());
    }
    if !cli.web.join("index.html").exists() {
        bail!("{} has no index.html (use --web to point at demo-web/web)", cli.web.display());
    }

    let key = match &cli.auth_key {
        Some(path) => {
            Some(std::sync::Arc::new(SigningKey::load(path).with_context(|| format!("--auth-key {}", path.display()))?))
        }
        None => None,
    };
    let hub_admin = cli.hub_admin.unwrap_or(cli.hub_http);
    let mut proxies = Vec::new();
    for link in &cli.links {
        let proxy = FaultProxy::udp(link.listen, link.upstream)
            .await
            .with_context(|| format!("latency link for {} on {}", link.region, link.listen))?;
        let faults = proxy.handle();
        faults.set_delay(Direction::ToUpstream, link.delay);
        faults.set_delay(Direction::ToClient, link.delay);
        tracing::info!(region = %link.region, listen = %link.listen, upstream = %link.upstream, one_way_ms = link.delay.as_millis() as u64, "latency link");
        proxies.push(proxy);
    }

    let sites: Vec<serde_json::Value> = cli
        .sites
        .iter()
        .map(|s| serde_json::json!({ "region": s.region, "url": format!("http://{}/", s.listen) }))
        .collect();
    let links: serde_json::Map<String, serde_json::Value> =
        cli.links.iter().map(|l| (l.region.clone(), serde_json::json!(l.delay.as_millis() as u64))).collect();
    let mut servers = tokio::task::JoinSet::new();
    for site in &cli.sites {
        let config = serde_json::json!({
            "region": site.region,
            "edge": { "ws": format!("ws://{}/sync", site.edge), "http": format!("http://{}", site.edge) },
            "hub": { "http": format!("http://{}", cli.hub_http) },
            "sites": sites,
            "linksMs": links,
            "auth": key.is_some(),
        });
        let state = SiteState {
            web: cli.web.clone(),
            pkg: cli.pkg.clone(),
            config,
            region: site.region.clone(),
            key: key.clone(),
            hub_admin,
        };
        let app = Router::new()
            .route("/config.json", get(config_json))
            .route("/token", get(token))
            .route("/hub/placement", get(hub_placement))
            .route("/pkg/{*file}", get(pkg_file))
            .route("/", get(index))
            .route("/{*file}", get(web_file))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind(site.listen)
            .await
            .with_context(|| format!("site {} on {}", site.region, site.listen))?;
        tracing::info!(region = %site.region, url = %format!("http://{}/", site.listen), edge = %site.edge, "site");
        servers.spawn(async move { axum::serve(listener, app).await });
    }
    tokio::select! {
        _ = shutdown_signal() => tracing::info!("stopping"),
        r = servers.join_next() => bail!("a site stopped: {r:?}"),
    }
    drop(proxies);
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(t) => t,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn config_json(State(s): State<SiteState>) -> Response {
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(s.config)).into_response()
}

#[derive(Debug, serde::Deserialize)]
struct TokenQuery {
    /// A document id or `automerge:` URL: a read-only token for it alone.
    read: Option<String>,
}

/// A token for the page: an editor's, or a viewer's of one document.
async fn token(State(s): State<SiteState>, Query(q): Query<TokenQuery>) -> Response {
    let Some(key) = &s.key else {
        return (StatusCode::NOT_FOUND, "this demo runs without auth (no --auth-key): connect without a token\n")
            .into_response();
    };
    let now = auth::unix_now();
    let nonce = format!("{:016x}", rand::random::<u64>());
    let mut claims = Claims { exp: now + TOKEN_TTL_SECS, iat: Some(now), jti: nonce.clone(), ..Claims::default() };
    match q.read.as_deref() {
        Some(doc) => {
            let Some(id) = auth::parse_doc(doc) else {
                return (StatusCode::BAD_REQUEST, "`read` is not a document id or automerge: URL\n").into_response();
            };
            claims.sub = format!("{}-viewer-{nonce}", s.region);
            claims.read = vec![id.to_string()];
        }
        None => {
            claims.sub = format!("{}-editor-{nonce}", s.region);
            claims.write = vec!["*".into()];
            claims.create = true;
        }
    }
    let body = serde_json::json!({ "token": key.mint(&claims), "readOnly": q.read.is_some(), "expiresAt": claims.exp });
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response()
}

/// The hub's `GET /placement`, an operator route: the site asks with an
/// admin token of its own (with auth on) and hands the page the answer.
async fn hub_placement(State(s): State<SiteState>) -> Response {
    let admin = s.key.as_ref().map(|k| {
        let exp = auth::unix_now() + 60;
        k.mint(&Claims { sub: format!("demo-site-{}", s.region), exp, admin: true, ..Claims::default() })
    });
    let addr = s.hub_admin.to_string();
    match meridian_node::http::request(&addr, "GET", "/placement", admin.as_deref(), None).await {
        Ok((200, body)) => {
            ([(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")], body).into_response()
        }
        Ok((status, body)) => {
            (StatusCode::BAD_GATEWAY, format!("the hub answered {status}: {}\n", body.trim())).into_response()
        }
        Err(e) => (StatusCode::BAD_GATEWAY, format!("cannot reach the hub at {addr}: {e}\n")).into_response(),
    }
}

async fn index(State(s): State<SiteState>) -> Response {
    serve_file(&s.web, "index.html").await
}

async fn web_file(State(s): State<SiteState>, UrlPath(file): UrlPath<String>) -> Response {
    serve_file(&s.web, &file).await
}

async fn pkg_file(State(s): State<SiteState>, UrlPath(file): UrlPath<String>) -> Response {
    serve_file(&s.pkg, &file).await
}

/// A file under `root`; `..` and absolute paths are refused.
async fn serve_file(root: &Path, rel: &str) -> Response {
    let rel = Path::new(rel);
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return (StatusCode::BAD_REQUEST, "bad path\n").into_response();
    }
    let path = root.join(rel);
    match std::fs::read(&path) {
        Ok(bytes) => {
            ([(header::CONTENT_TYPE, content_type(&path)), (header::CACHE_CONTROL, "no-cache")], bytes).into_response()
        }
        Err(_) => (StatusCode::NOT_FOUND, "not found\n").into_response(),
    }
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("wasm") => "application/wasm",
        Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("ts") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}
