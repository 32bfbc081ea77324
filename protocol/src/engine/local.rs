//! The local application's documents (create, change, import) and ephemeral messages.

use automerge::transaction::{CommitOptions, Transactable, Transaction};

use crate::codec::Message;
use crate::ids::{ConnId, DocumentId, PeerId};
use crate::storage::StorageTask;

use super::effects::TaskPurpose;

use super::access::Refusal;
use super::doc::DocState;
use super::phase::Lifecycle;
use super::{DocError, Engine, Event, Millis};

pub(super) const EPHEMERAL_SESSION_TTL_MS: u64 = 10 * 60_000;

impl Engine {
    /// Creates a new document with one change made by `init` (an empty
    /// change if `init` does nothing: a document must never have empty
    /// heads, or peers could not tell it from "not found").
    pub fn create<F>(&mut self, now: Millis, init: F) -> Result<DocumentId, DocError>
    where
        F: FnOnce(&mut Transaction<'_>) -> Result<(), automerge::AutomergeError>,
    {
        self.create_with(now, CommitOptions::default(), init)
    }

    /// [`Engine::create`] with a commit message and time for the first
    /// change (see [`Engine::change_with`]).
    pub fn create_with<F>(&mut self, now: Millis, options: CommitOptions, init: F) -> Result<DocumentId, DocError>
    where
        F: FnOnce(&mut Transaction<'_>) -> Result<(), automerge::AutomergeError>,
    {
        let doc_id = DocumentId::random(&mut self.rng);
        self.create_as(now, doc_id, options, init)?;
        Ok(doc_id)
    }

    /// [`Engine::create_with`] under an id the caller drew (a sharded node
    /// draws it first, to make it in the shard that owns it).
    pub fn create_as<F>(
        &mut self,
        now: Millis,
        doc_id: DocumentId,
        options: CommitOptions,
        init: F,
    ) -> Result<(), DocError>
    where
        F: FnOnce(&mut Transaction<'_>) -> Result<(), automerge::AutomergeError>,
    {
        let actor = self.random_actor();
        let mut state = DocState::new(actor, now, Lifecycle::loaded(true));
        let mut tx = state.doc.transaction();
        init(&mut tx)?;
        if tx.pending_ops() == 0 {
            tx.rollback();
            state.doc.empty_commit(options);
        } else {
            tx.commit_with(options);
        }
        self.add_local(now, doc_id, state);
        Ok(())
    }

    /// A new document (a fresh id) holding everything in `bytes` (a saved
    /// document or changes): the local application's import. Bytes that
    /// do not load leave nothing behind.
    pub fn import_new(&mut self, now: Millis, bytes: &[u8]) -> Result<DocumentId, DocError> {
        let doc_id = DocumentId::random(&mut self.rng);
        let actor = self.random_actor();
        let mut state = DocState::new(actor, now, Lifecycle::loaded(true));
        state.doc.load_incremental(bytes)?;
        self.add_local(now, doc_id, state);
        Ok(doc_id)
    }

    /// A document the local application made here, in memory and opened
    /// by it; stored and synced from now on.
    fn add_local(&mut self, now: Millis, doc_id: DocumentId, state: DocState) {
        self.insert_doc(doc_id, state);
        self.opened.insert(doc_id);
        self.after_doc_update(now, doc_id, Vec::new());
    }

    /// Applies a local change to a loaded document.
    pub fn change<F, O>(&mut self, now: Millis, doc_id: DocumentId, f: F) -> Result<O, DocError>
    where
        F: FnOnce(&mut Transaction<'_>) -> Result<O, automerge::AutomergeError>,
    {
        self.change_with(now, doc_id, CommitOptions::default(), f)
    }

    /// [`Engine::change`] with a commit message and time (the engine reads
    /// no clock: a client that wants wall-clock times in the history passes
    /// them, in seconds as `@automerge/automerge` does).
    pub fn change_with<F, O>(
        &mut self,
        now: Millis,
        doc_id: DocumentId,
        options: CommitOptions,
        f: F,
    ) -> Result<O, DocError>
    where
        F: FnOnce(&mut Transaction<'_>) -> Result<O, automerge::AutomergeError>,
    {
        let d = self.docs.get_mut(&doc_id).filter(|d| d.is_loaded()).ok_or(DocError::NotLoaded(doc_id))?;
        d.touch(now);
        self.opened.insert(doc_id);
        let before = d.doc.get_heads();
        let mut tx = d.doc.transaction();
        let out = match f(&mut tx) {
            Ok(o) => o,
            Err(e) => {
                tx.rollback();
                return Err(e.into());
            }
        };
        tx.commit_with(options);
        self.after_doc_update(now, doc_id, before);
        Ok(out)
    }

    /// Imports raw automerge bytes (a saved document or changes) into a
    /// document, creating it if needed.
    pub fn import(&mut self, now: Millis, doc_id: DocumentId, bytes: &[u8]) -> Result<(), DocError> {
        if !self.docs.contains_key(&doc_id) {
            let actor = self.random_actor();
            self.insert_doc(doc_id, DocState::new(actor, now, Lifecycle::loaded(false)));
        }
        let d = self.docs.get_mut(&doc_id).filter(|d| d.is_loaded()).ok_or(DocError::NotLoaded(doc_id))?;
        let before = d.doc.get_heads();
        d.doc.load_incremental(bytes)?;
        self.after_doc_update(now, doc_id, before);
        Ok(())
    }

    /// Forgets a document here: drops it from memory and deletes it from
    /// the store with its sync states (after any write already issued).
    /// Peers keep their copies; a later `find` fetches it again. The local
    /// application's "delete" (automerge-repo's `repo.delete`).
    pub fn delete_local(&mut self, doc_id: DocumentId) {
        self.opened.remove(&doc_id);
        self.offloading.remove(&doc_id);
        self.resync_on_upstream.remove(&doc_id);
        self.remove_doc(doc_id);
        self.out.storage(TaskPurpose::Offload(doc_id), StorageTask::DeleteDoc { doc: doc_id });
    }

    /// Sends an ephemeral message about a document to every peer
    /// subscribed to it.
    pub fn broadcast_ephemeral(&mut self, doc_id: DocumentId, session_id: &str, count: u64, data: Vec<u8>) {
        let targets: Vec<ConnId> =
            self.subscribers.get(&doc_id).map(|s| s.iter().copied().collect()).unwrap_or_default();
        for conn in targets {
            let Some(target_id) = self.conns.get(&conn).and_then(|c| c.peer().cloned()) else { continue };
            let message = Message::Ephemeral {
                sender_id: self.config.peer_id.clone(),
                target_id,
                document_id: doc_id,
                session_id: session_id.to_owned(),
                count,
                data: data.clone(),
            };
            self.out.send(conn, message);
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn handle_ephemeral(
        &mut self,
        now: Millis,
        conn: ConnId,
        sender: PeerId,
        doc_id: DocumentId,
        session: String,
        count: u64,
        data: Vec<u8>,
    ) {
        let Some(access) = self.access(conn) else { return };
        if !access.may_read(&doc_id) {
            self.out.event(Event::Refused { conn, doc: Some(doc_id), refusal: Refusal::NotGranted });
            return;
        }
        // A client speaks for itself only: a message it claims is another
        // peer's is dropped (automerge-repo clients pass on what they
        // receive, and we relay the original ourselves), so its counts
        // cannot mask another sender's.
        if !access.relay && self.conns.get(&conn).and_then(|c| c.peer()) != Some(&sender) {
            return;
        }
        if !self.ephemeral_allowed(now, conn, data.len()) {
            return self.tell_refused(conn, doc_id, Refusal::EphemeralLimit);
        }
        let key = (sender.clone(), session.clone());
        if let Some((seen, _)) = self.ephemeral_seen.get(&key)
            && count <= *seen
        {
            return;
        }
        self.ephemeral_seen.insert(key, (count, now));
        self.ephemeral_seen_at(now);
        self.subscribe(conn, doc_id);
        let targets: Vec<ConnId> = self
            .subscribers
            .get(&doc_id)
            .map(|s| s.iter().copied().filter(|c| *c != conn).collect())
            .unwrap_or_default();
        for target in targets {
            let Some(target_id) = self.conns.get(&target).and_then(|c| c.peer().cloned()) else { continue };
            if target_id == sender {
                continue;
            }
            let message = Message::Ephemeral {
                sender_id: sender.clone(),
                target_id,
                document_id: doc_id,
                session_id: session.clone(),
                count,
                data: data.clone(),
            };
            self.out.send(target, message);
        }
        self.out.event(Event::Ephemeral { doc: doc_id, sender, data });
    }
}
