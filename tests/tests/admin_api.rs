//! The edge's admin HTTP API (DESIGN §6) against a real edge process:
//! history, value now and at earlier heads, rollback that other clients
//! receive, export that imports back, clear errors, and the token.

use anyhow::{Context, Result};
use meridian_tests::http::request;
use meridian_tests::process::{EdgeProcess, edge_client, free_port};
use serde_json::json;

fn cli(url: &str, args: &[&str]) -> Result<String> {
    edge_client(&[&["--url", url], args].concat())
}

#[test]
fn history_versions_rollback_and_export_over_http() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let edge = EdgeProcess::start(&dir.path().join("edge"), port, &[])?;
    let ws = edge.ws_url();
    let url = cli(&ws, &["create", r#"{"title":"v1","tags":["a"]}"#])?;
    cli(&ws, &["set", &url, "title", r#""v2""#])?;
    cli(&ws, &["set", &url, "tags", r#"["a","b"]"#])?;
    let id = url.trim_start_matches("automerge:");

    let history = request(port, "GET", &format!("/api/docs/{id}/history"), &[])?;
    assert_eq!(history.status, 200, "{}", history.text());
    let changes = history.json()?;
    let changes = changes.as_array().context("array")?;
    assert_eq!(changes.len(), 3);
    let first = changes[0]["hash"].as_str().context("hash")?;

    // The value now, and at the first change (by URL or id, full hash or prefix).
    let now = request(port, "GET", &format!("/api/docs/{url}"), &[])?;
    assert_eq!(now.json()?, json!({"title": "v2", "tags": ["a", "b"]}));
    let then = request(port, "GET", &format!("/api/docs/{id}?at={}", &first[..10]), &[])?;
    assert_eq!(then.json()?, json!({"title": "v1", "tags": ["a"]}));

    // Rollback: a new change; a separate client sees it.
    let rolled = request(port, "POST", &format!("/api/docs/{id}/rollback?to={first}"), &[])?;
    assert_eq!(rolled.status, 200, "{}", rolled.text());
    assert_eq!(rolled.json()?["value"], json!({"title": "v1", "tags": ["a"]}));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&cli(&ws, &["print", &url])?)?,
        json!({"title": "v1", "tags": ["a"]})
    );
    let changes = request(port, "GET", &format!("/api/docs/{id}/history"), &[])?.json()?;
    let last = changes.as_array().and_then(|c| c.last()).context("changes")?.clone();
    assert!(last["message"].as_str().is_some_and(|m| m.starts_with("Rollback to ")), "{last}");

    // Export: the bytes import back as a document with the same value.
    let export = request(port, "GET", &format!("/api/docs/{id}/export"), &[])?;
    assert_eq!(export.status, 200);
    assert_eq!(export.header("content-type"), Some("application/octet-stream"));
    let file = dir.path().join("doc.automerge");
    std::fs::write(&file, &export.body)?;
    let copy = cli(&ws, &["import", file.to_str().context("path")?])?;
    assert_eq!(cli(&ws, &["print", &copy])?, cli(&ws, &["print", &url])?);

    // Clear errors, nothing changed.
    let bad_hash = request(port, "GET", &format!("/api/docs/{id}?at=xyz"), &[])?;
    assert_eq!(bad_hash.status, 400);
    assert!(bad_hash.text().contains("not a change hash"), "{}", bad_hash.text());
    let bad_id = request(port, "GET", "/api/docs/not-a-document/history", &[])?;
    assert_eq!(bad_id.status, 400, "{}", bad_id.text());
    let nobody = meridian_protocol::ids::DocumentId::from_bytes([7; 16]);
    let unknown = request(port, "GET", &format!("/api/docs/{nobody}/history"), &[])?;
    assert_eq!(unknown.status, 404, "{}", unknown.text());
    assert_eq!(
        request(port, "GET", &format!("/api/docs/{id}/history"), &[])?.json()?.as_array().map(Vec::len),
        Some(4)
    );
    Ok(())
}

#[test]
fn with_a_token_the_admin_api_wants_it() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let edge = EdgeProcess::start(&dir.path().join("edge"), port, &["--admin-token", "s3cret"])?;
    let url = cli(&edge.ws_url(), &["create", r#"{"a":1}"#])?;
    let path = format!("/api/docs/{url}");
    let none = request(port, "GET", &path, &[])?;
    assert_eq!(none.status, 401);
    assert!(none.text().contains("Bearer"), "{}", none.text());
    assert_eq!(request(port, "GET", &path, &[("Authorization", "Bearer wrong")])?.status, 401);
    let ok = request(port, "GET", &path, &[("Authorization", "Bearer s3cret")])?;
    assert_eq!(ok.json()?, json!({"a": 1}));
    // Sync clients need no token for this: the admin API is separate.
    assert_eq!(request(port, "GET", "/healthz", &[])?.status, 200);
    Ok(())
}

/// A web page of another origin cannot change anything (a cross-site POST
/// rolled a document back), and a DNS name rebound to 127.0.0.1 is not
/// served; a same-origin POST still is.
#[test]
fn cross_site_and_rebound_requests_are_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let edge = EdgeProcess::start(&dir.path().join("edge"), port, &[])?;
    let ws = edge.ws_url();
    let url = cli(&ws, &["create", r#"{"v":1}"#])?;
    cli(&ws, &["set", &url, "v", "2"])?;
    let id = url.trim_start_matches("automerge:");
    let changes = request(port, "GET", &format!("/api/docs/{id}/history"), &[])?.json()?;
    let first = changes[0]["hash"].as_str().context("hash")?.to_owned();
    let rollback = format!("/api/docs/{id}/rollback?to={first}");
    let evil = request(port, "POST", &rollback, &[("Origin", "http://evil.example"), ("Content-Type", "text/plain")])?;
    assert_eq!(evil.status, 403, "{}", evil.text());
    assert!(evil.text().contains("cross-site"), "{}", evil.text());
    assert_eq!(serde_json::from_str::<serde_json::Value>(&cli(&ws, &["print", &url])?)?, json!({"v": 2}), "unchanged");
    let host = format!("127.0.0.1:{port}");
    let origin = format!("http://{host}");
    let same = request(port, "POST", &rollback, &[("Host", &host), ("Origin", &origin)])?;
    assert_eq!(same.status, 200, "{}", same.text());
    let rebound = request(port, "GET", &format!("/api/docs/{id}"), &[("Host", &format!("evil.example:{port}"))])?;
    assert_eq!(rebound.status, 403, "{}", rebound.text());
    Ok(())
}

/// With auth on, the admin API wants an access token with the admin
/// right; its own client still reaches the edge (it has the edge's
/// internal token).
#[test]
fn with_auth_on_the_admin_api_wants_an_admin_token() -> Result<()> {
    use meridian_node::auth::{self, Claims};
    let dir = tempfile::tempdir()?;
    let key = auth::keygen(&dir.path().join("keys"))?;
    let public = dir.path().join("keys/auth-public.pem");
    let port = free_port()?;
    let edge =
        EdgeProcess::start(&dir.path().join("edge"), port, &["--auth-public-key", public.to_str().context("path")?])?;
    let mint = |admin: bool| {
        key.mint(&Claims {
            sub: "ops".into(),
            exp: auth::unix_now() + 600,
            write: vec!["*".into()],
            create: true,
            admin,
            ..Default::default()
        })
    };
    let (writer, admin) = (mint(false), mint(true));
    let url = cli(&edge.ws_url(), &["--token", &writer, "create", r#"{"a":1}"#])?;
    let path = format!("/api/docs/{url}");
    let none = request(port, "GET", &path, &[])?;
    assert_eq!(none.status, 401, "loopback is not enough with auth on: {}", none.text());
    let bearer = |t: &str| format!("Bearer {t}");
    let no_right = request(port, "GET", &path, &[("Authorization", &bearer(&writer))])?;
    assert_eq!(no_right.status, 403, "{}", no_right.text());
    let ok = request(port, "GET", &path, &[("Authorization", &bearer(&admin))])?;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()?, json!({"a": 1}));
    // The creator's subject is recorded.
    let creator = request(port, "GET", &format!("{path}/creator"), &[("Authorization", &bearer(&admin))])?;
    assert_eq!(creator.status, 200, "{}", creator.text());
    assert_eq!(creator.json()?["subject"], "ops");
    Ok(())
}

/// `--admin-listen`: the operator routes leave the client listener (404
/// there) for their own, on the edge and on the hub.
#[test]
fn admin_listen_moves_the_operator_routes_to_their_own_listener() -> Result<()> {
    use meridian_tests::process::{HubProcess, free_udp_port};
    let dir = tempfile::tempdir()?;
    let (port, admin) = (free_port()?, free_port()?);
    let edge = EdgeProcess::start(&dir.path().join("edge"), port, &["--admin-listen", &format!("127.0.0.1:{admin}")])?;
    let url = cli(&edge.ws_url(), &["create", r#"{"a":1}"#])?;
    let path = format!("/api/docs/{url}");
    assert_eq!(request(port, "GET", &path, &[])?.status, 404, "not beside /sync any more");
    let ok = request(admin, "GET", &path, &[])?;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()?, json!({"a": 1}));
    assert_eq!(request(port, "GET", "/healthz", &[])?.status, 200);

    let (quic, http, hub_admin) = (free_udp_port()?, free_port()?, free_port()?);
    let _hub =
        HubProcess::start(&dir.path().join("hub"), quic, http, &["--admin-listen", &format!("127.0.0.1:{hub_admin}")])?;
    for view in ["/placement", "/topology"] {
        assert_eq!(request(http, "GET", view, &[])?.status, 404, "{view} left --http");
        assert_eq!(request(hub_admin, "GET", view, &[])?.status, 200, "{view} on --admin-listen");
    }
    assert_eq!(request(http, "GET", "/metrics", &[])?.status, 200);
    Ok(())
}

/// The hub's views list document ids: with auth on they want an admin
/// token (loopback is not enough), and no page of another origin may read
/// them (no CORS header). Revoking wants one too.
#[test]
fn with_auth_on_the_hub_views_and_revocation_want_an_admin_token() -> Result<()> {
    use meridian_node::auth::{self, Claims};
    use meridian_tests::process::{HubProcess, free_udp_port, workspace_binary};
    let dir = tempfile::tempdir()?;
    let key = auth::keygen(&dir.path().join("keys"))?;
    let public = dir.path().join("keys/auth-public.pem");
    let (quic, http) = (free_udp_port()?, free_port()?);
    let _hub = HubProcess::start(
        &dir.path().join("hub"),
        quic,
        http,
        &["--auth-public-key", public.to_str().context("path")?],
    )?;
    let mint = |admin: bool| {
        key.mint(&Claims {
            sub: "ops".into(),
            exp: auth::unix_now() + 600,
            read: vec!["*".into()],
            admin,
            ..Default::default()
        })
    };
    let bearer = |t: &str| format!("Bearer {t}");
    let (reader, admin) = (bearer(&mint(false)), bearer(&mint(true)));
    for view in ["/placement", "/topology"] {
        let none = request(http, "GET", view, &[("Origin", "http://evil.example")])?;
        assert_eq!(none.status, 401, "{view}: {}", none.text());
        assert!(none.text().contains("admin token refused"), "{}", none.text());
        assert_eq!(request(http, "GET", view, &[("Authorization", &reader)])?.status, 403, "{view}");
        let ok = request(http, "GET", view, &[("Authorization", &admin), ("Origin", "http://evil.example")])?;
        assert_eq!(ok.status, 200, "{view}: {}", ok.text());
        assert_eq!(ok.header("access-control-allow-origin"), None, "{view} is readable by no other origin");
    }
    let revoke = |extra: &[&str]| {
        std::process::Command::new(workspace_binary("meridian-hub")?)
            .args(["auth", "revoke", "--hub-http", &format!("127.0.0.1:{http}"), "--jti", "t-1"])
            .args(extra)
            .output()
            .context("meridian-hub auth revoke")
    };
    let refused = revoke(&[])?;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("401"), "{}", String::from_utf8_lossy(&refused.stderr));
    let admin_token = mint(true);
    let done = revoke(&["--admin-token", &admin_token])?;
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    Ok(())
}
