//! A raw automerge-repo WebSocket peer: sends exactly the bytes a test
//! wants and reads what comes back, for protocol-level tests.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use meridian_protocol::codec::{self, Decoded, Message, PeerMetadata};
use meridian_protocol::ids::PeerId;
use tokio_tungstenite::tungstenite::Message as WsMessage;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What a raw peer saw next.
#[derive(Debug)]
pub enum Received {
    Message(Message),
    /// The server closed the socket (with its reason, if any).
    Closed(Option<String>),
}

#[derive(Debug)]
pub struct RawPeer {
    ws: Ws,
    pub peer_id: PeerId,
}

impl RawPeer {
    pub async fn connect(url: &str, peer_id: &str) -> Result<Self> {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.with_context(|| format!("connecting to {url}"))?;
        Ok(Self { ws, peer_id: PeerId::new(peer_id) })
    }

    /// Connects and completes the handshake as an ephemeral peer.
    pub async fn joined(url: &str, peer_id: &str) -> Result<Self> {
        let mut p = Self::connect(url, peer_id).await?;
        p.send(&Message::Join {
            sender_id: p.peer_id.clone(),
            peer_metadata: PeerMetadata { storage_id: None, is_ephemeral: true },
            supported_protocol_versions: Some(vec!["1".into()]),
        })
        .await?;
        match p.recv().await? {
            Received::Message(Message::Peer { .. }) => Ok(p),
            other => bail!("expected `peer`, got {other:?}"),
        }
    }

    pub async fn send(&mut self, m: &Message) -> Result<()> {
        self.send_bytes(codec::encode(m)).await
    }

    pub async fn send_bytes(&mut self, bytes: Vec<u8>) -> Result<()> {
        self.ws.send(WsMessage::Binary(bytes.into())).await?;
        Ok(())
    }

    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        self.ws.send(WsMessage::Text(text.into())).await?;
        Ok(())
    }

    /// The next protocol message or the close, within 10 seconds.
    pub async fn recv(&mut self) -> Result<Received> {
        self.recv_within(Duration::from_secs(10)).await
    }

    pub async fn recv_within(&mut self, timeout: Duration) -> Result<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let next =
                tokio::time::timeout_at(deadline, self.ws.next()).await.context("timed out waiting for a message")?;
            match next {
                Some(Ok(WsMessage::Binary(b))) => match codec::decode(&b)? {
                    Decoded::Message(m) => return Ok(Received::Message(m)),
                    Decoded::Unknown { .. } => continue,
                },
                Some(Ok(WsMessage::Close(frame))) => return Ok(Received::Closed(frame.map(|f| f.reason.to_string()))),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Ok(Received::Closed(None)),
            }
        }
    }

    /// Reads until an `error` message arrives and then the close; returns
    /// the error text.
    pub async fn expect_error_and_close(&mut self) -> Result<String> {
        let message = match self.recv().await? {
            Received::Message(Message::Error { message, .. }) => message,
            other => bail!("expected an `error` message, got {other:?}"),
        };
        match self.recv().await? {
            Received::Closed(_) => Ok(message),
            other => bail!("expected the connection to close after the error, got {other:?}"),
        }
    }
}
