//! Interop with `samod`, an independent Rust implementation of the
//! automerge-repo v1 protocol, as a peer of a Meridian edge.
//!
//! samod is used without its `tungstenite` feature (which would pull
//! native-tls and a second tungstenite); [`WsDialer`] adapts our own
//! tokio-tungstenite socket to samod's [`Dialer`] trait: one binary frame per
//! protocol message, both ways.
//!
//! samod 0.16 and Meridian both use automerge 0.12, so heads are compared
//! directly as `ChangeHash`es.

use std::convert::Infallible;
use std::future::{Future, ready};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use automerge::transaction::Transactable;
use automerge::{Automerge, AutomergeError, ChangeHash, ROOT, ReadDoc, ScalarValue, Value};
use futures_util::future::BoxFuture;
use futures_util::{SinkExt, StreamExt};
use meridian_edge::client::{Client, ClientOptions};
use meridian_edge::{EdgeConfig, EdgeNode};
use meridian_protocol::ids::DocumentId;
use samod::{BackoffConfig, DialError, Dialer, DialerHandle, DocHandle, PeerId, Repo, Transport, Url};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// Upper bound for any single wait; a hang fails the test instead.
const WAIT: Duration = Duration::from_secs(15);

// ----- the samod <-> tokio-tungstenite adapter ---------------------------

/// Dials a Meridian edge over our tokio-tungstenite (0.29) WebSocket.
struct WsDialer {
    url: Url,
}

impl Dialer for WsDialer {
    type Error = Infallible;

    fn url(&self) -> Url {
        self.url.clone()
    }

    fn connect(&self) -> BoxFuture<'static, Result<Transport, DialError<Infallible>>> {
        let url = self.url.to_string();
        Box::pin(async move {
            let (ws, _) = tokio_tungstenite::connect_async(url.as_str()).await.map_err(DialError::transient)?;
            let (sink, stream) = ws.split();
            let sink = sink.with(|bytes: Vec<u8>| ready(Ok::<_, WsError>(Message::Binary(bytes.into()))));
            // Pings are answered by tungstenite itself; a close frame is
            // followed by the end of the stream.
            let stream = stream.filter_map(|msg| {
                ready(match msg {
                    Ok(Message::Binary(b)) => Some(Ok(b.to_vec())),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                })
            });
            Ok(Transport::new(stream, sink))
        })
    }
}

/// A samod repo (in-memory storage) connected to the edge.
struct SamodPeer {
    repo: Repo,
    dialer: DialerHandle,
}

impl SamodPeer {
    async fn connect(ws_url: &str, name: &str) -> Result<Self> {
        let repo = Repo::build_tokio().with_peer_id(PeerId::from(name)).load().await;
        // samod 0.16's `Repo::dial` hands the dial request to its IO loop
        // before registering the dialer, so the first attempt often fails
        // with "no dialer registered" and is retried after `initial_delay`;
        // keep that short.
        let backoff = BackoffConfig { initial_delay: Duration::from_millis(10), ..BackoffConfig::default() };
        let dialer = repo
            .dial(backoff, Arc::new(WsDialer { url: Url::parse(ws_url)? }))
            .map_err(|_| anyhow!("samod repo stopped"))?;
        let info = within("samod handshake with the edge", dialer.established())
            .await?
            .map_err(|e| anyhow!("dial failed: {e:?}"))?;
        tracing::info!(?info, "samod connected");
        Ok(Self { repo, dialer })
    }

    /// Waits until the edge has told us it has every change we have.
    async fn wait_edge_has(&self, handle: &DocHandle) -> Result<()> {
        let conn = self.dialer.connection_id().context("samod dialer not connected")?;
        within("edge to acknowledge samod's changes", handle.they_have_our_changes(conn)).await
    }

    async fn stop(self) {
        self.dialer.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.repo.stop()).await;
    }
}

// ----- helpers -------------------------------------------------------------

async fn within<T>(what: &str, f: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(WAIT, f).await.map_err(|_| anyhow!("timed out after {WAIT:?} waiting for {what}"))
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

async fn start_edge() -> Result<(tempfile::TempDir, EdgeNode)> {
    let dir = tempfile::tempdir()?;
    let edge = EdgeNode::start(EdgeConfig::new(dir.path()).ephemeral_port()).await?;
    Ok((dir, edge))
}

fn to_samod(id: DocumentId) -> samod::DocumentId {
    samod::DocumentId::from_str(&id.to_string()).expect("document ids are bs58check of 16 bytes on both sides")
}

fn to_meridian(id: &samod::DocumentId) -> DocumentId {
    DocumentId::from_str(&id.to_string()).expect("document ids are bs58check of 16 bytes on both sides")
}

fn get_str(doc: &Automerge, key: &str) -> Option<String> {
    match doc.get(ROOT, key).ok()?? {
        (Value::Scalar(s), _) => match s.as_ref() {
            ScalarValue::Str(s) => Some(s.to_string()),
            _ => None,
        },
        _ => None,
    }
}

/// Every string value of the root map, sorted by key.
fn root_strings(doc: &Automerge) -> Vec<(String, String)> {
    let mut out: Vec<_> = doc.keys(ROOT).filter_map(|k| get_str(doc, &k).map(|v| (k, v))).collect();
    out.sort();
    out
}

fn sorted(mut heads: Vec<ChangeHash>) -> Vec<ChangeHash> {
    heads.sort();
    heads
}

fn samod_put(handle: &DocHandle, key: &str, value: &str) -> Result<()> {
    handle.with_document(|doc| {
        doc.transact(|tx| {
            tx.put(ROOT, key, value)?;
            Ok::<_, AutomergeError>(())
        })
        .map(|_| ())
        .map_err(|f| anyhow!("samod transact failed: {:?}", f.error))
    })
}

fn elapsed(name: &str, started: Instant) {
    eprintln!("[interop_samod] {name}: {:?}", started.elapsed());
}

// ----- scenarios -----------------------------------------------------------

/// samod creates a document; a Meridian client finds it through the edge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samod_creates_meridian_client_finds() -> Result<()> {
    init_tracing();
    let started = Instant::now();
    let (_dir, edge) = start_edge().await?;
    let url = edge.ws_url();

    let samod = SamodPeer::connect(&url, "samod-creator").await?;
    let mut initial = Automerge::new();
    initial
        .transact(|tx| {
            tx.put(ROOT, "title", "from samod")?;
            tx.put(ROOT, "n", 42_i64)?;
            Ok::<_, AutomergeError>(())
        })
        .map_err(|f| anyhow!("{:?}", f.error))?;
    let handle = within("samod create", samod.repo.create(initial)).await?.map_err(|_| anyhow!("samod stopped"))?;
    samod.wait_edge_has(&handle).await?;
    let doc = to_meridian(handle.document_id());

    let client = Client::connect(&url, ClientOptions::default()).await?;
    within("meridian client find", client.find(doc)).await??;
    within(
        "meridian client to see samod's content",
        client.wait_for(doc, |d| get_str(d, "title").as_deref() == Some("from samod")),
    )
    .await??;
    let n = client
        .read(doc, |d| match d.get(ROOT, "n").ok().flatten() {
            Some((Value::Scalar(s), _)) => s.as_i64(),
            _ => None,
        })
        .await
        .flatten();
    assert_eq!(n, Some(42));

    let ours = sorted(client.read(doc, |d| d.get_heads()).await.context("doc not loaded")?);
    let theirs = sorted(handle.with_document(|d| d.get_heads()));
    assert_eq!(ours, theirs, "heads differ between samod and the Meridian client");

    samod.stop().await;
    drop(client);
    edge.shutdown().await;
    elapsed("samod_creates_meridian_client_finds", started);
    Ok(())
}

/// A Meridian client creates a document; samod finds it through the edge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meridian_client_creates_samod_finds() -> Result<()> {
    init_tracing();
    let started = Instant::now();
    let (_dir, edge) = start_edge().await?;
    let url = edge.ws_url();

    let client = Client::connect(&url, ClientOptions::default()).await?;
    let doc = within(
        "meridian create",
        client.create(|tx| {
            tx.put(ROOT, "title", "from meridian")?;
            tx.put(ROOT, "body", "hello samod")?;
            Ok(())
        }),
    )
    .await??;
    within("edge to ack the meridian client's document", client.wait_acked(doc)).await??;

    let samod = SamodPeer::connect(&url, "samod-finder").await?;
    let handle = within("samod find", samod.repo.find(to_samod(doc)))
        .await?
        .map_err(|_| anyhow!("samod stopped"))?
        .context("samod: document unavailable")?;
    let content = handle.with_document(|d| root_strings(d));
    assert_eq!(
        content,
        vec![("body".to_owned(), "hello samod".to_owned()), ("title".to_owned(), "from meridian".to_owned())]
    );

    let ours = sorted(client.read(doc, |d| d.get_heads()).await.context("doc not loaded")?);
    let theirs = sorted(handle.with_document(|d| d.get_heads()));
    assert_eq!(ours, theirs, "heads differ between samod and the Meridian client");

    samod.stop().await;
    drop(client);
    edge.shutdown().await;
    elapsed("meridian_client_creates_samod_finds", started);
    Ok(())
}

/// samod and a Meridian client edit the same document concurrently, several
/// rounds, different keys plus one contended key; both converge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_edits_converge() -> Result<()> {
    init_tracing();
    let started = Instant::now();
    let (_dir, edge) = start_edge().await?;
    let url = edge.ws_url();

    let client = Client::connect(&url, ClientOptions::default()).await?;
    let doc =
        within("meridian create", client.create(|tx| tx.put(ROOT, "created_by", "meridian").map(|_| ()))).await??;
    within("edge ack", client.wait_acked(doc)).await??;

    let samod = SamodPeer::connect(&url, "samod-editor").await?;
    let handle = within("samod find", samod.repo.find(to_samod(doc)))
        .await?
        .map_err(|_| anyhow!("samod stopped"))?
        .context("samod: document unavailable")?;

    const ROUNDS: usize = 8;
    for round in 0..ROUNDS {
        let m_key = format!("m{round}");
        let m_val = format!("meridian {round}");
        let m_shared = format!("meridian {round}");
        let meridian = client.change(doc, move |tx| {
            tx.put(ROOT, m_key.as_str(), m_val.as_str())?;
            tx.put(ROOT, "shared", m_shared.as_str())?;
            Ok(())
        });
        let h = handle.clone();
        let s = tokio::task::spawn_blocking(move || -> Result<()> {
            samod_put(&h, &format!("s{round}"), &format!("samod {round}"))?;
            samod_put(&h, "shared", &format!("samod {round}"))
        });
        let (m, s) = tokio::join!(meridian, s);
        m?;
        s??;
        // Let some rounds interleave with sync traffic, others not.
        if round % 2 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    let expected_keys: Vec<String> = (0..ROUNDS)
        .flat_map(|r| [format!("m{r}"), format!("s{r}")])
        .chain(["created_by".to_owned(), "shared".to_owned()])
        .collect();
    let converge = async {
        loop {
            let ours = client.read(doc, |d| (sorted(d.get_heads()), root_strings(d))).await;
            let theirs = handle.with_document(|d| (sorted(d.get_heads()), root_strings(d)));
            if let Some(ours) = ours {
                let complete = expected_keys.iter().all(|k| ours.1.iter().any(|(key, _)| key == k));
                if ours == theirs && complete {
                    return ours;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    };
    let (heads, values) = match tokio::time::timeout(WAIT, converge).await {
        Ok(v) => v,
        Err(_) => {
            let ours = client.read(doc, |d| (sorted(d.get_heads()), root_strings(d))).await;
            let theirs = handle.with_document(|d| (sorted(d.get_heads()), root_strings(d)));
            bail!("no convergence after {WAIT:?}:\n meridian: {ours:?}\n samod:    {theirs:?}");
        }
    };
    ensure!(!heads.is_empty());
    for r in 0..ROUNDS {
        ensure!(values.contains(&(format!("m{r}"), format!("meridian {r}"))));
        ensure!(values.contains(&(format!("s{r}"), format!("samod {r}"))));
    }
    let shared = values.iter().find(|(k, _)| k == "shared").map(|(_, v)| v.clone());
    let last = ROUNDS - 1;
    ensure!(
        shared == Some(format!("meridian {last}")) || shared == Some(format!("samod {last}")),
        "contended key resolved to an unexpected value: {shared:?}"
    );
    // The edge holds the converged state durably and has told the client so
    // (this hung before the engine fix; see
    // `engine_acknowledges_heads_it_deferred`).
    within("edge ack after convergence", client.wait_acked(doc)).await??;

    samod.stop().await;
    drop(client);
    edge.shutdown().await;
    elapsed("concurrent_edits_converge", started);
    Ok(())
}

/// Two samod repos sync through the edge: create on one, find on the
/// other, then edits flow both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_samod_repos_through_edge() -> Result<()> {
    init_tracing();
    let started = Instant::now();
    let (_dir, edge) = start_edge().await?;
    let url = edge.ws_url();

    let alice = SamodPeer::connect(&url, "samod-alice").await?;
    let bob = SamodPeer::connect(&url, "samod-bob").await?;

    let mut initial = Automerge::new();
    initial.transact(|tx| tx.put(ROOT, "title", "from alice")).map_err(|f| anyhow!("{:?}", f.error))?;
    let a = within("alice create", alice.repo.create(initial)).await?.map_err(|_| anyhow!("samod stopped"))?;
    alice.wait_edge_has(&a).await?;

    let b = within("bob find", bob.repo.find(a.document_id().clone()))
        .await?
        .map_err(|_| anyhow!("samod stopped"))?
        .context("bob: document unavailable")?;
    assert_eq!(b.with_document(|d| get_str(d, "title")).as_deref(), Some("from alice"));

    // Bob edits; alice (subscribed at the edge since she announced it) sees it.
    let mut alice_changes = a.changes();
    samod_put(&b, "reply", "from bob")?;
    let seen = async {
        while a.with_document(|d| get_str(d, "reply")).is_none() {
            alice_changes.next().await;
        }
    };
    within("alice to see bob's edit", seen).await?;

    // And back the other way.
    let mut bob_changes = b.changes();
    samod_put(&a, "again", "alice again")?;
    let seen = async {
        while b.with_document(|d| get_str(d, "again")).is_none() {
            bob_changes.next().await;
        }
    };
    within("bob to see alice's second edit", seen).await?;

    let ah = sorted(a.with_document(|d| d.get_heads()));
    let bh = sorted(b.with_document(|d| d.get_heads()));
    assert_eq!(ah, bh);
    assert_eq!(a.with_document(|d| root_strings(d)), b.with_document(|d| root_strings(d)));

    alice.stop().await;
    bob.stop().await;
    edge.shutdown().await;
    elapsed("two_samod_repos_through_edge", started);
    Ok(())
}

/// samod asks the edge for a document nobody has: the edge answers
/// `doc-unavailable` and samod's `find` resolves to `None` (no hang).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samod_find_unknown_is_unavailable() -> Result<()> {
    init_tracing();
    let started = Instant::now();
    let (_dir, edge) = start_edge().await?;
    let samod = SamodPeer::connect(&edge.ws_url(), "samod-seeker").await?;
    let missing = to_samod(DocumentId::from_bytes([7; 16]));
    let found = within("samod find of a missing document", samod.repo.find(missing))
        .await?
        .map_err(|_| anyhow!("samod stopped"))?;
    assert!(found.is_none(), "a document nobody has was reported found");
    samod.stop().await;
    edge.shutdown().await;
    elapsed("samod_find_unknown_is_unavailable", started);
    Ok(())
}

/// samod broadcasts ephemeral messages; the edge relays them to the other
/// samod peer subscribed to the document, both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samod_ephemeral_relayed_by_edge() -> Result<()> {
    init_tracing();
    let started = Instant::now();
    let (_dir, edge) = start_edge().await?;
    let url = edge.ws_url();
    let alice = SamodPeer::connect(&url, "samod-eph-alice").await?;
    let bob = SamodPeer::connect(&url, "samod-eph-bob").await?;

    let mut initial = Automerge::new();
    initial.transact(|tx| tx.put(ROOT, "title", "presence")).map_err(|f| anyhow!("{:?}", f.error))?;
    let a = within("alice create", alice.repo.create(initial)).await?.map_err(|_| anyhow!("samod stopped"))?;
    alice.wait_edge_has(&a).await?;
    let b = within("bob find", bob.repo.find(a.document_id().clone()))
        .await?
        .map_err(|_| anyhow!("samod stopped"))?
        .context("bob: document unavailable")?;

    // Payloads are CBOR (the text strings "hi" and "yo"), as JS peers expect.
    let mut bob_eph = b.ephemera();
    a.broadcast(vec![0x62, b'h', b'i']);
    assert_eq!(within("bob to receive alice's ephemeral message", bob_eph.next()).await?, Some(vec![0x62, b'h', b'i']));
    let mut alice_eph = a.ephemera();
    b.broadcast(vec![0x62, b'y', b'o']);
    assert_eq!(
        within("alice to receive bob's ephemeral message", alice_eph.next()).await?,
        Some(vec![0x62, b'y', b'o'])
    );

    alice.stop().await;
    bob.stop().await;
    edge.shutdown().await;
    elapsed("samod_ephemeral_relayed_by_edge", started);
    Ok(())
}

/// The edge restarts (same data directory and port) while samod edits
/// offline; samod's dialer reconnects, pushes the edit, and the edge
/// (which reloaded the document from disk) serves it to a Meridian client,
/// whose own edit flows back to samod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samod_reconnects_after_edge_restart() -> Result<()> {
    init_tracing();
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    let edge = EdgeNode::start(EdgeConfig::new(dir.path()).ephemeral_port()).await?;
    let addr = edge.local_addr();
    let url = edge.ws_url();

    let samod = SamodPeer::connect(&url, "samod-restart").await?;
    let mut initial = Automerge::new();
    initial.transact(|tx| tx.put(ROOT, "title", "before restart")).map_err(|f| anyhow!("{:?}", f.error))?;
    let h = within("samod create", samod.repo.create(initial)).await?.map_err(|_| anyhow!("samod stopped"))?;
    samod.wait_edge_has(&h).await?;

    edge.shutdown().await;
    let down = async {
        while samod.dialer.is_connected() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    within("samod to notice the edge went away", down).await?;
    samod_put(&h, "offline", "edited while the edge was down")?;

    let edge = EdgeNode::start(EdgeConfig::new(dir.path()).listen(addr)).await?;
    let up = async {
        while !samod.dialer.is_connected() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    within("samod to reconnect", up).await?;
    samod.wait_edge_has(&h).await?;

    let doc = to_meridian(h.document_id());
    let client = Client::connect(&url, ClientOptions::default()).await?;
    within("meridian client find", client.find(doc)).await??;
    within("meridian client to see samod's offline edit", client.wait_for(doc, |d| get_str(d, "offline").is_some()))
        .await??;
    assert_eq!(client.read(doc, |d| get_str(d, "title")).await.flatten().as_deref(), Some("before restart"));

    let mut changes = h.changes();
    within("meridian change", client.change(doc, |tx| tx.put(ROOT, "from_client", "after restart"))).await??;
    let seen = async {
        while h.with_document(|d| get_str(d, "from_client")).is_none() {
            changes.next().await;
        }
    };
    within("samod to see the Meridian client's edit", seen).await?;
    let ours = sorted(client.read(doc, |d| d.get_heads()).await.context("doc not loaded")?);
    assert_eq!(ours, sorted(h.with_document(|d| d.get_heads())));

    samod.stop().await;
    drop(client);
    edge.shutdown().await;
    elapsed("samod_reconnects_after_edge_restart", started);
    Ok(())
}

// ----- regression: the edge must acknowledge heads it deferred -------------

/// Found by [`concurrent_edits_converge`] (about 1 run in 150 on a loaded
/// machine: the Meridian client's `wait_acked` hung although everything had
/// converged). Replayed here deterministically against the sans-IO engine,
/// with a raw automerge peer `P` in the role of the client:
///
/// 1. `P` sends its change `C`; at the same time the engine sends `P` a
///    change `S` (the messages cross).
/// 2. The engine applies `C`; its write is in flight, so it does not answer
///    yet (durable before advertised).
/// 3. `P` answers `S` with heads `[S, C]` and no changes.
/// 4. The write of `C` commits.
///
/// The engine must now advertise `[S, C]` to `P`: that is the only way `P`
/// learns `C` is stored. It used to send nothing, because automerge takes an
/// empty message whose heads equal ours as proof the peer knows our heads
/// (it sets `last_sent_heads`), although we had never sent them.
#[test]
fn engine_acknowledges_heads_it_deferred() {
    use automerge::sync::{self, SyncDoc};
    use meridian_protocol::codec::{self, Message as Wire, PeerMetadata};
    use meridian_protocol::engine::{Direction, EngineConfig, Millis};
    use meridian_protocol::ids::PeerId as MPeerId;
    use meridian_protocol::storage::MemoryStore;
    use meridian_protocol::testing::TestNode;

    /// The sync payloads among what the engine sent.
    fn syncs(sent: Vec<(meridian_protocol::ids::ConnId, Wire)>) -> Vec<Vec<u8>> {
        sent.into_iter().filter_map(|(_, m)| if let Wire::Sync { data, .. } = m { Some(data) } else { None }).collect()
    }
    /// Runs outputs to quiescence, holding storage tasks if `hold`;
    /// returns the sync payloads sent.
    fn pump(e: &mut TestNode, hold: bool) -> Vec<Vec<u8>> {
        e.hold_storage = hold;
        syncs(e.drain())
    }

    let now = Millis(0);
    let edge_id = MPeerId::new("edge");
    let p_id = MPeerId::new("p");
    let mut e = TestNode::with_config(EngineConfig::new(edge_id.clone(), None), MemoryStore::new());
    let conn = e.engine.handle_connect(now, Direction::Incoming);
    let join = Wire::Join {
        sender_id: p_id.clone(),
        peer_metadata: PeerMetadata { storage_id: None, is_ephemeral: true },
        supported_protocol_versions: Some(vec!["1".into()]),
    };
    e.engine.handle_frame(now, conn, &codec::encode(&join));
    pump(&mut e, false);
    let doc = e.engine.create(now, |tx| tx.put(ROOT, "a", "edge").map(|_| ())).unwrap();
    pump(&mut e, false);

    let mut p = Automerge::new();
    let mut ps = sync::State::new();
    let send = |e: &mut TestNode, data: Vec<u8>, request: bool| {
        let (sender_id, target_id, document_id) = (p_id.clone(), edge_id.clone(), doc);
        let msg = if request {
            Wire::Request { sender_id, target_id, document_id, data }
        } else {
            Wire::Sync { sender_id, target_id, document_id, data }
        };
        e.engine.handle_frame(now, conn, &codec::encode(&msg));
    };
    // Initial sync, to quiescence.
    let first = p.generate_sync_message(&mut ps).unwrap().encode();
    send(&mut e, first, true);
    let mut inbox = pump(&mut e, false);
    while !inbox.is_empty() {
        for m in std::mem::take(&mut inbox) {
            p.receive_sync_message(&mut ps, sync::Message::decode(&m).unwrap()).unwrap();
        }
        if let Some(m) = p.generate_sync_message(&mut ps) {
            send(&mut e, m.encode(), false);
        }
        inbox = pump(&mut e, false);
    }
    assert_eq!(get_str(&p, "a").as_deref(), Some("edge"));

    // P last heard the engine's first message, whose bloom filter covers the
    // whole document; C could be a false positive in it (then P would not
    // send C). Let P know what is true: the engine has exactly P's heads.
    ps.their_have = Some(vec![sync::Have { last_sync: p.get_heads(), bloom: Default::default() }]);

    // 1. Crossing messages: P's change C, and the engine's change S.
    p.transact(|tx| tx.put(ROOT, "p", "c")).unwrap();
    let m_c = p.generate_sync_message(&mut ps).unwrap();
    assert_eq!(m_c.changes.len(), 1);
    let m_c = m_c.encode();
    e.engine.change(now, doc, |tx| tx.put(ROOT, "e", "s")).unwrap();
    let to_p = pump(&mut e, false);
    assert_eq!(to_p.len(), 1, "the engine sends S to P");
    // 2. The engine applies C; its write stays in flight.
    send(&mut e, m_c, false);
    assert!(pump(&mut e, true).is_empty(), "nothing is advertised before the write commits");
    // 3. P receives S and answers with heads [S, C], no changes.
    p.receive_sync_message(&mut ps, sync::Message::decode(&to_p[0]).unwrap()).unwrap();
    let answer = p.generate_sync_message(&mut ps).unwrap();
    assert!(answer.changes.is_empty());
    let merged = sorted(p.get_heads());
    assert_eq!(sorted(answer.heads.clone()), merged);
    send(&mut e, answer.encode(), false);
    pump(&mut e, true);
    // 4. The write commits: the engine must now tell P its heads cover C.
    let acks = syncs(e.release());
    let advertised: Vec<Vec<ChangeHash>> =
        acks.iter().map(|m| sorted(sync::Message::decode(m).unwrap().heads)).collect();
    assert!(
        advertised.contains(&merged),
        "after the write of C committed the engine never advertised heads {merged:?} to P (sent: {advertised:?})"
    );
}
