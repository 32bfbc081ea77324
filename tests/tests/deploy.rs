//! What `deploy/` ships for operators: the Prometheus alert rules pass
//! `promtool check rules` and their unit tests (`promtool test rules`), a
//! real edge's and hub's `/metrics` pass `promtool check metrics`, and
//! every metric the rules and the Grafana dashboard name is on those
//! pages (a renamed metric breaks this test, not an operator's alerts).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail, ensure};
use meridian_hub::{Hub, HubConfig};
use meridian_tests::http;
use meridian_tests::pg::Postgres;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Runs `promtool ARGS` in `dir` (with `stdin` on its standard input).
fn promtool(dir: &Path, args: &[&str], stdin: Option<&str>) -> Result<String> {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            anyhow::anyhow!(
                "promtool is missing ({e}): run `cargo xtask test` (it installs Debian's prometheus as root), \
                 or `apt-get install prometheus`"
            )
        })?;
    if let (Some(text), Some(mut input)) = (stdin, child.stdin.take()) {
        input.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    ensure!(out.status.success(), "promtool {} failed:\n{text}", args.join(" "));
    Ok(text)
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() -> Result<()> {
    let dir = deploy().join("prometheus");
    let checked = promtool(&dir, &["check", "rules", "meridian-alerts.yml"], None)?;
    assert!(checked.contains("SUCCESS: 12 rules found"), "{checked}");
    let tested = promtool(&dir, &["test", "rules", "meridian-alerts.test.yml"], None)?;
    assert!(tested.contains("SUCCESS"), "{tested}");
    Ok(())
}

/// The metric names in `text` (identifiers starting `meridian_` or `process_`).
fn names_in(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("meridian_") || w.starts_with("process_"))
        .map(str::to_owned)
        .collect()
}

/// The series names on a `/metrics` page.
fn exposed(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// Every `expr` of the dashboard's panels.
fn dashboard_exprs(dashboard: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(e) = target["expr"].as_str() {
                out.push(e.to_owned());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_rules_and_dashboard_name_is_served() -> Result<()> {
    // A hub on PostgreSQL with the bus (so its bus_* metrics exist) and an
    // edge given that hub: the configuration with the most metrics.
    let pg = tokio::task::spawn_blocking(Postgres::start).await??;
    let nats = meridian_tests::nats::Nats::start()?;
    let (hub_dir, edge_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let mut config = HubConfig::new(hub_dir.path()).ephemeral_ports().edge("eu", "eu-secret");
    config.store = Some(pg.url());
    config.bus = vec![nats.url()];
    let hub = Hub::start(config).await?;
    let edge = meridian_tests::edges::linked_edge(&hub, "eu", edge_dir.path()).await?;

    let (edge_port, hub_port) = (edge.local_addr().port(), hub.http_addr().port());
    let pages = tokio::task::spawn_blocking(move || -> Result<Vec<String>> {
        [edge_port, hub_port]
            .into_iter()
            .map(|port| {
                let r = http::request(port, "GET", "/metrics", &[])?;
                ensure!(r.status == 200, "/metrics on {port}: {}", r.status);
                Ok(r.text())
            })
            .collect()
    })
    .await??;
    let mut served = BTreeSet::new();
    for page in &pages {
        // The exposition itself passes Prometheus's own linter.
        promtool(&deploy(), &["check", "metrics"], Some(page)).context("promtool check metrics")?;
        served.extend(exposed(page));
    }
    assert!(served.contains("meridian_edge_uplink_connected") && served.contains("meridian_hub_bus_connected"));
    assert!(!pages[1].contains("meridian_hub_uplink"), "a hub shows no uplink metrics");

    let rules = std::fs::read_to_string(deploy().join("prometheus/meridian-alerts.yml"))?;
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy().join("grafana/meridian.json"))?)?;
    let exprs = dashboard_exprs(&dashboard);
    ensure!(exprs.len() >= 20, "the dashboard's queries: {}", exprs.len());
    let mut named = names_in(&rules);
    named.extend(exprs.iter().flat_map(|e| names_in(e)));
    // Histograms are named by their series (`_bucket`) in queries.
    let missing: Vec<&String> = named.iter().filter(|n| !served.contains(*n)).collect();
    if !missing.is_empty() {
        bail!("named in deploy/ but not served: {missing:?}");
    }
    drop((edge, hub, nats, pg));
    Ok(())
}
