//! A document's replicas as the hub sees them, and the divergent ones
//! (operator routes): `GET /api/docs/{doc}/replicas` — the hub's durable
//! heads, and per replica (each edge syncing the document, or a client at
//! `/sync`) its heads, whether they are the hub's, how long it has been
//! apart, how long ago it last spoke, how long it last took to confirm a
//! change durable at the hub (`lag_ms`: this hop's replication lag),
//! whether it is divergent and how many forced resyncs it had; `GET /api/divergence` — every divergent replica.
//! The runtime checks replicas every housekeeping interval
//! (`Engine::check_divergence`, `--divergence-after-secs`).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use meridian_node::runtime::NodeEvent;
use meridian_protocol::ids::encode_head;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

type Answer = Result<Json<Value>, (StatusCode, String)>;

fn stopped<E>(_: E) -> (StatusCode, String) {
    (StatusCode::SERVICE_UNAVAILABLE, "the hub's node loop stopped\n".into())
}

/// `GET /api/docs/{doc}/replicas`.
pub async fn replicas(State(events): State<mpsc::Sender<NodeEvent>>, Path(doc): Path<String>) -> Answer {
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
    let heads = |h: &[meridian_protocol::automerge::ChangeHash]| h.iter().map(encode_head).collect::<Vec<_>>();
    let list: Vec<Value> = replicas
        .iter()
        .map(|r| {
            json!({
                "conn": r.conn.0,
                "peer": r.peer.as_ref().map(|p| p.to_string()),
                "heads": r.heads.as_deref().map(heads),
                "in_sync": r.in_sync,
                "apart_ms": r.apart_ms,
                "last_heard_ms_ago": r.heard_ms_ago,
                "lag_ms": r.lag_ms,
                "divergent": r.divergent,
                "repairs": r.repairs,
            })
        })
        .collect();
    Ok(Json(json!({ "doc": id.to_string(), "heads": heads(&ours), "replicas": list })))
}

/// `GET /api/divergence`.
pub async fn divergence(State(events): State<mpsc::Sender<NodeEvent>>) -> Answer {
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
