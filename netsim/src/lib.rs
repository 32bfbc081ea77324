//! A user-space fault proxy for TCP and UDP on 127.0.0.1.
//!
//! The kernel here has no `netem`, so simulated geography (DESIGN.md §7) is a
//! forwarder that sits between a client and its upstream and adds one-way
//! delay, jitter, loss and partitions, controlled at run time.
//!
//! ```no_run
//! # async fn demo(edge: std::net::SocketAddr) -> std::io::Result<()> {
//! use std::time::Duration;
//! use meridian_netsim::{Direction, FaultProxy};
//!
//! // Clients connect to `proxy.local_addr()` instead of `edge`.
//! let proxy = FaultProxy::tcp("127.0.0.1:0".parse().unwrap(), edge).await?;
//! let faults = proxy.handle(); // a cheap clone; hand it to a test or a control panel
//! faults.set_delay(Direction::ToUpstream, Duration::from_millis(40));
//! faults.set_delay(Direction::ToClient, Duration::from_millis(40));
//! faults.partition(Direction::ToClient); // one way: the client hears nothing
//! faults.heal();
//! println!("{:?}", faults.counters());
//! // Dropping `proxy` stops it and closes every connection it carries.
//! # Ok(()) }
//! ```
//!
//! Use [`FaultProxy::builder`] to choose the RNG seed (loss and jitter are
//! drawn from a seeded ChaCha8, so a single flow sees the same faults on
//! every run) or the UDP idle timeout.
//!
//! # Semantics
//!
//! Each [`Direction`] has its own [`LinkFaults`]: a one-way `delay`, a
//! `jitter` (each packet's delay is `delay ± jitter`, uniform, never below
//! zero), a `loss` probability and a `partitioned` flag.
//!
//! **TCP** models a reliable stream over a faulty network:
//! - Delay and jitter apply per read chunk, but a chunk is never released
//!   before the one read before it, so a stream is never reordered.
//! - `loss` is ignored: a lost packet on a real network is retransmitted and
//!   shows up as delay, never as a gap in the stream. Use delay and partitions.
//! - A partition *holds* bytes, like TCP retransmitting into a dead link:
//!   nothing crosses while partitioned, and everything written meanwhile is
//!   delivered, in order, after [`FaultHandle::heal`]. The proxy keeps
//!   reading until a bounded queue fills, then backpressure reaches the
//!   sender. Connections are never closed by a partition.
//! - A new connection accepted while *either* direction is partitioned hangs:
//!   the client's connect succeeds (the kernel completes it on the proxy's
//!   listener), but the proxy dials upstream only after the partition heals,
//!   as a SYN would be retried. Bytes written meanwhile are delivered then.
//! - [`FaultHandle::reset_all`] closes every current connection (both sides
//!   see EOF or an error); bytes still queued in the proxy are discarded.
//!
//! **UDP** forwards datagrams through one upstream socket per client address,
//! so a QUIC client behind the proxy works. Lost or partitioned datagrams are
//! dropped and counted; with jitter, datagrams may be reordered, as on a real
//! network. A mapping idle for the idle timeout (default 30 s) is forgotten,
//! and so are all mappings on [`FaultHandle::reset_all`]; the client's next
//! datagram then leaves from a new upstream port, like a NAT rebinding.
//!
//! Every task is owned by the proxy and aborted when it is dropped.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinHandle, JoinSet};
use tokio::time::{Instant, sleep_until};

/// The default time after which an unused UDP mapping is forgotten.
pub const DEFAULT_UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Bytes read from a TCP socket at once; one delay/jitter sample each.
const TCP_CHUNK: usize = 16 * 1024;
/// Chunks queued per TCP direction before the proxy stops reading.
const TCP_QUEUE_CHUNKS: usize = 64;
/// Datagrams from upstream sockets waiting for the UDP event loop.
const UDP_QUEUE_DATAGRAMS: usize = 1024;
const MAX_DATAGRAM: usize = 65_536;

/// One way through the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the client (who connects to the proxy) to the upstream.
    ToUpstream,
    /// From the upstream back to the client.
    ToClient,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::ToUpstream, Direction::ToClient];

    fn index(self) -> usize {
        match self {
            Direction::ToUpstream => 0,
            Direction::ToClient => 1,
        }
    }
}

/// The faults applied to one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LinkFaults {
    /// One-way delay added to every chunk or datagram.
    pub delay: Duration,
    /// Each delay is drawn uniformly from `delay ± jitter` (never below zero).
    pub jitter: Duration,
    /// Probability in `0.0..=1.0` that a UDP datagram is dropped. TCP ignores it.
    pub loss: f64,
    /// Nothing crosses in this direction while set.
    pub partitioned: bool,
}

/// The faults applied to both directions.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Faults {
    pub to_upstream: LinkFaults,
    pub to_client: LinkFaults,
}

impl Faults {
    pub fn link(&self, dir: Direction) -> &LinkFaults {
        match dir {
            Direction::ToUpstream => &self.to_upstream,
            Direction::ToClient => &self.to_client,
        }
    }

    pub fn link_mut(&mut self, dir: Direction) -> &mut LinkFaults {
        match dir {
            Direction::ToUpstream => &mut self.to_upstream,
            Direction::ToClient => &mut self.to_client,
        }
    }

    fn any_partition(&self) -> bool {
        self.to_upstream.partitioned || self.to_client.partitioned
    }
}

/// Traffic counted in one direction. TCP counts only bytes and never drops
/// (bytes discarded by `reset_all` are not counted); UDP counts both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkCounters {
    pub bytes_forwarded: u64,
    pub bytes_dropped: u64,
    pub datagrams_forwarded: u64,
    pub datagrams_dropped: u64,
}

/// A snapshot of the proxy's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub to_upstream: LinkCounters,
    pub to_client: LinkCounters,
    /// TCP connections accepted, or UDP mappings created, since the start.
    pub connections: u64,
}

impl Counters {
    pub fn link(&self, dir: Direction) -> &LinkCounters {
        match dir {
            Direction::ToUpstream => &self.to_upstream,
            Direction::ToClient => &self.to_client,
        }
    }
}

/// A running proxy. Dropping it stops every task and closes every socket.
#[derive(Debug)]
pub struct FaultProxy {
    local_addr: SocketAddr,
    handle: FaultHandle,
    task: JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Options for a proxy; start one with [`FaultProxyBuilder::tcp`] or [`FaultProxyBuilder::udp`].
#[derive(Clone, Debug)]
pub struct FaultProxyBuilder {
    seed: u64,
    faults: Faults,
    udp_idle_timeout: Duration,
}

impl Default for FaultProxyBuilder {
    fn default() -> Self {
        Self { seed: 0, faults: Faults::default(), udp_idle_timeout: DEFAULT_UDP_IDLE_TIMEOUT }
    }
}

impl FaultProxyBuilder {
    /// Seeds the RNG that draws loss and jitter (default 0).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Faults in force from the first byte (default none).
    pub fn faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }

    /// How long an unused UDP mapping lives (default 30 s).
    pub fn udp_idle_timeout(mut self, timeout: Duration) -> Self {
        self.udp_idle_timeout = timeout;
        self
    }

    /// Listens for TCP on `listen` (a loopback address; port 0 picks one) and forwards to `upstream`.
    pub async fn tcp(self, listen: SocketAddr, upstream: SocketAddr) -> io::Result<FaultProxy> {
        require_loopback(listen)?;
        let listener = TcpListener::bind(listen).await?;
        let local_addr = listener.local_addr()?;
        let handle = self.handle();
        let task = tokio::spawn(run_tcp(listener, upstream, handle.shared.clone()));
        Ok(FaultProxy { local_addr, handle, task })
    }

    /// Listens for UDP on `listen` (a loopback address; port 0 picks one) and forwards to `upstream`.
    pub async fn udp(self, listen: SocketAddr, upstream: SocketAddr) -> io::Result<FaultProxy> {
        require_loopback(listen)?;
        let socket = UdpSocket::bind(listen).await?;
        let local_addr = socket.local_addr()?;
        let handle = self.handle();
        let relay = UdpRelay::new(socket, upstream, handle.shared.clone(), self.udp_idle_timeout);
        let task = tokio::spawn(relay.run());
        Ok(FaultProxy { local_addr, handle, task })
    }

    fn handle(&self) -> FaultHandle {
        let shared = Shared {
            faults: watch::Sender::new(self.faults),
            resets: watch::Sender::new(0),
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(self.seed)),
            counters: Default::default(),
            connections: AtomicU64::new(0),
        };
        FaultHandle { shared: Arc::new(shared) }
    }
}

fn require_loopback(listen: SocketAddr) -> io::Result<()> {
    if listen.ip().is_loopback() {
        return Ok(());
    }
    Err(io::Error::new(io::ErrorKind::InvalidInput, format!("fault proxy listens on loopback only, not {listen}")))
}

impl FaultProxy {
    pub fn builder() -> FaultProxyBuilder {
        FaultProxyBuilder::default()
    }

    /// A TCP proxy with no faults and seed 0.
    pub async fn tcp(listen: SocketAddr, upstream: SocketAddr) -> io::Result<FaultProxy> {
        Self::builder().tcp(listen, upstream).await
    }

    /// A UDP proxy with no faults, seed 0 and the default idle timeout.
    pub async fn udp(listen: SocketAddr, upstream: SocketAddr) -> io::Result<FaultProxy> {
        Self::builder().udp(listen, upstream).await
    }

    /// Where clients connect (or send datagrams) instead of the upstream.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle to control this proxy; clones are cheap and thread-safe.
    pub fn handle(&self) -> FaultHandle {
        self.handle.clone()
    }
}

/// Controls a running proxy. Every method takes effect immediately, for
/// traffic already queued as well as new traffic, except that delay and
/// jitter are sampled when a chunk or datagram arrives.
#[derive(Clone, Debug)]
pub struct FaultHandle {
    shared: Arc<Shared>,
}

impl FaultHandle {
    /// The faults currently in force.
    pub fn faults(&self) -> Faults {
        *self.shared.faults.borrow()
    }

    /// Replaces all faults at once.
    pub fn set_faults(&self, faults: Faults) {
        self.update(|f| *f = faults);
    }

    /// Changes several faults atomically.
    pub fn update(&self, change: impl FnOnce(&mut Faults)) {
        self.shared.faults.send_modify(|f| {
            change(f);
            for dir in Direction::ALL {
                let loss = f.link(dir).loss;
                f.link_mut(dir).loss = if loss.is_nan() { 0.0 } else { loss.clamp(0.0, 1.0) };
            }
        });
    }

    pub fn set_delay(&self, dir: Direction, delay: Duration) {
        self.update(|f| f.link_mut(dir).delay = delay);
    }

    pub fn set_jitter(&self, dir: Direction, jitter: Duration) {
        self.update(|f| f.link_mut(dir).jitter = jitter);
    }

    /// Sets the UDP drop probability (clamped to `0.0..=1.0`); TCP ignores it.
    pub fn set_loss(&self, dir: Direction, loss: f64) {
        self.update(|f| f.link_mut(dir).loss = loss);
    }

    /// Cuts one direction; the other keeps flowing.
    pub fn partition(&self, dir: Direction) {
        self.update(|f| f.link_mut(dir).partitioned = true);
    }

    /// Cuts both directions.
    pub fn partition_both(&self) {
        self.update(|f| Direction::ALL.iter().for_each(|&d| f.link_mut(d).partitioned = true));
    }

    /// Ends every partition; delay, jitter and loss stay as they are.
    pub fn heal(&self) {
        self.update(|f| Direction::ALL.iter().for_each(|&d| f.link_mut(d).partitioned = false));
    }

    /// Removes every fault.
    pub fn clear(&self) {
        self.set_faults(Faults::default());
    }

    /// Closes every current TCP connection, or forgets every UDP mapping.
    pub fn reset_all(&self) {
        self.shared.resets.send_modify(|generation| *generation += 1);
    }

    pub fn counters(&self) -> Counters {
        let link = |dir: Direction| self.shared.counters[dir.index()].snapshot();
        Counters {
            to_upstream: link(Direction::ToUpstream),
            to_client: link(Direction::ToClient),
            connections: self.shared.connections.load(Ordering::Relaxed),
        }
    }
}

/// State shared by the proxy's tasks and every [`FaultHandle`].
#[derive(Debug)]
struct Shared {
    faults: watch::Sender<Faults>,
    /// Bumped by `reset_all`; the proxy's main task watches it.
    resets: watch::Sender<u64>,
    rng: Mutex<ChaCha8Rng>,
    counters: [AtomicCounters; 2],
    connections: AtomicU64,
}

impl Shared {
    /// When something arriving now in `dir` may be delivered: now + delay ± jitter.
    fn release_time(&self, dir: Direction, now: Instant) -> Instant {
        let link = *self.faults.borrow().link(dir);
        if link.jitter.is_zero() {
            return now + link.delay;
        }
        let offset = self.rng().random_range(-1.0..=1.0) * link.jitter.as_secs_f64();
        now + Duration::from_secs_f64((link.delay.as_secs_f64() + offset).max(0.0))
    }

    /// Whether a datagram arriving now in `dir` is lost or partitioned away.
    fn drops_datagram(&self, dir: Direction) -> bool {
        let link = *self.faults.borrow().link(dir);
        link.partitioned || (link.loss > 0.0 && self.rng().random_bool(link.loss))
    }

    fn is_partitioned(&self, dir: Direction) -> bool {
        self.faults.borrow().link(dir).partitioned
    }

    /// Waits until `ready` holds for the current faults.
    async fn wait_for_faults(&self, ready: impl FnMut(&Faults) -> bool) {
        // The sender lives in `self`, so this cannot fail.
        let _ = self.faults.subscribe().wait_for(ready).await;
    }

    fn rng(&self) -> std::sync::MutexGuard<'_, ChaCha8Rng> {
        // The RNG holds no invariant a panicking holder could break.
        self.rng.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn count(&self, dir: Direction) -> &AtomicCounters {
        &self.counters[dir.index()]
    }
}

#[derive(Debug, Default)]
struct AtomicCounters {
    bytes_forwarded: AtomicU64,
    bytes_dropped: AtomicU64,
    datagrams_forwarded: AtomicU64,
    datagrams_dropped: AtomicU64,
}

impl AtomicCounters {
    fn forwarded(&self, bytes: usize, datagrams: u64) {
        self.bytes_forwarded.fetch_add(bytes as u64, Ordering::Relaxed);
        self.datagrams_forwarded.fetch_add(datagrams, Ordering::Relaxed);
    }

    fn dropped(&self, bytes: usize) {
        self.bytes_dropped.fetch_add(bytes as u64, Ordering::Relaxed);
        self.datagrams_dropped.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> LinkCounters {
        LinkCounters {
            bytes_forwarded: self.bytes_forwarded.load(Ordering::Relaxed),
            bytes_dropped: self.bytes_dropped.load(Ordering::Relaxed),
            datagrams_forwarded: self.datagrams_forwarded.load(Ordering::Relaxed),
            datagrams_dropped: self.datagrams_dropped.load(Ordering::Relaxed),
        }
    }
}

// ---------------------------------------------------------------- TCP

/// Accepts clients and relays each in a task owned by `conns`; `reset_all` aborts them.
async fn run_tcp(listener: TcpListener, upstream: SocketAddr, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    let mut resets = shared.resets.subscribe();
    loop {
        tokio::select! {
            // A reset requested before a client connects must not close that client.
            biased;
            Ok(()) = resets.changed() => {
                tracing::debug!(connections = conns.len(), "fault proxy: reset_all");
                conns.abort_all();
            }
            accepted = listener.accept() => match accepted {
                Ok((client, peer)) => {
                    shared.connections.fetch_add(1, Ordering::Relaxed);
                    conns.spawn(relay_connection(client, peer, upstream, shared.clone()));
                }
                Err(e) => tracing::warn!(error = %e, "fault proxy: accept failed"),
            },
            Some(_) = conns.join_next() => {}
        }
    }
}

async fn relay_connection(mut client: TcpStream, peer: SocketAddr, upstream: SocketAddr, shared: Arc<Shared>) {
    // A handshake needs both directions, so a new connection waits out any partition.
    shared.wait_for_faults(|f| !f.any_partition()).await;
    let result = async {
        let mut server = TcpStream::connect(upstream).await?;
        client.set_nodelay(true)?;
        server.set_nodelay(true)?;
        let (client_rx, client_tx) = client.split();
        let (server_rx, server_tx) = server.split();
        tokio::try_join!(
            pump(client_rx, server_tx, Direction::ToUpstream, &shared),
            pump(server_rx, client_tx, Direction::ToClient, &shared),
        )
    }
    .await;
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "fault proxy: connection ended");
    }
}

/// A chunk of a TCP stream and when it may be written; empty data means EOF.
#[derive(Debug)]
struct Chunk {
    release: Instant,
    data: Vec<u8>,
}

/// Copies one direction of a connection, reading and writing concurrently
/// through a bounded queue so that delay does not throttle reading.
async fn pump(
    reader: impl AsyncRead + Unpin,
    writer: impl AsyncWrite + Unpin,
    dir: Direction,
    shared: &Shared,
) -> io::Result<()> {
    let (tx, rx) = mpsc::channel(TCP_QUEUE_CHUNKS);
    tokio::try_join!(read_chunks(reader, tx, dir, shared), write_chunks(rx, writer, dir, shared))?;
    Ok(())
}

async fn read_chunks(
    mut reader: impl AsyncRead + Unpin,
    tx: mpsc::Sender<Chunk>,
    dir: Direction,
    shared: &Shared,
) -> io::Result<()> {
    let mut last_release = Instant::now();
    loop {
        let mut data = vec![0; TCP_CHUNK];
        let n = reader.read(&mut data).await?;
        data.truncate(n);
        // One FIFO writer already keeps the stream in order; clamping to the
        // previous release keeps the recorded times honest about that.
        last_release = shared.release_time(dir, Instant::now()).max(last_release);
        if tx.send(Chunk { release: last_release, data }).await.is_err() || n == 0 {
            // The writer has failed (its error ends the pump) or the stream ended.
            return Ok(());
        }
    }
}

async fn write_chunks(
    mut rx: mpsc::Receiver<Chunk>,
    mut writer: impl AsyncWrite + Unpin,
    dir: Direction,
    shared: &Shared,
) -> io::Result<()> {
    while let Some(chunk) = rx.recv().await {
        sleep_until(chunk.release).await;
        shared.wait_for_faults(|f| !f.link(dir).partitioned).await;
        if chunk.data.is_empty() {
            return writer.shutdown().await;
        }
        writer.write_all(&chunk.data).await?;
        shared.count(dir).forwarded(chunk.data.len(), 0);
    }
    Ok(())
}

// ---------------------------------------------------------------- UDP

/// A datagram waiting out its delay.
#[derive(Debug)]
struct Datagram {
    dir: Direction,
    client: SocketAddr,
    payload: Vec<u8>,
}

/// One client's upstream socket and the task receiving on it.
#[derive(Debug)]
struct Mapping {
    socket: Arc<UdpSocket>,
    recv_task: AbortHandle,
    last_active: Instant,
}

/// What woke the UDP event loop.
#[derive(Debug)]
enum UdpEvent {
    FromClient(io::Result<(usize, SocketAddr)>),
    FromUpstream(SocketAddr, Vec<u8>),
    Due,
    Sweep,
    Reset,
}

/// The UDP proxy: one event loop owning the client-facing socket, the
/// mappings, the delay queue and the tasks that receive from upstream.
#[derive(Debug)]
struct UdpRelay {
    socket: Arc<UdpSocket>,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    idle_timeout: Duration,
    mappings: HashMap<SocketAddr, Mapping>,
    recv_tasks: JoinSet<()>,
    /// Datagrams from the receive tasks, tagged with their client.
    from_upstream_tx: mpsc::Sender<(SocketAddr, Vec<u8>)>,
    from_upstream_rx: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
    /// Datagrams by release time; the sequence number keeps equal times in arrival order.
    queue: BTreeMap<(Instant, u64), Datagram>,
    next_seq: u64,
}

impl UdpRelay {
    fn new(socket: UdpSocket, upstream: SocketAddr, shared: Arc<Shared>, idle_timeout: Duration) -> Self {
        let (from_upstream_tx, from_upstream_rx) = mpsc::channel(UDP_QUEUE_DATAGRAMS);
        Self {
            socket: Arc::new(socket),
            upstream,
            shared,
            idle_timeout,
            mappings: HashMap::new(),
            recv_tasks: JoinSet::new(),
            from_upstream_tx,
            from_upstream_rx,
            queue: BTreeMap::new(),
            next_seq: 0,
        }
    }

    async fn run(mut self) {
        let mut buf = vec![0; MAX_DATAGRAM];
        let mut resets = self.shared.resets.subscribe();
        let mut sweep = tokio::time::interval((self.idle_timeout / 2).max(Duration::from_millis(1)));
        loop {
            let event = self.next_event(&mut buf, &mut resets, &mut sweep).await;
            match event {
                UdpEvent::FromClient(Ok((n, client))) => self.on_client(client, &buf[..n]).await,
                UdpEvent::FromClient(Err(e)) => tracing::debug!(error = %e, "fault proxy: udp recv failed"),
                UdpEvent::FromUpstream(client, payload) => self.on_upstream(client, payload),
                UdpEvent::Due => self.release_due().await,
                UdpEvent::Sweep => self.expire_idle(),
                UdpEvent::Reset => self.forget_all(),
            }
        }
    }

    async fn next_event(
        &mut self,
        buf: &mut [u8],
        resets: &mut watch::Receiver<u64>,
        sweep: &mut tokio::time::Interval,
    ) -> UdpEvent {
        let due = self.queue.first_key_value().map(|((release, _), _)| *release);
        tokio::select! {
            // Control before traffic: a reset requested before a datagram was sent applies to it.
            biased;
            Ok(()) = resets.changed() => UdpEvent::Reset,
            () = sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => UdpEvent::Due,
            Some((client, payload)) = self.from_upstream_rx.recv() => UdpEvent::FromUpstream(client, payload),
            received = self.socket.recv_from(buf) => UdpEvent::FromClient(received),
            _ = sweep.tick() => UdpEvent::Sweep,
        }
    }

    async fn on_client(&mut self, client: SocketAddr, payload: &[u8]) {
        if let Err(e) = self.touch_mapping(client).await {
            tracing::warn!(%client, error = %e, "fault proxy: cannot open upstream socket");
            return;
        }
        self.schedule(Direction::ToUpstream, client, payload.to_vec());
    }

    fn on_upstream(&mut self, client: SocketAddr, payload: Vec<u8>) {
        if let Some(mapping) = self.mappings.get_mut(&client) {
            mapping.last_active = Instant::now();
            self.schedule(Direction::ToClient, client, payload);
        }
    }

    /// Drops the datagram now if lost or partitioned, or queues it for its release time.
    fn schedule(&mut self, dir: Direction, client: SocketAddr, payload: Vec<u8>) {
        if self.shared.drops_datagram(dir) {
            self.shared.count(dir).dropped(payload.len());
            return;
        }
        let release = self.shared.release_time(dir, Instant::now());
        self.next_seq += 1;
        self.queue.insert((release, self.next_seq), Datagram { dir, client, payload });
    }

    /// Sends every datagram whose time has come, unless a partition began while it was in flight.
    async fn release_due(&mut self) {
        let now = Instant::now();
        while let Some(entry) = self.queue.first_entry() {
            if entry.key().0 > now {
                return;
            }
            let datagram = entry.remove();
            self.deliver(datagram).await;
        }
    }

    async fn deliver(&mut self, Datagram { dir, client, payload }: Datagram) {
        if self.shared.is_partitioned(dir) {
            self.shared.count(dir).dropped(payload.len());
            return;
        }
        let sent = match dir {
            Direction::ToUpstream => match self.mappings.get(&client) {
                Some(mapping) => mapping.socket.send(&payload).await,
                None => Err(io::ErrorKind::NotFound.into()), // expired while in flight
            },
            Direction::ToClient => self.socket.send_to(&payload, client).await,
        };
        match sent {
            Ok(_) => self.shared.count(dir).forwarded(payload.len(), 1),
            Err(e) => {
                tracing::debug!(%client, ?dir, error = %e, "fault proxy: udp send failed");
                self.shared.count(dir).dropped(payload.len());
            }
        }
    }

    /// Marks `client`'s mapping active, creating it (and its receive task) if needed.
    async fn touch_mapping(&mut self, client: SocketAddr) -> io::Result<()> {
        if let Some(mapping) = self.mappings.get_mut(&client) {
            mapping.last_active = Instant::now();
            return Ok(());
        }
        let socket = Arc::new(UdpSocket::bind((self.upstream.ip(), 0)).await?);
        socket.connect(self.upstream).await?;
        let tx = self.from_upstream_tx.clone();
        let recv_task = self.recv_tasks.spawn(receive_upstream(socket.clone(), client, tx));
        self.shared.connections.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%client, upstream_port = socket.local_addr()?.port(), "fault proxy: new udp mapping");
        self.mappings.insert(client, Mapping { socket, recv_task, last_active: Instant::now() });
        Ok(())
    }

    fn expire_idle(&mut self) {
        let Some(cutoff) = Instant::now().checked_sub(self.idle_timeout) else { return };
        self.mappings.retain(|client, mapping| {
            let keep = mapping.last_active > cutoff;
            if !keep {
                tracing::debug!(%client, "fault proxy: udp mapping expired");
                mapping.recv_task.abort();
            }
            keep
        });
        // Reap finished tasks so the set does not grow without bound.
        while self.recv_tasks.try_join_next().is_some() {}
    }

    fn forget_all(&mut self) {
        self.mappings.clear();
        self.recv_tasks.abort_all();
    }
}

/// Forwards datagrams from one mapping's upstream socket to the event loop.
async fn receive_upstream(socket: Arc<UdpSocket>, client: SocketAddr, tx: mpsc::Sender<(SocketAddr, Vec<u8>)>) {
    let mut buf = vec![0; MAX_DATAGRAM];
    loop {
        match socket.recv(&mut buf).await {
            Ok(n) => {
                if tx.send((client, buf[..n].to_vec())).await.is_err() {
                    return;
                }
            }
            // A connected UDP socket reports an ICMP "port unreachable" for an
            // earlier send as an error here; the upstream may come back.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
            Err(e) => {
                tracing::debug!(%client, error = %e, "fault proxy: upstream recv failed");
                return;
            }
        }
    }
}
