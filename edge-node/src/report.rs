//! Demand and latency reports from an edge to the hub (DESIGN §5), the
//! input of the hub's placement engine.
//!
//! When the hub's `welcome` asks for reports (`reportIntervalMs`), the
//! uplink runs [`run`] beside the document stream: every interval it takes
//! the engine's demand ([`NodeEvent::TakeDemand`]: subscribers now, client
//! writes since the last take), folds it into a sliding [`DemandWindow`]
//! (so write rates are smoothed over [`RATE_WINDOW`]) and sends a
//! [`Control::Report`] on a unidirectional QUIC stream of its own, so a
//! report never waits behind a backlog of sync messages. The uplink RTT is
//! quinn's estimate for the connection; the client ↔ edge RTT is the moving
//! average of WebSocket ping ↔ pong round trips (absent until a pong came
//! back: pings go out every ping interval, 10 s by default).

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use meridian_node::metrics::NodeMetrics;
use meridian_node::quic;
use meridian_node::runtime::{NodeEvent, NodeEvents};
use meridian_protocol::codec::federation::{self, Control, DocReport, FrameKind, Report};
use meridian_protocol::engine::DocDemand;
use meridian_protocol::ids::DocumentId;
use tokio::sync::oneshot;

use crate::peers::PeerDirectory;

/// Write rates are counted over about this long.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);
/// At most this many documents per report, the busiest first.
pub const MAX_REPORT_DOCS: usize = 8192;
/// Report intervals a hub may ask for are clamped to this range.
const MIN_INTERVAL: Duration = Duration::from_millis(100);
const MAX_INTERVAL: Duration = Duration::from_secs(60);

/// The last few demand samples, each covering the span since the one before.
#[derive(Debug, Default)]
pub struct DemandWindow {
    samples: VecDeque<(Duration, BTreeMap<DocumentId, DocDemand>)>,
    seq: u64,
}

impl DemandWindow {
    /// Adds a sample covering `span` and drops samples beyond `RATE_WINDOW`.
    pub fn push(&mut self, span: Duration, sample: BTreeMap<DocumentId, DocDemand>) {
        self.samples.push_back((span, sample));
        while self.samples.len() > 1 && self.span() - self.samples[0].0 >= RATE_WINDOW {
            self.samples.pop_front();
        }
    }

    fn span(&self) -> Duration {
        self.samples.iter().map(|(s, _)| *s).sum()
    }

    /// The next report: subscribers from the latest sample, writes summed
    /// over the window.
    pub fn report(&mut self, uplink_rtt: Option<Duration>, client_rtt: Option<Duration>) -> Report {
        let mut docs: BTreeMap<DocumentId, DocReport> = BTreeMap::new();
        let latest = self.samples.len().saturating_sub(1);
        for (i, (_, sample)) in self.samples.iter().enumerate() {
            for (doc, d) in sample {
                let entry = docs.entry(*doc).or_insert(DocReport { doc: *doc, subscribers: 0, writes: 0 });
                entry.writes += d.writes;
                if i == latest {
                    entry.subscribers = d.subscribers;
                }
            }
        }
        let mut docs: Vec<DocReport> = docs.into_values().filter(|d| d.subscribers > 0 || d.writes > 0).collect();
        if docs.len() > MAX_REPORT_DOCS {
            docs.sort_by(|a, b| {
                b.writes.cmp(&a.writes).then(b.subscribers.cmp(&a.subscribers)).then(a.doc.cmp(&b.doc))
            });
            docs.truncate(MAX_REPORT_DOCS);
            docs.sort_by_key(|d| d.doc);
        }
        self.seq += 1;
        Report {
            seq: self.seq,
            window_ms: self.span().as_millis() as u64,
            uplink_rtt_micros: uplink_rtt.map(|d| d.as_micros() as u64),
            client_rtt_micros: client_rtt.map(|d| d.as_micros() as u64),
            docs,
            peer_rtt_micros: BTreeMap::new(),
        }
    }
}

/// The interval to report at, from the hub's `reportIntervalMs`.
pub fn interval_from_hub(ms: u64) -> Duration {
    Duration::from_millis(ms).clamp(MIN_INTERVAL, MAX_INTERVAL)
}

/// Sends reports on a unidirectional stream until the connection or the
/// node goes away; returns why it stopped.
pub async fn run(
    connection: &quinn::Connection,
    events: &NodeEvents,
    metrics: &NodeMetrics,
    peers: Option<&PeerDirectory>,
    interval: Duration,
) -> String {
    let mut send = match connection.open_uni().await {
        Ok(s) => s,
        Err(e) => return format!("opening the report stream: {e}"),
    };
    let mut window = DemandWindow::default();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut last = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        let (reply, demand) = oneshot::channel();
        if events.send(NodeEvent::TakeDemand { reply }).await.is_err() {
            return "node stopped".into();
        }
        let Ok(sample) = demand.await else { return "node stopped".into() };
        let now = tokio::time::Instant::now();
        window.push(now - last, sample);
        last = now;
        let mut report = window.report(Some(connection.rtt()), metrics.client_rtt());
        if let Some(dir) = peers {
            report.peer_rtt_micros = dir.link_rtts().into_iter().map(|(e, d)| (e, d.as_micros() as u64)).collect();
        }
        let bytes = federation::encode_control(&Control::Report(report));
        if let Err(e) = quic::write_frame(&mut send, FrameKind::Control, &bytes).await {
            return format!("writing a report: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(n: u8) -> DocumentId {
        DocumentId::from_bytes([n; 16])
    }

    fn sample(entries: &[(u8, u32, u64)]) -> BTreeMap<DocumentId, DocDemand> {
        entries.iter().map(|(d, s, w)| (doc(*d), DocDemand { subscribers: *s, writes: *w })).collect()
    }

    #[test]
    fn writes_sum_over_the_window_and_subscribers_are_the_latest() {
        let mut w = DemandWindow::default();
        w.push(Duration::from_secs(2), sample(&[(1, 2, 4), (2, 1, 0)]));
        w.push(Duration::from_secs(2), sample(&[(1, 1, 6)]));
        let r = w.report(Some(Duration::from_millis(40)), Some(Duration::from_millis(3)));
        assert_eq!((r.seq, r.window_ms, r.uplink_rtt_micros, r.client_rtt_micros), (1, 4000, Some(40_000), Some(3000)));
        assert_eq!(r.docs, vec![DocReport { doc: doc(1), subscribers: 1, writes: 10 }]);
        assert_eq!(w.report(None, None).seq, 2);
    }

    #[test]
    fn old_samples_leave_the_window() {
        let mut w = DemandWindow::default();
        w.push(Duration::from_secs(2), sample(&[(1, 0, 100)]));
        for _ in 0..5 {
            w.push(Duration::from_secs(2), sample(&[(1, 1, 1)]));
        }
        let r = w.report(None, None);
        assert_eq!(r.window_ms, 10_000);
        assert_eq!(r.docs[0].writes, 5);
    }

    #[test]
    fn client_rtt_is_a_moving_average() {
        let m = NodeMetrics::new(meridian_node::metrics::Role::Edge);
        assert_eq!(m.client_rtt(), None);
        m.observe_client_rtt(Duration::from_millis(80));
        assert_eq!(m.client_rtt(), Some(Duration::from_millis(80)));
        m.observe_client_rtt(Duration::from_millis(0));
        assert_eq!(m.client_rtt(), Some(Duration::from_millis(70)));
        assert!(m.render().contains("meridian_edge_client_rtt_seconds 0.07\n"));
    }

    #[test]
    fn the_hub_cannot_ask_for_absurd_intervals() {
        assert_eq!(interval_from_hub(0), MIN_INTERVAL);
        assert_eq!(interval_from_hub(2000), Duration::from_secs(2));
        assert_eq!(interval_from_hub(u64::MAX / 2), MAX_INTERVAL);
    }
}
