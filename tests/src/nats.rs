//! A real NATS server for a test: Debian's `nats-server` on a free
//! loopback port, with JetStream on a temporary folder (kept across
//! restarts), killed when dropped.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

#[derive(Debug)]
pub struct Nats {
    child: Option<Child>,
    pub port: u16,
    store: tempfile::TempDir,
    /// Cluster flags, for a node of [`Nats::cluster`].
    cluster: Vec<String>,
}

impl Nats {
    /// Starts `nats-server` and waits until it accepts connections; fails
    /// with the command to install it when it is missing.
    pub fn start() -> Result<Self> {
        let mut nats =
            Self { child: None, port: crate::process::free_port()?, store: tempfile::tempdir()?, cluster: Vec::new() };
        nats.restart()?;
        Ok(nats)
    }

    /// Starts `n` servers routed to each other as one cluster (`meridian`).
    pub fn cluster(n: usize) -> Result<Vec<Self>> {
        let routes: Vec<u16> = (0..n).map(|_| crate::process::free_port()).collect::<Result<_>>()?;
        let mut nodes = Vec::with_capacity(n);
        for (i, route) in routes.iter().enumerate() {
            let others: Vec<String> =
                routes.iter().filter(|r| *r != route).map(|r| format!("nats://127.0.0.1:{r}")).collect();
            let cluster = vec![
                "--cluster".into(),
                format!("nats://127.0.0.1:{route}"),
                "--routes".into(),
                others.join(","),
                "--cluster_name".into(),
                "meridian".into(),
                "--server_name".into(),
                format!("n{}", i + 1),
            ];
            let port = crate::process::free_port()?;
            nodes.push(Self { child: None, port, store: tempfile::tempdir()?, cluster });
        }
        for node in &mut nodes {
            node.restart()?;
        }
        Ok(nodes)
    }

    /// Kills the server (SIGKILL): clients see the connection drop.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (after [`Nats::stop`]).
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        let port = self.port;
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(self.store.path())
            .args(&self.cluster)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context(
                "nats-server is missing: run `cargo xtask test` (it installs it as root), or \
                 `sudo apt-get install -y nats-server`",
            )?;
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(10))
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("nats-server exited early with {status}");
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("nats-server did not listen on {} within {timeout:?}", self.port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}
