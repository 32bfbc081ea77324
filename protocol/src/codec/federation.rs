//! Framing for QUIC streams and the federation control messages.
//!
//! On a QUIC stream (device ↔ edge, edge ↔ hub) every frame is
//! `[u32 big-endian length][u8 kind][payload]`, the length counting the kind
//! byte and the payload. Kind [`FrameKind::Repo`] carries one automerge-repo
//! message exactly as on a WebSocket; kind [`FrameKind::Control`] carries a
//! federation control message (a CBOR map with a `type`), whose set is
//! versioned by [`FEDERATION_VERSION`] and negotiated in `hello`.
//!
//! ## Compatibility
//!
//! [`FEDERATION_VERSION`] changes only when a message would be misread by a
//! peer of the other version. Additions a receiver may ignore do not bump
//! it: decoders skip unknown keys, and an unknown `type` is an error the
//! receiver drops (hubs and edges before demand reports ignored every
//! control frame after the handshake). Demand reports were added that way:
//! the hub offers them with `reportIntervalMs` in `welcome`; an edge that
//! does not know the key never reports, and an edge talking to a hub that
//! does not send it never does either.
//!
//! Placement moves (issue 6) were added the same way, still version 1:
//! `hello` may carry `peerAddr`/`peerFingerprint` (where the edge accepts
//! other edges, and its certificate), `welcome` may carry `peerSecret` (the
//! credential edges present to each other), reports may carry `peerRtts`,
//! and the hub sends [`Control::Home`] on the document stream. A hub that
//! predates them skips the keys and never sends `home`; an edge that
//! predates them skips the keys and drops `home` frames (edges always
//! ignored control frames after the handshake), so it keeps syncing every
//! document through the hub, which is always correct.
//!
//! Traces (issue 17) too: a node exporting traces sends [`Control::Trace`]
//! (a W3C `traceparent`) in front of a document message to another node;
//! a node that predates it drops the frame and reads the message as ever.
//!
//! Decoding never blocks and never trusts a length: [`check_frame`] says
//! whether a whole frame is buffered (mini-redis style) and rejects lengths
//! over the caller's limit before anything is allocated.

use std::collections::BTreeMap;

use minicbor::Decoder;
use minicbor::data::Type;

use crate::ids::DocumentId;

/// Version of the federation control message set.
pub const FEDERATION_VERSION: u64 = 1;

/// Length prefix plus kind byte.
pub const FRAME_HEADER_LEN: usize = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    Repo = 0,
    Control = 1,
}

/// Federation control messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Control {
    /// First frame from an edge (or device): who it is and its credential.
    /// An edge that accepts other edges also says where (`peer_addr`) and
    /// which certificate they must find there (`peer_fingerprint`, SHA-256
    /// hex).
    Hello { version: u64, node_id: String, secret: String, peer_addr: Option<String>, peer_fingerprint: Option<String> },
    /// The hub accepted the hello. With `report_interval_ms` it asks the
    /// edge for a [`Report`] that often (on a unidirectional stream of its
    /// own, so reports never queue behind document traffic). `peer_secret`
    /// is the credential edges of this hub present to each other (an edge
    /// ↔ edge `hello` carries it as its `secret`).
    Welcome { version: u64, hub_id: String, report_interval_ms: Option<u64>, peer_secret: Option<String> },
    /// The hub refused the hello; the connection is closed after this.
    Refused { reason: String },
    /// An edge's periodic demand and latency report.
    Report(Report),
    /// The hub's word on where a document's home is (sent only once the
    /// home has caught up, see ARCHITECTURE.md "Placement").
    Home(HomeNotice),
    /// A device's access token (`meridian-edge auth token`), as its first
    /// frame, before `join`: what a WebSocket client sends as `?token=`.
    Auth { token: String },
    /// The hub's revocations (all it knows, after `welcome`; then each new
    /// one): edges refuse those tokens and close connections holding them.
    Revoke(Vec<RevokeNotice>),
    /// The public keys (PEM) the hub accepts tokens from, after `welcome`:
    /// edges with auth on accept them too, so a new key reaches them.
    AuthKeys(Vec<String>),
    /// The W3C trace context (`traceparent`) of the document message that
    /// follows it on the same stream: a change's way across nodes is one
    /// trace. Sent only by a node exporting traces; a receiver that does
    /// not trace (or predates it) drops it like any unknown control frame.
    Trace { traceparent: String },
}

/// One revocation: a token by id (`jti`), or a subject's tokens issued at
/// or before `at` (seconds since the Unix epoch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevokeNotice {
    pub jti: Option<String>,
    pub sub: Option<String>,
    pub at: u64,
}

/// A document's announced home. `edge: None` means the hub.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HomeNotice {
    pub doc: DocumentId,
    pub edge: Option<String>,
    /// Where the home edge accepts other edges (QUIC, ALPN `meridian-peer/1`).
    pub addr: Option<String>,
    /// SHA-256 (hex) of the home edge's certificate: the only one to trust there.
    pub fingerprint: Option<String>,
}

/// What an edge measured over its last report window (DESIGN §5).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Increases by one per report on a connection.
    pub seq: u64,
    /// The span `writes` were counted over, in milliseconds.
    pub window_ms: u64,
    /// QUIC round-trip time of the uplink, as the edge measures it.
    pub uplink_rtt_micros: Option<u64>,
    /// A typical client ↔ edge round trip (absent when not measured).
    pub client_rtt_micros: Option<u64>,
    /// Documents with subscribers or writes in the window.
    pub docs: Vec<DocReport>,
    /// QUIC round trips of this edge's links to other edges, by edge id.
    pub peer_rtt_micros: BTreeMap<String, u64>,
}

/// One document's demand at the reporting edge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocReport {
    pub doc: DocumentId,
    /// Client connections subscribed to it now.
    pub subscribers: u32,
    /// Client writes (sync messages that brought new changes) in the window.
    pub writes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge { len: usize, limit: usize },
    #[error("empty frame")]
    Empty,
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("control message is not valid CBOR: {0}")]
    BadControl(String),
    #[error("control message lacks field `{0}`")]
    MissingField(&'static str),
    #[error("unknown control message type `{0}`")]
    UnknownControl(String),
}

/// Builds one frame.
pub fn encode_frame(kind: FrameKind, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len() + 1).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.push(kind as u8);
    out.extend_from_slice(payload);
    out
}

/// Reads a frame header: the kind and the payload length that follows.
pub fn parse_header(header: [u8; FRAME_HEADER_LEN], limit: usize) -> Result<(FrameKind, usize), FrameError> {
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len - 1 > limit {
        return Err(FrameError::TooLarge { len: len - 1, limit });
    }
    let kind = match header[4] {
        0 => FrameKind::Repo,
        1 => FrameKind::Control,
        k => return Err(FrameError::UnknownKind(k)),
    };
    Ok((kind, len - 1))
}

/// If `buf` starts with a whole frame, its kind, payload and total length.
pub fn check_frame(buf: &[u8], limit: usize) -> Result<Option<(FrameKind, &[u8], usize)>, FrameError> {
    let Some(header) = buf.get(..FRAME_HEADER_LEN) else { return Ok(None) };
    let mut h = [0u8; FRAME_HEADER_LEN];
    h.copy_from_slice(header);
    let (kind, len) = parse_header(h, limit)?;
    Ok(buf.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + len).map(|p| (kind, p, FRAME_HEADER_LEN + len)))
}

/// Encodes a control message as a CBOR map.
pub fn encode_control(c: &Control) -> Vec<u8> {
    let mut e = minicbor::Encoder::new(Vec::new());
    // Writing into a Vec cannot fail.
    let _ = match c {
        Control::Hello { version, node_id, secret, peer_addr, peer_fingerprint } => e
            .map(4 + u64::from(peer_addr.is_some()) + u64::from(peer_fingerprint.is_some()))
            .and_then(|e| e.str("type")?.str("hello")?.str("version")?.u64(*version)?.str("nodeId")?.str(node_id))
            .and_then(|e| e.str("secret")?.str(secret))
            .and_then(|e| opt_str(e, "peerAddr", peer_addr))
            .and_then(|e| opt_str(e, "peerFingerprint", peer_fingerprint))
            .map(|_| ()),
        Control::Welcome { version, hub_id, report_interval_ms, peer_secret } => e
            .map(3 + u64::from(report_interval_ms.is_some()) + u64::from(peer_secret.is_some()))
            .and_then(|e| e.str("type")?.str("welcome")?.str("version")?.u64(*version)?.str("hubId")?.str(hub_id))
            .and_then(|e| match report_interval_ms {
                Some(ms) => e.str("reportIntervalMs")?.u64(*ms),
                None => Ok(e),
            })
            .and_then(|e| opt_str(e, "peerSecret", peer_secret))
            .map(|_| ()),
        Control::Home(h) => {
            let n = 2 + u64::from(h.edge.is_some()) + u64::from(h.addr.is_some()) + u64::from(h.fingerprint.is_some());
            e.map(n)
                .and_then(|e| e.str("type")?.str("home")?.str("doc")?.str(&h.doc.to_string()))
                .and_then(|e| opt_str(e, "edge", &h.edge))
                .and_then(|e| opt_str(e, "addr", &h.addr))
                .and_then(|e| opt_str(e, "fingerprint", &h.fingerprint))
                .map(|_| ())
        }
        Control::Refused { reason } => {
            e.map(2).and_then(|e| e.str("type")?.str("refused")?.str("reason")?.str(reason)).map(|_| ())
        }
        Control::Report(r) => encode_report(&mut e, r),
        Control::Auth { token } => {
            e.map(2).and_then(|e| e.str("type")?.str("auth")?.str("token")?.str(token)).map(|_| ())
        }
        Control::Revoke(list) => encode_revoke(&mut e, list),
        Control::AuthKeys(keys) => encode_keys(&mut e, keys),
        Control::Trace { traceparent } => {
            e.map(2).and_then(|e| e.str("type")?.str("trace")?.str("traceparent")?.str(traceparent)).map(|_| ())
        }
    };
    e.into_writer()
}

type EncodeResult<'a> = Result<&'a mut minicbor::Encoder<Vec<u8>>, minicbor::encode::Error<std::convert::Infallible>>;

fn opt_str<'a>(e: &'a mut minicbor::Encoder<Vec<u8>>, key: &str, value: &Option<String>) -> EncodeResult<'a> {
    match value {
        Some(v) => e.str(key)?.str(v),
        None => Ok(e),
    }
}

fn encode_revoke(
    e: &mut minicbor::Encoder<Vec<u8>>,
    list: &[RevokeNotice],
) -> Result<(), minicbor::encode::Error<std::convert::Infallible>> {
    e.map(2)?.str("type")?.str("revoke")?.str("revoked")?.array(list.len() as u64)?;
    for r in list {
        e.map(1 + u64::from(r.jti.is_some()) + u64::from(r.sub.is_some()))?.str("at")?.u64(r.at)?;
        opt_str(e, "jti", &r.jti)?;
        opt_str(e, "sub", &r.sub)?;
    }
    Ok(())
}

fn encode_keys(
    e: &mut minicbor::Encoder<Vec<u8>>,
    keys: &[String],
) -> Result<(), minicbor::encode::Error<std::convert::Infallible>> {
    e.map(2)?.str("type")?.str("keys")?.str("keys")?.array(keys.len() as u64)?;
    for k in keys {
        e.str(k)?;
    }
    Ok(())
}

/// `[pem, ...]`.
fn decode_keys(d: &mut Decoder<'_>) -> Result<Vec<String>, FrameError> {
    let n = d.array().map_err(bad)?.ok_or(FrameError::BadControl("indefinite array".into()))?;
    (0..n).map(|_| d.str().map(str::to_owned).map_err(bad)).collect()
}

/// `[{at, jti?, sub?}, ...]`; unknown keys skipped.
fn decode_revoked(d: &mut Decoder<'_>) -> Result<Vec<RevokeNotice>, FrameError> {
    let n = d.array().map_err(bad)?.ok_or(FrameError::BadControl("indefinite array".into()))?;
    let mut out = Vec::new();
    for _ in 0..n {
        let fields = d.map().map_err(bad)?.ok_or(FrameError::BadControl("indefinite map".into()))?;
        let mut r = RevokeNotice { jti: None, sub: None, at: 0 };
        for _ in 0..fields {
            match (d.str().map_err(bad)?, d.datatype().map_err(bad)?) {
                ("at", _) => r.at = d.u64().map_err(bad)?,
                ("jti", Type::String) => r.jti = Some(d.str().map_err(bad)?.to_owned()),
                ("sub", Type::String) => r.sub = Some(d.str().map_err(bad)?.to_owned()),
                _ => d.skip().map_err(bad)?,
            }
        }
        out.push(r);
    }
    Ok(out)
}

fn encode_report(
    e: &mut minicbor::Encoder<Vec<u8>>,
    r: &Report,
) -> Result<(), minicbor::encode::Error<std::convert::Infallible>> {
    let optional = u64::from(r.uplink_rtt_micros.is_some())
        + u64::from(r.client_rtt_micros.is_some())
        + u64::from(!r.peer_rtt_micros.is_empty());
    e.map(4 + optional)?.str("type")?.str("report")?.str("seq")?.u64(r.seq)?.str("windowMs")?.u64(r.window_ms)?;
    if let Some(us) = r.uplink_rtt_micros {
        e.str("uplinkRttMicros")?.u64(us)?;
    }
    if let Some(us) = r.client_rtt_micros {
        e.str("clientRttMicros")?.u64(us)?;
    }
    if !r.peer_rtt_micros.is_empty() {
        e.str("peerRtts")?.map(r.peer_rtt_micros.len() as u64)?;
        for (edge, us) in &r.peer_rtt_micros {
            e.str(edge)?.u64(*us)?;
        }
    }
    e.str("docs")?.array(r.docs.len() as u64)?;
    for d in &r.docs {
        e.map(3)?.str("id")?.str(&d.doc.to_string())?.str("subscribers")?.u32(d.subscribers)?;
        e.str("writes")?.u64(d.writes)?;
    }
    Ok(())
}

/// Decodes a control message; unknown keys are skipped.
pub fn decode_control(bytes: &[u8]) -> Result<Control, FrameError> {
    let mut d = Decoder::new(bytes);
    let n = d.map().map_err(bad)?.ok_or(FrameError::BadControl("indefinite map".into()))?;
    let mut f = Fields::default();
    for _ in 0..n {
        let key = d.str().map_err(bad)?;
        match (key, d.datatype().map_err(bad)?) {
            ("type", Type::String) => f.ty = Some(d.str().map_err(bad)?.to_owned()),
            ("version", _) => f.version = Some(d.u64().map_err(bad)?),
            ("nodeId", Type::String) => f.node_id = Some(d.str().map_err(bad)?.to_owned()),
            ("secret", Type::String) => f.secret = Some(d.str().map_err(bad)?.to_owned()),
            ("hubId", Type::String) => f.hub_id = Some(d.str().map_err(bad)?.to_owned()),
            ("reason", Type::String) => f.reason = Some(d.str().map_err(bad)?.to_owned()),
            ("token", Type::String) => f.token = Some(d.str().map_err(bad)?.to_owned()),
            ("traceparent", Type::String) => f.traceparent = Some(d.str().map_err(bad)?.to_owned()),
            ("revoked", Type::Array) => f.revoked = decode_revoked(&mut d)?,
            ("keys", Type::Array) => f.keys = decode_keys(&mut d)?,
            ("reportIntervalMs", _) => f.report_interval_ms = Some(d.u64().map_err(bad)?),
            ("seq", _) => f.report.seq = d.u64().map_err(bad)?,
            ("windowMs", _) => f.report.window_ms = d.u64().map_err(bad)?,
            ("uplinkRttMicros", _) => f.report.uplink_rtt_micros = Some(d.u64().map_err(bad)?),
            ("clientRttMicros", _) => f.report.client_rtt_micros = Some(d.u64().map_err(bad)?),
            ("docs", Type::Array) => f.report.docs = decode_doc_reports(&mut d)?,
            ("peerRtts", Type::Map) => f.report.peer_rtt_micros = decode_peer_rtts(&mut d)?,
            ("peerAddr", Type::String) => f.peer_addr = Some(d.str().map_err(bad)?.to_owned()),
            ("peerFingerprint", Type::String) => f.peer_fingerprint = Some(d.str().map_err(bad)?.to_owned()),
            ("peerSecret", Type::String) => f.peer_secret = Some(d.str().map_err(bad)?.to_owned()),
            ("doc", Type::String) => {
                let s = d.str().map_err(bad)?;
                f.doc = Some(s.parse::<DocumentId>().map_err(|e| FrameError::BadControl(e.to_string()))?);
            }
            ("edge", Type::String) => f.edge = Some(d.str().map_err(bad)?.to_owned()),
            ("addr", Type::String) => f.addr = Some(d.str().map_err(bad)?.to_owned()),
            ("fingerprint", Type::String) => f.fingerprint = Some(d.str().map_err(bad)?.to_owned()),
            _ => d.skip().map_err(bad)?,
        }
    }
    match f.ty.as_deref().ok_or(FrameError::MissingField("type"))? {
        "hello" => Ok(Control::Hello {
            version: f.version.ok_or(FrameError::MissingField("version"))?,
            node_id: f.node_id.ok_or(FrameError::MissingField("nodeId"))?,
            secret: f.secret.unwrap_or_default(),
            peer_addr: f.peer_addr,
            peer_fingerprint: f.peer_fingerprint,
        }),
        "welcome" => Ok(Control::Welcome {
            version: f.version.ok_or(FrameError::MissingField("version"))?,
            hub_id: f.hub_id.unwrap_or_default(),
            report_interval_ms: f.report_interval_ms,
            peer_secret: f.peer_secret,
        }),
        "refused" => Ok(Control::Refused { reason: f.reason.unwrap_or_default() }),
        "report" => Ok(Control::Report(f.report)),
        "auth" => Ok(Control::Auth { token: f.token.ok_or(FrameError::MissingField("token"))? }),
        "revoke" => Ok(Control::Revoke(f.revoked)),
        "keys" => Ok(Control::AuthKeys(f.keys)),
        "trace" => Ok(Control::Trace { traceparent: f.traceparent.ok_or(FrameError::MissingField("traceparent"))? }),
        "home" => Ok(Control::Home(HomeNotice {
            doc: f.doc.ok_or(FrameError::MissingField("doc"))?,
            edge: f.edge,
            addr: f.addr,
            fingerprint: f.fingerprint,
        })),
        other => Err(FrameError::UnknownControl(other.to_owned())),
    }
}

fn bad(e: minicbor::decode::Error) -> FrameError {
    FrameError::BadControl(e.to_string())
}

/// The fields any control message may carry.
#[derive(Default)]
struct Fields {
    ty: Option<String>,
    version: Option<u64>,
    node_id: Option<String>,
    secret: Option<String>,
    hub_id: Option<String>,
    reason: Option<String>,
    report_interval_ms: Option<u64>,
    report: Report,
    peer_addr: Option<String>,
    peer_fingerprint: Option<String>,
    peer_secret: Option<String>,
    doc: Option<DocumentId>,
    edge: Option<String>,
    addr: Option<String>,
    fingerprint: Option<String>,
    token: Option<String>,
    traceparent: Option<String>,
    revoked: Vec<RevokeNotice>,
    keys: Vec<String>,
}

/// `{edgeId: micros, ...}`; at most as many entries as the input can hold.
fn decode_peer_rtts(d: &mut Decoder<'_>) -> Result<BTreeMap<String, u64>, FrameError> {
    let n = d.map().map_err(bad)?.ok_or(FrameError::BadControl("indefinite map".into()))?;
    let mut out = BTreeMap::new();
    for _ in 0..n {
        let edge = d.str().map_err(bad)?.to_owned();
        out.insert(edge, d.u64().map_err(bad)?);
    }
    Ok(out)
}

/// `[{id, subscribers, writes}, ...]`; unknown keys are skipped, a bad
/// document id fails the whole report.
fn decode_doc_reports(d: &mut Decoder<'_>) -> Result<Vec<DocReport>, FrameError> {
    let n = d.array().map_err(bad)?.ok_or(FrameError::BadControl("indefinite array".into()))?;
    // Each entry takes at least 4 bytes: never allocate more than the input.
    let mut docs = Vec::with_capacity((n as usize).min(d.input().len() / 4));
    for _ in 0..n {
        let m = d.map().map_err(bad)?.ok_or(FrameError::BadControl("indefinite map".into()))?;
        let (mut id, mut subscribers, mut writes) = (None, 0, 0);
        for _ in 0..m {
            match (d.str().map_err(bad)?, d.datatype().map_err(bad)?) {
                ("id", Type::String) => {
                    let s = d.str().map_err(bad)?;
                    id = Some(s.parse::<DocumentId>().map_err(|e| FrameError::BadControl(e.to_string()))?);
                }
                ("subscribers", _) => subscribers = d.u32().map_err(bad)?,
                ("writes", _) => writes = d.u64().map_err(bad)?,
                _ => d.skip().map_err(bad)?,
            }
        }
        docs.push(DocReport { doc: id.ok_or(FrameError::MissingField("id"))?, subscribers, writes });
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_round_trip() {
        for c in [
            Control::Hello {
                version: 1,
                node_id: "eu".into(),
                secret: "s3cret".into(),
                peer_addr: None,
                peer_fingerprint: None,
            },
            Control::Hello {
                version: 1,
                node_id: "eu".into(),
                secret: "s3cret".into(),
                peer_addr: Some("10.0.0.1:7303".into()),
                peer_fingerprint: Some("ab".repeat(32)),
            },
            Control::Welcome { version: 1, hub_id: "hub".into(), report_interval_ms: None, peer_secret: None },
            Control::Welcome {
                version: 1,
                hub_id: "hub".into(),
                report_interval_ms: Some(2000),
                peer_secret: Some("k".into()),
            },
            Control::Home(HomeNotice {
                doc: DocumentId::from_bytes([3; 16]),
                edge: None,
                addr: None,
                fingerprint: None,
            }),
            Control::Home(HomeNotice {
                doc: DocumentId::from_bytes([3; 16]),
                edge: Some("ap".into()),
                addr: Some("127.0.0.1:9".into()),
                fingerprint: Some("cd".repeat(32)),
            }),
            Control::Refused { reason: "unknown edge".into() },
            Control::Auth { token: "eyJ.e30.sig".into() },
            Control::Revoke(vec![]),
            Control::AuthKeys(vec!["-----BEGIN PUBLIC KEY-----\nMCow\n-----END PUBLIC KEY-----\n".into()]),
            Control::Revoke(vec![
                RevokeNotice { jti: Some("j1".into()), sub: None, at: 5 },
                RevokeNotice { jti: None, sub: Some("alice".into()), at: 1_800_000_000 },
            ]),
            Control::Report(Report::default()),
            Control::Report(report()),
            Control::Trace { traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into() },
        ] {
            assert_eq!(decode_control(&encode_control(&c)), Ok(c));
        }
    }

    fn report() -> Report {
        Report {
            seq: 7,
            window_ms: 10_000,
            uplink_rtt_micros: Some(80_123),
            client_rtt_micros: None,
            docs: vec![
                DocReport { doc: DocumentId::from_bytes([1; 16]), subscribers: 2, writes: 30 },
                DocReport { doc: DocumentId::from_bytes([2; 16]), subscribers: 0, writes: 1 },
            ],
            peer_rtt_micros: [("ap".to_owned(), 240_000), ("us".to_owned(), 80_000)].into(),
        }
    }

    /// The bytes of a version-1 `welcome` from before reports: it still
    /// decodes, without a report interval (so such a hub gets no reports).
    #[test]
    fn a_welcome_without_report_interval_decodes() {
        // {"type": "welcome", "version": 1, "hubId": "h"}
        let old = [
            0xa3, 0x64, b't', b'y', b'p', b'e', 0x67, b'w', b'e', b'l', b'c', b'o', b'm', b'e', 0x67, b'v', b'e', b'r',
            b's', b'i', b'o', b'n', 0x01, 0x65, b'h', b'u', b'b', b'I', b'd', 0x61, b'h',
        ];
        let expected = Control::Welcome { version: 1, hub_id: "h".into(), report_interval_ms: None, peer_secret: None };
        assert_eq!(decode_control(&old), Ok(expected.clone()));
        assert_eq!(encode_control(&expected), old, "encoding without an interval is unchanged");
    }

    /// A receiver that predates a key skips it; one that predates a type
    /// gets an error it can drop (what a new edge's report is to an old hub).
    #[test]
    fn unknown_keys_are_skipped_and_unknown_types_are_errors() {
        let mut e = minicbor::Encoder::new(Vec::new());
        e.map(4).unwrap().str("type").unwrap().str("welcome").unwrap().str("version").unwrap().u64(1).unwrap();
        e.str("future").unwrap().array(1).unwrap().u8(9).unwrap().str("hubId").unwrap().str("h").unwrap();
        let c = decode_control(&e.into_writer());
        assert_eq!(
            c,
            Ok(Control::Welcome { version: 1, hub_id: "h".into(), report_interval_ms: None, peer_secret: None })
        );
        let mut e = minicbor::Encoder::new(Vec::new());
        e.map(1).unwrap().str("type").unwrap().str("placement").unwrap();
        assert_eq!(decode_control(&e.into_writer()), Err(FrameError::UnknownControl("placement".into())));
    }

    #[test]
    fn a_report_with_a_bad_document_id_is_rejected() {
        let mut bytes = encode_control(&Control::Report(report()));
        let id = DocumentId::from_bytes([1; 16]).to_string();
        let at = bytes.windows(id.len()).position(|w| w == id.as_bytes()).unwrap();
        bytes[at] = if bytes[at] == b'2' { b'3' } else { b'2' };
        assert!(matches!(decode_control(&bytes), Err(FrameError::BadControl(_))));
        assert!(decode_control(&bytes[..bytes.len() - 3]).is_err(), "truncated");
    }

    proptest::proptest! {
        #[test]
        fn reports_round_trip(
            seq in proptest::num::u64::ANY,
            window_ms in proptest::num::u64::ANY,
            uplink in proptest::option::of(proptest::num::u64::ANY),
            client in proptest::option::of(proptest::num::u64::ANY),
            docs in proptest::collection::vec((proptest::array::uniform16(0u8..), 0u32.., 0u64..), 0..50),
        ) {
            let docs = docs
                .into_iter()
                .map(|(b, subscribers, writes)| DocReport { doc: DocumentId::from_bytes(b), subscribers, writes })
                .collect();
            let peer_rtt_micros = [("eu".to_owned(), seq / 2)].into_iter().filter(|_| seq % 2 == 0).collect();
            let report = Report { seq, window_ms, uplink_rtt_micros: uplink, client_rtt_micros: client, docs, peer_rtt_micros };
            let c = Control::Report(report);
            proptest::prop_assert_eq!(decode_control(&encode_control(&c)), Ok(c));
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = decode_control(&bytes);
        }
    }

    #[test]
    fn frames_are_checked_before_they_are_complete() {
        let f = encode_frame(FrameKind::Repo, b"hello");
        assert_eq!(f.len(), FRAME_HEADER_LEN + 5);
        for cut in 0..f.len() {
            assert_eq!(check_frame(&f[..cut], 1024), Ok(None));
        }
        assert_eq!(check_frame(&f, 1024), Ok(Some((FrameKind::Repo, &b"hello"[..], f.len()))));
    }

    #[test]
    fn oversize_and_unknown_frames_are_rejected() {
        let f = encode_frame(FrameKind::Repo, &[0; 100]);
        assert_eq!(check_frame(&f, 99), Err(FrameError::TooLarge { len: 100, limit: 99 }));
        let mut g = encode_frame(FrameKind::Control, b"x");
        g[4] = 9;
        assert_eq!(check_frame(&g, 99), Err(FrameError::UnknownKind(9)));
        assert_eq!(check_frame(&[0, 0, 0, 0, 0], 99), Err(FrameError::Empty));
    }

    #[test]
    fn garbage_control_is_an_error_not_a_panic() {
        assert!(decode_control(&[0xff, 0x00]).is_err());
        assert!(decode_control(&[0xa0]).is_err());
    }
}
