//! Helpers for tests that drive the native client.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use meridian_edge::client::{Client, ClientError, ClientOptions};
use meridian_protocol::automerge::ROOT;
use meridian_protocol::automerge::transaction::Transactable;
use meridian_protocol::ids::DocumentId;

/// Client options with quick reconnects, for tests that restart servers.
pub fn fast() -> ClientOptions {
    ClientOptions {
        min_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(300),
        ..Default::default()
    }
}

/// Opens a document that another edge has just acknowledged. Until that
/// edge's upload reaches the hub (a round trip), the hub truthfully answers
/// `doc-unavailable`; like an app, retry until it is there (30 s at most).
pub async fn find_eventually(client: &Client, doc: DocumentId) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout(Duration::from_secs(30), client.find(doc)).await? {
            Ok(()) => return Ok(()),
            Err(ClientError::Unavailable(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Writes `{prefix}-{n} = n` for n = 0, 1, ... through `client`, recording
/// each key once the server has acknowledged it (its heads cover the
/// change), and pausing `pause` between writes. Ends when the client stops.
pub async fn acked_writer(
    client: Arc<Client>,
    doc: DocumentId,
    prefix: String,
    pause: Duration,
    acked: Arc<Mutex<Vec<String>>>,
) {
    for n in 0u64.. {
        let key = format!("{prefix}-{n}");
        let k = key.clone();
        if client.change(doc, move |tx| tx.put(ROOT, k.as_str(), n).map(|_| ())).await.is_err() {
            return;
        }
        if client.wait_acked(doc).await.is_err() {
            return;
        }
        if let Ok(mut a) = acked.lock() {
            a.push(key);
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}
