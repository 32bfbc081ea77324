//! The operator's document routes of edges and hubs (DESIGN §6): a
//! document's history, its value now or at earlier heads, a rollback, and
//! an export.
//!
//! | route | answer |
//! |---|---|
//! | `GET /api/docs/{doc}` | the document as JSON; `?at=HASH[,HASH]` as it was at those heads |
//! | `GET /api/docs/{doc}/history` | every change: `{hash, actor, seq, time, message, deps}` |
//! | `POST /api/docs/{doc}/rollback?to=HASH[,HASH]` | a new change restoring that version; `{heads, value}` |
//! | `GET /api/docs/{doc}/export` | the document with its history (`.automerge` bytes) |
//! | `GET /api/docs/{doc}/creator` | who created it here (a token's `sub`) and when: `{doc, subject, createdAt}` |
//!
//! `{doc}` is a document id or an `automerge:` URL; hashes may be unique
//! prefixes of 6+ hex digits. The API is a client of this very node,
//! connected in-process (no socket, so whatever the listener speaks: TLS,
//! tokens), so it sees exactly what clients see, and a rollback syncs to
//! every replica like any edit. (`/creator` needs the node's SQLite
//! database: edges, and hubs on SQLite.)
//!
//! Who may call it: see `crate::admin` (an admin token with auth
//! on, `--admin-token`, or loopback in open dev mode; no cross-site
//! `POST`). With `--admin-listen` it is served only on that listener.

use std::sync::Arc;
use std::time::Duration;

use crate::admin::Failure;
use crate::runtime::NodeEvents;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use meridian_protocol::ids::{AutomergeUrl, DocumentId};
use serde::Deserialize;
use tokio::sync::OnceCell;

use crate::client::{Client, ClientError, ClientOptions};
use crate::document as cli;

/// How long a request waits for a document to be found.
const FIND_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
struct Admin {
    /// This node's loop, which the API's client connects to.
    events: NodeEvents,
    /// The node's SQLite database (read for `/creator`), if it has one.
    database: Option<Arc<std::path::Path>>,
    client: Arc<OnceCell<Client>>,
}

/// The document routes of the node whose loop is `events` (its client
/// connects there in-process); `database`: its SQLite file, if any.
/// Callers are checked by the layer the node puts over every operator
/// route ([`crate::admin::protect`]).
pub fn router(events: NodeEvents, database: Option<&std::path::Path>) -> Router {
    let admin = Admin { events, database: database.map(Arc::from), client: Arc::default() };
    Router::new()
        .route("/api/docs/{doc}", get(value))
        .route("/api/docs/{doc}/history", get(history))
        .route("/api/docs/{doc}/rollback", post(rollback))
        .route("/api/docs/{doc}/export", get(export))
        .route("/api/docs/{doc}/creator", get(creator))
        .with_state(admin)
}

fn bad_request(e: impl ToString) -> Failure {
    Failure(StatusCode::BAD_REQUEST, e.to_string())
}

impl Admin {
    /// The in-process client, connected on first use, and the document found.
    async fn open(&self, doc: &str) -> Result<(&Client, DocumentId), Failure> {
        let id = parse_doc(doc)?;
        let client = self
            .client
            .get_or_try_init(|| Client::in_process(self.events.clone(), ClientOptions::default()))
            .await
            .map_err(|e| Failure(StatusCode::SERVICE_UNAVAILABLE, format!("cannot reach this node's loop: {e}")))?;
        match tokio::time::timeout(FIND_TIMEOUT, client.find(id)).await {
            Ok(Ok(())) => Ok((client, id)),
            Ok(Err(ClientError::Unavailable(_))) => {
                Err(Failure(StatusCode::NOT_FOUND, format!("document {id} is not here nor upstream")))
            }
            Ok(Err(e)) => Err(Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
            Err(_) => Err(Failure(
                StatusCode::GATEWAY_TIMEOUT,
                format!("document {id} was not found within {FIND_TIMEOUT:?}"),
            )),
        }
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
    // Answer once this node has it durably (it only advertises committed heads).
    let _ = tokio::time::timeout(FIND_TIMEOUT, client.wait_acked(id)).await;
    let (heads, value) = admin
        .read(client, id, |d| (d.get_heads().iter().map(ToString::to_string).collect::<Vec<_>>(), cli::to_json(d)))
        .await?;
    Ok(axum::Json(serde_json::json!({ "heads": heads, "value": value })).into_response())
}

async fn creator(State(admin): State<Admin>, Path(doc): Path<String>) -> Result<Response, Failure> {
    let id = parse_doc(&doc)?;
    let Some(database) = admin.database.clone() else {
        return Err(Failure(StatusCode::NOT_FOUND, "this node records no creators (no SQLite store)".into()));
    };
    let found = tokio::task::spawn_blocking(move || crate::store::creator_of(&database, &id))
        .await
        .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    match found {
        Some((subject, at)) => {
            Ok(axum::Json(serde_json::json!({ "doc": id.to_string(), "subject": subject, "createdAt": at }))
                .into_response())
        }
        None => Err(Failure(
            StatusCode::NOT_FOUND,
            format!("no creator recorded for {id} here (created on another node, or by a node link)"),
        )),
    }
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
