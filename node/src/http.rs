//! The HTTP server behind every node listener (the client listener with
//! `/sync`, the operator listener of `--admin-listen`): an axum router on
//! hyper's HTTP/1, with what `axum::serve` lacks for a public port:
//!
//! - a **header read timeout**: a connection that does not finish its
//!   request headers in time (slowloris), or idles that long between
//!   requests, is closed (counted as `limits_hit_total{limit="header_timeout"}`);
//! - a **cap on connections still speaking HTTP**: past it a new connection
//!   is closed at once (`limits_hit_total{limit="http_connections"}`). A
//!   WebSocket leaves this count when it is upgraded; open WebSockets have
//!   their own caps (`server::ConnLimiter`);
//! - optionally **TLS** (`https://`, `wss://`; [`tls_config`]): the
//!   handshake must end within the header timeout too.
//!
//! Every request carries the socket's peer address (`ConnectInfo`, what
//! the operator guard and the per-address caps judge), and accepted
//! sockets have `TCP_NODELAY` set: sync messages are small and often follow
//! one another (an acknowledgement right after a change, a reply right
//! after the document); with Nagle's algorithm on, the second waits until
//! the peer acknowledges the first, which a peer with nothing to send
//! delays by up to 40 ms. (node's HTTP server, under the JS sync server,
//! turns it on too, as browsers do on their side.)

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::task::JoinSet;
use tower::ServiceExt;

use crate::metrics::NodeMetrics;
use crate::quic::TlsError;
use crate::task::AbortOnDrop;

/// Default of [`HttpOptions::header_read_timeout`].
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a stopping server waits for requests in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How one listener serves.
#[derive(Clone, Debug)]
pub struct HttpOptions {
    /// Request headers must arrive within this (also the longest idle time
    /// between requests on a kept-alive connection, and the longest TLS
    /// handshake).
    pub header_read_timeout: Duration,
    /// Connections still speaking HTTP at most (0: no cap).
    pub max_open: usize,
    /// Serve TLS with this configuration ([`tls_config`]); `None`: plain.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self { header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT, max_open: 10_000, tls: None }
    }
}

/// A TLS configuration for a listener from PEM files: the certificate
/// chain (leaf first) and its private key.
pub fn tls_config(cert: &std::path::Path, key: &std::path::Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|_| TlsError::Pem { path: cert.to_owned(), what: "certificate" })?;
    if chain.is_empty() {
        return Err(TlsError::Pem { path: cert.to_owned(), what: "certificate" });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|_| TlsError::Pem { path: key.to_owned(), what: "key" })?;
    let mut config = rustls::ServerConfig::builder_with_provider(crate::quic::provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A running listener: its address, and what stops it.
#[derive(Debug)]
pub struct Served {
    pub addr: SocketAddr,
    pub task: AbortOnDrop<()>,
    pub stop: oneshot::Sender<()>,
}

/// Serves `app` on `listener` until [`Served::stop`] is sent; limits hit
/// are counted in `metrics`.
pub fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    options: HttpOptions,
    metrics: Arc<NodeMetrics>,
) -> std::io::Result<Served> {
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(accept_loop(listener, app, options, metrics, stopped));
    Ok(Served { addr, task: AbortOnDrop(task), stop })
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: Router,
    options: HttpOptions,
    metrics: Arc<NodeMetrics>,
    mut stopped: oneshot::Receiver<()>,
) {
    let limit = if options.max_open == 0 { Semaphore::MAX_PERMITS } else { options.max_open };
    let open = Arc::new(Semaphore::new(limit));
    let tls = options.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let (drain, draining) = watch::channel(false);
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors, most likely: let some close.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = open.clone().try_acquire_owned() else {
                    metrics.limit_hit("http_connections");
                    drop(tcp);
                    continue;
                };
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::warn!(error = %e, "could not set TCP_NODELAY on a connection");
                }
                let service = app.clone().map_request(move |mut request: hyper::Request<Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    request.map(Body::new)
                });
                let (metrics, draining, timeout, tls) =
                    (metrics.clone(), draining.clone(), options.header_read_timeout, tls.clone());
                conns.spawn(async move {
                    let _permit = permit;
                    let service = TowerToHyperService::new(service);
                    let Some(tls) = tls else {
                        return serve_connection(tcp, service, timeout, draining, &metrics, peer).await;
                    };
                    match tokio::time::timeout(timeout, tls.accept(tcp)).await {
                        Ok(Ok(stream)) => serve_connection(stream, service, timeout, draining, &metrics, peer).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => metrics.limit_hit("header_timeout"),
                    }
                });
            }
        }
    }
    let _ = drain.send(true);
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async { while conns.join_next().await.is_some() {} }).await;
}

/// One HTTP/1 connection, until it ends or the server drains.
async fn serve_connection<I, S>(
    io: I,
    service: S,
    timeout: Duration,
    mut draining: watch::Receiver<bool>,
    metrics: &NodeMetrics,
    peer: SocketAddr,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming> + Send,
    S::Future: Send + 'static,
    S::ResBody: Send + 'static,
    <S::ResBody as hyper::body::Body>::Data: Send,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(timeout);
    let conn = builder.serve_connection(TokioIo::new(io), service).with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = draining.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        if e.is_timeout() {
            metrics.limit_hit("header_timeout");
        }
        tracing::debug!(%peer, error = %e, "HTTP connection ended");
    }
}

/// A client's request to an operator route (`meridian-hub auth revoke`,
/// the demo site's placement view): one HTTP/1.1 exchange on a fresh
/// connection; the status and the body.
pub async fn request(
    addr: &str,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    json: Option<&str>,
) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let auth = bearer.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let body = json.unwrap_or_default();
    let kind = if json.is_some() { "Content-Type: application/json\r\n" } else { "" };
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{kind}{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.take(64 << 20).read_to_end(&mut response).await?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((status, body.to_owned()))
}
