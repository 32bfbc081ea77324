//! Helpers for tests that drive the native client.

use std::time::{Duration, Instant};

use anyhow::Result;
use meridian_edge::client::{Client, ClientError, ClientOptions};
use meridian_protocol::ids::DocumentId;

/// Client options with quick reconnects, for tests that restart servers.
pub fn fast() -> ClientOptions {
    ClientOptions { min_backoff: Duration::from_millis(20), max_backoff: Duration::from_millis(300), ..Default::default() }
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
