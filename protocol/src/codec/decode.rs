//! Decoding a frame into a [`Message`]: tolerant where the JS
//! implementation is (any key order, unknown keys and types skipped,
//! `undefined`/`null` for optional fields, floats for integers), strict on
//! bounds (nesting depth, id length).

use std::collections::BTreeMap;

use minicbor::Decoder;
use minicbor::data::Type;

use super::{DecodeError, Decoded, Message, PROTOCOL_V1, PeerMetadata, RemoteHeads};
use crate::ids::{DocumentId, PeerId, StorageId};

/// A field value as read from the map, before it is typed.
#[derive(Debug, Default)]
struct Fields {
    message_type: Option<String>,
    sender_id: Option<String>,
    target_id: Option<String>,
    document_id: Option<String>,
    data: Option<Vec<u8>>,
    session_id: Option<String>,
    count: Option<u64>,
    message: Option<String>,
    peer_metadata: Option<PeerMetadata>,
    supported_protocol_versions: Option<Vec<String>>,
    selected_protocol_version: Option<String>,
    add: Option<Vec<StorageId>>,
    remove: Option<Vec<StorageId>>,
    new_heads: Option<BTreeMap<StorageId, RemoteHeads>>,
}

/// Decodes one frame.
pub fn decode(bytes: &[u8]) -> Result<Decoded, DecodeError> {
    let mut d = Decoder::new(bytes);
    let fields = read_fields(&mut d)?;
    if d.position() != bytes.len() {
        return Err(DecodeError::TrailingBytes);
    }
    build(fields)
}

fn read_fields(d: &mut Decoder<'_>) -> Result<Fields, DecodeError> {
    let mut f = Fields::default();
    let len = match d.datatype()? {
        Type::Map | Type::MapIndef => d.map()?,
        _ => {
            // Make sure "not CBOR at all" is reported as such.
            skip_item(d)?;
            return Err(DecodeError::NotAMap);
        }
    };
    let mut remaining = len;
    loop {
        match remaining {
            Some(0) => break,
            Some(ref mut n) => *n -= 1,
            None => {
                if d.datatype()? == Type::Break {
                    d.skip()?;
                    break;
                }
            }
        }
        if d.datatype()? != Type::String {
            skip_item(d)?;
            skip_item(d)?;
            continue;
        }
        let key = d.str()?;
        read_field(d, key, &mut f)?;
    }
    Ok(f)
}

fn read_field(d: &mut Decoder<'_>, key: &str, f: &mut Fields) -> Result<(), DecodeError> {
    match key {
        "type" => f.message_type = opt_str(d, key)?,
        "senderId" => f.sender_id = opt_id(d, key)?,
        "targetId" => f.target_id = opt_id(d, key)?,
        "documentId" => f.document_id = opt_id(d, key)?,
        "sessionId" => f.session_id = opt_id(d, key)?,
        "message" => f.message = opt_str(d, key)?,
        "selectedProtocolVersion" => f.selected_protocol_version = opt_str(d, key)?,
        "data" => f.data = opt_bytes(d, key)?,
        "count" => f.count = opt_uint(d, key)?,
        "peerMetadata" => f.peer_metadata = opt_peer_metadata(d)?,
        "supportedProtocolVersions" => f.supported_protocol_versions = opt_str_list(d, key)?,
        "add" => f.add = opt_str_list(d, key)?.map(|v| v.into_iter().map(StorageId::new).collect()),
        "remove" => f.remove = opt_str_list(d, key)?.map(|v| v.into_iter().map(StorageId::new).collect()),
        "newHeads" => f.new_heads = opt_new_heads(d)?,
        _ => skip_item(d)?,
    }
    Ok(())
}

/// Consumes `undefined`/`null` and reports whether it was one.
fn take_absent(d: &mut Decoder<'_>) -> Result<bool, DecodeError> {
    match d.datatype()? {
        Type::Undefined | Type::Null => {
            d.skip()?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Deepest nesting of CBOR containers accepted (presence data is a few
/// levels deep; 16 MB of nested arrays must not cost a stack of 16 M
/// entries).
pub const MAX_DEPTH: usize = 64;

/// Longest id (`senderId`, `targetId`, `documentId`, `sessionId`) accepted
/// (automerge-repo's are a few dozen bytes).
pub const MAX_ID_BYTES: usize = 256;

/// Skips one well-formed data item. Unlike `Decoder::skip`, a break (0xff)
/// where an item is expected is an error, as it is for cbor-x. Containers
/// nested deeper than [`MAX_DEPTH`] are an error.
fn skip_item(d: &mut Decoder<'_>) -> Result<(), minicbor::decode::Error> {
    // Items still to skip in each enclosing container; `None` is an
    // indefinite-length container that ends with a break.
    let mut pending: Vec<Option<u64>> = vec![Some(1)];
    loop {
        if pending.len() > MAX_DEPTH + 1 {
            return Err(minicbor::decode::Error::message("CBOR nested too deeply").at(d.position()));
        }
        let Some(top) = pending.last_mut() else { break };
        match top {
            Some(0) => {
                pending.pop();
                continue;
            }
            Some(n) => *n -= 1,
            None => {
                if d.datatype()? == Type::Break {
                    d.set_position(d.position() + 1);
                    pending.pop();
                    continue;
                }
            }
        }
        match d.datatype()? {
            Type::Break => return Err(minicbor::decode::Error::message("unexpected break").at(d.position())),
            Type::Array | Type::ArrayIndef => pending.push(d.array()?),
            Type::Map | Type::MapIndef => pending.push(d.map()?.map(|n| n.saturating_mul(2))),
            Type::Tag => {
                d.tag()?;
                pending.push(Some(1));
            }
            // Scalars and (possibly chunked) strings hold no nested items.
            _ => d.skip()?,
        }
    }
    Ok(())
}

fn wrong(field: &str, expected: &'static str) -> DecodeError {
    DecodeError::WrongType { field: field.to_owned(), expected }
}

/// [`opt_str`] for an id: at most [`MAX_ID_BYTES`].
fn opt_id(d: &mut Decoder<'_>, field: &str) -> Result<Option<String>, DecodeError> {
    let id = opt_str(d, field)?;
    if id.as_ref().is_some_and(|s| s.len() > MAX_ID_BYTES) {
        return Err(DecodeError::TooLong { field: field.to_owned(), max: MAX_ID_BYTES });
    }
    Ok(id)
}

fn opt_str(d: &mut Decoder<'_>, field: &str) -> Result<Option<String>, DecodeError> {
    if take_absent(d)? {
        return Ok(None);
    }
    match d.datatype()? {
        Type::String => Ok(Some(d.str()?.to_owned())),
        Type::StringIndef => {
            let mut s = String::new();
            for part in d.str_iter()? {
                s.push_str(part?);
            }
            Ok(Some(s))
        }
        _ => Err(wrong(field, "a text string")),
    }
}

fn opt_bytes(d: &mut Decoder<'_>, field: &str) -> Result<Option<Vec<u8>>, DecodeError> {
    if take_absent(d)? {
        return Ok(None);
    }
    match d.datatype()? {
        Type::Bytes => Ok(Some(d.bytes()?.to_vec())),
        Type::BytesIndef => {
            let mut v = Vec::new();
            for part in d.bytes_iter()? {
                v.extend_from_slice(part?);
            }
            Ok(Some(v))
        }
        // cbor-x with tagUint8Array would tag (64); accept the tagged form
        // too. A loop, not recursion: a frame of nested tags must not
        // exhaust the stack.
        Type::Tag => {
            while d.datatype()? == Type::Tag {
                d.tag()?;
            }
            opt_bytes(d, field)
        }
        _ => Err(wrong(field, "a byte string")),
    }
}

fn opt_uint(d: &mut Decoder<'_>, field: &str) -> Result<Option<u64>, DecodeError> {
    if take_absent(d)? {
        return Ok(None);
    }
    match d.datatype()? {
        Type::U8 | Type::U16 | Type::U32 | Type::U64 => Ok(Some(d.u64()?)),
        Type::F16 | Type::F32 | Type::F64 => {
            let x = float(d)?;
            if x >= 0.0 && x.fract() == 0.0 && x < 2f64.powi(64) {
                Ok(Some(x as u64))
            } else {
                Err(wrong(field, "a non-negative integer"))
            }
        }
        _ => Err(wrong(field, "a non-negative integer")),
    }
}

/// Reads a float of any width. minicbor decodes half-precision floats only
/// with its `half` feature, so those are widened here (RFC 8949, App. D).
fn float(d: &mut Decoder<'_>) -> Result<f64, DecodeError> {
    if d.datatype()? != Type::F16 {
        return Ok(d.f64()?);
    }
    let pos = d.position();
    let Some(&[hi, lo]) = d.input().get(pos + 1..pos + 3) else {
        return Err(minicbor::decode::Error::end_of_input().into());
    };
    d.set_position(pos + 3);
    let half = u16::from_be_bytes([hi, lo]);
    let exp = i32::from((half >> 10) & 0x1f);
    let mant = f64::from(half & 0x3ff);
    let magnitude = match exp {
        0 => mant * 2f64.powi(-24),
        31 if mant == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        _ => (1.0 + mant / 1024.0) * 2f64.powi(exp - 15),
    };
    Ok(if half & 0x8000 != 0 { -magnitude } else { magnitude })
}

fn number(d: &mut Decoder<'_>, field: &str) -> Result<f64, DecodeError> {
    match d.datatype()? {
        Type::F16 | Type::F32 | Type::F64 => float(d),
        Type::U8 | Type::U16 | Type::U32 | Type::U64 => Ok(d.u64()? as f64),
        Type::I8 | Type::I16 | Type::I32 | Type::I64 => Ok(d.i64()? as f64),
        _ => Err(wrong(field, "a number")),
    }
}

fn opt_str_list(d: &mut Decoder<'_>, field: &str) -> Result<Option<Vec<String>>, DecodeError> {
    if take_absent(d)? {
        return Ok(None);
    }
    if !matches!(d.datatype()?, Type::Array | Type::ArrayIndef) {
        return Err(wrong(field, "an array of strings"));
    }
    // A string of the wrong type is a wrong type; anything else (truncated
    // input, invalid UTF-8) is malformed CBOR.
    let classify = |e: minicbor::decode::Error| {
        if e.is_type_mismatch() { wrong(field, "an array of strings") } else { DecodeError::from(e) }
    };
    let mut out = Vec::new();
    for item in d.array_iter::<&str>().map_err(classify)? {
        out.push(item.map_err(classify)?.to_owned());
    }
    Ok(Some(out))
}

/// Iterates the entries of a map (definite or indefinite), handing each key
/// to `each` with the decoder positioned at the value.
fn for_each_entry(
    d: &mut Decoder<'_>,
    field: &str,
    mut each: impl FnMut(&mut Decoder<'_>, Option<String>) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    if !matches!(d.datatype()?, Type::Map | Type::MapIndef) {
        return Err(wrong(field, "a map"));
    }
    let mut remaining = d.map()?;
    loop {
        match remaining {
            Some(0) => return Ok(()),
            Some(ref mut n) => *n -= 1,
            None if d.datatype()? == Type::Break => {
                d.skip()?;
                return Ok(());
            }
            None => {}
        }
        let key = if d.datatype()? == Type::String {
            Some(d.str()?.to_owned())
        } else {
            skip_item(d)?;
            None
        };
        each(d, key)?;
    }
}

fn opt_peer_metadata(d: &mut Decoder<'_>) -> Result<Option<PeerMetadata>, DecodeError> {
    if take_absent(d)? {
        return Ok(None);
    }
    let mut meta = PeerMetadata::default();
    for_each_entry(d, "peerMetadata", |d, key| {
        match key.as_deref() {
            Some("storageId") => meta.storage_id = opt_str(d, "peerMetadata.storageId")?.map(StorageId::new),
            Some("isEphemeral") => {
                meta.is_ephemeral = match d.datatype()? {
                    Type::Bool => d.bool()?,
                    Type::Undefined | Type::Null => {
                        d.skip()?;
                        false
                    }
                    _ => return Err(wrong("peerMetadata.isEphemeral", "a boolean")),
                }
            }
            _ => skip_item(d)?,
        }
        Ok(())
    })?;
    Ok(Some(meta))
}

fn opt_new_heads(d: &mut Decoder<'_>) -> Result<Option<BTreeMap<StorageId, RemoteHeads>>, DecodeError> {
    if take_absent(d)? {
        return Ok(None);
    }
    let mut out = BTreeMap::new();
    for_each_entry(d, "newHeads", |d, storage| {
        let Some(storage) = storage else { return Ok(skip_item(d)?) };
        let mut heads = None;
        let mut timestamp = 0.0;
        for_each_entry(d, "newHeads[]", |d, key| {
            match key.as_deref() {
                Some("heads") => heads = opt_str_list(d, "newHeads[].heads")?,
                Some("timestamp") => timestamp = number(d, "newHeads[].timestamp")?,
                _ => skip_item(d)?,
            }
            Ok(())
        })?;
        let heads = heads.ok_or_else(|| wrong("newHeads[].heads", "an array of strings"))?;
        out.insert(StorageId::new(storage), RemoteHeads { heads, timestamp });
        Ok(())
    })?;
    Ok(Some(out))
}

fn build(f: Fields) -> Result<Decoded, DecodeError> {
    let ty = f.message_type.clone().ok_or(DecodeError::MissingType)?;
    let req = |v: Option<String>, field: &'static str| {
        v.ok_or_else(|| DecodeError::MissingField { message_type: ty.clone(), field })
    };
    let doc = |v: Option<String>| -> Result<DocumentId, DecodeError> {
        req(v, "documentId")?.parse().map_err(|source| DecodeError::BadId { field: "documentId", source })
    };
    let missing = |field: &'static str| DecodeError::MissingField { message_type: ty.clone(), field };
    let msg = match ty.as_str() {
        "join" => Message::Join {
            sender_id: PeerId::new(req(f.sender_id, "senderId")?),
            peer_metadata: f.peer_metadata.unwrap_or_default(),
            supported_protocol_versions: f.supported_protocol_versions,
        },
        "peer" => Message::Peer {
            sender_id: PeerId::new(req(f.sender_id, "senderId")?),
            peer_metadata: f.peer_metadata.unwrap_or_default(),
            selected_protocol_version: f.selected_protocol_version.unwrap_or_else(|| PROTOCOL_V1.to_owned()),
            target_id: PeerId::new(req(f.target_id, "targetId")?),
        },
        "error" => Message::Error {
            sender_id: f.sender_id.map(PeerId::new),
            message: f.message.unwrap_or_default(),
            target_id: f.target_id.map(PeerId::new),
        },
        "request" | "sync" => {
            let sender_id = PeerId::new(req(f.sender_id, "senderId")?);
            let target_id = PeerId::new(req(f.target_id, "targetId")?);
            let document_id = doc(f.document_id)?;
            let data = f.data.ok_or_else(|| missing("data"))?;
            if ty == "request" {
                Message::Request { sender_id, target_id, document_id, data }
            } else {
                Message::Sync { sender_id, target_id, document_id, data }
            }
        }
        "doc-unavailable" => Message::DocUnavailable {
            sender_id: PeerId::new(req(f.sender_id, "senderId")?),
            target_id: PeerId::new(req(f.target_id, "targetId")?),
            document_id: doc(f.document_id)?,
        },
        "ephemeral" => {
            let data = f.data.ok_or_else(|| missing("data"))?;
            // Exactly one CBOR item: cbor-x's `decode` in the receiving JS
            // repo throws on trailing bytes just as on malformed ones.
            let mut inner = Decoder::new(&data);
            if skip_item(&mut inner).is_err() || inner.position() != data.len() {
                return Err(DecodeError::EphemeralDataNotCbor);
            }
            Message::Ephemeral {
                sender_id: PeerId::new(req(f.sender_id, "senderId")?),
                target_id: PeerId::new(req(f.target_id, "targetId")?),
                document_id: doc(f.document_id)?,
                session_id: req(f.session_id, "sessionId")?,
                count: f.count.ok_or_else(|| missing("count"))?,
                data,
            }
        }
        "remote-subscription-change" => Message::RemoteSubscriptionChange {
            sender_id: PeerId::new(req(f.sender_id, "senderId")?),
            target_id: PeerId::new(req(f.target_id, "targetId")?),
            add: f.add.unwrap_or_default(),
            remove: f.remove.unwrap_or_default(),
        },
        "remote-heads-changed" => Message::RemoteHeadsChanged {
            sender_id: PeerId::new(req(f.sender_id, "senderId")?),
            target_id: PeerId::new(req(f.target_id, "targetId")?),
            document_id: doc(f.document_id)?,
            new_heads: f.new_heads.ok_or_else(|| missing("newHeads"))?,
        },
        _ => return Ok(Decoded::Unknown { message_type: ty }),
    };
    Ok(Decoded::Message(msg))
}
