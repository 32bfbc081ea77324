//! Clients' tokens forwarded to upstreams. An edge tells its hub, in an
//! `auth` control frame on the uplink, the token each of its clients
//! presented: a hub that does not trust the edge (a device in the open)
//! serves it only the documents those tokens grant, and verifies each
//! token itself, so a compromised edge cannot claim more than its clients
//! hold. Sent before anything of the client's reaches the upstream (the
//! router tells the grants of a connection before it registers it with any
//! engine shard), and again to an upstream that connects later.

use std::collections::BTreeMap;

use meridian_protocol::codec::federation::{self, Control};
use meridian_protocol::ids::ConnId;

use super::{Outbound, OutboundSender};

/// The tokens of the clients here, and the upstreams told of them.
#[derive(Debug, Default)]
pub(super) struct Grants {
    clients: BTreeMap<ConnId, String>,
    /// Each distinct token, with how many clients here hold it.
    tokens: BTreeMap<String, usize>,
    upstreams: BTreeMap<ConnId, OutboundSender>,
}

impl Grants {
    /// A client with `token` connected: every upstream is told (once per
    /// distinct token).
    pub(super) fn client(&mut self, conn: ConnId, token: String) {
        let held = self.tokens.entry(token.clone()).or_default();
        *held += 1;
        if *held == 1 {
            for up in self.upstreams.values() {
                tell(up, &token);
            }
        }
        self.clients.insert(conn, token);
    }

    /// An upstream connected: it is told every token of the clients here.
    pub(super) fn upstream(&mut self, conn: ConnId, queue: OutboundSender) {
        for token in self.tokens.keys() {
            tell(&queue, token);
        }
        self.upstreams.insert(conn, queue);
    }

    pub(super) fn gone(&mut self, conn: ConnId) {
        if let Some(token) = self.clients.remove(&conn)
            && let Some(held) = self.tokens.get_mut(&token)
        {
            *held -= 1;
            if *held == 0 {
                self.tokens.remove(&token);
            }
        }
        self.upstreams.remove(&conn);
    }
}

fn tell(queue: &OutboundSender, token: &str) {
    queue.other(Outbound::Control(federation::encode_control(&Control::Auth { token: token.to_owned() })));
}
