//! The automerge-repo v1 wire codec: one CBOR map per message.
//!
//! This module is the only place that knows the wire format. Decoding is
//! tolerant in the ways the JS implementation requires (any key order,
//! unknown keys and message types skipped, `undefined`/`null` for optional
//! fields, floats where integers are expected). Encoding reproduces the
//! bytes `cbor-x` writes for the same message in `@automerge/automerge-repo`
//! 2.5.x (16-bit map headers, same key order), so golden bytes compare equal.
//!
//! The message types live here; `decode` reads them, `encode` writes them.

use std::collections::BTreeMap;

mod decode;
mod encode;
pub mod federation;

pub use decode::{MAX_DEPTH, MAX_ID_BYTES, decode};
pub use encode::encode;

use crate::ids::{DocumentId, IdError, PeerId, StorageId};

/// The only protocol version that exists.
pub const PROTOCOL_V1: &str = "1";

/// Metadata a peer announces in `join` and `peer`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PeerMetadata {
    pub storage_id: Option<StorageId>,
    pub is_ephemeral: bool,
}

/// Heads of one storage id, as carried by `remote-heads-changed`.
#[derive(Clone, Debug, PartialEq)]
pub struct RemoteHeads {
    pub heads: Vec<String>,
    pub timestamp: f64,
}

/// One message of the automerge-repo v1 protocol.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    Join {
        sender_id: PeerId,
        peer_metadata: PeerMetadata,
        supported_protocol_versions: Option<Vec<String>>,
    },
    Peer {
        sender_id: PeerId,
        peer_metadata: PeerMetadata,
        selected_protocol_version: String,
        target_id: PeerId,
    },
    Error {
        sender_id: Option<PeerId>,
        message: String,
        target_id: Option<PeerId>,
    },
    /// A `sync` from a peer that has nothing of the document yet.
    Request {
        sender_id: PeerId,
        target_id: PeerId,
        document_id: DocumentId,
        data: Vec<u8>,
    },
    Sync {
        sender_id: PeerId,
        target_id: PeerId,
        document_id: DocumentId,
        data: Vec<u8>,
    },
    DocUnavailable {
        sender_id: PeerId,
        target_id: PeerId,
        document_id: DocumentId,
    },
    Ephemeral {
        sender_id: PeerId,
        target_id: PeerId,
        document_id: DocumentId,
        session_id: String,
        count: u64,
        data: Vec<u8>,
    },
    RemoteSubscriptionChange {
        sender_id: PeerId,
        target_id: PeerId,
        add: Vec<StorageId>,
        remove: Vec<StorageId>,
    },
    RemoteHeadsChanged {
        sender_id: PeerId,
        target_id: PeerId,
        document_id: DocumentId,
        new_heads: BTreeMap<StorageId, RemoteHeads>,
    },
}

impl Message {
    /// The wire name of this message's type.
    pub fn type_name(&self) -> &'static str {
        match self {
            Message::Join { .. } => "join",
            Message::Peer { .. } => "peer",
            Message::Error { .. } => "error",
            Message::Request { .. } => "request",
            Message::Sync { .. } => "sync",
            Message::DocUnavailable { .. } => "doc-unavailable",
            Message::Ephemeral { .. } => "ephemeral",
            Message::RemoteSubscriptionChange { .. } => "remote-subscription-change",
            Message::RemoteHeadsChanged { .. } => "remote-heads-changed",
        }
    }

    /// The document a message is about, if any.
    pub fn document_id(&self) -> Option<DocumentId> {
        match self {
            Message::Request { document_id, .. }
            | Message::Sync { document_id, .. }
            | Message::DocUnavailable { document_id, .. }
            | Message::Ephemeral { document_id, .. }
            | Message::RemoteHeadsChanged { document_id, .. } => Some(*document_id),
            _ => None,
        }
    }
}

/// Why bytes could not be decoded into a message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("message is not valid CBOR: {0}")]
    NotCbor(String),
    #[error("message is not a CBOR map")]
    NotAMap,
    #[error("message has no `type` field")]
    MissingType,
    #[error("`{message_type}` message is missing field `{field}`")]
    MissingField { message_type: String, field: &'static str },
    #[error("field `{field}` has the wrong type: expected {expected}")]
    WrongType { field: String, expected: &'static str },
    #[error("field `{field}`: {source}")]
    BadId { field: &'static str, source: IdError },
    #[error("ephemeral `data` is not valid CBOR (or nests deeper than {MAX_DEPTH} levels)")]
    EphemeralDataNotCbor,
    #[error("field `{field}` is longer than {max} bytes")]
    TooLong { field: String, max: usize },
    #[error("trailing bytes after the message")]
    TrailingBytes,
}

/// The outcome of decoding one frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    Message(Message),
    /// A well-formed message of a type this implementation does not know;
    /// the protocol says to ignore it.
    Unknown {
        message_type: String,
    },
}

impl From<minicbor::decode::Error> for DecodeError {
    fn from(e: minicbor::decode::Error) -> Self {
        DecodeError::NotCbor(e.to_string())
    }
}
