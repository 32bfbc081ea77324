//! The driver kit: the one loop that hands an engine's outputs to whoever
//! carries them out. A driver (the node runtime, the native and browser
//! clients, the simulation, the test harness) implements [`Driver`] for
//! its transports and store, and calls [`Engine::drive`] after handing the
//! engine input; it then sleeps until the deadline `drive` returns (or new
//! input), and calls [`Engine::handle_timeout`] when it comes.
//!
//! ```
//! use meridian_protocol::codec::Message;
//! use meridian_protocol::drive::Driver;
//! use meridian_protocol::engine::{Direction, Engine, EngineConfig, Event, Millis};
//! use meridian_protocol::ids::{ConnId, PeerId};
//! use meridian_protocol::storage::{MemoryStore, StorageResult, StorageTask, StorageTaskId};
//!
//! struct InMemory {
//!     store: MemoryStore,
//!     sent: Vec<(ConnId, Vec<u8>)>,
//! }
//!
//! impl Driver for InMemory {
//!     fn send(&mut self, conn: ConnId, message: Message) {
//!         self.sent.push((conn, meridian_protocol::codec::encode(&message)));
//!     }
//!     fn close(&mut self, _conn: ConnId, _reason: String) -> bool {
//!         true // gone at once: the engine hears of it now
//!     }
//!     fn storage(&mut self, _id: StorageTaskId, task: StorageTask) -> Option<StorageResult> {
//!         Some(self.store.execute(&task)) // a synchronous store answers at once
//!     }
//!     fn event(&mut self, _event: Event) {}
//! }
//!
//! let mut engine = Engine::new(EngineConfig::new(PeerId::new("edge"), None));
//! let mut driver = InMemory { store: MemoryStore::new(), sent: Vec::new() };
//! let conn = engine.handle_connect(Millis(0), Direction::Outgoing);
//! let next = engine.drive(Millis(0), &mut driver);
//! assert_eq!(driver.sent.len(), 1, "an outgoing connection starts with `join`");
//! # let _ = (conn, next);
//! ```

use crate::codec::Message;
use crate::engine::{Applied, ApplyJob, Engine, Event, Millis, Output};
use crate::ids::ConnId;
use crate::storage::{StorageResult, StorageTask, StorageTaskId};

/// What a driver does with each of the engine's outputs, in the order the
/// engine emitted them.
pub trait Driver {
    /// Encode `message` and send it on `conn` (after what was sent before).
    fn send(&mut self, conn: ConnId, message: Message);

    /// Close `conn` once what was sent before has gone. `true`: the
    /// connection is gone at once, and the engine is told now
    /// ([`Engine::handle_disconnect`]); `false`: the driver reports the
    /// disconnect itself when the transport is down.
    fn close(&mut self, conn: ConnId, reason: String) -> bool;

    /// Run the storage task, in order after the ones before. A synchronous
    /// store returns the result, which the engine gets at once; otherwise
    /// `None`, and the driver hands it in with
    /// [`Engine::handle_storage_result`] when it has it.
    fn storage(&mut self, id: StorageTaskId, task: StorageTask) -> Option<StorageResult>;

    /// Apply a document's messages ([`Output::Apply`], see
    /// [`crate::engine::EngineConfig::apply_off_loop_ops`]): on another
    /// thread, returning `None` and handing the result in with
    /// [`Engine::handle_applied`] when it is done; by default here and now.
    fn apply(&mut self, job: ApplyJob) -> Option<Applied> {
        Some(job.run())
    }

    /// Something the application or the metrics care about (with
    /// [`Engine::drive`]; [`Engine::drive_to_event`] returns events instead).
    fn event(&mut self, _event: Event) {}
}

impl Engine {
    /// Hands every output to `driver` until none is left (results of
    /// synchronous storage and immediate closes may make more), with `now`
    /// for what the engine is told back. Returns when the engine next needs
    /// [`Engine::handle_timeout`] ([`Engine::poll_timeout`]).
    pub fn drive(&mut self, now: Millis, driver: &mut impl Driver) -> Option<Millis> {
        while let Some(output) = self.poll_output() {
            match output {
                Output::Event(event) => driver.event(event),
                other => self.carry(now, other, driver),
            }
        }
        self.poll_timeout()
    }

    /// [`Engine::drive`] up to the next event, which it returns: for a
    /// driver whose handling of an event needs the engine itself (reading
    /// the document, asking for more), in order. Call it again until `None`.
    pub fn drive_to_event(&mut self, now: Millis, driver: &mut impl Driver) -> Option<Event> {
        while let Some(output) = self.poll_output() {
            match output {
                Output::Event(event) => return Some(event),
                other => self.carry(now, other, driver),
            }
        }
        None
    }

    fn carry(&mut self, now: Millis, output: Output, driver: &mut impl Driver) {
        match output {
            Output::Send { conn, message } => driver.send(conn, message),
            Output::Close { conn, reason } => {
                if driver.close(conn, reason) {
                    self.handle_disconnect(now, conn);
                }
            }
            Output::Storage { id, task } => {
                if let Some(result) = driver.storage(id, task) {
                    self.handle_storage_result(now, id, result);
                }
            }
            Output::Apply(job) => {
                if let Some(applied) = driver.apply(job) {
                    self.handle_applied(now, applied);
                }
            }
            Output::Event(event) => driver.event(event),
        }
    }
}
