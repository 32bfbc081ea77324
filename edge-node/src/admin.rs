//! The operator's HTTP API on an edge (DESIGN §6): a document's history,
//! its value now or at earlier heads, a rollback, and an export.
//!
//! | route | answer |
//! |---|---|
//! | `GET /api/docs/{doc}` | the document as JSON; `?at=HASH[,HASH]` as it was at those heads |
//! | `GET /api/docs/{doc}/history` | every change: `{hash, actor, seq, time, message, deps}` |
//! | `POST /api/docs/{doc}/rollback?to=HASH[,HASH]` | a new change restoring that version; `{heads, value}` |
//! | `GET /api/docs/{doc}/export` | the document with its history (`.automerge` bytes) |
//!
//! `{doc}` is a document id or an `automerge:` URL; hashes may be unique
//! prefixes of 6+ hex digits. The API is a client of this very edge (over
//! loopback), so it sees exactly what clients see, and a rollback syncs to
//! every replica like any edit (its client presents the edge's internal
//! token, so it works with auth on).
//!
//! Who may call it (`Authorization: Bearer …`):
//! - with `--admin-token SECRET`: that secret;
//! - with auth on (`--auth-public-key`): an access token with the admin
//!   right (`meridian-edge auth token --admin`);
//! - otherwise (open dev mode): requests from a loopback address (the
//!   socket's, never a header's) naming a local host (`localhost` or an IP:
//!   a rebound DNS name is refused).
//!
//! Requests that change something (`POST`) from a web page of another
//! origin are refused (a cross-site form could otherwise roll a document
//! back), and a refused token costs a quarter of a second.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use meridian_node::auth::{self, Keyring};
use meridian_node::quic::same_secret;
use meridian_node::server::{bearer, cross_site, local_host};
use meridian_protocol::ids::{AutomergeUrl, DocumentId};
use serde::Deserialize;
use tokio::sync::OnceCell;

use crate::cli;
use crate::client::{Client, ClientError, ClientOptions};

/// How long a request waits for a document to be found.
const FIND_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
struct Admin {
    /// This edge's own WebSocket URL (loopback).
    url: String,
    token: Option<Arc<str>>,
    /// With auth on: admin tokens are checked against it.
    keyring: Option<Arc<Keyring>>,
    /// What the API's own client presents to this edge.
    internal_token: Arc<str>,
    client: Arc<OnceCell<Client>>,
}

/// A refused admin token costs this much (guessing is slow).
const REFUSAL_DELAY: Duration = Duration::from_millis(250);

/// Who may call the admin API (see the module docs).
#[derive(Clone, Debug)]
pub struct AdminAuth {
    /// `--admin-token`.
    pub token: Option<String>,
    /// With auth on, tokens with the admin right are accepted.
    pub keyring: Option<Arc<Keyring>>,
    /// The edge's internal token, for the API's own client.
    pub internal_token: Arc<str>,
}

/// The admin routes, for the edge listening on `addr`.
pub fn router(addr: SocketAddr, auth: AdminAuth) -> Router {
    let host = if addr.ip().is_unspecified() { SocketAddr::from(([127, 0, 0, 1], addr.port())) } else { addr };
    let admin = Admin {
        url: format!("ws://{host}/sync"),
        token: auth.token.map(Arc::from),
        keyring: auth.keyring,
        internal_token: auth.internal_token,
        client: Arc::default(),
    };
    Router::new()
        .route("/api/docs/{doc}", get(value))
        .route("/api/docs/{doc}/history", get(history))
        .route("/api/docs/{doc}/rollback", post(rollback))
        .route("/api/docs/{doc}/export", get(export))
        .layer(axum::middleware::from_fn_with_state(admin.clone(), authorize))
        .with_state(admin)
}

async fn authorize(State(admin): State<Admin>, request: Request, next: Next) -> Response {
    match admin.check(&request) {
        Ok(()) => next.run(request).await,
        Err(Failure(status, why)) => {
            if status == StatusCode::UNAUTHORIZED {
                tokio::time::sleep(REFUSAL_DELAY).await;
            }
            Failure(status, why).into_response()
        }
    }
}

impl Admin {
    fn check(&self, request: &Request) -> Result<(), Failure> {
        let headers = request.headers();
        if !matches!(*request.method(), axum::http::Method::GET | axum::http::Method::HEAD) && cross_site(headers) {
            return Err(Failure(
                StatusCode::FORBIDDEN,
                "cross-site request refused (its Origin is not this host)".into(),
            ));
        }
        let given = bearer(headers).unwrap_or_default();
        if let Some(token) = &self.token {
            if same_secret(given.as_bytes(), token.as_bytes()) {
                return Ok(());
            }
            if self.keyring.is_none() {
                let why = "send `Authorization: Bearer <the edge's --admin-token>`";
                return Err(Failure(StatusCode::UNAUTHORIZED, why.into()));
            }
        }
        if let Some(keyring) = &self.keyring {
            return match keyring.verify(given, auth::unix_now()) {
                Ok(grant) if grant.admin => Ok(()),
                Ok(_) => Err(Failure(StatusCode::FORBIDDEN, "this token has no admin right".into())),
                Err(reason) => Err(Failure(
                    StatusCode::UNAUTHORIZED,
                    format!("admin token refused ({reason}): mint one with `meridian-edge auth token --admin`"),
                )),
            };
        }
        let loopback = request.extensions().get::<ConnectInfo<SocketAddr>>().is_some_and(|c| c.0.ip().is_loopback());
        if !loopback {
            let why = "the admin API answers only loopback requests unless the edge runs with auth or --admin-token";
            return Err(Failure(StatusCode::UNAUTHORIZED, why.into()));
        }
        if !local_host(headers) {
            return Err(Failure(StatusCode::FORBIDDEN, "the Host must be localhost or an IP address".into()));
        }
        Ok(())
    }
}

/// An error answer: status and a one-line explanation.
struct Failure(StatusCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, format!("{}\n", self.1)).into_response()
    }
}

fn bad_request(e: impl ToString) -> Failure {
    Failure(StatusCode::BAD_REQUEST, e.to_string())
}

impl Admin {
    /// The in-process client, connected on first use, and the document found.
    async fn open(&self, doc: &str) -> Result<(&Client, DocumentId), Failure> {
        let id = parse_doc(doc)?;
        let client =
            self.client.get_or_try_init(|| Client::connect(&self.url, self.client_options())).await.map_err(|e| {
                Failure(StatusCode::SERVICE_UNAVAILABLE, format!("cannot reach this edge at {}: {e}", self.url))
            })?;
        match tokio::time::timeout(FIND_TIMEOUT, client.find(id)).await {
            Ok(Ok(())) => Ok((client, id)),
            Ok(Err(ClientError::Unavailable(_))) => {
                Err(Failure(StatusCode::NOT_FOUND, format!("document {id} is not here nor at the hub")))
            }
            Ok(Err(e)) => Err(Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
            Err(_) => Err(Failure(
                StatusCode::GATEWAY_TIMEOUT,
                format!("document {id} was not found within {FIND_TIMEOUT:?}"),
            )),
        }
    }

    fn client_options(&self) -> ClientOptions {
        ClientOptions { token: Some(self.internal_token.to_string()), ..ClientOptions::default() }
    }

    async fn read<T: Send + 'static>(
        &self,
        client: &Client,
        doc: DocumentId,
        f: impl FnOnce(&meridian_protocol::automerge::Automerge) -> T + Send + 'static,
    ) -> Result<T, Failure> {
        client
            .read(doc, f)
            .await
            .ok_or_else(|| Failure(StatusCode::INTERNAL_SERVER_ERROR, "document left memory".into()))
    }
}

fn parse_doc(doc: &str) -> Result<DocumentId, Failure> {
    let url = if doc.starts_with("automerge:") { doc.to_owned() } else { format!("automerge:{doc}") };
    url.parse::<AutomergeUrl>().map(|u| u.document_id).map_err(|e| bad_request(format!("`{doc}`: {e}")))
}

#[derive(Debug, Deserialize)]
struct At {
    at: Option<String>,
}

async fn value(State(admin): State<Admin>, Path(doc): Path<String>, Query(q): Query<At>) -> Result<Response, Failure> {
    let (client, id) = admin.open(&doc).await?;
    let json = admin
        .read(client, id, move |d| match q.at {
            Some(at) => cli::resolve_heads(d, &at).and_then(|h| cli::json_at(d, &h)),
            None => Ok(cli::to_json(d)),
        })
        .await?
        .map_err(bad_request)?;
    Ok(axum::Json(json).into_response())
}

async fn history(State(admin): State<Admin>, Path(doc): Path<String>) -> Result<Response, Failure> {
    let (client, id) = admin.open(&doc).await?;
    Ok(axum::Json(admin.read(client, id, cli::history).await?).into_response())
}

#[derive(Debug, Deserialize)]
struct To {
    to: String,
}

async fn rollback(
    State(admin): State<Admin>,
    Path(doc): Path<String>,
    Query(q): Query<To>,
) -> Result<Response, Failure> {
    let (client, id) = admin.open(&doc).await?;
    let heads = admin.read(client, id, move |d| cli::resolve_heads(d, &q.to)).await?.map_err(bad_request)?;
    client.rollback(id, heads).await.map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    // Answer once this edge has it durably (it only advertises committed heads).
    let _ = tokio::time::timeout(FIND_TIMEOUT, client.wait_acked(id)).await;
    let (heads, value) = admin
        .read(client, id, |d| (d.get_heads().iter().map(ToString::to_string).collect::<Vec<_>>(), cli::to_json(d)))
        .await?;
    Ok(axum::Json(serde_json::json!({ "heads": heads, "value": value })).into_response())
}

async fn export(State(admin): State<Admin>, Path(doc): Path<String>) -> Result<Response, Failure> {
    let (client, id) = admin.open(&doc).await?;
    let bytes = admin.read(client, id, |d| d.save()).await?;
    let disposition = format!("attachment; filename=\"{id}.automerge\"");
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream".to_owned()), (header::CONTENT_DISPOSITION, disposition)],
        bytes,
    )
        .into_response())
}
