//! A large document (a long text editing history made by the harness) to a
//! fresh peer: time until the peer holds the document's heads, and bytes
//! on the wire (both directions, WebSocket payloads). The time includes the
//! fresh peer loading the document (the same automerge code whichever server
//! sent it), so the server's part is reported too: from the request until
//! the message carrying the document arrived, and the floor: automerge
//! loading the same document's bytes in this process, which a fresh peer
//! cannot avoid whatever the server does. Fetched several
//! times while the server holds the document in memory (hot), then once
//! after a restart (cold: loaded from storage).

use std::time::Duration;

use anyhow::Result;
use automerge::ReadDoc;

use super::Figure;
use crate::peer;
use crate::server::Server;
use crate::workload::{doc_id, run_salt, text_history};

#[derive(Clone, Copy, Debug)]
pub struct Params {
    pub ops: usize,
    pub fetches: usize,
}

pub async fn run(server: Server, p: Params) -> Result<Vec<Figure>> {
    let salt = run_salt();
    let doc = text_history(salt, p.ops, 10);
    let id = doc_id(salt, 0);
    let heads = doc.get_heads();
    let changes = doc.get_changes(&[]).len();
    let text_len = doc.get(automerge::ROOT, "text").ok().flatten().map_or(0, |(_, text)| doc.length(text));
    let timeout = Duration::from_secs(600);
    let saved = doc.save();
    let up = peer::upload(&server.url, "uploader", id, doc, timeout).await?;
    let upload_ms = up.elapsed.as_secs_f64() * 1000.0;
    let (mut times, mut arrived) = (Vec::new(), Vec::new());
    let mut bytes = 0;
    for k in 0..p.fetches {
        let s = peer::fetch(&server.url, &format!("fresh-{k}"), id, &heads, timeout).await?;
        times.push(s.elapsed.as_secs_f64() * 1000.0);
        arrived.push(s.data_arrived.as_secs_f64() * 1000.0);
        bytes = s.bytes_received + s.bytes_sent;
    }
    let server = server.restart()?;
    let cold = peer::fetch(&server.url, "fresh-cold", id, &heads, timeout).await?;
    server.stop()?;
    let mut loads: Vec<f64> = (0..3)
        .map(|_| {
            let t = std::time::Instant::now();
            let loaded = automerge::Automerge::load(&saved).map(|d| d.get_heads() == heads);
            assert!(matches!(loaded, Ok(true)), "the saved document loads with its heads");
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    let floor = super::median(&mut loads);
    let cold_ms = cold.elapsed.as_secs_f64() * 1000.0;
    eprintln!("  large document: {changes} changes, text of {text_len} characters, {} ops", p.ops);
    Ok(vec![
        Figure::lower("upload by a real peer", "ms", upload_ms),
        Figure::lower("to a fresh peer, in memory (median)", "ms", super::median(&mut times)),
        Figure::lower("to a fresh peer, after a restart", "ms", cold_ms),
        Figure::lower("the floor: automerge loading the same document (median of 3)", "ms", floor),
        Figure::lower("to a fresh peer after a restart, as a multiple of the floor", "×", cold_ms / floor),
        Figure::lower(
            "server's part: request until the document arrived, in memory (median)",
            "ms",
            super::median(&mut arrived),
        ),
        Figure::lower(
            "server's part: request until the document arrived, after a restart",
            "ms",
            cold.data_arrived.as_secs_f64() * 1000.0,
        ),
        Figure::lower("bytes on the wire to a fresh peer", "KiB", bytes as f64 / 1024.0),
    ])
}
