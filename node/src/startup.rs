//! What every Meridian binary does when it starts: bind its ports before
//! anything is written (so a start that cannot bind leaves nothing on
//! disk), check that its data folder is writable, and report a failure
//! once, in words, naming the flag to change.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// A listener that could not be bound, named by the flag that sets it.
#[derive(Debug, thiserror::Error)]
#[error("cannot bind {flag} {addr} ({proto}): {error}{}", hint(self.error.kind(), flag))]
pub struct BindError {
    /// The command-line flag that chooses this address (`--listen`, …).
    pub flag: &'static str,
    pub addr: SocketAddr,
    /// `TCP` or `UDP`.
    pub proto: &'static str,
    /// Not a `source`: its message is already in ours.
    pub error: std::io::Error,
}

fn hint(kind: ErrorKind, flag: &str) -> String {
    match kind {
        ErrorKind::AddrInUse => format!(
            " — another process has it (another edge or hub, or `cargo xtask demo`?); choose another with {flag}"
        ),
        ErrorKind::PermissionDenied => " — ports below 1024 need root or CAP_NET_BIND_SERVICE".into(),
        ErrorKind::AddrNotAvailable => " — no network interface here has that address".into(),
        _ => String::new(),
    }
}

/// A TCP port bound for `flag` but not yet listening: connections to it are
/// refused until [`BoundTcp::listen`], so "the port answers" still means
/// "the node is ready", for scripts and health checks. A port another
/// process listens on fails here, before anything is written.
#[derive(Debug)]
pub struct BoundTcp {
    socket: tokio::net::TcpSocket,
    flag: &'static str,
    addr: SocketAddr,
}

impl BoundTcp {
    /// The bound address (its port, when the flag asked for port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, BindError> {
        let (flag, addr) = (self.flag, self.addr);
        self.socket.local_addr().map_err(|error| BindError { flag, addr, proto: "TCP", error })
    }

    /// Starts accepting connections (once the node is ready to serve them).
    pub fn listen(self) -> Result<tokio::net::TcpListener, BindError> {
        let Self { socket, flag, addr } = self;
        socket.listen(1024).map_err(|error| BindError { flag, addr, proto: "TCP", error })
    }
}

/// Binds a TCP port for `flag` (as `TcpListener::bind` does: with
/// `SO_REUSEADDR`, so a restart is not refused by connections of the last run
/// in TIME_WAIT).
pub fn bind_tcp(flag: &'static str, addr: SocketAddr) -> Result<BoundTcp, BindError> {
    let err = |error| BindError { flag, addr, proto: "TCP", error };
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() };
    let socket = socket.map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    Ok(BoundTcp { socket, flag, addr })
}

/// Binds a UDP socket for `flag` (a QUIC listener takes it over with
/// [`crate::quic::server_endpoint`]).
pub fn bind_udp(flag: &'static str, addr: SocketAddr) -> Result<std::net::UdpSocket, BindError> {
    std::net::UdpSocket::bind(addr).map_err(|error| BindError { flag, addr, proto: "UDP", error })
}

/// A data folder that cannot be created or written.
#[derive(Debug, thiserror::Error)]
#[error("the data folder {} ({flag}) {what}: {error}", path.display())]
pub struct DataDirError {
    pub flag: &'static str,
    pub path: PathBuf,
    /// "cannot be created" or "is not writable".
    pub what: &'static str,
    pub error: std::io::Error,
}

/// Creates the data folder if missing and checks that files can be
/// created in it (a probe file, removed at once), so an unwritable folder
/// is reported as such — not as SQLite's "unable to open database file".
pub fn writable_dir(flag: &'static str, path: &Path) -> Result<(), DataDirError> {
    let fail = |what, error| DataDirError { flag, path: path.to_owned(), what, error };
    std::fs::create_dir_all(path).map_err(|e| fail("cannot be created", e))?;
    let probe = path.join(format!(".meridian-write-check-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| fail("is not writable", e))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// An error and its causes on one line, each cause once: a cause whose
/// message its parent already quotes is skipped (many errors here put
/// their source in their own message).
pub fn error_chain(error: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in error.chain() {
        let message = cause.to_string();
        if out.contains(&message) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&message);
    }
    out
}

/// Prints a startup failure the way people read it — `NAME: error: the
/// chain` on stderr, no backtrace, no Debug formatting — and exits 1.
pub fn exit_with(name: &str, error: &anyhow::Error) -> ! {
    eprintln!("{name}: error: {}", error_chain(error));
    std::process::exit(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_already_quoted_is_printed_once() {
        let io = std::io::Error::other("unable to open database file");
        let e = anyhow::Error::new(io).context("opening the store: unable to open database file").context("starting");
        assert_eq!(error_chain(&e), "starting: opening the store: unable to open database file");
    }

    #[tokio::test]
    async fn a_bound_port_refuses_connections_until_it_listens() {
        let bound = bind_tcp("--listen", "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = bound.socket.local_addr().unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "refused before listen");
        let listener = bound.listen().unwrap();
        // Once it listens, another process cannot have it. (Before, two
        // binds with SO_REUSEADDR may both succeed, and the second to
        // listen fails: only two nodes starting at the same instant race.)
        assert!(bind_tcp("--listen", addr).is_err(), "a listening port is taken");
        let (connected, accepted) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        assert!(connected.is_ok() && accepted.is_ok());
    }

    #[tokio::test]
    async fn a_port_in_use_names_its_flag_and_says_what_to_do() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let e = bind_tcp("--listen", addr).unwrap_err().to_string();
        assert!(e.starts_with(&format!("cannot bind --listen {addr} (TCP): ")), "{e}");
        assert!(e.contains("choose another with --listen"), "{e}");
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = udp.local_addr().unwrap();
        let e = bind_udp("--quic-listen", addr).unwrap_err().to_string();
        assert!(e.starts_with(&format!("cannot bind --quic-listen {addr} (UDP): ")), "{e}");
    }

    #[test]
    fn a_folder_that_cannot_be_created_says_so_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"x").unwrap();
        let e = writable_dir("--data", &file.join("data")).unwrap_err().to_string();
        assert!(e.contains("(--data) cannot be created"), "{e}");
        writable_dir("--data", &dir.path().join("fresh")).unwrap();
        assert!(dir.path().join("fresh").is_dir());
        let leftovers = std::fs::read_dir(dir.path().join("fresh")).unwrap().count();
        assert_eq!(leftovers, 0, "the probe file is removed");
    }
}
