//! The hub tier's control state in PostgreSQL ([`ControlStore`]): the
//! placer's lease, announced homes, pins, edges' reports, revocations,
//! signing keys, and the change feed's outbox.

use meridian_protocol::ids::DocumentId;

use super::sql::{
    ADD_AUTH_KEY, ADD_REVOCATION, AUTH_KEYS, DELETE_HOME, DELETE_PIN, FED_HEADS, HOMES, LEASE_HOLDER, LOCK_LEASE,
    MARK_FED, PINS, PUT_FED_HEADS, PUT_HOME, PUT_PIN, PUT_REPORT, REMOVE_AUTH_KEY, REPORTS_SINCE, REVOCATIONS,
    TAKE_LEASE, UNFED_CHUNKS,
};
use super::{PostgresStore, doc_id};
use crate::auth::Revocation;
use crate::store::{
    ControlStore, FeedChunk, LeaseFence, StoreError, StoredHome, StoredKey, StoredPin, StoredReport, revocation_key,
};

impl ControlStore for PostgresStore {
    fn take_lease(&mut self, name: &str, holder: &str, now_ms: u64, ttl_ms: u64) -> Result<bool, StoreError> {
        let expires = now_ms.saturating_add(ttl_ms) as i64;
        let rows = self.client()?.query(TAKE_LEASE, &[&name, &holder, &expires, &(now_ms as i64)])?;
        Ok(rows.first().is_some_and(|r| r.get::<_, String>(0) == holder))
    }

    fn lease_holder(&mut self, name: &str) -> Result<Option<(String, u64)>, StoreError> {
        let row = self.client()?.query_opt(LEASE_HOLDER, &[&name])?;
        Ok(row.map(|r| (r.get(0), r.get::<_, i64>(1).max(0) as u64)))
    }

    fn homes(&mut self) -> Result<Vec<StoredHome>, StoreError> {
        let rows = self.client()?.query(HOMES, &[])?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                Some(StoredHome {
                    doc: doc_id(r.get(0))?,
                    edge: r.get(1),
                    addr: r.get(2),
                    fingerprint: r.get(3),
                    since_ms: r.get::<_, i64>(4).max(0) as u64,
                })
            })
            .collect())
    }

    fn set_home(
        &mut self,
        doc: &DocumentId,
        home: Option<&StoredHome>,
        fence: &LeaseFence,
    ) -> Result<bool, StoreError> {
        let id = doc.as_bytes().as_slice();
        let mut tx = self.client()?.transaction()?;
        // The lease row stays locked until the commit: a hub taking the
        // lease over waits for this write, then sees it.
        let held = tx
            .query_opt(LOCK_LEASE, &[&fence.name])?
            .is_some_and(|r| r.get::<_, String>(0) == fence.holder && r.get::<_, i64>(1) > fence.now_ms as i64);
        if !held {
            return Ok(false);
        }
        match home {
            Some(h) => tx.execute(PUT_HOME, &[&id, &h.edge, &h.addr, &h.fingerprint, &(h.since_ms as i64)])?,
            None => tx.execute(DELETE_HOME, &[&id])?,
        };
        tx.commit()?;
        Ok(true)
    }

    fn pins(&mut self) -> Result<Vec<StoredPin>, StoreError> {
        let rows = self.client()?.query(PINS, &[])?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                Some(StoredPin { doc: doc_id(r.get(0))?, edge: r.get(1), at_ms: r.get::<_, i64>(2).max(0) as u64 })
            })
            .collect())
    }

    fn set_pin(&mut self, doc: &DocumentId, pin: Option<&StoredPin>) -> Result<bool, StoreError> {
        let id = doc.as_bytes().as_slice();
        let client = self.client()?;
        let changed = match pin {
            Some(p) => client.execute(PUT_PIN, &[&id, &p.edge, &(p.at_ms as i64)])?,
            None => client.execute(DELETE_PIN, &[&id])?,
        };
        Ok(changed > 0)
    }

    fn put_reports(&mut self, reports: &[StoredReport]) -> Result<(), StoreError> {
        if reports.is_empty() {
            return Ok(());
        }
        let mut tx = self.client()?.transaction()?;
        for r in reports {
            tx.execute(PUT_REPORT, &[&r.edge, &r.hub, &(r.at_ms as i64), &r.report])?;
        }
        tx.commit()?;
        Ok(())
    }

    fn reports_since(&mut self, since_ms: u64) -> Result<Vec<StoredReport>, StoreError> {
        let rows = self.client()?.query(REPORTS_SINCE, &[&(since_ms as i64)])?;
        Ok(rows
            .iter()
            .map(|r| StoredReport {
                edge: r.get(0),
                hub: r.get(1),
                at_ms: r.get::<_, i64>(2).max(0) as u64,
                report: r.get(3),
            })
            .collect())
    }

    fn revocations(&mut self) -> Result<Vec<Revocation>, StoreError> {
        let rows = self.client()?.query(REVOCATIONS, &[])?;
        Ok(rows
            .iter()
            .map(|r| Revocation { jti: r.get(0), sub: r.get(1), at: r.get::<_, i64>(2).max(0) as u64 })
            .collect())
    }

    fn add_revocation(&mut self, r: &Revocation) -> Result<bool, StoreError> {
        let key = revocation_key(r);
        Ok(self.client()?.execute(ADD_REVOCATION, &[&key, &r.jti, &r.sub, &(r.at as i64)])? > 0)
    }

    fn auth_keys(&mut self) -> Result<Vec<StoredKey>, StoreError> {
        let rows = self.client()?.query(AUTH_KEYS, &[])?;
        Ok(rows
            .iter()
            .map(|r| StoredKey { key_id: r.get(0), pem: r.get(1), at_ms: r.get::<_, i64>(2).max(0) as u64 })
            .collect())
    }

    fn add_auth_key(&mut self, key: &StoredKey) -> Result<bool, StoreError> {
        Ok(self.client()?.execute(ADD_AUTH_KEY, &[&key.key_id, &key.pem, &(key.at_ms as i64)])? > 0)
    }

    fn remove_auth_key(&mut self, key_id: &str) -> Result<bool, StoreError> {
        Ok(self.client()?.execute(REMOVE_AUTH_KEY, &[&key_id])? > 0)
    }

    fn unfed_chunks(&mut self, limit: usize) -> Result<Vec<FeedChunk>, StoreError> {
        let rows = self.client()?.query(UNFED_CHUNKS, &[&(limit as i64)])?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                Some(FeedChunk {
                    seq: r.get(0),
                    doc: doc_id(r.get(1))?,
                    snapshot: r.get::<_, &str>(2) == "snapshot",
                    data: r.get(3),
                })
            })
            .collect())
    }

    fn mark_fed(&mut self, seqs: &[i64], heads: &[(DocumentId, Vec<u8>)]) -> Result<(), StoreError> {
        let mut tx = self.client()?.transaction()?;
        for (doc, h) in heads {
            tx.execute(PUT_FED_HEADS, &[&doc.as_bytes().as_slice(), h])?;
        }
        tx.execute(MARK_FED, &[&seqs])?;
        tx.commit()?;
        Ok(())
    }

    fn fed_heads(&mut self, doc: &DocumentId) -> Result<Vec<u8>, StoreError> {
        let row = self.client()?.query_opt(FED_HEADS, &[&doc.as_bytes().as_slice()])?;
        Ok(row.map(|r| r.get(0)).unwrap_or_default())
    }
}
