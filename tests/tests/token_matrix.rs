//! The token matrix of issue 15: every kind of token against every kind
//! of client of one edge with auth on — the real JS automerge-repo
//! (`tests/js/auth.mjs`, token on the URL), `@meridian/client` in Node
//! (`tests/js/meridian-auth.mjs`), the native client over QUIC, and the
//! admin API. Each cell is checked against what the owner's store holds
//! afterwards: no token lets anyone read or write what it was not granted.
//! The table is printed (`--nocapture`). The revoked token is one the hub
//! revoked before the edge started (the edge keeps the hub's revocations
//! in its data folder); revocation of live connections, pushed by a hub,
//! is `auth_revoke.rs`.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use meridian_edge::client::{Client, ClientError, ClientOptions};
use meridian_edge::{EdgeConfig, EdgeNode};
use meridian_node::auth::{self, Claims, SigningKey};
use meridian_node::quic::HubTrust;
use meridian_protocol::automerge::transaction::Transactable;
use meridian_protocol::automerge::{ROOT, ReadDoc};
use meridian_protocol::ids::{AutomergeUrl, DocumentId};
use meridian_tests::http::request;
use meridian_tests::js::run_script;
use meridian_tests::process::workspace_root;
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    None,
    Malformed,
    BadSignature,
    Expired,
    NotYetValid,
    WrongDocument,
    ReadOnly,
    Write,
    Create,
    Admin,
    Revoked,
}

/// The id of the token the hub revoked.
const REVOKED_JTI: &str = "revoked-by-the-hub";

const KINDS: [Kind; 11] = [
    Kind::None,
    Kind::Malformed,
    Kind::BadSignature,
    Kind::Expired,
    Kind::NotYetValid,
    Kind::WrongDocument,
    Kind::ReadOnly,
    Kind::Write,
    Kind::Create,
    Kind::Admin,
    Kind::Revoked,
];

impl Kind {
    fn refused(self) -> bool {
        matches!(
            self,
            Kind::None | Kind::Malformed | Kind::BadSignature | Kind::Expired | Kind::NotYetValid | Kind::Revoked
        )
    }
}

struct Setup {
    edge: EdgeNode,
    key: SigningKey,
    doc: DocumentId,
    dir: tempfile::TempDir,
}

fn token(s: &Setup, kind: Kind, sub: &str) -> String {
    let now = auth::unix_now();
    let mut c = Claims { sub: sub.into(), exp: now + 600, iat: Some(now), ..Default::default() };
    let doc = s.doc.to_string();
    match kind {
        Kind::None => return String::new(),
        Kind::Malformed => return "not-a-token".into(),
        Kind::BadSignature => {
            c.write = vec!["*".into()];
            let t = s.key.mint(&c);
            let mut chars: Vec<char> = t.chars().collect();
            let i = chars.len() - 10;
            chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
            return chars.into_iter().collect();
        }
        Kind::Expired => {
            c.write = vec!["*".into()];
            c.exp = now - 5;
        }
        Kind::NotYetValid => {
            c.write = vec!["*".into()];
            c.nbf = Some(now + 3600);
        }
        Kind::WrongDocument => c.write = vec![DocumentId::from_bytes([7; 16]).to_string()],
        Kind::ReadOnly => c.read = vec![doc],
        Kind::Write => c.write = vec![doc],
        Kind::Create => {
            c.write = vec!["*".into()];
            c.create = true;
        }
        Kind::Admin => c.admin = true,
        Kind::Revoked => {
            c.write = vec!["*".into()];
            c.create = true;
            c.admin = true;
            c.jti = REVOKED_JTI.into();
        }
    }
    s.key.mint(&c)
}

async fn setup() -> Result<Setup> {
    let pkg = workspace_root().join("client-wasm/pkg/index.js");
    if !pkg.exists() {
        bail!("{} is missing: run `cargo xtask build-js` (or `cargo xtask test`) first", pkg.display());
    }
    let dir = tempfile::tempdir()?;
    let key = auth::keygen(&dir.path().join("keys"))?;
    let mut config = EdgeConfig::new(dir.path().join("edge")).ephemeral_port().quic_listen("127.0.0.1:0".parse()?);
    std::fs::create_dir_all(dir.path().join("edge"))?;
    let revoked = auth::Revocation { jti: Some(REVOKED_JTI.into()), sub: None, at: auth::unix_now() };
    auth::save_revocations(&config.revocations_path(), &[revoked])?;
    config.auth_public_keys = vec![dir.path().join("keys/auth-public.pem")];
    let edge = EdgeNode::start(config).await?;
    let owner = Client::connect(&edge.ws_url(), options(full(&key))).await?;
    let doc = owner.create(|tx| tx.put(ROOT, "title", "secret").map(|_| ())).await?;
    owner.wait_acked(doc).await?;
    Ok(Setup { edge, key, doc, dir })
}

fn full(key: &SigningKey) -> String {
    key.mint(&Claims {
        sub: "owner".into(),
        exp: auth::unix_now() + 600,
        write: vec!["*".into()],
        create: true,
        ..Default::default()
    })
}

fn options(token: String) -> ClientOptions {
    ClientOptions {
        token: Some(token).filter(|t| !t.is_empty()),
        min_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(300),
        ..ClientOptions::default()
    }
}

/// The keys of a document as the owner sees it (`None`: it does not exist).
async fn owner_keys(s: &Setup, doc: DocumentId) -> Result<Option<Vec<String>>> {
    let owner = Client::connect(&s.edge.ws_url(), options(full(&s.key))).await?;
    let keys = match tokio::time::timeout(Duration::from_secs(5), owner.find(doc)).await {
        Ok(Ok(())) => owner.read(doc, |d| d.keys(ROOT).collect::<Vec<_>>()).await,
        _ => None,
    };
    owner.close().await;
    Ok(keys)
}

async fn script(name: &'static str, args: Vec<String>) -> Result<Value> {
    let lines = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_script(name, &args)
    })
    .await??;
    lines.last().cloned().context("no output")
}

/// What one client may do with one token, as observed.
async fn cell(s: &Setup, client: &str, kind: Kind) -> Result<&'static str> {
    let t = token(s, kind, &format!("{client}-{kind:?}"));
    let doc_url = s.doc.url().to_string();
    let key = format!("{client}_{kind:?}").to_lowercase().replace(['@', '/', ' '], "_");
    match client {
        "js automerge-repo" | "@meridian/client" => {
            let (script_name, case_arg) =
                if client == "js automerge-repo" { ("auth.mjs", "case") } else { ("meridian-auth.mjs", "case") };
            let base = |case: &str| {
                let mut a = vec!["--url".to_owned(), s.edge.ws_url(), format!("--{case_arg}"), case.to_owned()];
                if !t.is_empty() {
                    a.extend(["--token".to_owned(), t.clone()]);
                }
                a
            };
            if kind.refused() {
                // auth.mjs checks the upgrade got 401; meridian-auth.mjs that
                // the client never connected nor found the document.
                script(script_name, base("refused")).await?;
                return Ok(if client == "js automerge-repo" { "refused (401)" } else { "refused" });
            }
            match kind {
                Kind::WrongDocument | Kind::Admin => {
                    let mut a = base("unavailable");
                    a.extend(["--doc".to_owned(), doc_url]);
                    script(script_name, a).await?;
                    Ok("unavailable")
                }
                Kind::ReadOnly => {
                    let mut a = base("read");
                    a.extend(["--doc".to_owned(), doc_url, "--try-write".to_owned()]);
                    let r = script(script_name, a).await?;
                    let value = if client == "js automerge-repo" { &r["json"] } else { &r["value"] };
                    anyhow::ensure!(value["title"] == "secret", "{client}: the reader does not read it: {r}");
                    let keys = owner_keys(s, s.doc).await?.unwrap_or_default();
                    anyhow::ensure!(!keys.contains(&"intruder".to_owned()), "{client}: a read-only write was stored");
                    Ok("reads; write refused")
                }
                Kind::Write => {
                    let mut a = base("write");
                    a.extend(["--doc".to_owned(), doc_url, "--key".into(), key.clone(), "--value".into(), "v".into()]);
                    script(script_name, a).await?;
                    wait_key(s, s.doc, &key).await?;
                    Ok("reads and writes")
                }
                Kind::Create => {
                    let r = script(script_name, base("create")).await?;
                    let url: AutomergeUrl = r["url"].as_str().context("url")?.parse()?;
                    wait_key(s, url.document_id, "made").await?;
                    Ok("creates")
                }
                _ => unreachable!(),
            }
        }
        "native QUIC" => {
            let ca = s.dir.path().join("edge/tls/ca.pem");
            let url = s.edge.quic_url().context("quic listener")?;
            let mut o = options(t);
            o.quic_trust = Some(HubTrust::CaFile(ca));
            let c = Client::connect(&url, o).await?;
            let found = tokio::time::timeout(Duration::from_secs(3), c.find(s.doc)).await;
            let out = if kind.refused() {
                anyhow::ensure!(!matches!(found, Ok(Ok(()))), "{kind:?}: a refused device read the document");
                "refused"
            } else {
                match kind {
                    Kind::WrongDocument | Kind::Admin => {
                        anyhow::ensure!(
                            matches!(found, Ok(Err(ClientError::Unavailable(_)))),
                            "{kind:?}: expected unavailable, got {found:?}"
                        );
                        "unavailable"
                    }
                    Kind::ReadOnly => {
                        found.context("find")??;
                        c.change(s.doc, |tx| tx.put(ROOT, "intruder", "device").map(|_| ())).await?;
                        tokio::time::sleep(Duration::from_millis(800)).await;
                        let keys = owner_keys(s, s.doc).await?.unwrap_or_default();
                        anyhow::ensure!(!keys.contains(&"intruder".to_owned()), "a read-only device write was stored");
                        "reads; write refused"
                    }
                    Kind::Write => {
                        found.context("find")??;
                        let k = key.clone();
                        c.change(s.doc, move |tx| tx.put(ROOT, k.as_str(), "v").map(|_| ())).await?;
                        wait_key(s, s.doc, &key).await?;
                        "reads and writes"
                    }
                    Kind::Create => {
                        let doc = c.create(|tx| tx.put(ROOT, "made", "by device").map(|_| ())).await?;
                        tokio::time::timeout(Duration::from_secs(10), c.wait_acked(doc)).await??;
                        wait_key(s, doc, "made").await?;
                        "creates"
                    }
                    _ => unreachable!(),
                }
            };
            c.close().await;
            Ok(out)
        }
        "admin API" => {
            let port = s.edge.local_addr().port();
            let path = format!("/api/docs/{}", s.doc);
            let bearer = format!("Bearer {t}");
            let headers: Vec<(&str, &str)> = if t.is_empty() { vec![] } else { vec![("Authorization", &bearer)] };
            let status = tokio::task::spawn_blocking({
                let headers: Vec<(String, String)> =
                    headers.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect();
                move || {
                    let h: Vec<(&str, &str)> = headers.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
                    request(port, "GET", &path, &h).map(|r| r.status)
                }
            })
            .await??;
            Ok(match (kind, status) {
                (k, 401) if k.refused() => "401",
                (Kind::Admin, 200) => "200 (admin)",
                (k, 403) if !k.refused() && k != Kind::Admin => "403 (no admin right)",
                (k, other) => bail!("admin API with {k:?}: unexpected status {other}"),
            })
        }
        other => bail!("unknown client {other}"),
    }
}

async fn wait_key(s: &Setup, doc: DocumentId, key: &str) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if owner_keys(s, doc).await?.is_some_and(|k| k.iter().any(|k| k == key)) {
            return Ok(());
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "`{key}` never reached the edge's store");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_token_against_every_client() -> Result<()> {
    let s = setup().await?;
    let clients = ["js automerge-repo", "@meridian/client", "native QUIC", "admin API"];
    let mut table = format!("| token | {} |\n|---|{}\n", clients.join(" | "), "---|".repeat(clients.len()));
    for kind in KINDS {
        let mut row = format!("| {kind:?} |");
        for client in clients {
            let observed = cell(&s, client, kind).await.with_context(|| format!("{client} with {kind:?}"))?;
            row.push_str(&format!(" {observed} |"));
        }
        table.push_str(&row);
        table.push('\n');
    }
    eprintln!("{table}");
    // The owner's document holds only what writers with the right wrote.
    let keys = owner_keys(&s, s.doc).await?.context("the document")?;
    assert!(!keys.contains(&"intruder".to_owned()), "{keys:?}");
    let written: Vec<&String> = keys.iter().filter(|k| *k != "title").collect();
    assert!(written.iter().all(|k| k.ends_with("_write")), "only writers wrote: {keys:?}");
    Ok(())
}
