//! The documents open at the hub and their replicas, and the divergent
//! ones (operator routes): `GET /api/docs` — every document open here with
//! its heads and a summary of its replicas; `GET /api/docs/{doc}/replicas` — the hub's durable
//! heads, and per replica (each edge syncing the document, or a client at
//! `/sync`) its heads, whether they are the hub's, how long it has been
//! apart, how long ago it last spoke, how long it last took to confirm a
//! change durable at the hub (`lag_ms`: this hop's replication lag),
//! whether it is divergent and how many forced resyncs it had; `GET /api/divergence` — every divergent replica.
//! The runtime checks replicas every housekeeping interval
//! (`Engine::check_divergence`, `--divergence-after-secs`).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use meridian_node::runtime::{NodeEvent, NodeEvents};
use meridian_protocol::automerge::ChangeHash;
use meridian_protocol::engine::ReplicaStatus;
use meridian_protocol::ids::encode_head;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::oneshot;

type Answer = Result<Json<Value>, (StatusCode, String)>;

fn stopped<E>(_: E) -> (StatusCode, String) {
    (StatusCode::SERVICE_UNAVAILABLE, "the hub's node loop stopped\n".into())
}

/// `GET /api/docs/{doc}/replicas`.
pub async fn replicas(State(events): State<NodeEvents>, Path(doc): Path<String>) -> Answer {
    let Some(id) = meridian_node::auth::parse_doc(&doc) else {
        return Err((StatusCode::BAD_REQUEST, format!("not a document id or automerge: URL: {doc}\n")));
    };
    let (reply, answer) = oneshot::channel();
    events.send(NodeEvent::Replicas { doc: id, reply }).await.map_err(stopped)?;
    let Some((ours, replicas)) = answer.await.map_err(stopped)? else {
        return Err((
            StatusCode::NOT_FOUND,
            format!("{id} is not open at this hub (no replica syncs it with this hub now)\n"),
        ));
    };
    let list: Vec<Value> = replicas.iter().map(replica_json).collect();
    Ok(Json(json!({ "doc": id.to_string(), "heads": heads(&ours), "replicas": list })))
}

fn heads(h: &[ChangeHash]) -> Vec<String> {
    h.iter().map(encode_head).collect()
}

fn replica_json(r: &ReplicaStatus) -> Value {
    json!({
        "conn": r.conn.0,
        "peer": r.peer.as_ref().map(|p| p.to_string()),
        "subject": r.subject,
        "heads": r.heads.as_deref().map(heads),
        "in_sync": r.in_sync,
        "apart_ms": r.apart_ms,
        "last_heard_ms_ago": r.heard_ms_ago,
        "lag_ms": r.lag_ms,
        "divergent": r.divergent,
        "repairs": r.repairs,
    })
}

/// Documents listed at once by default, and at most.
const LIST_DEFAULT: usize = 200;
const LIST_MAX: usize = 1000;

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    after: Option<String>,
    limit: Option<usize>,
}

/// `GET /api/docs[?after=DOC&limit=N]`: the documents open at this hub, in
/// id order, each with its heads and its replicas (`next`: where the next
/// page starts, if there is one).
pub async fn documents(State(events): State<NodeEvents>, Query(q): Query<ListQuery>) -> Answer {
    let after = match q.after.as_deref().filter(|a| !a.is_empty()) {
        Some(a) => Some(
            meridian_node::auth::parse_doc(a)
                .ok_or_else(|| (StatusCode::BAD_REQUEST, format!("`after` is not a document id: {a}\n")))?,
        ),
        None => None,
    };
    let limit = q.limit.unwrap_or(LIST_DEFAULT).clamp(1, LIST_MAX);
    let (reply, answer) = oneshot::channel();
    events.send(NodeEvent::Documents { after, limit: limit + 1, reply }).await.map_err(stopped)?;
    let mut docs = answer.await.map_err(stopped)?;
    let more = docs.len() > limit;
    docs.truncate(limit);
    let next = if more { docs.last().map(|(d, _, _)| d.to_string()) } else { None };
    let list: Vec<Value> = docs
        .iter()
        .map(|(doc, ours, replicas)| {
            json!({
                "doc": doc.to_string(),
                "heads": heads(ours),
                "replicas": replicas.len(),
                "in_sync": replicas.iter().filter(|r| r.in_sync).count(),
                "divergent": replicas.iter().filter(|r| r.divergent).count(),
                "max_lag_ms": replicas.iter().filter_map(|r| r.lag_ms).max(),
                "last_heard_ms_ago": replicas.iter().filter_map(|r| r.heard_ms_ago).min(),
            })
        })
        .collect();
    Ok(Json(json!({ "documents": list, "next": next })))
}

/// `GET /api/divergence`.
pub async fn divergence(State(events): State<NodeEvents>) -> Answer {
    let (reply, answer) = oneshot::channel();
    events.send(NodeEvent::Divergent { reply }).await.map_err(stopped)?;
    let list: Vec<Value> = answer
        .await
        .map_err(stopped)?
        .into_iter()
        .map(|(doc, peer, apart_ms)| json!({ "doc": doc.to_string(), "replica": peer, "apart_ms": apart_ms }))
        .collect();
    Ok(Json(json!({ "divergent": list })))
}
