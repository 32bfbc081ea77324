//! Benchmarks measured by programs of the `meridian-tests` crate, which
//! start real hubs and edges (and PostgreSQL, NATS) themselves:
//! - `cargo xtask bench placement [--smoke] [--writes N] [--docs K]`:
//!   placement on vs hub-only on the same simulated regional topology, in
//!   one run (issue 6; `tests/src/bin/placement_bench.rs`);
//! - `cargo xtask bench cloud [--smoke] [--writes N] [--seconds S]`: the
//!   cloud tier on PostgreSQL + NATS against one hub on SQLite (issue 16;
//!   `tests/src/bin/cloud_bench.rs`).
//!
//! This builds the program with the release edge and hub, runs it, and
//! keeps its table in `target/bench-<name>.md`.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{cargo, run as run_cmd, target_dir};

/// `name`: `placement` or `cloud`.
pub fn run(name: &str, args: &[String]) -> Result<()> {
    let smoke = args.iter().any(|a| a == "--smoke");
    // Smoke runs use the test build's debug binaries (nothing to rebuild).
    let profile = if smoke { "debug" } else { "release" };
    let mut build = cargo();
    if smoke {
        build.args(crate::TEST_BUILD);
    } else {
        build.args([
            "build",
            "--release",
            "--bins",
            "-p",
            "meridian-edge",
            "-p",
            "meridian-hub",
            "-p",
            "meridian-tests",
        ]);
    }
    run_cmd(&mut build)?;
    let bin = target_dir().join(profile).join(format!("meridian-{name}-bench"));
    eprintln!("xtask: $ {} {}", bin.display(), args.join(" "));
    let out = Command::new(&bin).args(args).output().with_context(|| format!("running {}", bin.display()))?;
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("{} failed with {}", bin.display(), out.status);
    }
    let table = String::from_utf8_lossy(&out.stdout);
    print!("{table}");
    let report = target_dir().join(format!("bench-{name}.md"));
    std::fs::write(&report, table.as_bytes()).with_context(|| format!("writing {}", report.display()))?;
    eprintln!("xtask: table written to {}", report.display());
    Ok(())
}
