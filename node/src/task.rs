//! Task ownership (structured concurrency): every task a node spawns is
//! owned by a handle, and dropping the handle aborts the task, so nothing
//! outlives the part of the node that started it.

/// A task handle that aborts the task when dropped (structured concurrency).
#[derive(Debug)]
pub struct AbortOnDrop<T>(pub tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
