//! `meridian-chaos`: the chaos campaign (`tests/src/chaos.rs`), run by
//! `cargo xtask chaos`. Prints each fault kind's figures as Markdown rows
//! and the whole report as JSON; exits 1 if an acknowledged change was lost.

use std::time::Duration;

use anyhow::{Context, Result};
use meridian_tests::chaos::{ChaosConfig, FAULTS, run};

fn arg<T: std::str::FromStr>(args: &[String], name: &str) -> Result<Option<T>> {
    match args.iter().position(|a| a == name) {
        Some(i) => {
            let v = args.get(i + 1).with_context(|| format!("{name} needs a value"))?;
            Ok(Some(v.parse().map_err(|_| anyhow::anyhow!("{name}: not a valid value: {v}"))?))
        }
        None => Ok(None),
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "meridian_tests=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!(
            "meridian-chaos [--seconds S (300)] [--seed N (1)] [--docs K (4)] [--no-js] [--faults K,..] [--json FILE]\n\
             Faults (partitions, one-way losses, kill -9 of edges and the hub, corrupted chunks) on the\n\
             regional cluster while native and JS automerge-repo clients write; then every acknowledged\n\
             change is looked for on every node. Exit status 1 if one is missing."
        );
        return Ok(());
    }
    let config = ChaosConfig {
        seed: arg(&args, "--seed")?.unwrap_or(1),
        duration: Duration::from_secs(arg(&args, "--seconds")?.unwrap_or(300)),
        docs: arg(&args, "--docs")?.unwrap_or(4),
        js: !args.iter().any(|a| a == "--no-js"),
        faults: match arg::<String>(&args, "--faults")? {
            Some(list) => list
                .split(',')
                .map(|f| FAULTS.iter().find(|k| **k == f).copied().with_context(|| format!("unknown fault {f}")))
                .collect::<Result<_>>()?,
            None => Vec::new(),
        },
    };
    let report = run(&config).await?;
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(path) = arg::<String>(&args, "--json")? {
        std::fs::write(&path, &json).with_context(|| format!("writing {path}"))?;
    }
    println!("{json}");
    println!("| fault | injected | detected | time to detect (median / max) | time to recover (median / max) |");
    println!("|---|---|---|---|---|");
    print!("{}", report.rows());
    println!(
        "acknowledged: {} native + {} JS; lost: {}; converged {} ms after the faults ended; {:.0} s",
        report.acked_native,
        report.acked_js,
        report.lost.len(),
        report.converged_ms,
        report.duration_secs
    );
    if !report.lost.is_empty() {
        eprintln!("LOST: {:?}", &report.lost[..report.lost.len().min(20)]);
        std::process::exit(1);
    }
    Ok(())
}
