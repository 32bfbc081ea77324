//! The hub's control state in its store ([`ControlStore`]): the placer's
//! lease, announced homes, pins, edges' reports and revocations. Every hub
//! on one database shares it; a restarted hub finds it again.
//!
//! The store's clients block (rusqlite, the synchronous PostgreSQL client,
//! which runs a runtime of its own), so one thread owns a connection of its
//! own and runs the calls in order; [`ControlState::call`] awaits one.

use std::sync::mpsc;

use meridian_node::store::{ControlStore, StoreError};
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce(&mut dyn ControlStore) + Send>;

/// A handle on the control thread; cheap to clone. The thread ends when
/// the last handle is dropped.
#[derive(Clone, Debug)]
pub struct ControlState {
    jobs: mpsc::Sender<Job>,
}

impl ControlState {
    /// Opens the store with `open` on a thread of its own, which then
    /// serves the calls.
    pub async fn start<F>(open: F) -> Result<Self, StoreError>
    where
        F: FnOnce() -> Result<Box<dyn ControlStore>, StoreError> + Send + 'static,
    {
        let (jobs, queue) = mpsc::channel::<Job>();
        let (opened, result) = oneshot::channel();
        let spawned = std::thread::Builder::new().name("meridian-control".into()).spawn(move || {
            let mut store = match open() {
                Ok(store) => {
                    let _ = opened.send(Ok(()));
                    store
                }
                Err(e) => {
                    let _ = opened.send(Err(e));
                    return;
                }
            };
            while let Ok(job) = queue.recv() {
                job(store.as_mut());
            }
        });
        if let Err(e) = spawned {
            return Err(StoreError::Unreachable(format!("the control thread ({e})")));
        }
        match result.await {
            Ok(Ok(())) => Ok(Self { jobs }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(StoreError::Unreachable("the control store (its thread panicked)".into())),
        }
    }

    /// Runs `f` on the control thread.
    pub async fn call<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut dyn ControlStore) -> Result<R, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |store| {
            let _ = reply.send(f(store));
        });
        let gone = || StoreError::Unreachable("the control store (its thread stopped)".into());
        self.jobs.send(job).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

/// Unix time in milliseconds (the clock leases and reports are kept in).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
