//! A short chaos campaign (`tests/src/chaos.rs`; the long one is
//! `cargo xtask chaos`): 45 s of partitions, one-way losses, kill -9
//! of edges and the hub and corrupted chunks on the regional cluster while
//! native clients and a JS automerge-repo client write. Every acknowledged
//! change must be on every node at the end, with the same heads everywhere.

use std::time::Duration;

use anyhow::{Result, ensure};
use meridian_tests::chaos::{ChaosConfig, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_chaos_campaign_loses_no_acknowledged_change() -> Result<()> {
    let seed = std::env::var("MERIDIAN_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(7);
    let config = ChaosConfig { seed, duration: Duration::from_secs(45), docs: 3, js: true, faults: Vec::new() };
    let report = run(&config).await?;
    println!("{}", serde_json::to_string(&report)?);
    print!("{}", report.rows());
    ensure!(report.lost.is_empty(), "acknowledged changes lost: {:?}", &report.lost[..report.lost.len().min(20)]);
    ensure!(report.acked_native > 100 && report.acked_js > 10, "writers kept writing: {report:?}");
    for kind in meridian_tests::chaos::FAULTS {
        ensure!(report.faults.get(kind).is_some_and(|f| f.injected > 0), "no {kind} injected: {:?}", report.faults);
    }
    Ok(())
}
