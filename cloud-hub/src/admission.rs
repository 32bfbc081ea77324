//! Admitting an edge: its `hello` (a known edge id and the matching
//! secret, within [`HELLO_TIMEOUT`] of connecting) and the hub's
//! `welcome`; and the limit on failed attempts per client address
//! ([`Failures`]), so a secret cannot be guessed at network speed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use meridian_node::quic::{self, FrameIoError};
use meridian_protocol::codec::federation::{self, Control, FEDERATION_VERSION, FrameError, FrameKind};

use crate::{EdgeAuth, HubConfig};

/// Default of [`HubConfig::hello_timeout`].
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Addresses remembered at most; past it, those whose minute is over are
/// forgotten.
const MAX_TRACKED: usize = 10_000;

/// Failed authentications per client address in the current minute.
#[derive(Debug, Default)]
pub(crate) struct Failures(Mutex<HashMap<IpAddr, (Instant, u32)>>);

impl Failures {
    /// `ip` failed `limit` times this minute (0: never blocked).
    pub(crate) fn blocked(&self, ip: IpAddr, limit: u32) -> bool {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        limit > 0 && map.get(&ip).is_some_and(|(start, n)| start.elapsed() < Duration::from_secs(60) && *n >= limit)
    }

    pub(crate) fn failed(&self, ip: IpAddr) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_TRACKED {
            map.retain(|_, (start, _)| start.elapsed() < Duration::from_secs(60));
        }
        let entry = map.entry(ip).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= Duration::from_secs(60) {
            *entry = (Instant::now(), 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

/// What an accepted edge said in its `hello`.
pub(crate) struct EdgeHello {
    pub(crate) node_id: String,
    pub(crate) peer_addr: Option<String>,
    pub(crate) peer_fingerprint: Option<String>,
}

/// Why the hub refused an edge (the reason is sent to the edge in a
/// `refused` frame, and the edge logs it).
#[derive(Debug, thiserror::Error)]
pub(crate) enum HelloError {
    #[error("no hello in time")]
    Timeout,
    #[error("bad hello frame: {0}")]
    Frame(FrameIoError),
    #[error("expected a hello control frame first")]
    NotControl,
    #[error(transparent)]
    Decode(FrameError),
    #[error("expected hello")]
    NotHello,
    #[error("unsupported federation version {0} (this hub speaks {FEDERATION_VERSION})")]
    Version(u64),
    #[error("unknown edge {0:?} or wrong secret")]
    Credential(String),
    #[error(transparent)]
    Welcome(FrameIoError),
    #[error("an edge id is 1 to 128 characters, none of them a control character")]
    BadId,
}

/// What an edge id may be (in open dev mode any is accepted, so it is
/// checked: it appears in logs, metrics and `/topology`).
pub(crate) fn valid_edge_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && !id.chars().any(char::is_control)
}

/// Reads the edge's `hello`, checks its credential and answers `welcome`.
pub(crate) async fn handshake(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    config: &HubConfig,
    peer_secret: &str,
) -> Result<EdgeHello, HelloError> {
    let frame = tokio::time::timeout(config.hello_timeout, quic::read_frame(recv, 64 * 1024))
        .await
        .map_err(|_| HelloError::Timeout)?
        .map_err(HelloError::Frame)?;
    let Some((FrameKind::Control, bytes)) = frame else { return Err(HelloError::NotControl) };
    let Control::Hello { version, node_id, secret, peer_addr, peer_fingerprint } =
        federation::decode_control(&bytes).map_err(HelloError::Decode)?
    else {
        return Err(HelloError::NotHello);
    };
    if version != FEDERATION_VERSION {
        return Err(HelloError::Version(version));
    }
    if !valid_edge_id(&node_id) {
        return Err(HelloError::BadId);
    }
    if let EdgeAuth::Secrets(secrets) = &config.auth {
        let ok =
            secrets.get(&node_id).is_some_and(|expected| quic::same_secret(expected.as_bytes(), secret.as_bytes()));
        if !ok {
            return Err(HelloError::Credential(node_id));
        }
    }
    let welcome = Control::Welcome {
        version: FEDERATION_VERSION,
        hub_id: config.hub_id.clone(),
        report_interval_ms: Some(config.report_interval.as_millis() as u64),
        // Edges only need it to reach each other's homes.
        peer_secret: config.placement_moves.then(|| peer_secret.to_owned()),
    };
    quic::write_frame(send, FrameKind::Control, &federation::encode_control(&welcome))
        .await
        .map_err(HelloError::Welcome)?;
    Ok(EdgeHello { node_id, peer_addr, peer_fingerprint })
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

    #[test]
    fn edge_ids_with_control_characters_are_refused() {
        assert!(valid_edge_id("eu-1"));
        assert!(!valid_edge_id("eu\n2026-12-06 INFO forged"));
        assert!(!valid_edge_id(""));
        assert!(!valid_edge_id(&"x".repeat(129)));
    }

    #[test]
    fn an_address_is_blocked_after_its_failures_and_others_are_not() {
        let f = Failures::default();
        let (a, b) = (IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)));
        for _ in 0..3 {
            assert!(!f.blocked(a, 3));
            f.failed(a);
        }
        assert!(f.blocked(a, 3));
        assert!(!f.blocked(b, 3), "another address is not");
        assert!(!f.blocked(a, 0), "0: no limit");
    }
}
