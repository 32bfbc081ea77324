//! `meridian-edge auth …` and `meridian-hub auth …`: make a key pair, mint
//! a token. The same subcommands on both binaries.

use std::path::PathBuf;

use super::{Claims, KeyError, SigningKey, keygen, parse_doc, parse_ttl};

/// Access tokens: make the signing key pair, mint tokens.
#[derive(clap::Args, Debug)]
pub struct AuthArgs {
    #[command(subcommand)]
    pub op: AuthOp,
}

#[derive(clap::Subcommand, Debug)]
pub enum AuthOp {
    /// Make an Ed25519 key pair: DIR/auth-private.pem (keep it secret: it
    /// mints tokens) and DIR/auth-public.pem (give it to nodes with
    /// --auth-public-key). Existing files are never overwritten.
    Keygen {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Print one signed token (a JWT, EdDSA over Ed25519).
    Token {
        /// The private key (auth-private.pem from `auth keygen`).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// A document it may read: a document id, an automerge: URL, or * for all. Repeatable.
        #[arg(long = "read", value_name = "DOC")]
        read: Vec<String>,
        /// A document it may read and write (id, automerge: URL, or *). Repeatable.
        #[arg(long = "write", value_name = "DOC")]
        write: Vec<String>,
        /// It may create documents.
        #[arg(long)]
        create: bool,
        /// It may use the admin API (history, rollback, export).
        #[arg(long)]
        admin: bool,
        /// How long it is valid: 30s, 10m, 1h, 7d.
        #[arg(long, default_value = "1h", value_parser = ttl_arg)]
        ttl: u64,
        /// Who it is for (the `sub` claim; shown in logs, used for revocation).
        #[arg(long, default_value = "")]
        sub: String,
    },
}

fn ttl_arg(s: &str) -> Result<u64, String> {
    parse_ttl(s).ok_or_else(|| format!("`{s}` is not a duration: use 30s, 10m, 1h or 7d"))
}

/// Why an `auth` command failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthCliError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("`{0}` is not a document id, an automerge: URL or *")]
    BadDoc(String),
}

/// Runs the command; what it prints goes to stdout.
pub fn run(args: AuthArgs) -> Result<String, AuthCliError> {
    match args.op {
        AuthOp::Keygen { out } => {
            let key = keygen(&out)?;
            Ok(format!(
                "wrote {} (secret) and {} (key id {})",
                out.join("auth-private.pem").display(),
                out.join("auth-public.pem").display(),
                key.key_id()
            ))
        }
        AuthOp::Token { key, read, write, create, admin, ttl, sub } => {
            let key = SigningKey::load(&key)?;
            let now = super::unix_now();
            let claims = Claims {
                sub,
                exp: now.saturating_add(ttl),
                nbf: None,
                iat: Some(now),
                jti: format!("{:016x}", rand::random::<u64>()),
                read: docs(read)?,
                write: docs(write)?,
                create,
                admin,
            };
            Ok(key.mint(&claims))
        }
    }
}

/// Each `DOC` as a document id (an automerge: URL names one), or `*`.
fn docs(items: Vec<String>) -> Result<Vec<String>, AuthCliError> {
    items
        .into_iter()
        .map(|d| match d.as_str() {
            "*" => Ok(d),
            _ => parse_doc(&d).map(|id| id.to_string()).ok_or(AuthCliError::BadDoc(d)),
        })
        .collect()
}
