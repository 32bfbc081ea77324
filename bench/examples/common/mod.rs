//! What the `cost` and `memory` examples share: the edge's driver, which
//! encodes what the engine sends and queues its storage tasks so they run
//! as one batch after each input (as `NodeRuntime` does).

use meridian_protocol::codec::{self, Message};
use meridian_protocol::drive::Driver;
use meridian_protocol::ids::ConnId;
use meridian_protocol::storage::{StorageResult, StorageTask, StorageTaskId};

pub struct EdgeIo<'a> {
    pub out: &'a mut Vec<(ConnId, Vec<u8>)>,
    pub queue: &'a mut Vec<(StorageTaskId, StorageTask)>,
}

impl Driver for EdgeIo<'_> {
    fn send(&mut self, conn: ConnId, message: Message) {
        self.out.push((conn, codec::encode(&message)));
    }
    fn close(&mut self, _conn: ConnId, _reason: String) -> bool {
        false
    }
    fn storage(&mut self, id: StorageTaskId, task: StorageTask) -> Option<StorageResult> {
        self.queue.push((id, task));
        None
    }
}
