//! A raw automerge-repo v1 peer over WebSocket: the handshake, then frames
//! in and out through the `meridian-protocol` codec. Cheap enough to hold
//! thousands in one process; it counts the bytes it moves.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use automerge::ChangeHash;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use meridian_protocol::codec::{self, Decoded, Message, PeerMetadata};
use meridian_protocol::ids::{DocumentId, PeerId};
use tokio::net::TcpSocket;
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Bytes of WebSocket payload moved, shared by the halves of a connection.
#[derive(Debug, Default)]
pub struct Bytes {
    pub sent: AtomicU64,
    pub received: AtomicU64,
}

/// A joined connection: the server's peer id is known.
#[derive(Debug)]
pub struct Conn {
    pub tx: Sender,
    pub rx: Receiver,
}

/// The sending half.
#[derive(Debug)]
pub struct Sender {
    sink: SplitSink<Ws, WsMessage>,
    pub me: PeerId,
    pub server: PeerId,
    bytes: Arc<Bytes>,
}

/// The receiving half.
#[derive(Debug)]
pub struct Receiver {
    stream: SplitStream<Ws>,
    bytes: Arc<Bytes>,
}

impl Conn {
    /// Connects and completes the `join`/`peer` handshake as an ephemeral
    /// peer (what a browser tab without storage announces).
    pub async fn join(url: &str, me: PeerId) -> Result<Self> {
        // TCP_NODELAY, as browsers and node's `ws` set it on their sockets.
        let (ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        Self::handshake(ws, me).await
    }

    /// [`Conn::join`] from another local address (e.g. 127.0.0.2: another
    /// client as far as a per-address limit is concerned).
    pub async fn join_from(url: &str, source: IpAddr, me: PeerId) -> Result<Self> {
        let ws = connect_from(url, source).await.with_context(|| format!("connecting to {url} from {source}"))?;
        Self::handshake(ws, me).await
    }

    async fn handshake(ws: Ws, me: PeerId) -> Result<Self> {
        let (sink, stream) = ws.split();
        let bytes = Arc::new(Bytes::default());
        let mut tx = Sender { sink, me: me.clone(), server: PeerId::new(""), bytes: bytes.clone() };
        let mut rx = Receiver { stream, bytes };
        tx.send(&Message::Join {
            sender_id: me,
            peer_metadata: PeerMetadata { storage_id: None, is_ephemeral: true },
            supported_protocol_versions: Some(vec!["1".into()]),
        })
        .await?;
        match rx.recv_within(Duration::from_secs(30)).await? {
            Message::Peer { sender_id, .. } => tx.server = sender_id,
            other => bail!("expected `peer`, got `{}`", other.type_name()),
        }
        Ok(Self { tx, rx })
    }

    pub fn bytes(&self) -> &Arc<Bytes> {
        &self.tx.bytes
    }
}

impl Sender {
    pub async fn send(&mut self, m: &Message) -> Result<()> {
        let bytes = codec::encode(m);
        self.bytes.sent.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        self.sink.send(WsMessage::Binary(bytes.into())).await.context("sending")?;
        Ok(())
    }

    /// A `sync` message for `doc` carrying an encoded automerge sync message.
    pub async fn sync(&mut self, doc: DocumentId, data: Vec<u8>) -> Result<()> {
        let m = Message::Sync { sender_id: self.me.clone(), target_id: self.server.clone(), document_id: doc, data };
        self.send(&m).await
    }

    /// A `request` for a document we have nothing of.
    pub async fn request(&mut self, doc: DocumentId, data: Vec<u8>) -> Result<()> {
        let m = Message::Request { sender_id: self.me.clone(), target_id: self.server.clone(), document_id: doc, data };
        self.send(&m).await
    }

    pub async fn close(mut self) {
        let _ = self.sink.close().await;
    }
}

impl Receiver {
    /// The next protocol message; an error if the socket closes or the
    /// server sends `error`.
    pub async fn recv(&mut self) -> Result<Message> {
        match self.recv_any().await? {
            Message::Error { message, .. } => bail!("server error: {message}"),
            m => Ok(m),
        }
    }

    /// The next protocol message, `error` included; an error if the socket
    /// closes.
    pub async fn recv_any(&mut self) -> Result<Message> {
        loop {
            match self.stream.next().await {
                Some(Ok(WsMessage::Binary(b))) => {
                    self.bytes.received.fetch_add(b.len() as u64, Ordering::Relaxed);
                    match codec::decode(&b)? {
                        Decoded::Message(m) => return Ok(m),
                        Decoded::Unknown { .. } => continue,
                    }
                }
                Some(Ok(WsMessage::Close(frame))) => bail!("server closed the socket: {frame:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => bail!("socket error: {e}"),
                None => bail!("socket closed"),
            }
        }
    }

    pub async fn recv_within(&mut self, timeout: Duration) -> Result<Message> {
        tokio::time::timeout(timeout, self.recv()).await.context("timed out waiting for a message")?
    }
}

/// A WebSocket handshake (and nothing more) to `url` (`ws://IP:PORT/...`)
/// from the local address `source`, with TCP_NODELAY.
pub async fn connect_from(url: &str, source: IpAddr) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::Error as WsError;
    let authority = url.strip_prefix("ws://").and_then(|rest| rest.split('/').next()).unwrap_or_default();
    let addr: SocketAddr = authority
        .parse()
        .map_err(|_| WsError::Url(tokio_tungstenite::tungstenite::error::UrlError::UnableToConnect(url.to_owned())))?;
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.bind(SocketAddr::new(source, 0))?;
    let tcp = socket.connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, MaybeTlsStream::Plain(tcp), None).await?;
    Ok(ws)
}

/// The document and decoded automerge sync message of a `sync`/`request`.
pub fn sync_payload(m: &Message) -> Option<(DocumentId, automerge::sync::Message)> {
    match m {
        Message::Sync { document_id, data, .. } | Message::Request { document_id, data, .. } => {
            automerge::sync::Message::decode(data).ok().map(|s| (*document_id, s))
        }
        _ => None,
    }
}

/// The heads a server's `sync` message advertises for its document.
pub fn advertised_heads(m: &Message) -> Option<(DocumentId, Vec<ChangeHash>)> {
    sync_payload(m).map(|(d, s)| (d, s.heads))
}
