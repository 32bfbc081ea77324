//! One edge's link to the hub, from admission to close: the accept loop,
//! its `hello` (`admission`), registration with the node loop (trusted, or
//! untrusted with the grants its clients' tokens forward), the document
//! pump, the report stream for placement, and the keys and revocations
//! every edge is told of.

use std::sync::Arc;

use meridian_node::auth::Keyring;
use meridian_node::metrics::NodeMetrics;
use meridian_node::quic;
use meridian_node::runtime::{NodeEvent, NodeEvents, register_node, register_untrusted_node};
use meridian_protocol::codec::federation::{self, Control, FrameKind};
use meridian_protocol::engine::Direction;
use meridian_protocol::ids::ConnId;
use meridian_protocol::log::Escaped;
use meridian_protocol::log::Maybe;
use tokio::sync::mpsc;

use crate::placement::EdgeId;
use crate::placer::PlacerEvent;
use crate::revocations::{self, Revocations};
use crate::{HubConfig, admission};

/// Accepts edges; each connection is a task owned by the loop's `JoinSet`.
pub(crate) async fn accept_loop(
    endpoint: quinn::Endpoint,
    config: HubConfig,
    shared: Arc<EdgeShared>,
    events: NodeEvents,
    placer: mpsc::Sender<PlacerEvent>,
) {
    let config = Arc::new(config);
    let mut next_conn = 0u64;
    quic::accept_each(endpoint, |incoming| {
        next_conn += 1;
        serve_edge(incoming, config.clone(), shared.clone(), events.clone(), placer.clone(), next_conn)
    })
    .await;
}

/// What every edge connection shares: the credential edges present to
/// each other, and the revocations every edge is told of.
#[derive(Debug)]
pub(crate) struct EdgeShared {
    pub(crate) peer_secret: String,
    pub(crate) revocations: Arc<Revocations>,
    /// The tier's public keys (PEM): handed to every edge, again on change.
    pub(crate) auth_keys: Arc<crate::keys::TierKeys>,
    /// Failed `hello`s per client address.
    pub(crate) failures: admission::Failures,
    /// Verifies the tokens untrusted edges forward.
    pub(crate) keyring: Option<Arc<Keyring>>,
    pub(crate) metrics: Arc<NodeMetrics>,
}

/// A token an untrusted edge forwarded for one of its clients (an `auth`
/// control frame): verified here, its grants are added to the edge's. It
/// is queued on the node loop at once, so it is in force before the
/// frames the edge sent after it.
fn grant_forwarded(bytes: &[u8], conn: ConnId, edge_id: &str, shared: &EdgeShared, events: &NodeEvents) {
    let Ok(Control::Auth { token }) = federation::decode_control(bytes) else { return };
    let Some(keyring) = &shared.keyring else { return };
    match keyring.verify(&token, meridian_node::auth::unix_now()) {
        Ok(grant) => {
            if events.try_send(NodeEvent::Grant { conn, access: grant.access() }).is_err() {
                tracing::warn!(edge = %Escaped(edge_id), "node loop busy: a forwarded grant was dropped");
            }
        }
        Err(reason) => {
            shared.metrics.auth_refused(reason);
            tracing::info!(edge = %Escaped(edge_id), %reason, "an untrusted edge forwarded a token that does not hold");
        }
    }
}

/// Tells the edge on `conn` every revocation, now and whenever one is
/// added; ends when the node loop does.
async fn push_revocations(events: &NodeEvents, conn: ConnId, revocations: &Revocations) {
    let mut changes = revocations.subscribe();
    loop {
        let list = changes.borrow_and_update().clone();
        if !list.is_empty() {
            let bytes = federation::encode_control(&revocations::notice(&list));
            if events.send(NodeEvent::SendControl { conn, bytes }).await.is_err() {
                return;
            }
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// Tells the edge on `conn` the tier's keys, now and whenever they change
/// (an edge replaces the hub's keys it holds with each list: a key removed
/// is no longer accepted); ends when the node loop does.
async fn push_keys(events: &NodeEvents, conn: ConnId, keys: &crate::keys::TierKeys) {
    let mut changes = keys.subscribe();
    let mut told_any = false;
    loop {
        let list = changes.borrow_and_update().clone();
        // An empty list is sent only to take back keys told before.
        if !list.is_empty() || told_any {
            told_any = true;
            let bytes = federation::encode_control(&Control::AuthKeys(list));
            if events.send(NodeEvent::SendControl { conn, bytes }).await.is_err() {
                return;
            }
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// Runs one edge connection from handshake to close.
async fn serve_edge(
    incoming: quinn::Incoming,
    config: Arc<HubConfig>,
    shared: Arc<EdgeShared>,
    events: NodeEvents,
    placer: mpsc::Sender<PlacerEvent>,
    conn_no: u64,
) {
    let remote = incoming.remote_address();
    let connection = match incoming.await {
        Ok(c) => c,
        Err(e) => return tracing::info!(%remote, error = %e, "edge connection failed"),
    };
    if shared.failures.blocked(remote.ip(), config.max_auth_failures_per_minute) {
        shared.metrics.limit_hit("edge_auth_failures");
        tracing::warn!(%remote, "refused an edge: too many failed authentications from its address");
        return connection.close(quinn::VarInt::from_u32(1), b"too many failed authentications; try again later");
    }
    // A connection that opens no stream, or says nothing, is dropped.
    let opened = tokio::time::timeout(config.hello_timeout, connection.accept_bi()).await;
    let (mut send, mut recv) = match opened {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return tracing::info!(%remote, error = %e, "edge opened no stream"),
        Err(_) => {
            shared.metrics.limit_hit("handshake_timeout");
            return connection.close(quinn::VarInt::from_u32(1), b"no stream opened in time");
        }
    };
    let hello = match admission::handshake(&mut send, &mut recv, &config, &shared.peer_secret).await {
        Ok(hello) => hello,
        Err(reason) => {
            tracing::warn!(%remote, reason = %Escaped(&reason.to_string()), "refused an edge");
            match reason {
                admission::HelloError::Timeout => shared.metrics.limit_hit("handshake_timeout"),
                _ => shared.failures.failed(remote.ip()),
            }
            return quic::refuse(&connection, send, &reason.to_string()).await;
        }
    };
    // Told apart by the id its hello authenticated, not by the peer id it
    // joins with (edges started without --peer-id all join as
    // `meridian-edge`).
    let untrusted = config.untrusted_edges.contains(&hello.node_id);
    let registered = if untrusted {
        register_untrusted_node(&events, &hello.node_id).await
    } else {
        register_node(&events, Direction::Incoming, &hello.node_id).await
    };
    let Some((conn, out)) = registered else { return };
    let edge_id = hello.node_id;
    tracing::info!(%remote, %edge_id, %conn, peer_addr = %Maybe(&hello.peer_addr), "edge connected");
    let edge = EdgeId::new(edge_id.clone());
    let up = PlacerEvent::EdgeUp {
        edge: edge.clone(),
        conn: conn_no,
        remote,
        hub_rtt: connection.rtt(),
        node_conn: Some(conn),
        peer_addr: hello.peer_addr,
        peer_fingerprint: hello.peer_fingerprint,
    };
    let _ = placer.send(up).await;
    let pump = quic::pump(
        &connection,
        send,
        recv,
        conn,
        &events,
        out,
        quic::Reading::unthrottled(config.max_frame_bytes),
        |_| {},
        |bytes| {
            if untrusted {
                grant_forwarded(&bytes, conn, &edge_id, &shared, &events);
            }
        },
    );
    // Reports arrive beside the documents; if they stop, documents keep going.
    let reports = async {
        let reason = read_reports(&connection, &edge, conn_no, &placer, config.max_frame_bytes).await;
        tracing::info!(%remote, %edge_id, %reason, "reports from the edge ended");
        std::future::pending::<std::convert::Infallible>().await
    };
    let revoked = async {
        tokio::join!(push_keys(&events, conn, &shared.auth_keys), push_revocations(&events, conn, &shared.revocations));
        std::future::pending::<std::convert::Infallible>().await
    };
    let reason = tokio::select! {
        reason = pump => reason,
        never = reports => match never {},
        never = revoked => match never {},
    };
    let _ = placer.send(PlacerEvent::EdgeDown { edge, conn: conn_no }).await;
    tracing::info!(%remote, %edge_id, %reason, "edge disconnected");
}

/// Reads the edge's report stream (a unidirectional stream of control
/// frames) and hands each report to the placement task.
async fn read_reports(
    connection: &quinn::Connection,
    edge: &EdgeId,
    conn: u64,
    placer: &mpsc::Sender<PlacerEvent>,
    limit: usize,
) -> String {
    let mut recv = match connection.accept_uni().await {
        Ok(r) => r,
        Err(e) => return e.to_string(),
    };
    loop {
        let bytes = match quic::read_frame(&mut recv, limit).await {
            Ok(Some((FrameKind::Control, bytes))) => bytes,
            Ok(Some((FrameKind::Repo, _))) => return "a document frame on the report stream".into(),
            Ok(None) => return "stream finished".into(),
            Err(e) => return e.to_string(),
        };
        match federation::decode_control(&bytes) {
            Ok(Control::Report(report)) => {
                let event = PlacerEvent::Report { edge: edge.clone(), conn, report, hub_rtt: connection.rtt() };
                if placer.send(event).await.is_err() {
                    return "placement task stopped".into();
                }
            }
            // Newer control messages on this stream are not for us.
            Ok(other) => tracing::debug!(%edge, ?other, "ignoring a control message on the report stream"),
            Err(e) => tracing::debug!(%edge, error = %e, "ignoring an undecodable control message"),
        }
    }
}
