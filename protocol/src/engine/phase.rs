//! A document's lifecycle in memory, as a type: where its load stands,
//! whether the application waits for it, and whose persisted sync states
//! are still being read. The transitions below are the only way any of it
//! changes; each has a test at the end of this file.
//!
//! ```text
//!   (ensure_doc)                          (create, import)
//!      Reading ──answered──▶ AnsweredFromSnapshot       │
//!       │  ▲  ╲                     │                    │
//!  hold │  │ release                │ finish_load        ▼
//!       ▼  │    ╲ finish_load       ╰──────────────▶ Loaded { nothing_stored, cold_open }
//!      Holding    ╰─────────────────────────────────▶   (count_cold_open: once)
//! ```

use std::collections::BTreeSet;

use crate::ids::ConnId;

/// Where a document's load stands.
#[derive(Debug, PartialEq, Eq)]
enum Phase {
    /// Its stored bytes are being read.
    Reading,
    /// Read, not loaded: the bytes are kept while peers' persisted sync
    /// states load, to answer the fresh ones from them first
    /// ([`super::Engine::answer_from_snapshot`]).
    Holding(Vec<u8>),
    /// Fresh peers got the stored snapshot; the store is being read again
    /// to load it (once per load).
    AnsweredFromSnapshot,
    /// In memory.
    Loaded {
        /// Nothing is stored for it (we created it, or its load found
        /// nothing): its first write may replace the store with one
        /// snapshot. Not so for a document whose stored bytes failed to
        /// load, nor one imported without a load: what the store holds
        /// must stay.
        nothing_stored: bool,
        /// It was asked of a source since it was loaded (counted once).
        cold_open: bool,
    },
}

/// A document's lifecycle (see the module docs).
#[derive(Debug)]
pub(super) struct Lifecycle {
    phase: Phase,
    /// The application is waiting for this document (`find`).
    local_waiting: bool,
    /// Peers whose persisted sync state is being read.
    loading_states: BTreeSet<ConnId>,
}

impl Lifecycle {
    /// A document being read from the store.
    pub(super) fn reading() -> Self {
        Self::with(Phase::Reading)
    }

    /// A document in memory without a load: created here (nothing is
    /// stored) or imported (the store may hold something).
    pub(super) fn loaded(nothing_stored: bool) -> Self {
        Self::with(Phase::Loaded { nothing_stored, cold_open: false })
    }

    fn with(phase: Phase) -> Self {
        Self { phase, local_waiting: false, loading_states: BTreeSet::new() }
    }

    // ----- where it stands ----------------------------------------------

    /// The document is in memory (its load, if any, is done).
    pub(super) fn is_loaded(&self) -> bool {
        matches!(self.phase, Phase::Loaded { .. })
    }

    /// Loading, or some peer's sync state is: nothing may be applied yet.
    pub(super) fn busy(&self) -> bool {
        !self.is_loaded() || !self.loading_states.is_empty()
    }

    /// The store is being read for the first time in this load: waiting
    /// fresh peers may still get the stored snapshot.
    pub(super) fn may_answer_from_snapshot(&self) -> bool {
        self.phase == Phase::Reading
    }

    /// Loaded with nothing stored: the first write may be a snapshot.
    pub(super) fn nothing_stored(&self) -> bool {
        matches!(self.phase, Phase::Loaded { nothing_stored: true, .. })
    }

    pub(super) fn local_waiting(&self) -> bool {
        self.local_waiting
    }

    /// The sync state of the peer on `conn` is being read.
    pub(super) fn state_loading(&self, conn: &ConnId) -> bool {
        self.loading_states.contains(conn)
    }

    /// Some peer's sync state is being read.
    pub(super) fn states_loading(&self) -> bool {
        !self.loading_states.is_empty()
    }

    // ----- transitions --------------------------------------------------

    /// Reading → Holding: the stored `bytes` wait for peers' sync states.
    pub(super) fn hold(&mut self, bytes: Vec<u8>) {
        if self.phase == Phase::Reading {
            self.phase = Phase::Holding(bytes);
        }
    }

    /// Holding → Reading once no peer's sync state is loading: the kept
    /// bytes, to be handled as the read's result.
    pub(super) fn release(&mut self) -> Option<Vec<u8>> {
        if !matches!(self.phase, Phase::Holding(_)) || self.states_loading() {
            return None;
        }
        match std::mem::replace(&mut self.phase, Phase::Reading) {
            Phase::Holding(bytes) => Some(bytes),
            _ => None,
        }
    }

    /// Reading → AnsweredFromSnapshot: fresh peers got the stored
    /// snapshot, and the store is read again.
    pub(super) fn answered(&mut self) {
        if self.phase == Phase::Reading {
            self.phase = Phase::AnsweredFromSnapshot;
        }
    }

    /// Reading or AnsweredFromSnapshot → Loaded: the read finished
    /// (`nothing_stored`: it found nothing).
    pub(super) fn finish_load(&mut self, nothing_stored: bool) {
        let cold_open = matches!(self.phase, Phase::Loaded { cold_open: true, .. });
        self.phase = Phase::Loaded { nothing_stored, cold_open };
    }

    /// Loaded: the document is asked of a source. True the first time
    /// (a cold open is counted once per load).
    pub(super) fn count_cold_open(&mut self) -> bool {
        match &mut self.phase {
            Phase::Loaded { cold_open, .. } => !std::mem::replace(cold_open, true),
            _ => false,
        }
    }

    /// The application waits for the document.
    pub(super) fn wait_locally(&mut self) {
        self.local_waiting = true;
    }

    /// The application's wait is answered: whether it was waiting.
    pub(super) fn take_local_waiting(&mut self) -> bool {
        std::mem::take(&mut self.local_waiting)
    }

    /// The sync state of the peer on `conn` starts loading.
    pub(super) fn start_state_load(&mut self, conn: ConnId) {
        self.loading_states.insert(conn);
    }

    /// The sync state of the peer on `conn` is in (or the peer left):
    /// whether it was loading.
    pub(super) fn finish_state_load(&mut self, conn: &ConnId) -> bool {
        self.loading_states.remove(conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loaded(nothing_stored: bool, cold_open: bool) -> Phase {
        Phase::Loaded { nothing_stored, cold_open }
    }

    #[test]
    fn a_read_document_is_busy_until_its_load_finishes() {
        let mut l = Lifecycle::reading();
        assert!(!l.is_loaded() && l.busy() && l.may_answer_from_snapshot());
        l.finish_load(true);
        assert_eq!(l.phase, loaded(true, false));
        assert!(l.is_loaded() && !l.busy() && l.nothing_stored() && !l.may_answer_from_snapshot());
    }

    #[test]
    fn a_load_that_found_bytes_has_something_stored() {
        let mut l = Lifecycle::reading();
        l.finish_load(false);
        assert!(l.is_loaded() && !l.nothing_stored());
    }

    #[test]
    fn created_and_imported_documents_start_loaded() {
        assert_eq!(Lifecycle::loaded(true).phase, loaded(true, false));
        assert!(Lifecycle::loaded(true).nothing_stored());
        assert!(!Lifecycle::loaded(false).nothing_stored());
        assert!(!Lifecycle::loaded(false).busy());
    }

    #[test]
    fn held_bytes_are_released_only_once_no_state_loads() {
        let mut l = Lifecycle::reading();
        let (a, b) = (ConnId(1), ConnId(2));
        l.start_state_load(a);
        l.start_state_load(b);
        l.hold(vec![7]);
        assert_eq!(l.phase, Phase::Holding(vec![7]));
        assert!(l.busy() && !l.is_loaded() && !l.may_answer_from_snapshot());
        assert!(l.finish_state_load(&a));
        assert_eq!(l.release(), None, "a state still loads");
        assert!(l.finish_state_load(&b));
        assert_eq!(l.release(), Some(vec![7]));
        assert_eq!(l.phase, Phase::Reading, "released bytes are handled as the read's result");
        assert_eq!(l.release(), None, "released once");
    }

    #[test]
    fn only_a_reading_document_holds_its_bytes() {
        let mut l = Lifecycle::loaded(false);
        l.hold(vec![1]);
        assert_eq!(l.phase, loaded(false, false));
        let mut l = Lifecycle::reading();
        l.answered();
        l.hold(vec![1]);
        assert_eq!(l.phase, Phase::AnsweredFromSnapshot);
    }

    #[test]
    fn a_snapshot_answer_is_given_once_per_load() {
        let mut l = Lifecycle::reading();
        l.answered();
        assert_eq!(l.phase, Phase::AnsweredFromSnapshot);
        assert!(!l.may_answer_from_snapshot() && l.busy() && !l.is_loaded());
        l.finish_load(false);
        assert_eq!(l.phase, loaded(false, false));
        l.answered();
        assert_eq!(l.phase, loaded(false, false), "a loaded document is not answered from the store");
    }

    #[test]
    fn a_cold_open_is_counted_once_and_only_when_loaded() {
        let mut l = Lifecycle::reading();
        assert!(!l.count_cold_open());
        l.finish_load(true);
        assert!(l.count_cold_open());
        assert!(!l.count_cold_open());
        assert_eq!(l.phase, loaded(true, true));
        l.finish_load(false);
        assert!(!l.count_cold_open(), "a repeated load result keeps the count");
    }

    #[test]
    fn the_local_wait_is_taken_once() {
        let mut l = Lifecycle::reading();
        assert!(!l.local_waiting());
        l.wait_locally();
        assert!(l.local_waiting());
        assert!(l.take_local_waiting());
        assert!(!l.local_waiting() && !l.take_local_waiting());
    }

    #[test]
    fn a_loading_state_keeps_a_loaded_document_busy() {
        let mut l = Lifecycle::loaded(false);
        let c = ConnId(3);
        l.start_state_load(c);
        assert!(l.busy() && l.is_loaded() && l.state_loading(&c) && l.states_loading());
        assert!(l.finish_state_load(&c));
        assert!(!l.busy() && !l.state_loading(&c));
        assert!(!l.finish_state_load(&c), "a peer that was not loading");
    }
}
