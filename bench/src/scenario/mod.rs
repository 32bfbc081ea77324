//! The scenarios of issue 7. Each runs against one started server and
//! returns its figures; the suite runs it against both servers in turn.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use automerge::ChangeHash;
use hdrhistogram::Histogram;
use meridian_protocol::codec::Message;
use meridian_protocol::ids::DocumentId;

use crate::wire::{Receiver, advertised_heads};

pub mod attacks;
pub mod connect;
pub mod fanout;
pub mod large_doc;
pub mod stored;
pub mod typing;
pub mod writers;

/// Which way is better for a figure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
}

/// One measured number.
#[derive(Clone, Debug)]
pub struct Figure {
    pub metric: String,
    pub unit: &'static str,
    pub value: f64,
    pub better: Better,
}

impl Figure {
    pub fn higher(metric: &str, unit: &'static str, value: f64) -> Self {
        Self { metric: metric.to_owned(), unit, value, better: Better::Higher }
    }

    pub fn lower(metric: &str, unit: &'static str, value: f64) -> Self {
        Self { metric: metric.to_owned(), unit, value, better: Better::Lower }
    }
}

/// A latency histogram in microseconds (1 µs to 10 min, 3 digits).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

pub fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// Reads until the server advertises heads for `doc` that contain `head`.
pub async fn wait_heads(rx: &mut Receiver, doc: DocumentId, head: ChangeHash, timeout: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let m = tokio::time::timeout_at(deadline, rx.recv()).await.context("no acknowledgement in time")??;
        if let Message::DocUnavailable { document_id, .. } = &m
            && *document_id == doc
        {
            bail!("the server says {doc} is unavailable");
        }
        if let Some((d, heads)) = advertised_heads(&m)
            && d == doc
            && heads.contains(&head)
        {
            return Ok(());
        }
    }
}

/// Megabytes from KiB.
pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}
