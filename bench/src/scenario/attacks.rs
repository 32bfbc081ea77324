//! Abuse: how a well-behaved client fares while one abusive client attacks.
//!
//! The well-behaved client joins, creates its own document, then types a
//! word at a time (a change, then a pause), each time waiting until the
//! server advertises heads containing the change: its round trip. It does
//! so in five phases, each bounded by a duration and a number of round
//! trips, with a fresh connection and document per phase (set up before
//! the attack starts, untimed: this is also where a server recovers from
//! the previous phase). While it measures, the attacker, from another
//! local address (127.0.0.2), runs one attack:
//!
//! 1. baseline: none;
//! 2. expanding documents: for fresh document ids, a `sync` whose changes
//!    are a saved automerge document of ~1,000,000 operations in about
//!    1.2 KB (one connection per message, as a server may close after one:
//!    all join, then all send);
//! 3. message flood: small `ephemeral` messages on its own document, as
//!    fast as it can;
//! 4. idle sockets: WebSockets that never send `join`, held open;
//! 5. random ids: `request`s for random document ids;
//! 6. a long text: a client with the right to write creates a document
//!    holding a text of `long_text` characters (random letters, so it does
//!    not compress: one change of that many operations), then types into
//!    it, a character every `pause`, without waiting for answers. Automerge
//!    applies each change to a long text in time that grows with the text,
//!    so a server applying it where it serves the others makes them wait.
//!
//! At the end of the phase the attacker is stopped and its sockets closed.
//! A round trip unanswered within `ack_timeout` (or a client that cannot
//! connect and create its document within `settle`) means the server
//! stopped answering: the phase's latency figures are then infinite, and
//! the run goes on. The server's RSS is sampled every 50 ms from the
//! phase's start until it answers a round trip after the attack; its peak
//! increase is reported for each attack.
//!
//! The edge runs with its default connection caps here (the suite's other
//! scenarios turn them off, every load client being 127.0.0.1): the
//! attacker's address is not the well-behaved client's.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{AutoCommit, Automerge, ObjType, ROOT};
use hdrhistogram::Histogram;
use meridian_protocol::codec::Message;
use meridian_protocol::ids::{DocumentId, PeerId};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Error as WsError;

use super::{Figure, histogram, mib, ms, wait_heads};
use crate::server::Server;
use crate::wire::{Conn, Receiver, Sender, connect_from};
use crate::workload::{SmallDoc, TextWriter, doc_id, empty_request, push, run_salt, splitmix};

/// The attacker's local address: another client than the well-behaved one
/// (127.0.0.1) as far as per-address limits are concerned.
const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// One of the attacker's steps (a connection, a send) may take this long;
/// past it, the step counts as failed.
const STEP: Duration = Duration::from_secs(10);

/// WebSocket handshakes of the idle-socket attack in flight at once.
const IN_FLIGHT: usize = 64;

/// The payload of a flood message: CBOR `{"x": 1}`.
const EPHEMERAL: [u8; 4] = [0xa1, 0x61, b'x', 0x01];

#[derive(Clone, Copy, Debug)]
pub struct Params {
    /// Each phase's length (round trips start within it).
    pub phase: Duration,
    /// Round trips per phase at most.
    pub round_trips: usize,
    /// The well-behaved client's pause between round trips (typing pace).
    pub pause: Duration,
    /// A round trip unanswered for this long: the server stopped answering.
    pub ack_timeout: Duration,
    /// A phase's client must connect and create its document within this.
    pub settle: Duration,
    /// Expanding documents sent, and operations in each.
    pub bombs: usize,
    pub bomb_ops: usize,
    /// Flood messages.
    pub flood: usize,
    /// Idle sockets.
    pub idle: usize,
    /// Requests for random document ids.
    pub random: usize,
    /// Characters of the long text.
    pub long_text: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attack {
    None,
    Expanding,
    Flood,
    Idle,
    RandomIds,
    LongText,
}

const PHASES: [Attack; 6] =
    [Attack::None, Attack::Expanding, Attack::Flood, Attack::Idle, Attack::RandomIds, Attack::LongText];

impl Attack {
    fn name(self) -> &'static str {
        match self {
            Attack::None => "baseline (no attack)",
            Attack::Expanding => "expanding documents",
            Attack::Flood => "message flood",
            Attack::Idle => "idle sockets",
            Attack::RandomIds => "random ids",
            Attack::LongText => "typing into a long text",
        }
    }
}

/// What the attacker did (each attack uses the counters it needs).
#[derive(Debug, Default)]
struct Tally {
    /// Messages sent (or idle sockets accepted).
    sent: AtomicU64,
    /// Expanding documents: connections the server refused (`error`, or
    /// closed). Idle sockets: handshakes answered 503.
    refused: AtomicU64,
    /// Expanding documents: connections whose document the server
    /// acknowledged (it loaded it). Random ids: `doc-unavailable` replies.
    answered: AtomicU64,
    /// Steps that failed otherwise (could not connect, timed out).
    failed: AtomicU64,
    /// Why the attack stopped early, if it did.
    note: std::sync::Mutex<Option<String>>,
}

impl Tally {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    fn stopped(&self, why: String) {
        if let Ok(mut note) = self.note.lock() {
            note.get_or_insert(why);
        }
    }
}

/// The well-behaved client's round trips in one phase.
#[derive(Debug)]
struct Outcome {
    latency: Histogram<u64>,
    /// A round trip went unanswered (the last one: the phase stops there).
    lost: Option<String>,
}

impl Outcome {
    /// The quantile `q` of the round trips, an unanswered one counting as
    /// infinitely long.
    fn quantile_ms(&self, q: f64) -> f64 {
        let done = self.latency.len();
        let total = done + u64::from(self.lost.is_some());
        let rank = ((q * total as f64).ceil() as u64).max(1);
        if done == 0 || rank > done { f64::INFINITY } else { ms(&self.latency, rank as f64 / done as f64) }
    }
}

pub async fn run(mut server: Server, p: Params) -> Result<Vec<Figure>> {
    let salt = run_salt();
    let ops = p.bomb_ops;
    let bomb = Arc::new(tokio::task::spawn_blocking(move || expanding_document(ops)).await.context("bomb builder")?);
    eprintln!("  expanding document: {} operations in a {}-byte sync message", p.bomb_ops + 1, bomb.len());
    let chars = p.long_text;
    let long = tokio::task::spawn_blocking(move || LongText::new(chars, salt)).await.context("long text builder")?;
    eprintln!("  long text: {} characters in a {}-byte change", p.long_text, long.first.len());
    let long = Arc::new(std::sync::Mutex::new(Some(long)));
    let mut figures = Vec::new();
    for (index, attack) in PHASES.into_iter().enumerate() {
        let name = attack.name();
        let setup = timeout(p.settle, Client::start(&server.url, salt, index as u64)).await;
        let client = match setup {
            Ok(Ok(c)) => Some(c),
            Ok(Err(e)) => {
                eprintln!("  {name}: the well-behaved client could not start: {e:#}");
                None
            }
            Err(_) => {
                eprintln!("  {name}: the well-behaved client could not start within {:?}", p.settle);
                None
            }
        };
        let Some(mut client) = client else {
            if attack == Attack::None {
                bail!("the baseline's client could not connect and create its document");
            }
            figures.extend(phase_figures(attack, f64::INFINITY, f64::INFINITY, f64::NAN, f64::NAN));
            continue;
        };
        let rss_start = server.rss_kib().ok();
        let open_before = server.edge_metric("meridian_edge_connections");
        let tally = Arc::new(Tally::default());
        let attacker =
            tokio::spawn(attack_task(attack, server.url.clone(), salt, p, (bomb.clone(), long.clone()), tally.clone()));
        let started = Instant::now();
        let done = AtomicBool::new(false);
        let measure = async {
            let o = client.measure(&p).await;
            let took = started.elapsed();
            // The attack ends with the phase; its sockets close as its task drops.
            attacker.abort();
            // Then one more round trip (untimed) while the RSS is still
            // sampled: what the server does with what it already received
            // counts until it answers again.
            let settled = if o.lost.is_none() { Some(client.round_trip(p.settle).await) } else { None };
            done.store(true, Ordering::Relaxed);
            (o, took, settled)
        };
        let ((outcome, took, settled), rss_peak) = tokio::join!(measure, sample_rss(&server, &done));
        let _ = attacker.await;
        let _ = timeout(Duration::from_secs(2), client.tx.close()).await;
        let rss_increase = match (rss_start, rss_peak) {
            (Some(a), Some(b)) => mib(b.saturating_sub(a)),
            _ => f64::NAN,
        };
        let (p50, p99) = (outcome.quantile_ms(0.5), outcome.quantile_ms(0.99));
        let after = match settled {
            Some(Ok(t)) => format!("next round trip after the attack {:.0} ms", t.as_secs_f64() * 1000.0),
            Some(Err(e)) => format!("no answer after the attack: {e:#}"),
            None => "no round trip after the attack".to_owned(),
        };
        eprintln!(
            "  {name}: {} round trips in {:.1} s{}; {after}; attacker: {}; RSS {} -> peak {} MiB",
            outcome.latency.len(),
            took.as_secs_f64(),
            outcome.lost.as_deref().map(|why| format!(", then no answer ({why})")).unwrap_or_default(),
            describe(attack, &tally),
            rss_start.map_or("?".into(), |k| format!("{:.1}", mib(k))),
            rss_peak.map_or("?".into(), |k| format!("{:.1}", mib(k))),
        );
        if let Some(open) = open_before {
            // The edge's own count: connections still open from the
            // previous phase's attacker take per-address slots.
            eprintln!("    (edge: {open} connections open when the phase started, the client's included)");
        }
        let held = Tally::get(&tally.sent) as f64;
        let mut phase = phase_figures(attack, p50, p99, rss_increase, held);
        if attack == Attack::None && !p50.is_finite() {
            bail!("no round trip was answered without an attack ({})", outcome.lost.unwrap_or_default());
        }
        figures.append(&mut phase);
        if !server.running() {
            eprintln!("  {name}: the server process has exited");
        }
    }
    Ok(figures)
}

fn phase_figures(attack: Attack, p50: f64, p99: f64, rss_increase: f64, held: f64) -> Vec<Figure> {
    let name = attack.name();
    let mut f = vec![
        Figure::lower(&format!("{name}: round trip p50"), "ms", p50),
        Figure::lower(&format!("{name}: round trip p99"), "ms", p99),
    ];
    if attack != Attack::None {
        f.push(Figure::lower(
            &format!("{name}: server RSS increase (peak, until it answers again)"),
            "MiB",
            rss_increase,
        ));
    }
    if attack == Attack::Idle {
        f.push(Figure::lower("idle sockets held", "sockets", held));
    }
    f
}

fn describe(attack: Attack, t: &Tally) -> String {
    let (sent, refused, answered, failed) =
        (Tally::get(&t.sent), Tally::get(&t.refused), Tally::get(&t.answered), Tally::get(&t.failed));
    let mut s = match attack {
        Attack::None => "none".to_owned(),
        Attack::Expanding => {
            format!("{sent} sent, {refused} refused, {answered} acknowledged (loaded), {failed} failed")
        }
        Attack::Flood => format!("{sent} messages sent"),
        Attack::Idle => format!("{sent} sockets accepted, {refused} answered 503, {failed} failed"),
        Attack::RandomIds => format!("{sent} requests sent, {answered} answered doc-unavailable"),
        Attack::LongText => format!("{sent} changes sent, {answered} acknowledgements"),
    };
    if let Some(note) = t.note.lock().ok().and_then(|n| n.clone()) {
        s.push_str(&format!(" (stopped: {note})"));
    }
    s
}

/// Peak RSS (KiB) until `done`, sampled every 50 ms.
async fn sample_rss(server: &Server, done: &AtomicBool) -> Option<u64> {
    let mut peak = server.rss_kib().ok();
    while !done.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Ok(kib) = server.rss_kib() {
            peak = Some(peak.map_or(kib, |p| p.max(kib)));
        }
    }
    peak
}

/// A saved document of `ops` + 1 operations (a text of `ops` characters)
/// as the first sync message to a peer that has nothing: about 1.2 KB for
/// a million operations.
fn expanding_document(ops: usize) -> Vec<u8> {
    let mut doc = AutoCommit::new();
    let text = doc.put_object(ROOT, "t", ObjType::Text).expect("put on a fresh doc");
    doc.splice_text(&text, 0, 0, &"a".repeat(ops)).expect("splice in range");
    let (mut ours, mut theirs) = (sync::State::new(), sync::State::new());
    let hello = Automerge::new().generate_sync_message(&mut theirs).expect("an empty peer's first message");
    doc.sync().receive_sync_message(&mut ours, hello).expect("an empty peer's message applies");
    doc.sync().generate_sync_message(&mut ours).expect("a message for an empty peer").encode()
}

/// The well-behaved client of one phase: joined, its document created.
struct Client {
    tx: Sender,
    rx: Receiver,
    writer: TextWriter,
    doc: DocumentId,
    typed: u64,
}

impl Client {
    async fn start(url: &str, salt: u64, index: u64) -> Result<Self> {
        let Conn { mut tx, mut rx } = Conn::join(url, PeerId::new(format!("client-{salt:x}-{index}"))).await?;
        let writer = TextWriter::new(salt, 100 + index);
        let doc = doc_id(salt, 100 + index);
        let (head, change) = writer.first_change();
        tx.sync(doc, push(vec![head], vec![change])).await?;
        wait_heads(&mut rx, doc, head, Duration::from_secs(600)).await?;
        Ok(Self { tx, rx, writer, doc, typed: 0 })
    }

    /// Round trips until the phase ends, `round_trips` are done, or one
    /// goes unanswered.
    async fn measure(&mut self, p: &Params) -> Outcome {
        let mut latency = histogram();
        let end = Instant::now() + p.phase;
        let mut lost = None;
        for _ in 0..p.round_trips {
            if Instant::now() >= end {
                break;
            }
            match self.round_trip(p.ack_timeout).await {
                Ok(took) => latency.saturating_record(took.as_micros().max(1) as u64),
                Err(e) => {
                    lost = Some(format!("{e:#}"));
                    break;
                }
            }
            tokio::time::sleep(p.pause).await;
        }
        Outcome { latency, lost }
    }

    /// Types a word and waits for the server's acknowledgement.
    async fn round_trip(&mut self, within: Duration) -> Result<Duration> {
        self.typed += 1;
        let (head, change) = self.writer.type_some(self.typed, None);
        let t = Instant::now();
        let trip = async {
            self.tx.sync(self.doc, push(vec![head], vec![change])).await?;
            wait_heads(&mut self.rx, self.doc, head, within).await
        };
        timeout(within, trip).await.map_err(|_| anyhow::anyhow!("no acknowledgement within {within:?}"))??;
        Ok(t.elapsed())
    }
}

/// Runs one attack, then holds its sockets until aborted.
/// What the attacks send, built before the phases (the bomb, the long text).
type Prepared = (Arc<Vec<u8>>, Arc<std::sync::Mutex<Option<LongText>>>);

async fn attack_task(attack: Attack, url: String, salt: u64, p: Params, prepared: Prepared, tally: Arc<Tally>) {
    let (bomb, long) = prepared;
    // Everything the attack opens lives in `held` and `readers`, dropped
    // (closed) when the task is aborted at the end of the phase.
    let mut held: Vec<Sender> = Vec::new();
    let mut sockets = Vec::new();
    let mut readers = JoinSet::new();
    let result = match attack {
        Attack::None => Ok(()),
        Attack::Expanding => expanding(&url, salt, &p, &bomb, &tally, &mut readers).await,
        Attack::Flood => flood(&url, salt, &p, &tally, &mut held, &mut readers).await,
        Attack::Idle => idle(&url, &p, &tally, &mut sockets).await,
        Attack::RandomIds => random_ids(&url, salt, &p, &tally, &mut held, &mut readers).await,
        Attack::LongText => {
            let taken = long.lock().ok().and_then(|mut l| l.take());
            match taken {
                Some(text) => long_text(&url, salt, &p, text, &tally, &mut held, &mut readers).await,
                None => Err(anyhow::anyhow!("the long text was used already")),
            }
        }
    };
    if let Err(e) = result {
        tally.stopped(format!("{e:#}"));
    }
    std::future::pending::<()>().await;
    drop((held, sockets, readers));
}

async fn attacker_conn(url: &str, name: String) -> Result<Conn> {
    timeout(STEP, Conn::join_from(url, ATTACKER, PeerId::new(name))).await.context("join timed out")?
}

/// One connection per document: all join first, then each sends its
/// document at once and keeps reading.
async fn expanding(
    url: &str,
    salt: u64,
    p: &Params,
    bomb: &Arc<Vec<u8>>,
    tally: &Arc<Tally>,
    readers: &mut JoinSet<()>,
) -> Result<()> {
    let mut joining = JoinSet::new();
    for i in 0..p.bombs as u64 {
        let url = url.to_owned();
        joining.spawn(async move { (i, attacker_conn(&url, format!("attacker-{salt:x}-{i}")).await) });
    }
    let mut joined = Vec::new();
    while let Some(j) = joining.join_next().await {
        match j {
            Ok((i, Ok(conn))) => joined.push((i, conn)),
            _ => Tally::add(&tally.failed),
        }
    }
    for (i, Conn { mut tx, mut rx }) in joined {
        let doc = doc_id(salt ^ 0xb0b, i);
        if !matches!(timeout(STEP, tx.sync(doc, bomb.to_vec())).await, Ok(Ok(()))) {
            Tally::add(&tally.failed);
            continue;
        }
        Tally::add(&tally.sent);
        let tally = tally.clone();
        readers.spawn(async move {
            let mut acknowledged = false;
            loop {
                match rx.recv_any().await {
                    Ok(Message::Error { .. }) | Err(_) => {
                        Tally::add(&tally.refused);
                        break;
                    }
                    Ok(m @ Message::Sync { .. }) if !acknowledged && m.document_id() == Some(doc) => {
                        acknowledged = true;
                        Tally::add(&tally.answered);
                    }
                    Ok(_) => {}
                }
            }
            // Closed by the server: hold what is left until the phase ends.
            std::future::pending::<()>().await;
            drop((tx, rx));
        });
    }
    Ok(())
}

/// Its own document, then `ephemeral` messages on it as fast as it can.
async fn flood(
    url: &str,
    salt: u64,
    p: &Params,
    tally: &Arc<Tally>,
    held: &mut Vec<Sender>,
    readers: &mut JoinSet<()>,
) -> Result<()> {
    let Conn { mut tx, mut rx } = attacker_conn(url, format!("flooder-{salt:x}")).await?;
    let own = SmallDoc::new(salt, 7000);
    let doc = doc_id(salt, 7000);
    tx.sync(doc, own.push_message()).await?;
    wait_heads(&mut rx, doc, own.head, STEP).await.context("creating the flooder's document")?;
    readers.spawn(async move { while rx.recv_any().await.is_ok() {} });
    let session = format!("flood-{salt:x}");
    let result = async {
        for count in 0..p.flood as u64 {
            let m = Message::Ephemeral {
                sender_id: tx.me.clone(),
                target_id: tx.server.clone(),
                document_id: doc,
                session_id: session.clone(),
                count,
                data: EPHEMERAL.to_vec(),
            };
            tx.send(&m).await?;
            Tally::add(&tally.sent);
        }
        anyhow::Ok(())
    }
    .await;
    held.push(tx);
    result
}

/// WebSockets that never send `join`, kept open.
async fn idle(url: &str, p: &Params, tally: &Arc<Tally>, sockets: &mut Vec<crate::wire::Ws>) -> Result<()> {
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut tasks = JoinSet::new();
    for _ in 0..p.idle {
        let (url, permits) = (url.to_owned(), permits.clone());
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await.ok()?;
            timeout(STEP, connect_from(&url, ATTACKER)).await.ok()
        });
    }
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Some(Ok(ws))) => {
                Tally::add(&tally.sent);
                sockets.push(ws);
            }
            Ok(Some(Err(WsError::Http(response)))) if response.status().as_u16() == 503 => Tally::add(&tally.refused),
            _ => Tally::add(&tally.failed),
        }
    }
    Ok(())
}

/// `request`s for random document ids.
async fn random_ids(
    url: &str,
    salt: u64,
    p: &Params,
    tally: &Arc<Tally>,
    held: &mut Vec<Sender>,
    readers: &mut JoinSet<()>,
) -> Result<()> {
    let Conn { mut tx, mut rx } = attacker_conn(url, format!("prober-{salt:x}")).await?;
    let counter = tally.clone();
    readers.spawn(async move {
        while let Ok(m) = rx.recv_any().await {
            if let Message::DocUnavailable { .. } = m {
                Tally::add(&counter.answered);
            }
        }
    });
    let request = empty_request();
    let result = async {
        for i in 0..p.random as u64 {
            tx.request(doc_id(splitmix(salt ^ 0x5eed), i), request.clone()).await?;
            Tally::add(&tally.sent);
        }
        anyhow::Ok(())
    }
    .await;
    held.push(tx);
    result
}

/// The long text's writer, its text object, and the first change (the
/// whole text), built before the phases.
struct LongText {
    writer: AutoCommit,
    text: automerge::ObjId,
    first: Vec<u8>,
}

impl LongText {
    fn new(chars: usize, salt: u64) -> Self {
        let mut writer = AutoCommit::new();
        let text = writer.put_object(ROOT, "t", ObjType::Text).expect("put on a fresh doc");
        let mut x = splitmix(salt);
        let letters: String = (0..chars)
            .map(|_| {
                x = splitmix(x);
                (b'a' + (x % 26) as u8) as char
            })
            .collect();
        writer.splice_text(&text, 0, 0, &letters).expect("splice in range");
        writer.commit();
        let first = writer.get_last_local_change().expect("just committed").raw_bytes().to_vec();
        Self { writer, text, first }
    }
}

/// A document with a long text, then a character typed into it every
/// `pause` (each change sent at once, answers read but not awaited).
async fn long_text(
    url: &str,
    salt: u64,
    p: &Params,
    long: LongText,
    tally: &Arc<Tally>,
    held: &mut Vec<Sender>,
    readers: &mut JoinSet<()>,
) -> Result<()> {
    let Conn { mut tx, mut rx } = attacker_conn(url, format!("typist-{salt:x}")).await?;
    let doc = doc_id(salt ^ 0x7e47, 0);
    let LongText { mut writer, text, first } = long;
    let chars = p.long_text;
    let counter = tally.clone();
    readers.spawn(async move {
        while let Ok(m) = rx.recv_any().await {
            if matches!(m, Message::Sync { .. }) && m.document_id() == Some(doc) {
                Tally::add(&counter.answered);
            }
        }
    });
    let result = async {
        tx.sync(doc, push(writer.get_heads(), vec![first])).await?;
        Tally::add(&tally.sent);
        // Bounded: twice what the phase has time for (it is aborted at its end).
        let steps = 2 * (p.phase.as_millis() / p.pause.as_millis().max(1)) as u64 + 10;
        for i in 0..steps {
            tokio::time::sleep(p.pause).await;
            let at = (splitmix(salt ^ i) % chars as u64) as usize;
            writer.splice_text(&text, at, 0, "x").expect("splice in range");
            writer.commit();
            let change = writer.get_last_local_change().expect("just committed").raw_bytes().to_vec();
            tx.sync(doc, push(writer.get_heads(), vec![change])).await?;
            Tally::add(&tally.sent);
        }
        anyhow::Ok(())
    }
    .await;
    held.push(tx);
    result
}
