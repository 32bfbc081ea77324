//! Access tokens enforced by a real edge (issue 15): the real JS
//! automerge-repo presenting them on the URL, the native client over
//! WebSocket and QUIC, raw peers; each refusal with its reason and counted
//! in `/metrics`; open dev mode only on loopback.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use meridian_edge::client::{Client, ClientOptions, ConnectionState};
use meridian_edge::{EdgeConfig, EdgeNode};
use meridian_node::auth::{self, Claims, SigningKey, TokenError};
use meridian_node::quic::HubTrust;
use meridian_protocol::automerge::sync::{self, SyncDoc};
use meridian_protocol::automerge::transaction::Transactable;
use meridian_protocol::automerge::{ROOT, ReadDoc};
use meridian_protocol::codec::Message;
use meridian_protocol::engine::Refusal;
use meridian_protocol::ids::DocumentId;
use meridian_tests::js::run_script;
use meridian_tests::raw::{RawPeer, Received};
use serde_json::Value;

/// An edge with auth on (and a QUIC listener for devices), its key, and a
/// document written by a client with full rights.
struct Setup {
    edge: EdgeNode,
    key: SigningKey,
    /// A second key the edge does not know.
    stranger_key: SigningKey,
    doc: DocumentId,
    _dir: tempfile::TempDir,
}

fn claims(sub: &str) -> Claims {
    let now = auth::unix_now();
    Claims { sub: sub.into(), exp: now + 600, iat: Some(now), jti: format!("jti-{sub}"), ..Default::default() }
}

fn grant(key: &SigningKey, sub: &str, f: impl FnOnce(&mut Claims)) -> String {
    let mut c = claims(sub);
    f(&mut c);
    key.mint(&c)
}

async fn setup() -> Result<Setup> {
    let dir = tempfile::tempdir()?;
    let key = auth::keygen(&dir.path().join("keys"))?;
    let stranger_key = auth::keygen(&dir.path().join("other-keys"))?;
    let mut config = EdgeConfig::new(dir.path().join("edge")).ephemeral_port().quic_listen("127.0.0.1:0".parse()?);
    config.auth_public_keys = vec![dir.path().join("keys/auth-public.pem")];
    let edge = EdgeNode::start(config).await?;
    let admin = grant(&key, "owner", |c| {
        c.write = vec!["*".into()];
        c.create = true;
    });
    let owner = client(&edge.ws_url(), &admin).await?;
    let doc = owner.create(|tx| tx.put(ROOT, "title", "secret").map(|_| ())).await?;
    tokio::time::timeout(Duration::from_secs(10), owner.wait_acked(doc)).await??;
    Ok(Setup { edge, key, stranger_key, doc, _dir: dir })
}

async fn client(url: &str, token: &str) -> Result<Client> {
    let options = ClientOptions {
        token: Some(token.to_owned()),
        min_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(300),
        ..Default::default()
    };
    Ok(Client::connect(url, options).await?)
}

/// The document as a client with every right sees it now.
async fn owner_view(s: &Setup, doc: DocumentId) -> Result<Option<serde_json::Map<String, Value>>> {
    let token = grant(&s.key, "owner", |c| c.write = vec!["*".into()]);
    let owner = client(&s.edge.ws_url(), &token).await?;
    match tokio::time::timeout(Duration::from_secs(10), owner.find(doc)).await? {
        Ok(()) => {}
        Err(meridian_edge::client::ClientError::Unavailable(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let keys = owner.read(doc, root_as_strings).await.context("read")?;
    Ok(Some(keys))
}

/// The root map's values as strings (text objects as their text).
fn root_as_strings(d: &meridian_protocol::automerge::Automerge) -> serde_json::Map<String, Value> {
    use meridian_protocol::automerge::{ObjType, Value as AmValue};
    let mut out = serde_json::Map::new();
    for k in d.keys(ROOT) {
        let v = match d.get(ROOT, &k).ok().flatten() {
            Some((AmValue::Object(ObjType::Text), id)) => d.text(&id).unwrap_or_default(),
            Some((AmValue::Scalar(s), _)) => s.to_string().trim_matches('"').to_owned(),
            Some((other, _)) => other.to_string(),
            None => continue,
        };
        out.insert(k, Value::String(v));
    }
    out
}

/// The document as the owner sees it, once `done` holds (10 s at most).
async fn eventually(
    s: &Setup,
    doc: DocumentId,
    done: impl Fn(&serde_json::Map<String, Value>) -> bool,
) -> Result<serde_json::Map<String, Value>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let view = owner_view(s, doc).await?.unwrap_or_default();
        if done(&view) {
            return Ok(view);
        }
        if Instant::now() > deadline {
            bail!("{doc} never reached the expected state: {view:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn js(args: Vec<String>) -> Result<Value> {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_script("auth.mjs", &args).map(|lines| lines.last().cloned().unwrap_or(Value::Null))
    })
    .await?
}

fn js_args(s: &Setup, case: &str, token: &str, more: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec!["--url".into(), s.edge.ws_url(), "--case".into(), case.into()];
    if !token.is_empty() {
        a.extend(["--token".into(), token.into()]);
    }
    a.extend(more.iter().map(|x| x.to_string()));
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_that_do_not_hold_are_refused_with_their_reason_and_counted() -> Result<()> {
    let s = setup().await?;
    let now = auth::unix_now();
    let valid = grant(&s.key, "x", |c| c.read = vec!["*".into()]);
    // One character inside the signature changed (the last one carries
    // padding bits, whose change would be a malformed encoding instead).
    let mut bad_signature: Vec<char> = valid.chars().collect();
    let i = bad_signature.len() - 10;
    bad_signature[i] = if bad_signature[i] == 'A' { 'B' } else { 'A' };
    let bad_signature: String = bad_signature.into_iter().collect();
    let cases: Vec<(TokenError, String)> = vec![
        (TokenError::Missing, String::new()),
        (TokenError::Malformed, "not-a-token".into()),
        (TokenError::UnknownKey, grant(&s.stranger_key, "x", |c| c.read = vec!["*".into()])),
        (TokenError::BadSignature, bad_signature),
        (TokenError::Expired, grant(&s.key, "x", |c| c.exp = now - 5)),
        (TokenError::NotYetValid, grant(&s.key, "x", |c| c.nbf = Some(now + 3600))),
    ];
    for (reason, token) in &cases {
        let r = js(js_args(&s, "refused", token, &[])).await?;
        assert_eq!(r["status"], 401, "{reason:?}: {r}");
        let text = r["reason"].as_str().unwrap_or_default();
        assert!(text.contains(&reason.to_string()), "{reason:?}: the reason is given: {text}");
        assert_eq!(s.edge.metrics().auth_refused_of(*reason), 1, "{reason:?} counted once");
    }
    let metrics = s.edge.metrics().render();
    assert!(metrics.contains("meridian_edge_auth_refused_total{reason=\"expired\"} 1"), "{metrics}");
    assert!(metrics.contains("meridian_edge_auth_open 0"));
    // None of them reached the engine (nothing could be stored for them).
    let none = s.edge.metrics().errors_of(meridian_protocol::engine::ErrorKind::Unauthorized);
    assert_eq!(none, 0, "refused before any connection reached the engine");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_js_reader_reads_and_its_changes_go_nowhere() -> Result<()> {
    let s = setup().await?;
    let doc_url = s.doc.url().to_string();
    let token = grant(&s.key, "reader", |c| c.read = vec![doc_url.clone()]);
    let r =
        js(js_args(&s, "read", &token, &["--doc", &doc_url, "--expect-json", r#"{"title":"secret"}"#, "--try-write"]))
            .await?;
    let errors: Vec<&str> = r["errors"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    assert_eq!(errors.len(), 1, "told once: {r}");
    assert!(errors[0].contains("read-only"), "{r}");
    let view = owner_view(&s, s.doc).await?.context("the document is there")?;
    assert!(!view.contains_key("intruder"), "the reader's change was not taken: {view:?}");
    assert!(s.edge.metrics().access_refused_of(Refusal::ReadOnly) >= 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_js_writer_writes_its_document_and_a_stranger_finds_nothing() -> Result<()> {
    let s = setup().await?;
    let doc_url = s.doc.url().to_string();
    let writer = grant(&s.key, "writer", |c| c.write = vec![doc_url.clone()]);
    js(js_args(&s, "write", &writer, &["--doc", &doc_url, "--key", "from_js", "--value", "yes"])).await?;
    eventually(&s, s.doc, |v| v.get("from_js") == Some(&Value::String("yes".into()))).await?;
    // A token for another document: answered as if it did not exist.
    let other = DocumentId::from_bytes([9; 16]);
    let stranger = grant(&s.key, "stranger", |c| c.write = vec![other.to_string()]);
    js(js_args(&s, "unavailable", &stranger, &["--doc", &doc_url])).await?;
    assert!(s.edge.metrics().access_refused_of(Refusal::NotGranted) >= 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_a_document_takes_the_create_right() -> Result<()> {
    let s = setup().await?;
    let without = grant(&s.key, "maker", |c| c.write = vec!["*".into()]);
    let r = js(js_args(&s, "create", &without, &["--expect-error"])).await?;
    let url: meridian_protocol::ids::AutomergeUrl = r["url"].as_str().context("url")?.parse()?;
    let errors = r["errors"].to_string();
    assert!(errors.contains("create right"), "told why: {r}");
    assert_eq!(owner_view(&s, url.document_id).await?, None, "nothing stored without the create right");
    assert!(s.edge.metrics().access_refused_of(Refusal::Create) >= 1);

    let with = grant(&s.key, "maker", |c| {
        c.write = vec!["*".into()];
        c.create = true;
    });
    let r = js(js_args(&s, "create", &with, &[])).await?;
    let url: meridian_protocol::ids::AutomergeUrl = r["url"].as_str().context("url")?.parse()?;
    let view = eventually(&s, url.document_id, |v| v.contains_key("made")).await?;
    assert_eq!(view.get("made"), Some(&Value::String("by js".into())));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_clients_present_tokens_over_quic_and_websocket() -> Result<()> {
    let s = setup().await?;
    let ca = s._dir.path().join("edge/tls/ca.pem");
    let quic_url = s.edge.quic_url().context("quic listener")?;
    let quic = |token: Option<String>| ClientOptions {
        token,
        quic_trust: Some(HubTrust::CaFile(ca.clone())),
        min_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(300),
        ..Default::default()
    };
    let reader = grant(&s.key, "device", |c| c.read = vec![s.doc.to_string()]);
    let device = Client::connect(&quic_url, quic(Some(reader))).await?;
    tokio::time::timeout(Duration::from_secs(10), device.find(s.doc)).await??;
    let title = device.read(s.doc, |d| d.get(ROOT, "title").ok().flatten().map(|(v, _)| v.to_string())).await;
    assert_eq!(title.flatten().as_deref(), Some("\"secret\""));

    // No token over QUIC: refused before it reaches the document.
    let anonymous = Client::connect(&quic_url, quic(None)).await?;
    let found = tokio::time::timeout(Duration::from_secs(2), anonymous.find(s.doc)).await;
    assert!(!matches!(found, Ok(Ok(()))), "an anonymous device must not read: {found:?}");
    assert!(s.edge.metrics().auth_refused_of(TokenError::Missing) >= 1);

    // No token over WebSocket: refused with the reason.
    let ws = Client::connect(&s.edge.ws_url(), ClientOptions::default()).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while ws.connection_state().await? != ConnectionState::Refused {
        assert!(Instant::now() < deadline, "the WebSocket client is refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_is_closed_when_its_token_expires() -> Result<()> {
    let s = setup().await?;
    let token = grant(&s.key, "brief", |c| {
        c.exp = auth::unix_now() + 2;
        c.read = vec!["*".into()];
    });
    let started = Instant::now();
    let mut peer = RawPeer::joined(&format!("{}?token={token}", s.edge.ws_url()), "brief-peer").await?;
    let message = match peer.recv_within(Duration::from_secs(5)).await? {
        Received::Message(Message::Error { message, .. }) => message,
        other => bail!("expected an `error`, got {other:?}"),
    };
    assert_eq!(message, "token expired");
    assert!(matches!(peer.recv().await?, Received::Closed(_)));
    // Whole seconds: expiry is at most 2 s away, and at least 1.
    let held = started.elapsed();
    assert!(held < Duration::from_secs(4), "closed at expiry, not long after ({held:?})");
    Ok(())
}

/// Joining with another subject's peer id takes nothing over: the victim
/// keeps being served on its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_id_of_another_subject_is_not_taken_over() -> Result<()> {
    let s = setup().await?;
    let url = |t: &str| format!("{}?token={t}", s.edge.ws_url());
    let alice = grant(&s.key, "alice", |c| c.read = vec!["*".into()]);
    let mallory = grant(&s.key, "mallory", |c| c.read = vec!["*".into()]);
    let mut victim = RawPeer::joined(&url(&alice), "peer-alice").await?;
    let _thief = RawPeer::joined(&url(&mallory), "peer-alice").await?;
    // The victim is still served.
    victim
        .send(&Message::Request {
            sender_id: victim.peer_id.clone(),
            target_id: meridian_protocol::ids::PeerId::new("meridian-edge"),
            document_id: s.doc,
            data: {
                let empty = meridian_protocol::automerge::Automerge::new();
                empty.generate_sync_message(&mut sync::State::new()).context("a first message")?.encode()
            },
        })
        .await?;
    match victim.recv().await? {
        Received::Message(Message::Sync { document_id, .. }) => assert_eq!(document_id, s.doc),
        other => bail!("the victim should get the document, got {other:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_dev_mode_serves_loopback_only_and_says_so() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let public = EdgeConfig::new(dir.path()).listen("0.0.0.0:0".parse()?);
    let err = EdgeNode::start(public).await.err().context("refused off loopback")?.to_string();
    assert!(err.contains("--auth-public-key") && err.contains("0.0.0.0"), "{err}");
    let edge = EdgeNode::start(EdgeConfig::new(dir.path()).ephemeral_port()).await?;
    assert!(edge.metrics().render().contains("meridian_edge_auth_open 1"));
    let info = meridian_tests::http::request(edge.local_addr().port(), "GET", "/info", &[])?.json()?;
    assert_eq!(info["auth"], "open");
    edge.shutdown().await;
    Ok(())
}
