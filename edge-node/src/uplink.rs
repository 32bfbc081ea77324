//! The edge's uplink: one QUIC connection to a hub, kept up with
//! exponential backoff and jitter. Given several hubs (a tier of hubs
//! sharing one store), one is in use and the others are fail-overs: when
//! the link is lost or an attempt fails, the next hub in the list is tried,
//! and the backoff grows only once every hub has failed in a row. Sync
//! states are kept per storage id, which hubs on one store share, so a
//! fail-over does not resend whole histories. Once the hub welcomes the edge, the link
//! is registered with the node runtime as an `Outgoing` (upstream)
//! connection, so the engine syncs every document with the hub and asks it
//! for documents the edge does not have. If the hub asks for them, demand
//! and latency reports run beside it ([`crate::report`]). With placement
//! moves, the hub's `home` notices arrive on the document stream and go to
//! the peer actor ([`crate::peers`]).

use std::sync::Arc;
use std::time::Duration;

use meridian_node::auth::{Keyring, Revocation};
use meridian_node::metrics::NodeMetrics;
use meridian_node::quic::{self, FEDERATION_ALPN, FrameIoError};
use meridian_node::runtime::{NodeEvent, NodeEvents, register};
use meridian_protocol::codec::federation::{self, Control, FEDERATION_VERSION, FrameError, FrameKind, RevokeNotice};
use meridian_protocol::engine::Direction;
use meridian_protocol::log::Maybe;

use crate::config::UplinkConfig;
use crate::peers::PeerHandle;
use meridian_node::backoff::Backoff;

/// Why a session with the hub ended.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("connecting to the hub: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("connecting to the hub: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("no answer from the hub within {0:?}")]
    ConnectTimeout(Duration),
    #[error("the hub refused this edge: {0}")]
    Refused(String),
    #[error("handshake with the hub failed: {0}")]
    Handshake(#[from] HandshakeError),
}

/// What went wrong between our `hello` and the hub's answer.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error(transparent)]
    Frame(#[from] FrameIoError),
    #[error("no answer to hello within 10 s")]
    Timeout,
    #[error("unexpected {0:?}")]
    Unexpected(Box<Control>),
    #[error(transparent)]
    Decode(FrameError),
    #[error("the hub closed the stream during the handshake")]
    Closed,
}

/// Keeps the uplink up until the task is aborted.
pub async fn run(
    config: UplinkConfig,
    events: NodeEvents,
    metrics: Arc<NodeMetrics>,
    peers: Option<PeerHandle>,
    keyring: Option<Arc<Keyring>>,
) {
    let endpoint = match quic::client_endpoint(config.hubs[0], &config.trust, FEDERATION_ALPN) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "uplink cannot start");
            return;
        }
    };
    metrics.set_uplink_hubs(config.hubs.iter().map(ToString::to_string).collect());
    let mut backoff = Backoff::new(config.min_backoff, config.max_backoff);
    // The hub tried next, and how many attempts failed since the last session.
    let (mut at, mut failed) = (0, 0);
    loop {
        let hub = config.hubs[at];
        match session(&endpoint, at, &config, &events, &metrics, peers.as_ref(), keyring.as_deref()).await {
            Ok(reason) => {
                backoff.reset();
                failed = 0;
                tracing::warn!(%hub, %reason, "uplink to the hub lost; reconnecting");
            }
            Err(UplinkError::Refused(reason)) => {
                failed += 1;
                metrics.uplink_refusals_total.inc();
                tracing::error!(%hub, edge_id = %config.edge_id, %reason, "the hub refused this edge; check --edge-id and --hub-secret");
            }
            Err(e) => {
                failed += 1;
                tracing::warn!(%hub, error = %e, "uplink attempt failed");
            }
        }
        metrics.uplink_connected.set(0);
        metrics.set_uplink_in_use(None);
        if config.hubs.len() > 1 {
            at = (at + 1) % config.hubs.len();
            tracing::info!(next = %config.hubs[at], "failing over to the next hub");
        }
        tokio::time::sleep(next_delay(&mut backoff, failed, config.hubs.len(), config.min_backoff)).await;
    }
}

/// The wait before the next attempt: the backoff's next delay once every hub
/// failed in a row (or right after a lost link, its minimum), else a short
/// jittered pause before trying the next hub.
fn next_delay(backoff: &mut Backoff, failed: usize, hubs: usize, min: Duration) -> Duration {
    if failed == 0 || failed.is_multiple_of(hubs) {
        backoff.next_delay()
    } else {
        min.mul_f64(0.5 + rand::random::<f64>() / 2.0)
    }
}

/// The hub's revocations: new connections with those tokens are refused,
/// and live ones closed (without auth there are no tokens to revoke).
fn revoke(keyring: Option<&Keyring>, events: &NodeEvents, list: Vec<RevokeNotice>, file: Option<&std::path::Path>) {
    let Some(keyring) = keyring else { return };
    let list: Vec<Revocation> = list.into_iter().map(|r| Revocation { jti: r.jti, sub: r.sub, at: r.at }).collect();
    let new = keyring.unknown(&list);
    if new.is_empty() {
        return;
    }
    // Known only once the loop has them: a revocation the loop missed comes
    // again with the hub's next push (the whole list) and is acted on then.
    if events.try_send(NodeEvent::Revoke(new.clone())).is_err() {
        tracing::error!(revocations = new.len(), "the node loop is full: revocations wait for the hub's next push");
        return;
    }
    for r in keyring.revoke(&new) {
        tracing::info!(jti = %Maybe(&r.jti), sub = %Maybe(&r.sub), "the hub revoked a token");
    }
    // Kept, so a restart while the hub is unreachable still refuses them.
    if let Some(path) = file
        && let Err(e) = meridian_node::auth::save_revocations(path, &keyring.revocations())
    {
        tracing::error!(path = %path.display(), error = %e, "could not keep the hub's revocations");
    }
}

/// The hub's public keys: with auth on, tokens they signed are accepted too
/// (a new key reaches every edge through its hub). Without auth on there
/// are no tokens to check.
fn add_keys(keyring: Option<&Keyring>, keys: &[String]) {
    let Some(keyring) = keyring else { return };
    match keyring.set_hub_keys(keys) {
        Ok(()) => tracing::info!(keys = keys.len(), "accepting the hub's public keys"),
        Err(e) => tracing::warn!(error = %e, "the hub sent a key that does not load"),
    }
}

/// One connection to the hub, from handshake to loss; returns why it ended.
/// `at`: the hub's index in `config.hubs`.
async fn session(
    endpoint: &quinn::Endpoint,
    at: usize,
    config: &UplinkConfig,
    events: &NodeEvents,
    metrics: &NodeMetrics,
    peers: Option<&PeerHandle>,
    keyring: Option<&Keyring>,
) -> Result<String, UplinkError> {
    let hub = config.hubs[at];
    let connecting = endpoint.connect(hub, &config.server_name)?;
    let connection = tokio::time::timeout(config.connect_timeout, connecting)
        .await
        .map_err(|_| UplinkError::ConnectTimeout(config.connect_timeout))??;
    let (mut send, mut recv) = connection.open_bi().await?;
    let hello = Control::Hello {
        version: FEDERATION_VERSION,
        node_id: config.edge_id.clone(),
        secret: config.secret.clone(),
        peer_addr: peers.and_then(|p| p.listen_addr.clone()),
        peer_fingerprint: peers.and_then(|p| p.fingerprint.clone()),
    };
    quic::write_frame(&mut send, FrameKind::Control, &federation::encode_control(&hello))
        .await
        .map_err(HandshakeError::from)?;
    let reply = tokio::time::timeout(Duration::from_secs(10), quic::read_frame(&mut recv, 64 * 1024))
        .await
        .map_err(|_| HandshakeError::Timeout)?
        .map_err(HandshakeError::from)?;
    let (hub_id, report_interval) = match reply {
        Some((FrameKind::Control, bytes)) => match federation::decode_control(&bytes) {
            Ok(Control::Welcome { hub_id, report_interval_ms, peer_secret, .. }) => {
                tracing::info!(%hub, %hub_id, ?report_interval_ms, "uplink to the hub is up");
                if let Some(p) = peers {
                    p.dir.set_secret(peer_secret);
                    // The hub sends every home again on this connection.
                    let _ = p.events.send(crate::peers::PeerEvent::Reset).await;
                }
                (hub_id, report_interval_ms.map(crate::report::interval_from_hub))
            }
            Ok(Control::Refused { reason }) => return Err(UplinkError::Refused(reason)),
            Ok(other) => return Err(HandshakeError::Unexpected(Box::new(other)).into()),
            Err(e) => return Err(HandshakeError::Decode(e).into()),
        },
        _ => return Err(HandshakeError::Closed.into()),
    };
    let Some((conn, out)) = register(events, Direction::Outgoing).await else {
        return Ok("node stopped".into());
    };
    metrics.uplink_connected.set(1);
    metrics.set_uplink_in_use(Some((at, hub_id)));
    metrics.uplink_connects_total.inc();
    let rtt = |d: Duration| metrics.uplink_rtt_seconds.set(d.as_secs_f64());
    let on_control = |bytes: Vec<u8>| {
        match federation::decode_control(&bytes) {
            Ok(Control::Revoke(list)) => return revoke(keyring, events, list, config.revocations_file.as_deref()),
            Ok(Control::AuthKeys(keys)) => return add_keys(keyring, &keys),
            _ => {}
        }
        if let Some(p) = peers {
            p.on_control(&bytes);
        }
    };
    let pump = quic::pump(
        &connection,
        send,
        recv,
        conn,
        events,
        out,
        quic::Reading::unthrottled(config.max_frame_bytes),
        rtt,
        on_control,
    );
    // Reports run beside the documents; if they stop, documents keep going.
    let reports = async {
        if let Some(interval) = report_interval {
            let dir = peers.map(|p| p.dir.as_ref());
            let reason = crate::report::run(&connection, events, metrics, dir, interval).await;
            tracing::warn!(%hub, %reason, "demand reports to the hub stopped");
        }
        std::future::pending::<std::convert::Infallible>().await
    };
    tokio::select! {
        reason = pump => Ok(reason),
        never = reports => match never {},
    }
}
