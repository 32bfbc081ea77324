//! What the loop sends to a connection's task, and the bounded queue it
//! goes through ([`OUTBOUND_CAPACITY`] items, [`OUTBOUND_MAX_BYTES`] bytes):
//! a peer that stops reading costs at most that, then is closed.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;

use tokio::sync::{Notify, mpsc};

/// Frames queued towards one connection before it counts as too slow.
pub const OUTBOUND_CAPACITY: usize = 8192;

/// Bytes queued towards one connection before it counts as too slow (a
/// peer that stops reading costs at most this, or one message if larger).
pub const OUTBOUND_MAX_BYTES: usize = 64 << 20;

/// The loops' end of one connection's queue (every engine shard holds a
/// clone): frames bounded in number ([`OUTBOUND_CAPACITY`]) and in bytes
/// ([`OUTBOUND_MAX_BYTES`]).
#[derive(Clone, Debug)]
pub struct OutboundSender {
    tx: mpsc::Sender<Outbound>,
    shared: Arc<Shared>,
    max_bytes: usize,
}

/// What both ends of a queue share (one allocation per connection).
#[derive(Debug, Default)]
struct Shared {
    /// Bytes of frames queued.
    queued: AtomicUsize,
    /// Tells the connection's task to close at once (a peer too slow).
    kill: Notify,
}

/// A connection's queue of at most `capacity` items and `max_bytes` bytes
/// of frames (or one frame, if larger).
pub(super) fn outbound_queue(capacity: usize, max_bytes: usize) -> (OutboundSender, OutboundQueue) {
    let (tx, rx) = mpsc::channel(capacity);
    let shared = Arc::new(Shared::default());
    (OutboundSender { tx, shared: shared.clone(), max_bytes }, OutboundQueue { rx, shared })
}

impl OutboundSender {
    /// Queues a frame; `false` when the connection is too slow (or gone).
    pub(super) fn frame(&self, bytes: Vec<u8>) -> bool {
        self.queue(Outbound::Frame(bytes))
    }

    /// Queues a frame with the trace context to send in front of it (one
    /// slot of the queue, like any frame).
    pub(super) fn traced_frame(&self, frame: Vec<u8>, trace: Option<Vec<u8>>) -> bool {
        match trace {
            Some(trace) => self.queue(Outbound::Traced(Box::new(TracedFrame { trace, frame }))),
            None => self.frame(frame),
        }
    }

    fn queue(&self, out: Outbound) -> bool {
        let len = out.frame_bytes();
        let queued = self.shared.queued.load(Relaxed);
        if queued > 0 && queued.saturating_add(len) > self.max_bytes {
            return false;
        }
        self.shared.queued.fetch_add(len, Relaxed);
        if self.tx.try_send(out).is_err() {
            self.shared.queued.fetch_sub(len, Relaxed);
            return false;
        }
        true
    }

    pub(super) fn other(&self, out: Outbound) {
        let _ = self.tx.try_send(out);
    }

    /// Closes the connection without sending what is queued (the peer is
    /// not reading): its task ends and reports the disconnect.
    pub(super) fn kill(&self) {
        // A permit if the task is not waiting now: its next `recv` ends.
        self.shared.kill.notify_one();
    }
}

/// A connection task's end of its queue.
#[derive(Debug)]
pub struct OutboundQueue {
    rx: mpsc::Receiver<Outbound>,
    shared: Arc<Shared>,
}

impl OutboundQueue {
    /// The next item; `None` once the loops dropped the connection (after
    /// what they queued) or killed it (at once).
    pub async fn recv(&mut self) -> Option<Outbound> {
        let out = tokio::select! {
            biased;
            () = self.shared.kill.notified() => return None,
            out = self.rx.recv() => out?,
        };
        self.shared.queued.fetch_sub(out.frame_bytes(), Relaxed);
        Some(out)
    }
}

/// A frame with the `trace` control frame to send in front of it.
#[derive(Debug)]
pub struct TracedFrame {
    pub trace: Vec<u8>,
    pub frame: Vec<u8>,
}

/// What the loop sends to a connection task.
#[derive(Debug)]
pub enum Outbound {
    Frame(Vec<u8>),
    /// A frame and, in front of it, a `trace` control frame carrying its
    /// trace context (links between nodes, while traces are exported;
    /// transports that cannot carry it send the frame alone). Boxed: an
    /// item is 32 bytes, and a queue's first block holds 32 of them.
    Traced(Box<TracedFrame>),
    /// A federation control message (QUIC links only; WebSockets drop it).
    /// Queued behind the frames before it, so it follows the document data
    /// it may refer to.
    Control(Vec<u8>),
    /// Close the connection with this reason (after the frames queued before it).
    Close(String),
}

impl Outbound {
    /// The bytes of document data it queues (counted against the queue's bound).
    /// For transports that cannot carry a trace context: a traced frame
    /// becomes the frame alone.
    pub fn untraced(self) -> Self {
        match self {
            Outbound::Traced(t) => Outbound::Frame(t.frame),
            other => other,
        }
    }

    fn frame_bytes(&self) -> usize {
        match self {
            Outbound::Frame(bytes) => bytes.len(),
            Outbound::Traced(t) => t.frame.len(),
            Outbound::Control(_) | Outbound::Close(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A queue holds at most its bytes (one frame always fits); reading
    /// makes room again.
    #[tokio::test]
    async fn a_queue_is_bounded_in_bytes_and_reading_makes_room() {
        let (tx, mut rx) = outbound_queue(100, 1000);
        assert!(tx.frame(vec![0; 2000]), "one frame larger than the bound fits alone");
        assert!(!tx.frame(vec![0; 1]), "nothing more while it waits");
        assert!(matches!(rx.recv().await, Some(Outbound::Frame(b)) if b.len() == 2000));
        for _ in 0..4 {
            assert!(tx.frame(vec![0; 250]));
        }
        assert!(!tx.frame(vec![0; 1]), "1000 bytes queued: full");
        assert!(rx.recv().await.is_some());
        assert!(tx.frame(vec![0; 250]), "room again after a read");
        let (tx, _rx) = outbound_queue(2, 1 << 20);
        assert!(tx.frame(vec![1]) && tx.frame(vec![2]));
        assert!(!tx.frame(vec![3]), "and bounded in count");
        // A frame with its trace context in front takes one slot, and counts
        // the frame's bytes.
        let (tx, mut rx) = outbound_queue(2, 1 << 20);
        assert!(tx.traced_frame(vec![1; 10], Some(vec![2; 55])) && tx.frame(vec![3]));
        assert!(!tx.frame(vec![4]), "two slots taken");
        assert_eq!(tx.shared.queued.load(Relaxed), 11);
        let first = rx.recv().await;
        assert!(matches!(first, Some(Outbound::Traced(t)) if t.trace.len() == 55 && t.frame.len() == 10));
        assert_eq!(std::mem::size_of::<Outbound>(), 32, "a queue's first block holds 32 items");
        assert_eq!(tx.shared.queued.load(Relaxed), 1);
    }

    /// Every shard holds a sender: dropping them all lets the task send
    /// what is queued, then ends it; a kill from one ends it at once,
    /// whether or not the task is waiting.
    #[tokio::test]
    async fn senders_dropped_drain_the_queue_and_a_kill_ends_it_at_once() {
        let (tx, mut rx) = outbound_queue(10, 1 << 20);
        let other = tx.clone();
        assert!(tx.frame(vec![1]) && other.frame(vec![2]));
        drop((tx, other));
        assert!(matches!(rx.recv().await, Some(Outbound::Frame(b)) if b == [1]));
        assert!(matches!(rx.recv().await, Some(Outbound::Frame(b)) if b == [2]));
        assert!(rx.recv().await.is_none());

        let (tx, mut rx) = outbound_queue(10, 1 << 20);
        let other = tx.clone();
        assert!(tx.frame(vec![1]));
        other.kill();
        assert!(rx.recv().await.is_none(), "killed before the task waited");
        let (tx, mut rx) = outbound_queue(10, 1 << 20);
        let waiting = tokio::spawn(async move { rx.recv().await.is_none() });
        tokio::task::yield_now().await;
        tx.kill();
        assert!(waiting.await.expect("task"), "killed while the task waited");
    }
}
