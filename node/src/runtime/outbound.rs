//! What the loop sends to a connection's task, and the bounded queue it
//! goes through ([`OUTBOUND_CAPACITY`] items, [`OUTBOUND_MAX_BYTES`] bytes):
//! a peer that stops reading costs at most that, then is closed.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tokio::sync::mpsc;

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
    queued: Arc<std::sync::atomic::AtomicUsize>,
    max_bytes: usize,
    /// Tells the connection's task to close at once (a peer too slow).
    kill: mpsc::Sender<()>,
}

/// A connection's queue of at most `capacity` items and `max_bytes` bytes
/// of frames (or one frame, if larger).
pub(super) fn outbound_queue(capacity: usize, max_bytes: usize) -> (OutboundSender, OutboundQueue) {
    let (tx, rx) = mpsc::channel(capacity);
    let (kill, killed) = mpsc::channel(1);
    let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    (OutboundSender { tx, queued: queued.clone(), max_bytes, kill }, OutboundQueue { rx, queued, killed: Some(killed) })
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
            Some(trace) => self.queue(Outbound::Traced { trace, frame }),
            None => self.frame(frame),
        }
    }

    fn queue(&self, out: Outbound) -> bool {
        let len = out.frame_bytes();
        let queued = self.queued.load(Relaxed);
        if queued > 0 && queued.saturating_add(len) > self.max_bytes {
            return false;
        }
        self.queued.fetch_add(len, Relaxed);
        if self.tx.try_send(out).is_err() {
            self.queued.fetch_sub(len, Relaxed);
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
        let _ = self.kill.try_send(());
    }
}

/// A connection task's end of its queue.
#[derive(Debug)]
pub struct OutboundQueue {
    rx: mpsc::Receiver<Outbound>,
    queued: Arc<std::sync::atomic::AtomicUsize>,
    /// `None` once every sender is gone (what is queued is still sent).
    killed: Option<mpsc::Receiver<()>>,
}

impl OutboundQueue {
    /// The next item; `None` once the loops dropped the connection (after
    /// what they queued) or killed it (at once).
    pub async fn recv(&mut self) -> Option<Outbound> {
        loop {
            let out = match &mut self.killed {
                Some(killed) => tokio::select! {
                    biased;
                    k = killed.recv() => match k {
                        Some(()) => return None,
                        None => {
                            self.killed = None;
                            continue;
                        }
                    },
                    out = self.rx.recv() => out?,
                },
                None => self.rx.recv().await?,
            };
            self.queued.fetch_sub(out.frame_bytes(), Relaxed);
            return Some(out);
        }
    }
}

/// What the loop sends to a connection task.
#[derive(Debug)]
pub enum Outbound {
    Frame(Vec<u8>),
    /// A frame and, in front of it, a `trace` control frame carrying its
    /// trace context (links between nodes, while traces are exported;
    /// transports that cannot carry it send the frame alone).
    Traced {
        trace: Vec<u8>,
        frame: Vec<u8>,
    },
    /// A federation control message (QUIC links only; WebSockets drop it).
    /// Queued behind the frames before it, so it follows the document data
    /// it may refer to.
    Control(Vec<u8>),
    /// Close the connection with this reason (after the frames queued before it).
    Close(String),
}

impl Outbound {
    /// The bytes of document data it queues (counted against the queue's bound).
    fn frame_bytes(&self) -> usize {
        match self {
            Outbound::Frame(bytes) | Outbound::Traced { frame: bytes, .. } => bytes.len(),
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
        assert_eq!(tx.queued.load(Relaxed), 11);
        let first = rx.recv().await;
        assert!(matches!(first, Some(Outbound::Traced { trace, frame }) if trace.len() == 55 && frame.len() == 10));
        assert_eq!(tx.queued.load(Relaxed), 1);
    }
}
