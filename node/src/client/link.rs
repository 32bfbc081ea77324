//! A client's connection to its edge, over WebSocket (`ws://…`) or QUIC
//! (`quic://host:port`, ALPN `meridian/1`, length-prefixed frames): both
//! carry the same automerge-repo messages, one per frame. Or in-process, to
//! a node loop of this very process (the edge's admin API): no socket.

use std::net::SocketAddr;

use crate::quic::{self, DEVICE_ALPN, EndpointError, FrameIoError, HubTrust};
use crate::runtime::{NodeEvent, NodeEvents, Outbound, OutboundQueue};
use crate::task::AbortOnDrop;
use futures_util::{SinkExt, StreamExt};
use meridian_protocol::codec::federation::{self, Control, FrameKind};
use meridian_protocol::engine::Access;
use meridian_protocol::ids::ConnId;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, header};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Why a link could not be opened, or a message not sent on it.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("a quic:// URL needs a trust setting for the edge's certificate (CA file or fingerprint)")]
    NoTrust,
    #[error(transparent)]
    WebSocket(#[from] tungstenite::Error),
    #[error("resolving {host_port}: {source}")]
    Resolve { host_port: String, source: std::io::Error },
    #[error("{0} resolves to nothing")]
    NoAddress(String),
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error(transparent)]
    Connect(#[from] quinn::ConnectError),
    #[error(transparent)]
    Connection(#[from] quinn::ConnectionError),
    #[error(transparent)]
    Frame(#[from] FrameIoError),
    /// The edge refused our token (the reason is the edge's).
    #[error("the edge refused us: {0}")]
    Refused(String),
    #[error("the node loop has stopped")]
    NodeStopped,
}

impl LinkError {
    /// Why the link could not be opened, as a person reads it: the socket
    /// error's own words ("connection refused"), not the chain of types.
    pub fn in_words(&self) -> String {
        use std::io::ErrorKind;
        let io = |e: &std::io::Error| match e.kind() {
            ErrorKind::ConnectionRefused => "connection refused".to_owned(),
            ErrorKind::TimedOut => "timed out".to_owned(),
            ErrorKind::ConnectionReset => "connection reset".to_owned(),
            ErrorKind::AddrNotAvailable => "address not available".to_owned(),
            _ => e.to_string(),
        };
        match self {
            LinkError::WebSocket(tungstenite::Error::Io(e)) => io(e),
            LinkError::WebSocket(tungstenite::Error::Http(response)) => {
                format!("the server answered HTTP {} (is it a Meridian edge at that path?)", response.status())
            }
            LinkError::Connection(quinn::ConnectionError::TimedOut) => "no answer over QUIC (timed out)".to_owned(),
            other => other.to_string(),
        }
    }
}

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
    /// A connection registered with a node loop of this process.
    Local {
        conn: ConnId,
        events: NodeEvents,
        out: OutboundQueue,
    },
}

impl Link {
    /// Connects to `url`: `ws://`/`wss://` or `quic://host:port`,
    /// presenting `token` (an access token) if given: as `Authorization:
    /// Bearer` on a WebSocket, as the first frame on QUIC.
    pub async fn connect(
        url: &str,
        max_message_bytes: usize,
        trust: Option<&HubTrust>,
        token: Option<&str>,
    ) -> Result<Self, LinkError> {
        if let Some(rest) = url.strip_prefix("quic://") {
            let trust = trust.ok_or(LinkError::NoTrust)?;
            return connect_quic(rest, trust, max_message_bytes, token).await;
        }
        let config = WebSocketConfig::default()
            .max_message_size(Some(max_message_bytes))
            .max_frame_size(Some(max_message_bytes));
        let mut request = url.into_client_request()?;
        if let Some(token) = token {
            let value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| LinkError::Refused("the token is not a valid header value".into()))?;
            request.headers_mut().insert(header::AUTHORIZATION, value);
        }
        match tokio_tungstenite::connect_async_with_config(request, Some(config), true).await {
            Ok((ws, _)) => Ok(Link::Ws(Box::new(ws))),
            Err(tungstenite::Error::Http(response)) if response.status().as_u16() == 401 => {
                let body = response.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
                Err(LinkError::Refused(body.trim().to_owned()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Connects to the node loop `events` in-process, as a client that may
    /// do everything (the node's own tools: it never leaves the process).
    pub async fn local(events: NodeEvents) -> Result<Self, LinkError> {
        let access = Access { relay: false, subject: "internal".into(), ..Access::full() };
        let (conn, out) =
            crate::runtime::register_client(&events, access, None, None).await.ok_or(LinkError::NodeStopped)?;
        Ok(Link::Local { conn, events, out })
    }

    /// Sends one message.
    pub async fn send(&mut self, bytes: Vec<u8>) -> Result<(), LinkError> {
        match self {
            Link::Local { conn, events, .. } => events
                .send(NodeEvent::Frame { conn: *conn, bytes, parent: None })
                .await
                .map_err(|_| LinkError::NodeStopped),
            Link::Ws(ws) => Ok(ws.send(WsMessage::Binary(bytes.into())).await?),
            Link::Quic { send, .. } => Ok(quic::write_frame(send, FrameKind::Repo, &bytes).await?),
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
            Link::Local { out, .. } => loop {
                match out.recv().await?.untraced() {
                    Outbound::Frame(bytes) => return Some(bytes),
                    Outbound::Control(_) | Outbound::Traced(_) => continue,
                    Outbound::Close(_) => return None,
                }
            },
        }
    }

    pub async fn close(self) {
        match self {
            Link::Ws(mut ws) => {
                let _ = tokio_tungstenite::WebSocketStream::close(&mut *ws, None).await;
            }
            Link::Quic { connection, .. } => connection.close(quinn::VarInt::from_u32(0), b"bye"),
            Link::Local { conn, events, .. } => {
                let _ = events.send(NodeEvent::Disconnected { conn }).await;
            }
        }
    }
}

async fn connect_quic(host_port: &str, trust: &HubTrust, limit: usize, token: Option<&str>) -> Result<Link, LinkError> {
    let host_port = host_port.trim_end_matches('/');
    let addr: SocketAddr = tokio::net::lookup_host(host_port)
        .await
        .map_err(|source| LinkError::Resolve { host_port: host_port.to_owned(), source })?
        .next()
        .ok_or_else(|| LinkError::NoAddress(host_port.to_owned()))?;
    let name = host_port.rsplit_once(':').map_or(host_port, |(h, _)| h).trim_matches(['[', ']']).to_owned();
    let endpoint = quic::client_endpoint(addr, trust, DEVICE_ALPN)?;
    let connection = endpoint.connect(addr, &name)?.await?;
    let (mut send, mut recv) = connection.open_bi().await?;
    if let Some(token) = token {
        let auth = federation::encode_control(&Control::Auth { token: token.to_owned() });
        quic::write_frame(&mut send, FrameKind::Control, &auth).await?;
    }
    let (tx, frames) = mpsc::channel(64);
    let reader = AbortOnDrop(tokio::spawn(async move {
        loop {
            match quic::read_frame(&mut recv, limit).await {
                Ok(Some((FrameKind::Repo, bytes))) => {
                    if tx.send(bytes).await.is_err() {
                        return;
                    }
                }
                Ok(Some((FrameKind::Control, bytes))) => {
                    if let Ok(Control::Refused { reason }) = federation::decode_control(&bytes) {
                        tracing::warn!(%reason, "the edge refused us");
                    }
                    return;
                }
                _ => return,
            }
        }
    }));
    Ok(Link::Quic { connection, send, frames, _reader: reader, _endpoint: endpoint })
}
