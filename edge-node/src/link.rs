//! A client's connection to its edge, over WebSocket (`ws://…`) or QUIC
//! (`quic://host:port`, ALPN `meridian/1`, length-prefixed frames): both
//! carry the same automerge-repo messages, one per frame.

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use meridian_node::quic::{self, DEVICE_ALPN, HubTrust};
use meridian_node::task::AbortOnDrop;
use meridian_protocol::codec::federation::FrameKind;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// An open link.
#[derive(Debug)]
pub enum Link {
    Ws(Box<Ws>),
    Quic {
        connection: quinn::Connection,
        send: quinn::SendStream,
        frames: mpsc::Receiver<Vec<u8>>,
        _reader: AbortOnDrop<()>,
        /// Keeps the client endpoint (and its socket) alive.
        _endpoint: quinn::Endpoint,
    },
}

impl Link {
    /// Connects to `url`: `ws://`/`wss://` or `quic://host:port`.
    pub async fn connect(url: &str, max_message_bytes: usize, trust: Option<&HubTrust>) -> Result<Self, String> {
        if let Some(rest) = url.strip_prefix("quic://") {
            let trust = trust
                .ok_or("a quic:// URL needs a trust setting for the edge's certificate (CA file or fingerprint)")?;
            return connect_quic(rest, trust, max_message_bytes).await;
        }
        let config = WebSocketConfig::default()
            .max_message_size(Some(max_message_bytes))
            .max_frame_size(Some(max_message_bytes));
        let (ws, _) =
            tokio_tungstenite::connect_async_with_config(url, Some(config), true).await.map_err(|e| e.to_string())?;
        Ok(Link::Ws(Box::new(ws)))
    }

    /// Sends one message.
    pub async fn send(&mut self, bytes: Vec<u8>) -> Result<(), String> {
        match self {
            Link::Ws(ws) => ws.send(WsMessage::Binary(bytes.into())).await.map_err(|e| e.to_string()),
            Link::Quic { send, .. } => {
                quic::write_frame(send, FrameKind::Repo, &bytes).await.map_err(|e| e.to_string())
            }
        }
    }

    /// The next message; `None` when the link is gone. Cancel-safe.
    pub async fn next(&mut self) -> Option<Vec<u8>> {
        match self {
            Link::Ws(ws) => loop {
                match ws.next().await? {
                    Ok(WsMessage::Binary(b)) => return Some(b.to_vec()),
                    Ok(WsMessage::Close(_)) | Err(_) => return None,
                    Ok(_) => continue,
                }
            },
            Link::Quic { frames, .. } => frames.recv().await,
        }
    }

    pub async fn close(self) {
        match self {
            Link::Ws(mut ws) => {
                let _ = tokio_tungstenite::WebSocketStream::close(&mut *ws, None).await;
            }
            Link::Quic { connection, .. } => connection.close(quinn::VarInt::from_u32(0), b"bye"),
        }
    }
}

async fn connect_quic(host_port: &str, trust: &HubTrust, limit: usize) -> Result<Link, String> {
    let host_port = host_port.trim_end_matches('/');
    let addr: SocketAddr = tokio::net::lookup_host(host_port)
        .await
        .map_err(|e| format!("resolving {host_port}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host_port} resolves to nothing"))?;
    let name = host_port.rsplit_once(':').map_or(host_port, |(h, _)| h).trim_matches(['[', ']']).to_owned();
    let bind: SocketAddr = if addr.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }.parse().map_err(|e| format!("{e}"))?;
    let mut endpoint = quinn::Endpoint::client(bind).map_err(|e| e.to_string())?;
    endpoint.set_default_client_config(quic::client_config(trust, DEVICE_ALPN).map_err(|e| e.to_string())?);
    let connection = endpoint.connect(addr, &name).map_err(|e| e.to_string())?.await.map_err(|e| e.to_string())?;
    let (send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
    let (tx, frames) = mpsc::channel(64);
    let reader = AbortOnDrop(tokio::spawn(async move {
        while let Ok(Some((FrameKind::Repo, bytes))) = quic::read_frame(&mut recv, limit).await {
            if tx.send(bytes).await.is_err() {
                return;
            }
        }
    }));
    Ok(Link::Quic { connection, send, frames, _reader: reader, _endpoint: endpoint })
}
