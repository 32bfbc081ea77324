//! `meridian-edge auth keygen` and `auth token` (and the same on the hub),
//! run as the binaries: the key files, the token's claims as a node
//! verifies them, and clear errors for bad input.

use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

use meridian_node::auth::{TokenError, Verifier};
use meridian_protocol::ids::DocumentId;
use meridian_tests::process::workspace_binary;

fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(workspace_binary(bin).expect("binary built")).args(args).output().expect("runs")
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

#[test]
fn keygen_then_token_gives_a_token_a_node_accepts_with_exactly_its_grants() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let out = run("meridian-edge", &["auth", "keygen", "--out", keys.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let public = keys.join("auth-public.pem");
    let private = keys.join("auth-private.pem");
    assert!(std::fs::read_to_string(&public).unwrap().starts_with("-----BEGIN PUBLIC KEY-----"));
    assert!(std::fs::read_to_string(&private).unwrap().starts_with("-----BEGIN PRIVATE KEY-----"));

    let (a, b) = (DocumentId::from_bytes([1; 16]), DocumentId::from_bytes([2; 16]));
    let url_b = format!("automerge:{b}");
    let key = private.to_str().unwrap();
    let args = [
        "auth",
        "token",
        "--key",
        key,
        "--read",
        &a.to_string(),
        "--write",
        &url_b,
        "--create",
        "--ttl",
        "10m",
        "--sub",
        "bob",
    ];
    let out = run("meridian-edge", &args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap();
    let token = token.trim();
    assert_eq!(token.split('.').count(), 3, "one JWT on stdout: {token}");
    let verifier = Verifier::load(&[&public]).unwrap();
    let grant = verifier.verify(token, now()).unwrap();
    assert_eq!(grant.sub, "bob");
    assert!(grant.may_read(&a) && !grant.may_write(&a));
    assert!(grant.may_write(&b));
    assert!(!grant.may_read(&DocumentId::from_bytes([3; 16])));
    assert!(grant.create && !grant.admin);
    assert!((now() + 590..=now() + 610).contains(&grant.expires), "--ttl 10m");
    assert_eq!(verifier.verify(token, now() + 601), Err(TokenError::Expired));

    // The hub mints the same way, with the same key.
    let out = run("meridian-hub", &["auth", "token", "--key", key, "--read", "*", "--admin"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let grant = verifier.verify(String::from_utf8(out.stdout).unwrap().trim(), now()).unwrap();
    assert!(grant.admin && grant.may_read(&a) && !grant.may_write(&a));
}

#[test]
fn bad_input_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().to_str().unwrap();
    assert!(run("meridian-edge", &["auth", "keygen", "--out", keys]).status.success());
    let again = run("meridian-edge", &["auth", "keygen", "--out", keys]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"), "keys are never overwritten");
    let key = dir.path().join("auth-private.pem");
    let key = key.to_str().unwrap();
    for (args, says) in
        [(vec!["--ttl", "5x"], "not a duration"), (vec!["--read", "not-a-document"], "not a document id")]
    {
        let mut all = vec!["auth", "token", "--key", key];
        all.extend(args);
        let out = run("meridian-edge", &all);
        assert!(!out.status.success() && out.stdout.is_empty());
        assert!(String::from_utf8_lossy(&out.stderr).contains(says), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let public = dir.path().join("auth-public.pem");
    let out = run("meridian-edge", &["auth", "token", "--key", public.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a private key PEM file"));
}

#[test]
fn a_token_minted_by_nodes_own_crypto_verifies_and_ours_verifies_in_node() {
    let dir = tempfile::tempdir().unwrap();
    assert!(run("meridian-edge", &["auth", "keygen", "--out", dir.path().to_str().unwrap()]).status.success());
    let private = dir.path().join("auth-private.pem");
    let public = dir.path().join("auth-public.pem");
    let doc = DocumentId::from_bytes([4; 16]);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("js/mint-token.mjs");
    let out = Command::new("node")
        .arg(&script)
        .args([private.to_str().unwrap(), "backend-user", &doc.to_string()])
        .output()
        .expect("node runs (Node.js is a test prerequisite)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap();
    let grant = Verifier::load(&[&public]).unwrap().verify(token.trim(), now()).unwrap();
    assert_eq!(grant.sub, "backend-user");
    assert!(grant.may_write(&doc) && !grant.may_read(&DocumentId::from_bytes([5; 16])));

    // And the other way: node verifies a token the CLI minted.
    let ours = run("meridian-edge", &["auth", "token", "--key", private.to_str().unwrap(), "--read", "*"]);
    let ours = String::from_utf8(ours.stdout).unwrap();
    let check = "const c=require('crypto'),fs=require('fs');const [h,p,s]=process.argv[1].split('.');\
                 process.exit(c.verify(null,Buffer.from(h+'.'+p),c.createPublicKey(fs.readFileSync(process.argv[2])),\
                 Buffer.from(s,'base64url'))?0:1)";
    let status = Command::new("node").args(["-e", check, ours.trim(), public.to_str().unwrap()]).status().unwrap();
    assert!(status.success(), "node's crypto accepts our signature and public key");
}
