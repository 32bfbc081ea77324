//! Framing for QUIC streams and the federation control messages.
//!
//! On a QUIC stream (device ↔ edge, edge ↔ hub) every frame is
//! `[u32 big-endian length][u8 kind][payload]`, the length counting the kind
//! byte and the payload. Kind [`FrameKind::Repo`] carries one automerge-repo
//! message exactly as on a WebSocket; kind [`FrameKind::Control`] carries a
//! federation control message (a CBOR map with a `type`), whose set is
//! versioned by [`FEDERATION_VERSION`] and negotiated in `hello`.
//!
//! Decoding never blocks and never trusts a length: [`check_frame`] says
//! whether a whole frame is buffered (mini-redis style) and rejects lengths
//! over the caller's limit before anything is allocated.

use minicbor::Decoder;
use minicbor::data::Type;

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
    Hello { version: u64, node_id: String, secret: String },
    /// The hub accepted the hello.
    Welcome { version: u64, hub_id: String },
    /// The hub refused the hello; the connection is closed after this.
    Refused { reason: String },
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
        Control::Hello { version, node_id, secret } => e
            .map(4)
            .and_then(|e| e.str("type")?.str("hello")?.str("version")?.u64(*version)?.str("nodeId")?.str(node_id))
            .and_then(|e| e.str("secret")?.str(secret))
            .map(|_| ()),
        Control::Welcome { version, hub_id } => e
            .map(3)
            .and_then(|e| e.str("type")?.str("welcome")?.str("version")?.u64(*version)?.str("hubId")?.str(hub_id))
            .map(|_| ()),
        Control::Refused { reason } => {
            e.map(2).and_then(|e| e.str("type")?.str("refused")?.str("reason")?.str(reason)).map(|_| ())
        }
    };
    e.into_writer()
}

/// Decodes a control message; unknown keys are skipped.
pub fn decode_control(bytes: &[u8]) -> Result<Control, FrameError> {
    let bad = |e: minicbor::decode::Error| FrameError::BadControl(e.to_string());
    let mut d = Decoder::new(bytes);
    let n = d.map().map_err(bad)?.ok_or(FrameError::BadControl("indefinite map".into()))?;
    let (mut ty, mut version, mut node_id, mut secret, mut hub_id, mut reason) = (None, None, None, None, None, None);
    for _ in 0..n {
        let key = d.str().map_err(bad)?;
        match (key, d.datatype().map_err(bad)?) {
            ("type", Type::String) => ty = Some(d.str().map_err(bad)?.to_owned()),
            ("version", _) => version = Some(d.u64().map_err(bad)?),
            ("nodeId", Type::String) => node_id = Some(d.str().map_err(bad)?.to_owned()),
            ("secret", Type::String) => secret = Some(d.str().map_err(bad)?.to_owned()),
            ("hubId", Type::String) => hub_id = Some(d.str().map_err(bad)?.to_owned()),
            ("reason", Type::String) => reason = Some(d.str().map_err(bad)?.to_owned()),
            _ => d.skip().map_err(bad)?,
        }
    }
    match ty.as_deref().ok_or(FrameError::MissingField("type"))? {
        "hello" => Ok(Control::Hello {
            version: version.ok_or(FrameError::MissingField("version"))?,
            node_id: node_id.ok_or(FrameError::MissingField("nodeId"))?,
            secret: secret.unwrap_or_default(),
        }),
        "welcome" => Ok(Control::Welcome {
            version: version.ok_or(FrameError::MissingField("version"))?,
            hub_id: hub_id.unwrap_or_default(),
        }),
        "refused" => Ok(Control::Refused { reason: reason.unwrap_or_default() }),
        other => Err(FrameError::UnknownControl(other.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_round_trip() {
        for c in [
            Control::Hello { version: 1, node_id: "eu".into(), secret: "s3cret".into() },
            Control::Welcome { version: 1, hub_id: "hub".into() },
            Control::Refused { reason: "unknown edge".into() },
        ] {
            assert_eq!(decode_control(&encode_control(&c)), Ok(c));
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
