//! `cargo xtask bench placement [--smoke] [--writes N] [--docs K]`:
//! placement on vs hub-only on the same simulated regional topology, in
//! one run (issue 6). The measuring program is `meridian-placement-bench`
//! (`tests/src/bin/placement_bench.rs`, on `meridian_tests::regions`); this
//! builds it with the release edge and hub, runs it, and keeps its table in
//! `target/bench-placement.md`.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{cargo, run as run_cmd, target_dir};

pub fn run(args: &[String]) -> Result<()> {
    let smoke = args.iter().any(|a| a == "--smoke");
    // Smoke runs use the test build's debug binaries (nothing to rebuild).
    let profile = if smoke { "debug" } else { "release" };
    let mut build = cargo();
    build.args(["build", "--bins", "-p", "meridian-edge", "-p", "meridian-hub", "-p", "meridian-tests"]);
    if !smoke {
        build.arg("--release");
    }
    run_cmd(&mut build)?;
    let bin = target_dir().join(profile).join("meridian-placement-bench");
    eprintln!("xtask: $ {} {}", bin.display(), args.join(" "));
    let out = Command::new(&bin).args(args).output().with_context(|| format!("running {}", bin.display()))?;
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("{} failed with {}", bin.display(), out.status);
    }
    let table = String::from_utf8_lossy(&out.stdout);
    print!("{table}");
    let report = target_dir().join("bench-placement.md");
    std::fs::write(&report, table.as_bytes()).with_context(|| format!("writing {}", report.display()))?;
    eprintln!("xtask: table written to {}", report.display());
    Ok(())
}
