//! Edges are not all trusted alike (issue 15): a hub started with
//! `--untrusted-edge ID=SECRET` serves that edge only the documents its
//! clients' tokens grant. The edge forwards each client's token on its
//! uplink (an `auth` control frame) and the hub verifies it, so a
//! compromised device edge cannot pull a document none of its clients was
//! granted, even speaking the federation protocol itself.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use meridian_edge::client::{Client, ClientOptions};
use meridian_edge::config::UplinkConfig;
use meridian_edge::{EdgeConfig, EdgeNode};
use meridian_hub::{Hub, HubConfig};
use meridian_node::auth::{self, Claims, SigningKey};
use meridian_node::quic::{self, FEDERATION_ALPN, HubTrust};
use meridian_protocol::automerge::transaction::Transactable;
use meridian_protocol::automerge::{ROOT, ReadDoc};
use meridian_protocol::codec::federation::{self, Control, FEDERATION_VERSION, FrameKind};
use meridian_protocol::codec::{self, Decoded, Message, PROTOCOL_V1};
use meridian_protocol::ids::{DocumentId, PeerId};

fn token(key: &SigningKey, sub: &str, read: &[DocumentId], write: &[&str]) -> String {
    key.mint(&Claims {
        sub: sub.into(),
        exp: auth::unix_now() + 600,
        read: read.iter().map(ToString::to_string).collect(),
        write: write.iter().map(|s| (*s).to_owned()).collect(),
        create: !write.is_empty(),
        ..Default::default()
    })
}

async fn edge(dir: &std::path::Path, hub: &Hub, id: &str, secret: &str, keys: &std::path::Path) -> Result<EdgeNode> {
    let mut uplink = UplinkConfig::new(hub.quic_addr(), id, secret, HubTrust::CaFile(hub.ca_path().to_owned()));
    uplink.min_backoff = Duration::from_millis(50);
    let mut config = EdgeConfig::new(dir.join(id)).ephemeral_port().uplink(uplink);
    config.auth_public_keys = vec![keys.to_owned()];
    Ok(EdgeNode::start(config).await?)
}

/// A federation link speaking for edge `dev` directly (what a compromised
/// device could do), after `hello` and `join`.
struct RogueLink {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    _connection: quinn::Connection,
    _endpoint: quinn::Endpoint,
}

impl RogueLink {
    async fn open(hub: &Hub, id: &str, secret: &str) -> Result<Self> {
        let trust = HubTrust::CaFile(hub.ca_path().to_owned());
        let endpoint = quic::client_endpoint(hub.quic_addr(), &trust, FEDERATION_ALPN)?;
        let connection = endpoint.connect(hub.quic_addr(), "localhost")?.await?;
        let (mut send, mut recv) = connection.open_bi().await?;
        let hello = Control::Hello {
            version: FEDERATION_VERSION,
            node_id: id.into(),
            secret: secret.into(),
            peer_addr: None,
            peer_fingerprint: None,
        };
        quic::write_frame(&mut send, FrameKind::Control, &federation::encode_control(&hello)).await?;
        match quic::read_frame(&mut recv, 1 << 20).await? {
            Some((FrameKind::Control, b)) if matches!(federation::decode_control(&b)?, Control::Welcome { .. }) => {}
            other => bail!("no welcome: {other:?}"),
        }
        let mut link = Self { send, recv, _connection: connection, _endpoint: endpoint };
        link.send(&Message::Join {
            sender_id: PeerId::new("rogue"),
            peer_metadata: Default::default(),
            supported_protocol_versions: Some(vec![PROTOCOL_V1.into()]),
        })
        .await?;
        Ok(link)
    }

    async fn send(&mut self, m: &Message) -> Result<()> {
        Ok(quic::write_frame(&mut self.send, FrameKind::Repo, &codec::encode(m)).await?)
    }

    async fn forward(&mut self, token: &str) -> Result<()> {
        let auth = federation::encode_control(&Control::Auth { token: token.into() });
        Ok(quic::write_frame(&mut self.send, FrameKind::Control, &auth).await?)
    }

    /// Asks for `doc`; whether the hub serves it (a sync message with its
    /// heads or changes). Not served: `doc-unavailable`, or silence (a
    /// refusal is told once per document; asked again, the hub says
    /// nothing), within three seconds.
    async fn ask(&mut self, doc: DocumentId) -> Result<bool> {
        let mut state = automerge::sync::State::new();
        let data = automerge::sync::SyncDoc::generate_sync_message(&automerge::Automerge::new(), &mut state)
            .map(|m| m.encode())
            .unwrap_or_default();
        let target_id = PeerId::new("meridian-hub");
        self.send(&Message::Request { sender_id: PeerId::new("rogue"), target_id, document_id: doc, data }).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        loop {
            let Ok(frame) = tokio::time::timeout_at(deadline, quic::read_frame(&mut self.recv, 64 << 20)).await else {
                return Ok(false);
            };
            let frame = frame?;
            let Some((FrameKind::Repo, bytes)) = frame else { continue };
            let Decoded::Message(m) = codec::decode(&bytes)? else { continue };
            match m {
                Message::DocUnavailable { document_id, .. } if document_id == doc => return Ok(false),
                Message::Sync { document_id, data, .. } if document_id == doc => {
                    // Its heads or changes: the hub is serving the document.
                    let m = automerge::sync::Message::decode(&data)?;
                    if !m.heads.is_empty() || !m.changes.is_empty() {
                        return Ok(true);
                    }
                }
                _ => {}
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_edge_gets_only_what_its_clients_were_granted() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let key = auth::keygen(&dir.path().join("keys"))?;
    let public = dir.path().join("keys/auth-public.pem");
    let mut config = HubConfig::new(dir.path().join("hub")).ephemeral_ports().edge("eu", "e").edge("dev", "d");
    config.untrusted_edges.insert("dev".into());
    config.auth_public_keys = vec![public.clone()];
    let hub = Hub::start(config).await?;
    let eu = edge(dir.path(), &hub, "eu", "e", &public).await?;
    let dev = edge(dir.path(), &hub, "dev", "d", &public).await?;

    // Two documents written through the trusted edge.
    let writer_options = ClientOptions { token: Some(token(&key, "author", &[], &["*"])), ..ClientOptions::default() };
    let writer = Client::connect(&eu.ws_url(), writer_options).await?;
    let granted = writer.create(|tx| tx.put(ROOT, "t", "granted").map(|_| ())).await?;
    let secret = writer.create(|tx| tx.put(ROOT, "t", "secret").map(|_| ())).await?;
    writer.wait_acked(granted).await?;
    writer.wait_acked(secret).await?;

    // A client of the device edge with a grant for one of them reads it
    // (the edge forwarded its token; the hub serves the edge that one).
    let reader_options =
        ClientOptions { token: Some(token(&key, "reader", &[granted], &[])), ..ClientOptions::default() };
    let reader = Client::connect(&dev.ws_url(), reader_options).await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if tokio::time::timeout(Duration::from_secs(3), reader.find(granted)).await.is_ok_and(|r| r.is_ok()) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the granted document never reached the device edge");
    }
    let t = reader.read(granted, |d| d.get(ROOT, "t").ok().flatten().map(|(v, _)| v.to_string())).await.flatten();
    assert_eq!(t.as_deref(), Some("\"granted\""));

    // The device edge itself, compromised, speaking federation: nothing
    // without a forwarded grant; with one (verified), that document only.
    let mut rogue = RogueLink::open(&hub, "dev", "d").await?;
    assert!(!rogue.ask(granted).await?, "no grant on this link yet: unavailable");
    assert!(!rogue.ask(secret).await?, "never granted: unavailable");
    rogue.forward(&token(&key, "reader", &[granted], &[])).await?;
    assert!(rogue.ask(granted).await?, "granted by a forwarded, verified token");
    assert!(!rogue.ask(secret).await?, "still not the other");
    // A forged token grants nothing.
    let forged = token(&auth::keygen(&dir.path().join("other"))?, "mallory", &[secret], &[]);
    rogue.forward(&forged).await?;
    assert!(!rogue.ask(secret).await?, "a token the hub cannot verify grants nothing");
    // A trusted edge's link is not limited.
    let mut trusted = RogueLink::open(&hub, "eu", "e").await?;
    assert!(trusted.ask(secret).await?, "a trusted edge gets every document");
    Ok(())
}
