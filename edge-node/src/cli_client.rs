//! `meridian-edge client …`: thin glue over `meridian_node::client` and
//! `meridian_node::document`.
use std::time::Duration;

use anyhow::{Context, Result};
use meridian_node::client::{Client, ClientOptions};
use meridian_node::document as cli;
use meridian_node::quic::HubTrust;
use meridian_protocol::ids::{AutomergeUrl, DocumentId};

use crate::{ClientArgs, ClientOp};

/// Writes `bytes` to a new file beside `path`, then renames it over
/// `path`: a link at `path` is replaced, never written through, and a
/// crash leaves the old file or the new one, whole.
fn write_replacing(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    let name = path.file_name().context("the export path has no file name")?.to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

pub async fn run(args: ClientArgs) -> Result<()> {
    let options = ClientOptions {
        store_path: args.store.clone(),
        quic_trust: args.edge_ca.clone().map(HubTrust::CaFile),
        token: args.token.clone().filter(|t| !t.is_empty()),
        ..Default::default()
    };
    let client = Client::connect(&args.url, options).await?;
    let wait = Duration::from_secs(args.wait_secs);
    // Reads need the document: they wait even with --wait-secs 0.
    let reach = Reach {
        url: &args.url,
        within: if wait.is_zero() { READ_WAIT } else { wait },
        local_store: args.store.is_some(),
    };
    match args.op {
        ClientOp::Create { json } => {
            let value: serde_json::Value = serde_json::from_str(&json).context("the document must be JSON")?;
            let doc = client.create(move |tx| cli::set_root(tx, &value)).await?;
            acked(&client, &reach, doc, wait).await?;
            println!("{}", doc.url());
        }
        ClientOp::Set { doc, path, json } => {
            let (doc, path) = open(&client, &reach, &doc, &path).await?;
            let value: serde_json::Value =
                serde_json::from_str(&json).context("the value must be JSON (quote strings: '\"text\"')")?;
            client.change(doc, move |tx| cli::set_json(tx, &path, &value)).await?;
            acked(&client, &reach, doc, wait).await?;
        }
        ClientOp::Append { doc, path, text } => {
            let (doc, path) = open(&client, &reach, &doc, &path).await?;
            client.change(doc, move |tx| cli::append_text(tx, &path, &text)).await?;
            acked(&client, &reach, doc, wait).await?;
        }
        ClientOp::Print { doc } => {
            let doc = find(&client, &reach, &doc).await?;
            print(&client, doc).await;
        }
        ClientOp::History { doc, limit, json } => {
            let doc = find(&client, &reach, &doc).await?;
            let changes = client.read(doc, cli::history).await.context("the document is not loaded")?;
            let skip = if limit == 0 { 0 } else { changes.len().saturating_sub(limit) };
            if skip > 0 && !json {
                println!("… {skip} earlier changes (--limit 0 shows all)");
            }
            for c in &changes[skip..] {
                if json {
                    println!("{}", serde_json::to_string(c)?);
                } else {
                    println!(
                        "{}  {}  {}#{:<4} {}",
                        &c.hash[..12],
                        format_time(c.time),
                        &c.actor[..8.min(c.actor.len())],
                        c.seq,
                        c.message.as_deref().unwrap_or("")
                    );
                }
            }
        }
        ClientOp::Show { doc, at } => {
            let doc = find(&client, &reach, &doc).await?;
            let json = client
                .read(doc, move |d| cli::resolve_heads(d, &at).and_then(|h| cli::json_at(d, &h)))
                .await
                .context("the document is not loaded")??;
            println!("{json}");
        }
        ClientOp::Rollback { doc, to } => {
            let doc = find(&client, &reach, &doc).await?;
            let heads =
                client.read(doc, move |d| cli::resolve_heads(d, &to)).await.context("the document is not loaded")??;
            client.rollback(doc, heads).await?;
            acked(&client, &reach, doc, wait).await?;
            print(&client, doc).await;
        }
        ClientOp::Export { doc, file, force } => {
            if !force && std::fs::symlink_metadata(&file).is_ok() {
                anyhow::bail!("{} exists; pass --force to replace it", file.display());
            }
            let doc = find(&client, &reach, &doc).await?;
            let bytes = client.read(doc, |d| d.save()).await.context("the document is not loaded")?;
            write_replacing(&file, &bytes)?;
            eprintln!("saved {} bytes to {}", bytes.len(), file.display());
        }
        ClientOp::Import { file } => {
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let loaded = meridian_protocol::automerge::Automerge::load(&bytes)
                .with_context(|| format!("{} is not an Automerge file", file.display()))?;
            anyhow::ensure!(
                !loaded.get_heads().is_empty(),
                "{} holds no changes (empty, or not an Automerge document): nothing imported",
                file.display()
            );
            let doc =
                client.import(bytes).await.with_context(|| format!("{} is not an Automerge file", file.display()))?;
            acked(&client, &reach, doc, wait).await?;
            println!("{}", doc.url());
        }
        ClientOp::Watch { doc } => {
            let doc = find(&client, &reach, &doc).await?;
            let mut changes = client.subscribe();
            print(&client, doc).await;
            loop {
                tokio::select! {
                    c = changes.recv() => match c {
                        Ok((d, _)) if d == doc => print(&client, doc).await,
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(_) => break,
                    },
                    _ = tokio::signal::ctrl_c() => break,
                }
            }
        }
    }
    client.close().await;
    Ok(())
}

/// How long to wait for the edge, and where it is (for the error).
struct Reach<'a> {
    url: &'a str,
    within: Duration,
    /// Edits are kept in a local store (`--store`) while offline.
    local_store: bool,
}

/// How long reads wait for a document with `--wait-secs 0`.
const READ_WAIT: Duration = Duration::from_secs(10);

/// Opens a document from the local store or the edge, within
/// `reach.within`: an edge that cannot be reached is an error saying
/// why ("cannot reach ws://… (connection refused)"), not a hang.
async fn find(client: &Client, reach: &Reach<'_>, doc_url: &str) -> Result<DocumentId> {
    let url: AutomergeUrl = doc_url.parse()?;
    match tokio::time::timeout(reach.within, client.find(url.document_id)).await {
        Ok(found) => found.with_context(|| format!("opening {url}"))?,
        Err(_) => {
            let secs = reach.within.as_secs();
            match client.connection_state().await {
                Ok(meridian_node::client::ConnectionState::Connected) => anyhow::bail!(
                    "{} did not send {url} within {secs} s (--wait-secs): no replica it can reach has it",
                    reach.url
                ),
                _ => {
                    let why = client.last_connect_error().await.unwrap_or_else(|| "no answer".to_owned());
                    anyhow::bail!("cannot reach {} ({why}) within {secs} s (--wait-secs)", reach.url)
                }
            }
        }
    }
    Ok(url.document_id)
}

async fn open(client: &Client, reach: &Reach<'_>, url: &str, path: &str) -> Result<(DocumentId, Vec<String>)> {
    let path = cli::parse_path(path)?;
    Ok((find(client, reach, url).await?, path))
}

async fn print(client: &Client, doc: DocumentId) {
    if let Some(json) = client.read(doc, cli::to_json).await {
        println!("{json}");
    }
}

/// `YYYY-MM-DD HH:MM:SS` UTC for a change's time (seconds), `-` if none was recorded.
fn format_time(secs: i64) -> String {
    if secs <= 0 {
        return format!("{:<19}", "-");
    }
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Waits for the edge's acknowledgement. Past `wait`: with a local
/// store (`--store`) the edit is kept there and syncs on the next run
/// (said on stderr); without one it is lost, which is an error.
async fn acked(client: &Client, reach: &Reach<'_>, doc: DocumentId, wait: Duration) -> Result<()> {
    if wait.is_zero() || tokio::time::timeout(wait, client.wait_acked(doc)).await.is_ok() {
        return Ok(());
    }
    let why = match client.last_connect_error().await {
        Some(why) => format!("cannot reach {} ({why})", reach.url),
        None => format!("{} did not acknowledge the change", reach.url),
    };
    let secs = wait.as_secs();
    if reach.local_store {
        eprintln!("{why} within {secs} s: the change is kept in the local store and syncs on the next run");
        Ok(())
    } else {
        anyhow::bail!(
            "{why} within {secs} s (--wait-secs): the change was not saved anywhere (--store FILE keeps edits made offline)"
        )
    }
}
