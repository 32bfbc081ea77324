//! What the engine asks of its driver, queued in the order it decided it,
//! and the purpose of every storage task still running. Kept apart from
//! the documents so a method can queue effects while it holds one.

use std::collections::{BTreeMap, VecDeque};

use crate::codec::Message;
use crate::ids::{ConnId, DocumentId, StorageId};
use crate::storage::{StorageTask, StorageTaskId};

use super::{Event, Output};

/// Why a storage task was issued: what its result means.
#[derive(Debug)]
pub(super) enum TaskPurpose {
    LoadDoc(DocumentId),
    Write(DocumentId),
    /// Our copy is dropped after an upstream acknowledged all of it.
    Offload(DocumentId),
    LoadSyncState(DocumentId, ConnId),
    PutSyncState,
    /// A document read again for what other nodes stored (`shared_store`).
    Refresh(DocumentId),
}

impl TaskPurpose {
    /// The document whose state in memory depends on the task.
    pub(super) fn doc(&self) -> Option<DocumentId> {
        match self {
            TaskPurpose::LoadDoc(d) | TaskPurpose::Write(d) | TaskPurpose::LoadSyncState(d, _) => Some(*d),
            // A failed delete leaves the copy stored: nothing is lost.
            // A failed re-read leaves memory as it was: nothing to forget.
            TaskPurpose::PutSyncState | TaskPurpose::Offload(_) | TaskPurpose::Refresh(_) => None,
        }
    }
}

#[derive(Debug)]
pub(super) struct Effects {
    queue: VecDeque<Output>,
    tasks: BTreeMap<StorageTaskId, TaskPurpose>,
    next_task: u64,
    /// Task ids go `shard.index`, `+ shard.count`, ...: shards sharing a
    /// store tell their tasks apart (`Shard::task`).
    task_step: u64,
}

impl Effects {
    pub(super) fn new(shard: super::Shard) -> Self {
        let (next_task, task_step) = (shard.index as u64, shard.count.max(1) as u64);
        Self { queue: VecDeque::new(), tasks: BTreeMap::new(), next_task, task_step }
    }

    pub(super) fn pop(&mut self) -> Option<Output> {
        self.queue.pop_front()
    }

    pub(super) fn send(&mut self, conn: ConnId, message: Message) {
        self.queue.push_back(Output::Send { conn, message });
    }

    pub(super) fn close(&mut self, conn: ConnId, reason: impl Into<String>) {
        self.queue.push_back(Output::Close { conn, reason: reason.into() });
    }

    pub(super) fn event(&mut self, e: Event) {
        self.queue.push_back(Output::Event(e));
    }

    pub(super) fn storage(&mut self, purpose: TaskPurpose, task: StorageTask) {
        let id = StorageTaskId(self.next_task);
        self.next_task += self.task_step;
        self.tasks.insert(id, purpose);
        self.queue.push_back(Output::Storage { id, task });
    }

    pub(super) fn apply(&mut self, job: super::ApplyJob) {
        self.queue.push_back(Output::Apply(job));
    }

    pub(super) fn put_sync_state(&mut self, doc: DocumentId, peer: StorageId, state: Vec<u8>) {
        self.storage(TaskPurpose::PutSyncState, StorageTask::PutSyncState { doc, peer, state });
    }

    /// The purpose of a finished task (`None`: unknown, or forgotten).
    pub(super) fn finished(&mut self, id: StorageTaskId) -> Option<TaskPurpose> {
        self.tasks.remove(&id)
    }

    /// Forgets the running tasks of a document dropped from memory: their
    /// results no longer mean anything.
    pub(super) fn forget_doc(&mut self, doc: DocumentId) {
        self.tasks.retain(|_, p| p.doc() != Some(doc));
    }
}
