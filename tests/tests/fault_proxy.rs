//! The fault proxy with real sockets on 127.0.0.1: TCP and UDP echo servers
//! behind a proxy, with delay, jitter, loss and partitions applied.
//!
//! Timing assertions are lower bounds only; a partition is shown to hold by
//! waiting a while and seeing nothing arrive.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use meridian_tests::fault_proxy::{Counters, Direction, FaultHandle, FaultProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, sleep, timeout};

const ANY_PORT: &str = "127.0.0.1:0";
/// How long to watch for bytes that must not arrive.
const QUIET: Duration = Duration::from_millis(300);
/// Generous limit for things that must happen.
const PATIENCE: Duration = Duration::from_secs(10);

fn any_port() -> SocketAddr {
    ANY_PORT.parse().expect("valid address")
}

/// A spawned task aborted when the test drops it.
struct Task(JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Waits until `condition` holds for the proxy's counters.
async fn counters_reach(faults: &FaultHandle, condition: impl Fn(&Counters) -> bool) -> Result<Counters> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let counters = faults.counters();
        if condition(&counters) {
            return Ok(counters);
        }
        ensure!(Instant::now() < deadline, "counters never reached the condition: {counters:?}");
        sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------- TCP

async fn tcp_echo_server() -> Result<(SocketAddr, Task)> {
    let listener = TcpListener::bind(ANY_PORT).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            conns.spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Ok((addr, Task(task)))
}

async fn tcp_setup() -> Result<(FaultProxy, Task)> {
    let (echo, server) = tcp_echo_server().await?;
    let proxy = FaultProxy::tcp(any_port(), echo).await?;
    Ok((proxy, server))
}

async fn round_trip(stream: &mut TcpStream, message: &[u8]) -> Result<Vec<u8>> {
    stream.write_all(message).await?;
    let mut back = vec![0; message.len()];
    timeout(PATIENCE, stream.read_exact(&mut back)).await.context("echo never came back")??;
    Ok(back)
}

/// Asserts that nothing can be read from `stream` for a while.
async fn assert_silent(stream: &mut TcpStream) -> Result<()> {
    let mut byte = [0];
    let read = timeout(QUIET, stream.read(&mut byte)).await;
    ensure!(read.is_err(), "expected silence, read {read:?}");
    Ok(())
}

#[tokio::test]
async fn tcp_echo_without_faults() -> Result<()> {
    let (proxy, _server) = tcp_setup().await?;
    let mut stream = TcpStream::connect(proxy.local_addr()).await?;
    assert_eq!(round_trip(&mut stream, b"hello").await?, b"hello");
    assert_eq!(round_trip(&mut stream, b"again").await?, b"again");
    let counters = proxy.handle().counters();
    assert_eq!(counters.to_upstream.bytes_forwarded, 10);
    assert_eq!(counters.to_client.bytes_forwarded, 10);
    assert_eq!(counters.connections, 1);
    Ok(())
}

#[tokio::test]
async fn tcp_one_way_delay_applies_in_each_direction() -> Result<()> {
    let (proxy, _server) = tcp_setup().await?;
    let faults = proxy.handle();
    for dir in Direction::ALL {
        faults.set_delay(dir, Duration::from_millis(100));
    }
    let mut stream = TcpStream::connect(proxy.local_addr()).await?;
    let start = Instant::now();
    assert_eq!(round_trip(&mut stream, b"ping").await?, b"ping");
    let rtt = start.elapsed();
    assert!(rtt >= Duration::from_millis(200), "round trip took only {rtt:?}");
    Ok(())
}

#[tokio::test]
async fn tcp_jitter_never_reorders_a_stream() -> Result<()> {
    const CHUNKS: u64 = 500;
    let (proxy, _server) = tcp_setup().await?;
    let faults = proxy.handle();
    for dir in Direction::ALL {
        // Jitter as large as the delay, so some samples are clamped to zero.
        faults.set_delay(dir, Duration::from_millis(10));
        faults.set_jitter(dir, Duration::from_millis(10));
    }
    let mut stream = TcpStream::connect(proxy.local_addr()).await?;
    let (mut r, mut w) = stream.split();
    let write = async {
        for i in 0..CHUNKS {
            w.write_all(&i.to_be_bytes()).await?;
            // Spread the stream over many reads, hence many delay samples.
            if i % 10 == 0 {
                sleep(Duration::from_millis(1)).await;
            }
        }
        anyhow::Ok(())
    };
    let read = async {
        let mut received = vec![0u8; 8 * CHUNKS as usize];
        timeout(PATIENCE, r.read_exact(&mut received)).await.context("stream incomplete")??;
        anyhow::Ok(received)
    };
    let ((), received) = tokio::try_join!(write, read)?;
    let numbers: Vec<u64> =
        received.chunks_exact(8).map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes"))).collect();
    assert_eq!(numbers, (0..CHUNKS).collect::<Vec<_>>());
    Ok(())
}

#[tokio::test]
async fn tcp_one_way_partition_holds_bytes_and_delivers_them_after_heal() -> Result<()> {
    let (proxy, _server) = tcp_setup().await?;
    let faults = proxy.handle();
    let mut stream = TcpStream::connect(proxy.local_addr()).await?;
    assert_eq!(round_trip(&mut stream, b"warm").await?, b"warm");

    faults.partition(Direction::ToClient);
    stream.write_all(b"ping").await?;
    // The request still reaches the echo server; only its reply is held.
    counters_reach(&faults, |c| c.to_upstream.bytes_forwarded == 8).await?;
    assert_silent(&mut stream).await?;
    assert_eq!(faults.counters().to_client.bytes_forwarded, 4);

    faults.heal();
    let mut back = [0; 4];
    timeout(PATIENCE, stream.read_exact(&mut back)).await??;
    assert_eq!(&back, b"ping", "bytes written during the partition arrive after heal");
    assert_eq!(round_trip(&mut stream, b"more").await?, b"more", "the connection survived");
    Ok(())
}

#[tokio::test]
async fn tcp_full_partition_passes_nothing_until_heal() -> Result<()> {
    let (proxy, _server) = tcp_setup().await?;
    let faults = proxy.handle();
    let mut stream = TcpStream::connect(proxy.local_addr()).await?;
    assert_eq!(round_trip(&mut stream, b"warm").await?, b"warm");

    faults.partition_both();
    stream.write_all(b"held").await?;
    assert_silent(&mut stream).await?;
    let counters = faults.counters();
    assert_eq!((counters.to_upstream.bytes_forwarded, counters.to_client.bytes_forwarded), (4, 4));

    faults.heal();
    let mut back = [0; 4];
    timeout(PATIENCE, stream.read_exact(&mut back)).await??;
    assert_eq!(&back, b"held");
    Ok(())
}

#[tokio::test]
async fn tcp_new_connection_hangs_during_partition_and_proceeds_after_heal() -> Result<()> {
    let (proxy, _server) = tcp_setup().await?;
    let faults = proxy.handle();
    faults.partition_both();
    let mut stream = TcpStream::connect(proxy.local_addr()).await?;
    stream.write_all(b"early").await?;
    assert_silent(&mut stream).await?;
    assert_eq!(faults.counters().to_upstream.bytes_forwarded, 0);

    faults.heal();
    let mut back = [0; 5];
    timeout(PATIENCE, stream.read_exact(&mut back)).await??;
    assert_eq!(&back, b"early");
    Ok(())
}

#[tokio::test]
async fn tcp_reset_all_closes_current_connections_only() -> Result<()> {
    let (proxy, _server) = tcp_setup().await?;
    let faults = proxy.handle();
    let mut old = TcpStream::connect(proxy.local_addr()).await?;
    assert_eq!(round_trip(&mut old, b"one").await?, b"one");

    faults.reset_all();
    let mut byte = [0];
    let read = timeout(PATIENCE, old.read(&mut byte)).await.context("connection was not closed")?;
    assert!(matches!(read, Ok(0) | Err(_)), "expected EOF or an error, got {read:?}");

    let mut new = TcpStream::connect(proxy.local_addr()).await?;
    assert_eq!(round_trip(&mut new, b"two").await?, b"two");
    Ok(())
}

#[tokio::test]
async fn proxy_refuses_non_loopback_listen_address() {
    let upstream = any_port();
    let result = FaultProxy::tcp("0.0.0.0:0".parse().expect("valid address"), upstream).await;
    assert!(result.is_err());
}

// ---------------------------------------------------------------- UDP

/// A UDP echo server that remembers every source address it saw.
struct UdpEcho {
    addr: SocketAddr,
    sources: Arc<Mutex<Vec<SocketAddr>>>,
    _task: Task,
}

impl UdpEcho {
    async fn start() -> Result<Self> {
        let socket = UdpSocket::bind(ANY_PORT).await?;
        let addr = socket.local_addr()?;
        let sources = Arc::new(Mutex::new(Vec::new()));
        let seen = sources.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0; 65_536];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                seen.lock().expect("not poisoned").push(from);
                let _ = socket.send_to(&buf[..n], from).await;
            }
        });
        Ok(Self { addr, sources, _task: Task(task) })
    }

    fn received(&self) -> usize {
        self.sources.lock().expect("not poisoned").len()
    }

    fn last_source(&self) -> Option<SocketAddr> {
        self.sources.lock().expect("not poisoned").last().copied()
    }
}

async fn udp_client(proxy: &FaultProxy) -> Result<UdpSocket> {
    let socket = UdpSocket::bind(ANY_PORT).await?;
    socket.connect(proxy.local_addr()).await?;
    Ok(socket)
}

async fn udp_ping(socket: &UdpSocket, payload: &[u8]) -> Result<Vec<u8>> {
    socket.send(payload).await?;
    let mut buf = vec![0; 65_536];
    let n = timeout(PATIENCE, socket.recv(&mut buf)).await.context("no echo")??;
    buf.truncate(n);
    Ok(buf)
}

/// Counts the datagrams already waiting on `socket`.
fn drain(socket: &UdpSocket) -> usize {
    let mut buf = vec![0; 65_536];
    std::iter::from_fn(|| socket.try_recv(&mut buf).ok()).count()
}

/// Sends `count` datagrams in small batches, letting the proxy account for
/// each batch so that no socket buffer overflows; returns echoes received.
async fn send_paced(socket: &UdpSocket, faults: &FaultHandle, count: u64) -> Result<usize> {
    let base = faults.counters();
    let mut echoes = 0;
    for i in 0..count {
        socket.send(&i.to_be_bytes()).await?;
        if i % 50 == 49 || i + 1 == count {
            let sent = i + 1;
            counters_reach(faults, |c| {
                let up = c.to_upstream.datagrams_forwarded - base.to_upstream.datagrams_forwarded;
                let up_dropped = c.to_upstream.datagrams_dropped - base.to_upstream.datagrams_dropped;
                let down = c.to_client.datagrams_forwarded + c.to_client.datagrams_dropped
                    - base.to_client.datagrams_forwarded
                    - base.to_client.datagrams_dropped;
                up + up_dropped == sent && down == up
            })
            .await?;
            echoes += drain(socket);
        }
    }
    Ok(echoes)
}

#[tokio::test]
async fn udp_echo_without_faults() -> Result<()> {
    let echo = UdpEcho::start().await?;
    let proxy = FaultProxy::udp(any_port(), echo.addr).await?;
    let client = udp_client(&proxy).await?;
    for i in 0u32..20 {
        assert_eq!(udp_ping(&client, &i.to_be_bytes()).await?, i.to_be_bytes());
    }
    let counters = proxy.handle().counters();
    assert_eq!(counters.to_upstream.datagrams_forwarded, 20);
    assert_eq!(counters.to_client.datagrams_forwarded, 20);
    assert_eq!(counters.connections, 1, "one mapping per client address");
    Ok(())
}

#[tokio::test]
async fn udp_loss_one_drops_everything() -> Result<()> {
    let echo = UdpEcho::start().await?;
    let proxy = FaultProxy::udp(any_port(), echo.addr).await?;
    let faults = proxy.handle();
    faults.set_loss(Direction::ToUpstream, 1.0);
    let client = udp_client(&proxy).await?;
    assert_eq!(send_paced(&client, &faults, 100).await?, 0);
    assert_eq!(faults.counters().to_upstream.datagrams_dropped, 100);
    assert_eq!(echo.received(), 0);
    Ok(())
}

#[tokio::test]
async fn udp_loss_zero_drops_nothing() -> Result<()> {
    let echo = UdpEcho::start().await?;
    let proxy = FaultProxy::udp(any_port(), echo.addr).await?;
    let faults = proxy.handle();
    for dir in Direction::ALL {
        faults.set_loss(dir, 0.0);
    }
    let client = udp_client(&proxy).await?;
    assert_eq!(send_paced(&client, &faults, 1000).await?, 1000);
    let counters = faults.counters();
    assert_eq!((counters.to_upstream.datagrams_dropped, counters.to_client.datagrams_dropped), (0, 0));
    Ok(())
}

/// Runs 1000 datagrams through a proxy with 50% loss toward upstream; returns how many were dropped.
async fn half_loss_drops(seed: u64) -> Result<u64> {
    let echo = UdpEcho::start().await?;
    let proxy = FaultProxy::builder().seed(seed).udp(any_port(), echo.addr).await?;
    let faults = proxy.handle();
    faults.set_loss(Direction::ToUpstream, 0.5);
    let client = udp_client(&proxy).await?;
    let echoes = send_paced(&client, &faults, 1000).await?;
    let counters = faults.counters();
    assert_eq!(echoes as u64, counters.to_upstream.datagrams_forwarded, "what got through came back");
    assert_eq!(echo.received() as u64, counters.to_upstream.datagrams_forwarded);
    Ok(counters.to_upstream.datagrams_dropped)
}

#[tokio::test]
async fn udp_half_loss_with_a_fixed_seed_drops_about_half_reproducibly() -> Result<()> {
    let dropped = half_loss_drops(42).await?;
    assert!((350..=650).contains(&dropped), "dropped {dropped} of 1000");
    assert_eq!(half_loss_drops(42).await?, dropped, "the same seed drops the same datagrams");
    Ok(())
}

#[tokio::test]
async fn udp_one_way_partition_blocks_only_that_direction() -> Result<()> {
    let echo = UdpEcho::start().await?;
    let proxy = FaultProxy::udp(any_port(), echo.addr).await?;
    let faults = proxy.handle();
    let client = udp_client(&proxy).await?;

    faults.partition(Direction::ToClient);
    assert_eq!(send_paced(&client, &faults, 10).await?, 0);
    assert_eq!(echo.received(), 10, "requests still reach upstream");
    assert_eq!(faults.counters().to_client.datagrams_dropped, 10);

    faults.heal();
    faults.partition(Direction::ToUpstream);
    assert_eq!(send_paced(&client, &faults, 10).await?, 0);
    assert_eq!(echo.received(), 10, "nothing more reaches upstream");
    assert_eq!(faults.counters().to_upstream.datagrams_dropped, 10);

    faults.heal();
    assert_eq!(udp_ping(&client, b"back").await?, b"back");
    Ok(())
}

#[tokio::test]
async fn udp_one_way_delay_applies_in_each_direction() -> Result<()> {
    let echo = UdpEcho::start().await?;
    let proxy = FaultProxy::udp(any_port(), echo.addr).await?;
    let faults = proxy.handle();
    for dir in Direction::ALL {
        faults.set_delay(dir, Duration::from_millis(100));
    }
    let client = udp_client(&proxy).await?;
    let start = Instant::now();
    assert_eq!(udp_ping(&client, b"ping").await?, b"ping");
    let rtt = start.elapsed();
    assert!(rtt >= Duration::from_millis(200), "round trip took only {rtt:?}");
    Ok(())
}

#[tokio::test]
async fn udp_jitter_delivers_every_datagram() -> Result<()> {
    let echo = UdpEcho::start().await?;
    let proxy = FaultProxy::builder().seed(7).udp(any_port(), echo.addr).await?;
    let faults = proxy.handle();
    faults.set_delay(Direction::ToUpstream, Duration::from_millis(5));
    faults.set_jitter(Direction::ToUpstream, Duration::from_millis(5));
    let client = udp_client(&proxy).await?;
    for i in 0u32..100 {
        client.send(&i.to_be_bytes()).await?;
    }
    let mut seen = HashSet::new();
    let mut buf = [0; 4];
    while seen.len() < 100 {
        timeout(PATIENCE, client.recv(&mut buf)).await.context("missing echoes")??;
        seen.insert(u32::from_be_bytes(buf));
    }
    Ok(())
}

#[tokio::test]
async fn udp_idle_mapping_expires_and_reset_rebinds() -> Result<()> {
    let echo = UdpEcho::start().await?;
    let idle = Duration::from_millis(200);
    let proxy = FaultProxy::builder().udp_idle_timeout(idle).udp(any_port(), echo.addr).await?;
    let faults = proxy.handle();
    let client = udp_client(&proxy).await?;

    udp_ping(&client, b"a").await?;
    let first = echo.last_source();
    // Expiry is the passage of time itself, so this test has to wait it out.
    sleep(idle * 3).await;
    udp_ping(&client, b"b").await?;
    let second = echo.last_source();
    assert_ne!(first, second, "an expired mapping gets a new upstream port");
    assert_eq!(faults.counters().connections, 2);

    faults.reset_all();
    udp_ping(&client, b"c").await?;
    assert_ne!(echo.last_source(), second, "reset_all forgets mappings");
    assert_eq!(faults.counters().connections, 3);
    Ok(())
}
