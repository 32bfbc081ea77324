//! `GET /info`: who this edge is and how its hub link is, as JSON; readable
//! from any web page, for connection panels such as the demo editor's.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use meridian_node::metrics::NodeMetrics;

/// What `/info` reports besides live metrics.
#[derive(Clone, Debug, Default)]
pub struct NodeInfo {
    pub peer_id: String,
    /// The name the hub knows this edge by; `None` without an uplink.
    pub edge_id: Option<String>,
    /// The hubs' QUIC addresses, in order of preference; empty without an uplink.
    pub hubs: Vec<String>,
    /// `"tokens"`, or `"open"` in open dev mode (no token needed).
    pub auth: &'static str,
}

/// `GET /info`: `{"peerId", "edgeId", "auth": "tokens" | "open",
/// "connections", "documentsLoaded", "hub": {"addr", "hubs", "hubId",
/// "connected", "rttMs", "failovers"} | null}`: `addr` is the hub in use (the
/// first one given while none is), `hubs` every hub given to `--hub`, and
/// `hubId` the id of the hub in use (`null` while disconnected).
/// `/info` of an edge, merged into [`meridian_node::server::router`]'s routes.
pub fn router(metrics: Arc<NodeMetrics>, info: NodeInfo) -> Router {
    Router::new().route("/info", get(info_handler)).with_state((metrics, Arc::new(info)))
}

async fn info_handler(State((m, info)): State<(Arc<NodeMetrics>, Arc<NodeInfo>)>) -> impl IntoResponse {
    let hub = info.hubs.first().map(|first| {
        let in_use = m.uplink_in_use();
        serde_json::json!({
            "addr": in_use.as_ref().map_or(first, |(addr, _)| addr),
            "hubs": info.hubs,
            "hubId": in_use.as_ref().map(|(_, id)| id),
            "connected": m.uplink_connected.get() == 1,
            "rttMs": (m.uplink_rtt_seconds.get() * 1e6).round() / 1e3,
            "failovers": m.uplink_failovers_total.get(),
        })
    });
    let body = serde_json::json!({
        "peerId": info.peer_id,
        "edgeId": info.edge_id,
        "auth": info.auth,
        "connections": m.connections.get(),
        "documentsLoaded": m.documents_loaded.get(),
        "hub": hub,
    });
    ([(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")], axum::Json(body))
}
