//! A regional cluster of real processes for placement scenarios (issue 6):
//! a `meridian-hub` in `us` and edges `eu`, `us` and `ap`, with every link —
//! edge ↔ hub and edge ↔ edge — through a UDP fault proxy that imposes the
//! one-way delay between the two regions (eu–us 40 ms, us–ap 90 ms,
//! eu–ap 120 ms; the `us` edge reaches the hub without delay). The hub runs
//! with placement moves on and short intervals, so a scenario takes seconds.
//!
//! Edge ↔ edge links are proxied by giving each edge `--peer-route` to a
//! proxy per ordered pair; the peer listener ports are picked before the
//! edges start so the proxies can point at them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::fault_proxy::{Direction, FaultHandle, FaultProxy};
use crate::process::{EdgeProcess, HubProcess, free_port, free_udp_port};

/// The regions, in a fixed order.
pub const REGIONS: [&str; 3] = ["eu", "us", "ap"];

/// One-way delay between two regions.
pub fn one_way(a: &str, b: &str) -> Duration {
    let ms = match (a.min(b), a.max(b)) {
        ("eu", "us") => 40,
        ("ap", "us") => 90,
        ("ap", "eu") => 120,
        _ => 0,
    };
    Duration::from_millis(ms)
}

/// The running cluster; everything stops when it is dropped.
#[derive(Debug)]
pub struct Cluster {
    pub hub: HubProcess,
    pub edges: BTreeMap<String, EdgeProcess>,
    /// How each process was started (to start it again after a kill).
    hub_spec: Spec,
    edge_specs: BTreeMap<String, Spec>,
    uplinks: BTreeMap<String, FaultProxy>,
    peer_links: BTreeMap<(String, String), FaultProxy>,
    _dirs: Vec<tempfile::TempDir>,
}

/// A process's data folder, ports and flags.
#[derive(Debug, Clone)]
struct Spec {
    data: std::path::PathBuf,
    ports: (u16, u16),
    args: Vec<String>,
}

async fn delayed_proxy(upstream: std::net::SocketAddr, delay: Duration) -> Result<FaultProxy> {
    let proxy = FaultProxy::udp("127.0.0.1:0".parse()?, upstream).await?;
    for dir in [Direction::ToUpstream, Direction::ToClient] {
        proxy.handle().set_delay(dir, delay);
    }
    Ok(proxy)
}

impl Cluster {
    /// Starts the hub (with `hub_flags` after the cluster's own) and the
    /// three edges, and waits until every edge reports.
    pub async fn start(hub_flags: &[&str]) -> Result<Self> {
        Self::start_with(true, hub_flags, &[]).await
    }

    /// [`Cluster::start`] with placement moves on or off (then every home
    /// stays the hub) and extra flags for every edge.
    pub async fn start_with(moves: bool, hub_flags: &[&str], edge_flags: &[&str]) -> Result<Self> {
        let hub_dir = tempfile::tempdir()?;
        let mut args = vec!["--report-interval-ms", "200", "--placement-interval-ms", "200"];
        if moves {
            args.push("--placement-moves");
        }
        args.extend(["--placement-dwell-secs", "0"]);
        let secrets: Vec<String> = REGIONS.iter().map(|r| format!("{r}={r}-secret")).collect();
        for s in &secrets {
            args.extend(["--edge", s.as_str()]);
        }
        args.extend(hub_flags);
        let hub_spec = Spec {
            data: hub_dir.path().to_path_buf(),
            ports: (free_port()?, free_port()?),
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        let hub = start_hub(&hub_spec)?;
        let hub_addr: std::net::SocketAddr = format!("127.0.0.1:{}", hub.quic_port).parse()?;
        let mut peer_ports = BTreeMap::new();
        for r in REGIONS {
            peer_ports.insert(r, free_udp_port()?);
        }
        let (mut uplinks, mut peer_links) = (BTreeMap::new(), BTreeMap::new());
        for r in REGIONS {
            uplinks.insert(r.to_owned(), delayed_proxy(hub_addr, one_way(r, "us")).await?);
            for to in REGIONS.iter().filter(|t| **t != r) {
                let upstream = format!("127.0.0.1:{}", peer_ports[to]).parse()?;
                peer_links.insert((r.to_owned(), (*to).to_owned()), delayed_proxy(upstream, one_way(r, to)).await?);
            }
        }
        let mut dirs = vec![hub_dir];
        let (mut edges, mut edge_specs) = (BTreeMap::new(), BTreeMap::new());
        for r in REGIONS {
            let dir = tempfile::tempdir()?;
            let ca = hub.ca_path();
            let (secret, peer_id) = (format!("{r}-secret"), format!("edge-{r}"));
            let hub_link = uplinks[r].local_addr().to_string();
            let listen = format!("127.0.0.1:{}", peer_ports[r]);
            let routes: Vec<String> = REGIONS
                .iter()
                .filter(|t| **t != r)
                .map(|t| format!("{t}={}", peer_links[&(r.to_owned(), (*t).to_owned())].local_addr()))
                .collect();
            let mut args = vec!["--hub", &hub_link, "--edge-id", r, "--hub-secret", &secret, "--peer-id", &peer_id];
            let ca = ca.to_str().context("CA path")?;
            args.extend(["--hub-ca", ca, "--peer-listen", &listen]);
            for route in &routes {
                args.extend(["--peer-route", route.as_str()]);
            }
            args.extend(edge_flags);
            let spec = Spec {
                data: dir.path().to_path_buf(),
                ports: (free_port()?, 0),
                args: args.iter().map(|a| a.to_string()).collect(),
            };
            edges.insert(r.to_owned(), start_edge(&spec)?);
            edge_specs.insert(r.to_owned(), spec);
            dirs.push(dir);
        }
        let cluster = Self { hub, edges, hub_spec, edge_specs, uplinks, peer_links, _dirs: dirs };
        cluster
            .until_hub("/topology", "every edge reporting", |t| {
                t["edges"].as_array().is_some_and(|e| e.len() == REGIONS.len() && e.iter().all(|e| e["fresh"] == true))
            })
            .await?;
        Ok(cluster)
    }

    pub fn edge(&self, region: &str) -> &EdgeProcess {
        &self.edges[region]
    }

    /// SIGKILL of an edge (it stays down until [`Cluster::restart_edge`]).
    pub fn kill_edge(&mut self, region: &str) -> Result<()> {
        self.edges.get_mut(region).context("no such edge")?.kill9()
    }

    /// Starts a killed edge again, on its data, ports and flags.
    pub fn restart_edge(&mut self, region: &str) -> Result<()> {
        let edge = start_edge(self.edge_specs.get(region).context("no such edge")?)?;
        self.edges.insert(region.to_owned(), edge);
        Ok(())
    }

    /// SIGKILL of the hub (down until [`Cluster::restart_hub`]).
    pub fn kill_hub(&mut self) -> Result<()> {
        self.hub.kill9()
    }

    /// Starts the killed hub again, on its data, ports and flags.
    pub fn restart_hub(&mut self) -> Result<()> {
        self.hub = start_hub(&self.hub_spec)?;
        Ok(())
    }

    /// The edge's SQLite file.
    pub fn edge_database(&self, region: &str) -> std::path::PathBuf {
        self.edge_specs[region].data.join("edge.sqlite3")
    }

    /// Faults of an edge's link to the hub.
    pub fn uplink(&self, region: &str) -> FaultHandle {
        self.uplinks[region].handle()
    }

    /// Faults of the link `from` dials to reach `to`.
    /// Bytes that crossed between regions so far, both ways: every uplink
    /// but the `us` edge's (the hub is in `us`), and every link between
    /// edges (each joins two regions).
    pub fn cross_region_bytes(&self) -> u64 {
        self.cross_region_links().iter().map(|(_, b)| b).sum()
    }

    /// [`Cluster::cross_region_bytes`] per link (`eu-hub`, `ap-eu`, ...).
    pub fn cross_region_links(&self) -> Vec<(String, u64)> {
        let both = |h: FaultHandle| {
            let c = h.counters();
            c.to_upstream.bytes_forwarded + c.to_client.bytes_forwarded
        };
        let uplinks = self.uplinks.iter().filter(|(r, _)| r.as_str() != "us");
        let mut links: Vec<(String, u64)> = uplinks.map(|(r, p)| (format!("{r}-hub"), both(p.handle()))).collect();
        links.extend(self.peer_links.iter().map(|((a, b), p)| (format!("{a}-{b}"), both(p.handle()))));
        links
    }

    pub fn peer_link(&self, from: &str, to: &str) -> FaultHandle {
        self.peer_links[&(from.to_owned(), to.to_owned())].handle()
    }

    /// Polls the hub's `path` until `done` holds.
    pub async fn until_hub(&self, path: &str, what: &str, done: impl Fn(&Value) -> bool) -> Result<Value> {
        until(self.hub.http_port, path, what, done).await
    }
}

fn start_hub(spec: &Spec) -> Result<HubProcess> {
    let args: Vec<&str> = spec.args.iter().map(String::as_str).collect();
    HubProcess::start(&spec.data, spec.ports.0, spec.ports.1, &args)
}

fn start_edge(spec: &Spec) -> Result<EdgeProcess> {
    let args: Vec<&str> = spec.args.iter().map(String::as_str).collect();
    EdgeProcess::start(&spec.data, spec.ports.0, &args)
}

/// `GET path` on a local HTTP port: the body of a 200 answer.
pub async fn get_text(port: u16, path: &str) -> Result<String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    s.read_to_string(&mut response).await?;
    let (head, body) = response.split_once("\r\n\r\n").context("no HTTP header end")?;
    anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
    Ok(body.to_owned())
}

/// `GET path` on a local HTTP port, as JSON.
pub async fn get_json(port: u16, path: &str) -> Result<Value> {
    Ok(serde_json::from_str(&get_text(port, path).await?)?)
}

/// Polls `path` on `port` until `done` holds for its JSON (30 s at most).
pub async fn until(port: u16, path: &str, what: &str, done: impl Fn(&Value) -> bool) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = get_json(port, path).await?;
        if done(&v) {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("{what} never happened; last {path}: {v:#}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A document's entry in `GET /placement`.
pub fn doc_entry<'a>(placement: &'a Value, doc: &str) -> Option<&'a Value> {
    placement["documents"].as_array()?.iter().find(|d| d["doc"] == doc)
}

/// The announced home of a document in `GET /placement`: `"hub"` or the edge id.
pub fn announced(placement: &Value, doc: &str) -> Option<String> {
    let home = &doc_entry(placement, doc)?["announced_home"];
    home["edge"].as_str().map(str::to_owned).or_else(|| home.as_str().map(str::to_owned))
}
