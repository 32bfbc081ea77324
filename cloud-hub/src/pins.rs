//! Operators' pins of documents' homes (what `meridian-hub placement pin`
//! and `unpin` call), behind the admin guard with the other operator routes:
//! - `GET /api/placement/pins`: every pin;
//! - `PUT /api/placement/pins/{doc}` with `{"to": "EDGE-ID"}` or
//!   `{"to": "hub"}`: pins the document's home there;
//! - `DELETE /api/placement/pins/{doc}`: removes its pin.
//!
//! `{doc}` is a document id or an `automerge:` URL. Pins are kept in the
//! store, so every hub on it and every placer after a take-over honours
//! them; the placer reads them at each placement tick and moves a pinned
//! document to its pin whatever the costs and the dwell time say, while
//! the pinned edge is connected (when it is not, the document is placed as
//! if unpinned until it is back). With `--placement-moves` off the pinned
//! home is decided and shown, like every decision, but not acted on.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use meridian_node::store::StoredPin;
use meridian_protocol::ids::DocumentId;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::control::{ControlState, unix_ms};

type Answer = Result<Json<Value>, (StatusCode, String)>;

#[derive(Debug, Deserialize)]
pub struct PinRequest {
    /// An edge id, or `hub`.
    pub to: String,
}

fn doc(s: &str) -> Result<DocumentId, (StatusCode, String)> {
    meridian_node::auth::parse_doc(s)
        .ok_or_else(|| (StatusCode::BAD_REQUEST, format!("`{s}` is neither a document id nor an automerge: URL\n")))
}

fn unavailable(e: meridian_node::store::StoreError) -> (StatusCode, String) {
    (StatusCode::SERVICE_UNAVAILABLE, format!("the store: {e}\n"))
}

fn pin_json(p: &StoredPin) -> Value {
    json!({ "doc": p.doc.to_string(), "to": p.edge.as_deref().unwrap_or("hub"), "at_ms": p.at_ms })
}

/// `GET /api/placement/pins`.
pub async fn list(State(control): State<ControlState>) -> Answer {
    let pins = control.call(|s| s.pins()).await.map_err(unavailable)?;
    Ok(Json(json!({ "pins": pins.iter().map(pin_json).collect::<Vec<_>>() })))
}

/// `PUT /api/placement/pins/{doc}`.
pub async fn pin(
    State(control): State<ControlState>,
    Path(id): Path<String>,
    Json(request): Json<PinRequest>,
) -> Answer {
    let doc = doc(&id)?;
    let to = request.to.trim();
    let valid = !to.is_empty() && to.len() <= 128 && to.chars().all(|c| c.is_ascii_graphic());
    if !valid {
        return Err((StatusCode::BAD_REQUEST, "`to` is an edge id (printable ASCII, 1-128 bytes) or `hub`\n".into()));
    }
    let pin = StoredPin { doc, edge: (to != "hub").then(|| to.to_owned()), at_ms: unix_ms() };
    let stored = pin.clone();
    control.call(move |s| s.set_pin(&doc, Some(&stored))).await.map_err(unavailable)?;
    tracing::info!(%doc, to, "placement: document pinned");
    Ok(Json(json!({ "pinned": pin_json(&pin) })))
}

/// `DELETE /api/placement/pins/{doc}`.
pub async fn unpin(State(control): State<ControlState>, Path(id): Path<String>) -> Answer {
    let doc = doc(&id)?;
    let removed = control.call(move |s| s.set_pin(&doc, None)).await.map_err(unavailable)?;
    if !removed {
        return Err((StatusCode::NOT_FOUND, format!("{doc} is not pinned\n")));
    }
    tracing::info!(%doc, "placement: pin removed");
    Ok(Json(json!({ "unpinned": doc.to_string() })))
}
