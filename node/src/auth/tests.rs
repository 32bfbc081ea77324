use super::*;

fn key() -> (tempfile::TempDir, SigningKey, Verifier) {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path()).unwrap();
    let verifier = Verifier::load(&[dir.path().join("auth-public.pem")]).unwrap();
    (dir, key, verifier)
}

fn doc(n: u8) -> DocumentId {
    DocumentId::from_bytes([n; 16])
}

fn claims() -> Claims {
    Claims { sub: "alice".into(), exp: 2_000, jti: "t1".into(), ..Claims::default() }
}

#[test]
fn a_minted_token_verifies_with_its_grants() {
    let (_dir, key, verifier) = key();
    let c = Claims {
        read: vec![doc(1).to_string()],
        write: vec![format!("automerge:{}", doc(2))],
        create: true,
        ..claims()
    };
    let grant = verifier.verify(&key.mint(&c), 1_000).unwrap();
    assert_eq!((grant.sub.as_str(), grant.jti.as_str(), grant.expires), ("alice", "t1", 2_000));
    assert!(grant.may_read(&doc(1)) && !grant.may_write(&doc(1)));
    assert!(grant.may_read(&doc(2)) && grant.may_write(&doc(2)), "write implies read");
    assert!(!grant.may_read(&doc(3)));
    assert!(grant.create && !grant.admin);
}

#[test]
fn a_star_grants_every_document() {
    let (_dir, key, verifier) = key();
    let grant = verifier.verify(&key.mint(&Claims { read: vec!["*".into()], ..claims() }), 1_000).unwrap();
    assert!(grant.may_read(&doc(9)) && !grant.may_write(&doc(9)));
}

#[test]
fn expired_and_not_yet_valid_tokens_are_refused() {
    let (_dir, key, verifier) = key();
    let token = key.mint(&Claims { nbf: Some(1_500), ..claims() });
    assert_eq!(verifier.verify(&token, 1_499), Err(TokenError::NotYetValid));
    assert!(verifier.verify(&token, 1_500).is_ok());
    assert_eq!(verifier.verify(&token, 2_000), Err(TokenError::Expired));
}

#[test]
fn another_keys_token_and_a_tampered_token_are_refused() {
    let (_dir, key, verifier) = key();
    let (_other_dir, other, _) = key_pair_elsewhere();
    assert_eq!(verifier.verify(&other.mint(&claims()), 1_000), Err(TokenError::UnknownKey));
    // The same key id with someone else's signature.
    let token = key.mint(&claims());
    let forged = other.mint(&Claims { admin: true, ..claims() });
    let (head, _) = token.split_once('.').unwrap();
    let (_, rest) = forged.split_once('.').unwrap();
    assert_eq!(verifier.verify(&format!("{head}.{rest}"), 1_000), Err(TokenError::BadSignature));
    // A payload changed after signing.
    let parts: Vec<&str> = token.split('.').collect();
    let admin = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&Claims { admin: true, ..claims() }).unwrap());
    assert_eq!(verifier.verify(&format!("{}.{admin}.{}", parts[0], parts[2]), 1_000), Err(TokenError::BadSignature));
}

fn key_pair_elsewhere() -> (tempfile::TempDir, SigningKey, Verifier) {
    key()
}

#[test]
fn malformed_tokens_are_refused_without_panicking() {
    let (_dir, key, verifier) = key();
    let good = key.mint(&claims());
    let (h, rest) = good.split_once('.').unwrap();
    let none_alg = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","kid":"x"}"#);
    let cases = [
        "a".to_string(),
        "a.b".into(),
        "a.b.c.d".into(),
        "!!.??.**".into(),
        format!("{none_alg}.{rest}"),
        format!("{h}.e30.AAAA"),
        "x".repeat(MAX_TOKEN_BYTES + 1),
        key.mint(&Claims { read: vec!["not a document".into()], ..claims() }),
    ];
    for token in cases {
        let err = verifier.verify(&token, 1_000).unwrap_err();
        assert!(matches!(err, TokenError::Malformed | TokenError::BadSignature), "{token:.40}: {err:?}");
    }
    assert_eq!(verifier.verify("", 1_000), Err(TokenError::Missing));
}

#[test]
fn rotation_accepts_every_loaded_key() {
    let (dir_a, a, _) = key();
    let (dir_b, b, _) = key();
    let both = Verifier::load(&[dir_a.path().join("auth-public.pem"), dir_b.path().join("auth-public.pem")]).unwrap();
    assert!(both.verify(&a.mint(&claims()), 1_000).is_ok());
    assert!(both.verify(&b.mint(&claims()), 1_000).is_ok());
    assert_ne!(a.key_id(), b.key_id());
}

#[test]
fn keygen_never_overwrites_and_keys_load_back() {
    let (dir, key, _) = key();
    assert!(matches!(keygen(dir.path()), Err(KeyError::Exists { .. })));
    let again = SigningKey::load(&dir.path().join("auth-private.pem")).unwrap();
    assert_eq!(again.key_id(), key.key_id());
    assert!(matches!(
        Verifier::load(&[dir.path().join("auth-private.pem")]),
        Err(KeyError::NotPem { what: "public key", .. })
    ));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("auth-private.pem")).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the private key is readable by its owner only");
    }
}

#[test]
fn ttls_take_seconds_minutes_hours_and_days() {
    assert_eq!(parse_ttl("30s"), Some(30));
    assert_eq!(parse_ttl("10m"), Some(600));
    assert_eq!(parse_ttl("1h"), Some(3600));
    assert_eq!(parse_ttl("7d"), Some(604_800));
    for bad in ["", "h", "1", "1w", "-1h", "0s", "1.5h", "99999999999999999999d"] {
        assert_eq!(parse_ttl(bad), None, "{bad}");
    }
}
