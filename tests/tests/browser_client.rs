//! The browser package `@meridian/client` (client-wasm/pkg, built by
//! `cargo xtask build-js`) against a real edge:
//!
//! - in headless Chromium, a page and a Rust client edit the same
//!   document; offline edits survive a reload and sync when back online;
//!   a 1,000-change document is opened from IndexedDB with no network;
//! - in Node, it syncs with the official JS automerge-repo client.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use meridian_edge::client::{Client, ClientOptions};
use meridian_edge::{EdgeConfig, EdgeNode};
use meridian_protocol::automerge::transaction::Transactable;
use meridian_protocol::automerge::{ObjType, ROOT, ReadDoc};
use meridian_tests::js::{js_dir, require_node_modules, run_script};
use meridian_tests::process::workspace_root;
use serde_json::Value;
use tokio::sync::mpsc;

fn require_pkg() -> Result<()> {
    require_node_modules()?;
    if !workspace_root().join("client-wasm/pkg/index.js").exists() {
        bail!("client-wasm/pkg is missing: run `cargo xtask build-js` (or `cargo xtask test`) first");
    }
    Ok(())
}

async fn edge() -> Result<(EdgeNode, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let edge = EdgeNode::start(EdgeConfig::new(dir.path()).ephemeral_port()).await?;
    Ok((edge, dir))
}

fn text(doc: &meridian_protocol::automerge::Automerge, key: &str) -> Option<String> {
    match doc.get(ROOT, key).ok()?? {
        (meridian_protocol::automerge::Value::Object(ObjType::Text), id) => doc.text(&id).ok(),
        (meridian_protocol::automerge::Value::Scalar(s), _) => match s.as_ref() {
            meridian_protocol::automerge::ScalarValue::Str(t) => Some(t.to_string()),
            _ => None,
        },
        _ => None,
    }
}

/// Lines of JSON the script prints, delivered as they come.
fn spawn_script(script: &str, args: &[String]) -> Result<(std::process::Child, mpsc::UnboundedReceiver<Value>)> {
    let mut child = Command::new("node")
        .arg(js_dir().join(script))
        .args(args)
        .current_dir(js_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting node {script}"))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            eprintln!("{line}");
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let _ = tx.send(v);
            }
        }
    });
    Ok((child, rx))
}

async fn next_line(rx: &mut mpsc::UnboundedReceiver<Value>, what: &str) -> Result<Value> {
    let v = tokio::time::timeout(Duration::from_secs(120), rx.recv())
        .await
        .with_context(|| format!("timed out waiting for {what}"))?
        .with_context(|| format!("the script exited before {what}"))?;
    if v.get("ok") == Some(&Value::Bool(false)) {
        bail!("the script failed before {what}: {v}");
    }
    Ok(v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_page_and_rust_client_edit_the_same_document() -> Result<()> {
    require_pkg()?;
    let (edge, _dir) = edge().await?;
    let rust = Client::connect(&edge.ws_url(), ClientOptions::default()).await?;
    let doc = rust
        .create(|tx| {
            let title = tx.put_object(ROOT, "title", ObjType::Text)?;
            tx.splice_text(&title, 0, 0, "from rust")?;
            Ok(())
        })
        .await?;
    tokio::time::timeout(Duration::from_secs(20), rust.wait_acked(doc)).await??;

    let args = vec!["--edge".to_owned(), edge.ws_url(), "--doc".to_owned(), doc.url().to_string()];
    let (mut child, mut lines) = spawn_script("browser-e2e.mjs", &args)?;

    let edited = next_line(&mut lines, "the page's edit").await?;
    assert_eq!(edited["step"], "edited");
    assert_eq!(edited["before"]["title"], "from rust");
    tokio::time::timeout(Duration::from_secs(20), rust.find(doc)).await??;
    let seen = |d: &meridian_protocol::automerge::Automerge| {
        text(d, "browser").as_deref() == Some("was here") && text(d, "title").as_deref() == Some("hi from rust")
    };
    tokio::time::timeout(Duration::from_secs(20), rust.wait_for(doc, seen)).await??;
    rust.change(doc, |tx| tx.put(ROOT, "rust", "reply").map(drop)).await?;

    let reply = next_line(&mut lines, "the Rust reply to reach the page").await?;
    assert_eq!(reply["step"], "got-reply");

    let offline = next_line(&mut lines, "the offline edit to sync").await?;
    assert_eq!(offline["step"], "offline-synced");
    let synced = |d: &meridian_protocol::automerge::Automerge| text(d, "offline").as_deref() == Some("edit");
    tokio::time::timeout(Duration::from_secs(20), rust.wait_for(doc, synced)).await??;

    let big = next_line(&mut lines, "the 1,000-change open").await?;
    eprintln!("1,000-change document opened from IndexedDB with the network off: {big}");
    let done = next_line(&mut lines, "the end").await?;
    assert_eq!(done["ok"], true);
    let status = child.wait()?;
    assert!(status.success(), "browser-e2e.mjs exited with {status}");
    edge.shutdown().await;
    Ok(())
}

/// An edge with auth on, the key its tokens are signed with, and its folder
/// (holding `keys/auth-private.pem`).
async fn edge_with_auth() -> Result<(EdgeNode, meridian_node::auth::SigningKey, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let key = meridian_node::auth::keygen(&dir.path().join("keys"))?;
    let mut config = EdgeConfig::new(dir.path().join("edge")).ephemeral_port();
    config.auth_public_keys = vec![dir.path().join("keys/auth-public.pem")];
    Ok((EdgeNode::start(config).await?, key, dir))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meridian_package_and_js_automerge_repo_sync_through_edge() -> Result<()> {
    require_pkg()?;
    let (edge, _dir) = edge().await?;
    let url = edge.ws_url();
    let lines = tokio::task::spawn_blocking(move || run_script("meridian-compat.mjs", &["--url", &url])).await??;
    assert!(lines.iter().any(|l| l["step"] == "ephemeral"), "{lines:?}");
    edge.shutdown().await;
    Ok(())
}

/// `@meridian/client/repo` (automerge-repo's API): its proxy mutation gives
/// the same documents as automerge's own on fixed and 400 random edits,
/// values round-trip losslessly in both APIs, the handle and repo API work,
/// and through a real edge documents with every value type and presence
/// interoperate with the JS automerge-repo both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_repo_layer_matches_automerge_and_interoperates_with_automerge_repo() -> Result<()> {
    require_pkg()?;
    let (edge, _dir) = edge().await?;
    let url = edge.ws_url();
    let lines = tokio::task::spawn_blocking(move || run_script("meridian-repo.mjs", &["--url", &url])).await??;
    let seen: Vec<&str> = lines.iter().filter_map(|l| l["step"].as_str()).collect();
    assert_eq!(
        seen,
        ["proxy-mutation", "lossless", "handle-api", "js-wrote", "meridian-wrote", "presence"],
        "{lines:?}"
    );
    edge.shutdown().await;
    Ok(())
}

/// The porting proof, first half: a todo app written against
/// automerge-repo's own API (its Repo, WebSocket and IndexedDB adapters and
/// React hooks), built by Vite and driven in Chromium against the JS sync
/// server: two pages share a list, edit both ways, see each other's
/// presence, survive a reload.
#[test]
fn the_todo_app_on_automerge_repo_passes_against_the_js_sync_server() -> Result<()> {
    require_pkg()?;
    let server = meridian_tests::js::JsServer::start()?;
    let lines = run_script("todo-e2e.mjs", &["--app", "automerge-repo", "--sync", &server.ws_url()])?;
    todo_steps(&lines)
}

/// The second half: the same app with only its imports and `new Repo`
/// options changed (`@meridian/client/repo`, `@meridian/react`, installed
/// from `npm pack` tarballs) passes the same steps against a Meridian edge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_todo_app_ported_to_meridian_passes_the_same_test_against_an_edge() -> Result<()> {
    require_pkg()?;
    let (edge, _dir) = edge().await?;
    let url = edge.ws_url();
    let lines = tokio::task::spawn_blocking(move || run_script("todo-e2e.mjs", &["--app", "meridian", "--sync", &url]))
        .await??;
    todo_steps(&lines)?;
    edge.shutdown().await;
    Ok(())
}

fn todo_steps(lines: &[Value]) -> Result<()> {
    let seen: Vec<&str> = lines.iter().filter_map(|l| l["step"].as_str()).collect();
    assert_eq!(seen, ["built", "added", "shared", "presence", "edited", "reloaded", "render-time"], "{lines:?}");
    eprintln!("{}", lines.iter().find(|l| l["step"] == "render-time").context("no render time")?);
    Ok(())
}

/// The packages' types (`index.d.ts`, `repo.d.ts`, `@meridian/react`):
/// `tests/js/types/meridian.ts` compiles under `tsc --noEmit --strict`, and
/// each of its `@ts-expect-error` lines is an error (tsc fails on one that
/// is not).
#[test]
fn the_packages_types_catch_mistakes() -> Result<()> {
    require_node_modules()?;
    let tsc = js_dir().join("node_modules/typescript/bin/tsc");
    let out = Command::new("node").arg(tsc).args(["-p", "types/tsconfig.json"]).current_dir(js_dir()).output()?;
    assert!(
        out.status.success(),
        "tsc --noEmit --strict failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// `@meridian/client` in Node as a newcomer meets it: without a WebSocket
/// `open` rejects with a clear error; `increment(path)` steps by 1;
/// assigning in `change(fn)` throws instead of doing nothing; `value()` is
/// the same object until the document changes.
#[test]
fn meridian_package_in_node_refuses_clearly_and_keeps_values_stable() -> Result<()> {
    steps_of("meridian-node.mjs", &["no-websocket", "increment", "assignment-refused", "stable-value"]).map(drop)
}

/// Runs a Node script of `tests/js` that checks the built package, and
/// checks it went through `steps` in order; its lines.
fn steps_of(script: &str, steps: &[&str]) -> Result<Vec<Value>> {
    require_pkg()?;
    let lines = run_script(script, &[])?;
    let seen: Vec<&str> = lines.iter().filter_map(|l| l["step"].as_str()).collect();
    assert_eq!(seen, steps, "{lines:?}");
    Ok(lines)
}

/// The package as an application installs it: `npm pack`, then installed
/// from the tarball into a fresh Node app (imports it by name and counts)
/// and a fresh Vite app (builds with no warning, the wasm an asset).
#[test]
fn the_packed_package_installs_into_fresh_node_and_vite_apps() -> Result<()> {
    let lines = steps_of("meridian-pack.mjs", &["pack", "node-app", "vite-app"])?;
    eprintln!("{}", lines[0]);
    Ok(())
}

/// The same with auth on: `@meridian/client` presents its `token`, the JS
/// repo its `?token=`; without tokens the run fails (the edge refuses
/// both clients, counted as `missing`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meridian_package_presents_its_token_to_an_edge_with_auth_on() -> Result<()> {
    use meridian_node::auth::{self, Claims};
    require_pkg()?;
    let (edge, key, _dir) = edge_with_auth().await?;
    let token = key.mint(&Claims {
        sub: "app-user".into(),
        exp: auth::unix_now() + 600,
        write: vec!["*".into()],
        create: true,
        ..Default::default()
    });
    let url = edge.ws_url();
    let lines =
        tokio::task::spawn_blocking(move || run_script("meridian-compat.mjs", &["--url", &url, "--token", &token]))
            .await??;
    assert!(lines.iter().any(|l| l["step"] == "ephemeral"), "{lines:?}");
    let url = edge.ws_url();
    let without =
        tokio::task::spawn_blocking(move || run_script("meridian-compat.mjs", &["--url", &url, "--timeout", "8"]))
            .await?;
    assert!(without.is_err(), "without tokens the edge syncs nothing");
    assert!(edge.metrics().auth_refused_of(auth::TokenError::Missing) >= 1);
    edge.shutdown().await;
    Ok(())
}

/// `serve --tls-cert --tls-key`: Node (trusting the test's CA, as a browser
/// trusts a real one) reaches the edge over `wss://`; the JS automerge-repo
/// and `@meridian/client` sync through it; plain `http://` gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_sync_over_wss_with_tls_on() -> Result<()> {
    require_pkg()?;
    let dir = tempfile::tempdir()?;
    let names = ["localhost".to_owned(), "127.0.0.1".to_owned()];
    meridian_node::quic::load_or_create_identity(
        &dir.path().join("certs"),
        &names,
        meridian_node::quic::IdentityOf::Edge,
    )?;
    let tls = dir.path().join("certs/tls");
    let mut config = EdgeConfig::new(dir.path().join("edge")).ephemeral_port();
    config.tls = Some((tls.join("hub-cert.pem"), tls.join("hub-key.pem")));
    let edge = EdgeNode::start(config).await?;
    let url = edge.ws_url();
    assert!(url.starts_with("wss://"), "{url}");
    let ca = tls.join("ca.pem").to_string_lossy().into_owned();
    let script_url = url.clone();
    let lines = tokio::task::spawn_blocking(move || {
        meridian_tests::js::run_script_with_env(
            "meridian-compat.mjs",
            &["--url", &script_url],
            &[("NODE_EXTRA_CA_CERTS", &ca)],
        )
    })
    .await??;
    assert!(lines.iter().any(|l| l["step"] == "ephemeral"), "{lines:?}");
    let port = edge.local_addr().port();
    let plain =
        tokio::task::spawn_blocking(move || meridian_tests::http::request(port, "GET", "/healthz", &[])).await?;
    assert!(
        plain.as_ref().map_or(true, |r| r.status != 200),
        "plain HTTP is not served: {:?}",
        plain.map(|r| r.status)
    );
    edge.shutdown().await;
    Ok(())
}

/// `getToken`: tokens that live two seconds; the edge closes each at its
/// expiry, the client fetches a new one and reconnects, and every edit it
/// made meanwhile reaches the edge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meridian_package_fetches_a_new_token_when_one_expires() -> Result<()> {
    use meridian_node::auth;
    require_pkg()?;
    let (edge, key, dir) = edge_with_auth().await?;
    let (url, private) = (edge.ws_url(), dir.path().join("keys/auth-private.pem"));
    let args = ["--url", &url, "--key", &private.to_string_lossy(), "--ttl", "2"].map(str::to_owned);
    let lines =
        tokio::task::spawn_blocking(move || run_script("meridian-gettoken.mjs", &args.each_ref().map(String::as_str)))
            .await??;
    let done = lines.iter().find(|l| l["step"] == "done").context("no done line")?;
    assert!(done["calls"].as_u64() >= Some(3), "{done}");
    assert!(edge.metrics().errors_of(meridian_protocol::engine::ErrorKind::TokenExpired) >= 2, "closed at expiry");
    // Every edit is at the edge: a reader with a full token sees the last.
    let doc: meridian_protocol::ids::AutomergeUrl = done["url"].as_str().context("no url")?.parse()?;
    let token = key.mint(&auth::Claims {
        sub: "reader".into(),
        exp: auth::unix_now() + 600,
        read: vec!["*".into()],
        ..Default::default()
    });
    let reader =
        Client::connect(&edge.ws_url(), ClientOptions { token: Some(token), ..ClientOptions::default() }).await?;
    tokio::time::timeout(Duration::from_secs(20), reader.find(doc.document_id)).await??;
    let n =
        reader.read(doc.document_id, |d| d.get(ROOT, "n").ok().flatten().map(|(v, _)| v.to_string())).await.flatten();
    assert_eq!(n, Some(done["n"].to_string()));
    edge.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meridian_package_picks_an_edge_and_fails_over() -> Result<()> {
    require_pkg()?;
    let (a, _dir_a) = edge().await?;
    let (b, _dir_b) = edge().await?;
    let dead = format!("ws://127.0.0.1:{}/sync", meridian_tests::process::free_port()?);
    let urls = [dead, a.ws_url(), b.ws_url()].join(",");
    let (mut child, mut lines) = spawn_script("meridian-failover.mjs", &["--urls".to_owned(), urls])?;

    let connected = next_line(&mut lines, "the first connection").await?;
    assert_eq!(connected["step"], "connected");
    let first = connected["url"].as_str().context("no url")?.to_owned();
    let (gone, remaining) = if first == a.ws_url() { (a, b) } else { (b, a) };
    assert_eq!(first, gone.ws_url());
    gone.shutdown().await;

    let failed_over = next_line(&mut lines, "the fail-over").await?;
    assert_eq!(failed_over["url"], remaining.ws_url());
    let url: meridian_protocol::ids::AutomergeUrl = failed_over["doc"].as_str().context("no doc")?.parse()?;
    let rust = Client::connect(&remaining.ws_url(), ClientOptions::default()).await?;
    tokio::time::timeout(Duration::from_secs(20), rust.find(url.document_id)).await??;
    let n = rust.read(url.document_id, |d| d.get(ROOT, "n").ok().flatten().map(|(v, _)| v.to_string())).await.flatten();
    assert_eq!(n.as_deref(), Some("2"));
    assert_eq!(next_line(&mut lines, "the end").await?["ok"], true);
    assert!(child.wait()?.success());
    remaining.shutdown().await;
    Ok(())
}
