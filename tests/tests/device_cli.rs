//! Device clients: the native client over QUIC, and the `meridian-edge
//! client` CLI that device scripts use, against real edge processes.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use meridian_edge::client::{Client, ClientOptions};
use meridian_edge::{EdgeConfig, EdgeNode};
use meridian_node::quic::HubTrust;
use meridian_protocol::automerge::transaction::Transactable;
use meridian_protocol::automerge::{Automerge, ROOT, ReadDoc};
use meridian_tests::process::{EdgeProcess, edge_client as cli, free_port, workspace_binary};

fn int(d: &Automerge, key: &str) -> Option<i64> {
    d.get(ROOT, key).ok().flatten().and_then(|(v, _)| v.as_i64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_over_quic_edits_offline_then_syncs_with_a_websocket_client() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let quic_port = free_port()?;
    let quic_addr = format!("127.0.0.1:{quic_port}").parse()?;
    // First start creates the edge's certificate; the device trusts its CA.
    let edge = EdgeNode::start(EdgeConfig::new(dir.path()).ephemeral_port().quic_listen(quic_addr)).await?;
    let ca = dir.path().join("tls/ca.pem");
    edge.shutdown().await;

    let device_dir = tempfile::tempdir()?;
    let options = ClientOptions {
        store_path: Some(device_dir.path().join("device.sqlite3")),
        quic_trust: Some(HubTrust::CaFile(ca)),
        min_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        ..Default::default()
    };
    let device = Client::connect(&format!("quic://127.0.0.1:{quic_port}"), options).await?;
    let doc = device.create(|tx| tx.put(ROOT, "offline", 1).map(|_| ())).await?;
    device.change(doc, |tx| tx.put(ROOT, "more", 2).map(|_| ())).await?;

    // The edge comes back; the device reconnects over QUIC by itself.
    let edge = EdgeNode::start(EdgeConfig::new(dir.path()).ephemeral_port().quic_listen(quic_addr)).await?;
    tokio::time::timeout(Duration::from_secs(20), device.wait_acked(doc)).await.context("device did not sync")??;
    let browser = Client::connect(&edge.ws_url(), ClientOptions::default()).await?;
    tokio::time::timeout(Duration::from_secs(10), browser.find(doc)).await??;
    let got = browser.read(doc, |d| (int(d, "offline"), int(d, "more"))).await;
    assert_eq!(got, Some((Some(1), Some(2))));
    Ok(())
}

#[test]
fn cli_creates_changes_and_prints_documents_over_quic_and_websocket() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (port, quic) = (free_port()?, free_port()?);
    let quic_listen = format!("127.0.0.1:{quic}");
    let _edge = EdgeProcess::start(dir.path(), port, &["--quic-listen", &quic_listen])?;
    let ca = dir.path().join("tls/ca.pem");
    let ca = ca.to_str().unwrap_or_default();
    let quic_url = format!("quic://{quic_listen}");
    let ws_url = format!("ws://127.0.0.1:{port}/sync");

    let url = cli(&["--url", &quic_url, "--edge-ca", ca, "create", r#"{"title":"hi","n":1}"#])?;
    assert!(url.starts_with("automerge:"), "create prints the URL, got {url:?}");
    cli(&["--url", &quic_url, "--edge-ca", ca, "append", &url, "title", " there 🎉"])?;
    cli(&["--url", &ws_url, "set", &url, "meta.tags", r#"["a","b"]"#])?;
    let printed: serde_json::Value = serde_json::from_str(&cli(&["--url", &ws_url, "print", &url])?)?;
    assert_eq!(printed, serde_json::json!({"title": "hi there 🎉", "n": 1, "meta": {"tags": ["a", "b"]}}));
    // Bad input is a clear error, not a panic.
    let bad = Command::new(workspace_binary("meridian-edge")?)
        .args(["client", "--url", &ws_url, "set", &url, "n", "not json"])
        .output()?;
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("must be JSON"));
    Ok(())
}

/// An operator's inspection tools against a real edge: the history, an
/// earlier version, a rollback that syncs to other clients, and export /
/// import of an `.automerge` file; bad hashes are clear errors.
#[test]
fn cli_history_show_rollback_export_import() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let edge = EdgeProcess::start(&dir.path().join("edge"), port, &[])?;
    let url = edge.ws_url();
    let ws = ["--url", url.as_str()];
    let doc = cli(&[&ws[..], &["create", r#"{"title":"first","n":1}"#]].concat())?;
    cli(&[&ws[..], &["set", &doc, "title", r#""second""#]].concat())?;
    cli(&[&ws[..], &["append", &doc, "title", " and more"]].concat())?;

    let history = cli(&[&ws[..], &["history", &doc, "--json"]].concat())?;
    let changes: Vec<serde_json::Value> = history.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    assert_eq!(changes.len(), 3, "{history}");
    let first = changes[0]["hash"].as_str().context("hash")?;
    let table = cli(&[&ws[..], &["history", &doc]].concat())?;
    assert!(table.contains(&first[..12]), "{table}");

    let at_first = cli(&[&ws[..], &["show", &doc, "--at", &first[..8]]].concat())?;
    assert_eq!(serde_json::from_str::<serde_json::Value>(&at_first)?, serde_json::json!({"title": "first", "n": 1}));

    let rolled = cli(&[&ws[..], &["rollback", &doc, "--to", &first[..8]]].concat())?;
    assert_eq!(serde_json::from_str::<serde_json::Value>(&rolled)?, serde_json::json!({"title": "first", "n": 1}));
    // Another client sees the rollback: it is an ordinary change, synced.
    let printed = cli(&[&ws[..], &["print", &doc]].concat())?;
    assert_eq!(serde_json::from_str::<serde_json::Value>(&printed)?, serde_json::json!({"title": "first", "n": 1}));
    let history = cli(&[&ws[..], &["history", &doc, "--json"]].concat())?;
    assert_eq!(history.lines().count(), 4);
    assert!(history.lines().last().unwrap_or("").contains("Rollback to"), "{history}");

    // Export, then import as a new document with the same content and history.
    let file = dir.path().join("doc.automerge");
    cli(&[&ws[..], &["export", &doc, file.to_str().context("path")?]].concat())?;
    let copy = cli(&[&ws[..], &["import", file.to_str().context("path")?]].concat())?;
    assert_ne!(copy, doc);
    assert_eq!(cli(&[&ws[..], &["print", &copy]].concat())?, printed);
    assert_eq!(cli(&[&ws[..], &["history", &copy, "--json"]].concat())?.lines().count(), 4);

    // Mistakes are explained, and change nothing.
    let bad = Command::new(workspace_binary("meridian-edge")?)
        .args(["client", "--url", &url, "rollback", &doc, "--to", "0000zz"])
        .output()?;
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("not a change hash"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let not_file = Command::new(workspace_binary("meridian-edge")?)
        .args(["client", "--url", &url, "import", file.with_extension("missing").to_str().context("path")?])
        .output()?;
    assert!(!not_file.status.success());
    // An empty file imports nothing and says so (a backup restore must not
    // fail silently).
    let empty = dir.path().join("empty.automerge");
    std::fs::write(&empty, b"")?;
    let out = Command::new(workspace_binary("meridian-edge")?)
        .args(["client", "--url", &url, "import", empty.to_str().context("path")?])
        .output()?;
    assert!(!out.status.success(), "an empty import fails");
    assert!(out.stdout.is_empty(), "no URL printed: {}", String::from_utf8_lossy(&out.stdout));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("holds no changes"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Export never overwrites, nor writes through a link, without --force.
    let kept = dir.path().join("kept.txt");
    std::fs::write(&kept, b"precious")?;
    let link = dir.path().join("link.automerge");
    std::os::unix::fs::symlink(&kept, &link)?;
    for target in [&file, &link] {
        let out = Command::new(workspace_binary("meridian-edge")?)
            .args(["client", "--url", &url, "export", &doc, target.to_str().context("path")?])
            .output()?;
        assert!(!out.status.success(), "export over {} refused", target.display());
        assert!(String::from_utf8_lossy(&out.stderr).contains("--force"), "{}", String::from_utf8_lossy(&out.stderr));
    }
    cli(&[&ws[..], &["export", &doc, link.to_str().context("path")?, "--force"]].concat())?;
    assert_eq!(std::fs::read(&kept)?, b"precious", "the link's target is untouched");
    assert!(!std::fs::symlink_metadata(&link)?.file_type().is_symlink(), "the link was replaced by the file");
    assert_eq!(cli(&[&ws[..], &["history", &doc, "--json"]].concat())?.lines().count(), 4);
    drop(edge);
    Ok(())
}
