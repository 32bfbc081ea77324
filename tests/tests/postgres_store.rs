//! The PostgreSQL store against a real PostgreSQL server (issue 16): the
//! store contract the SQLite store keeps, shared by several stores (hubs)
//! on one database, compaction that never deletes another writer's chunk,
//! leases as compare-and-set rows, and a server restart survived.

use anyhow::{Context, Result};
use automerge::transaction::Transactable;
use automerge::{AutoCommit, Automerge, ChangeHash, ROOT, ReadDoc};
use meridian_node::auth::Revocation;
use meridian_node::store::{
    ControlStore, DocStore, LeaseFence, PostgresStore, SqliteStore, StoredHome, StoredPin, StoredReport,
};
use meridian_protocol::ids::{DocumentId, StorageId};
use meridian_protocol::storage::{StorageResult, StorageTask, StorageTaskId};
use meridian_tests::pg::Postgres;

fn doc(n: u8) -> DocumentId {
    DocumentId::from_bytes([n; 16])
}

/// Runs `tasks` as one batch; their results in order.
fn batch(store: &mut PostgresStore, tasks: Vec<StorageTask>) -> Vec<StorageResult> {
    let tasks: Vec<(StorageTaskId, StorageTask)> =
        tasks.into_iter().enumerate().map(|(i, t)| (StorageTaskId(i as u64), t)).collect();
    store.execute_batch(&tasks).into_iter().map(|(_, r)| r).collect()
}

fn one(store: &mut PostgresStore, task: StorageTask) -> StorageResult {
    batch(store, vec![task]).remove(0)
}

fn load(store: &mut PostgresStore, id: DocumentId) -> Option<Automerge> {
    match one(store, StorageTask::LoadDoc { doc: id }) {
        StorageResult::Loaded(Some(bytes)) => Some(Automerge::load(&bytes).expect("stored bytes load")),
        StorageResult::Loaded(None) => None,
        other => panic!("load failed: {other:?}"),
    }
}

/// A writer's document and the bytes of its last change.
fn change(doc: &mut AutoCommit, key: &str) -> Vec<u8> {
    doc.put(ROOT, key, 1).unwrap();
    doc.commit();
    doc.get_last_local_change().unwrap().raw_bytes().to_vec()
}

fn keys(doc: &Automerge) -> Vec<String> {
    doc.keys(ROOT).collect()
}

fn chunk_rows(pg: &Postgres, id: DocumentId) -> Result<i64> {
    Ok(pg.client()?.query_one("SELECT COUNT(*) FROM chunks WHERE doc_id = $1", &[&id.as_bytes().as_slice()])?.get(0))
}

#[test]
fn the_store_contract_on_postgres() -> Result<()> {
    let pg = Postgres::start()?;
    let mut store = PostgresStore::open(&pg.url())?;
    let id = store.storage_id().clone();
    assert!(load(&mut store, doc(1)).is_none(), "nothing stored yet");

    let mut writer = AutoCommit::new();
    let a = change(&mut writer, "a");
    let b = change(&mut writer, "b");
    let results = batch(
        &mut store,
        vec![
            StorageTask::AppendChunk { doc: doc(1), data: a },
            StorageTask::AppendChunk { doc: doc(1), data: b },
            StorageTask::PutSyncState { doc: doc(1), peer: StorageId::new("edge-1"), state: vec![1, 2, 3] },
        ],
    );
    assert!(results.iter().all(|r| *r == StorageResult::Done), "{results:?}");
    assert_eq!(keys(&load(&mut store, doc(1)).unwrap()), ["a", "b"]);
    let state = one(&mut store, StorageTask::LoadSyncState { doc: doc(1), peer: StorageId::new("edge-1") });
    assert_eq!(state, StorageResult::Loaded(Some(vec![1, 2, 3])));

    // Compaction: one snapshot replaces the two chunks.
    let snapshot = writer.save();
    assert_eq!(one(&mut store, StorageTask::Compact { doc: doc(1), snapshot }), StorageResult::Done);
    assert_eq!(chunk_rows(&pg, doc(1))?, 1);
    assert_eq!(keys(&load(&mut store, doc(1)).unwrap()), ["a", "b"]);

    store.record_creator(&doc(1), "alice", 1_700_000_000)?;
    store.record_creator(&doc(1), "mallory", 1_800_000_000)?;
    assert_eq!(store.creator(&doc(1))?, Some(("alice".into(), 1_700_000_000)), "the first record stands");
    assert_eq!(store.document_ids()?, vec![doc(1)]);
    let (bytes, oldest) = store.usage(10)?;
    assert!(bytes > 0 && oldest == vec![doc(1)]);

    // Deleting drops chunks and sync states.
    assert_eq!(one(&mut store, StorageTask::DeleteDoc { doc: doc(1) }), StorageResult::Done);
    assert!(load(&mut store, doc(1)).is_none());
    let state = one(&mut store, StorageTask::LoadSyncState { doc: doc(1), peer: StorageId::new("edge-1") });
    assert_eq!(state, StorageResult::Loaded(None));

    // Another hub on the same database: the same storage id, the schema
    // migrated once.
    drop(store);
    let again = PostgresStore::open(&pg.url())?;
    assert_eq!(again.storage_id(), &id);
    let row = pg.client()?.query_one("SELECT COUNT(*), CAST(MAX(version) AS BIGINT) FROM schema_migrations", &[])?;
    let (rows, latest): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!((rows, latest), (4, 4), "versions 1 to 4, each recorded once");
    Ok(())
}

/// Two hubs write and compact the same document at once: each compaction
/// deletes only the chunks its snapshot covers, so no change is lost.
#[test]
fn compactions_by_two_hubs_never_lose_the_other_ones_chunks() -> Result<()> {
    let pg = Postgres::start()?;
    let (mut one_hub, mut other_hub) = (PostgresStore::open(&pg.url())?, PostgresStore::open(&pg.url())?);
    let mut a = AutoCommit::new();
    let first = change(&mut a, "first");
    assert_eq!(one(&mut one_hub, StorageTask::AppendChunk { doc: doc(2), data: first }), StorageResult::Done);

    // Both load it (each now covers the first chunk).
    let mut at_one = AutoCommit::load(&load(&mut one_hub, doc(2)).unwrap().save())?;
    let mut at_other = AutoCommit::load(&load(&mut other_hub, doc(2)).unwrap().save())?;
    // Each appends a change of its own the other never sees.
    let mine = change(&mut at_one, "by_one");
    let theirs = change(&mut at_other, "by_other");
    assert_eq!(one(&mut one_hub, StorageTask::AppendChunk { doc: doc(2), data: mine }), StorageResult::Done);
    assert_eq!(one(&mut other_hub, StorageTask::AppendChunk { doc: doc(2), data: theirs }), StorageResult::Done);

    // Both compact from what they hold.
    let snapshot = at_one.save();
    assert_eq!(one(&mut one_hub, StorageTask::Compact { doc: doc(2), snapshot }), StorageResult::Done);
    let snapshot = at_other.save();
    assert_eq!(one(&mut other_hub, StorageTask::Compact { doc: doc(2), snapshot }), StorageResult::Done);

    let mut reader = PostgresStore::open(&pg.url())?;
    let stored = load(&mut reader, doc(2)).unwrap();
    assert_eq!(keys(&stored), ["by_one", "by_other", "first"], "every change survived both compactions");
    let heads: Vec<ChangeHash> = stored.get_heads();
    assert_eq!(heads.len(), 2);
    assert!(stored.get_missing_deps(&[]).is_empty());
    Ok(())
}

/// Hubs started together on a fresh database migrate it at the same
/// moment (`cargo xtask demo --cloud` found two failing that way): every
/// one opens, with one storage id among them.
#[test]
fn hubs_opening_a_fresh_database_at_once_all_start() -> Result<()> {
    let pg = Postgres::start()?;
    let url = pg.url();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(4));
    let opened: Vec<_> = (0..4)
        .map(|_| {
            let (url, barrier) = (url.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                PostgresStore::open(&url).map(|s| s.storage_id().clone())
            })
        })
        .collect();
    let ids: Vec<StorageId> = opened
        .into_iter()
        .map(|t| t.join().map_err(|_| anyhow::anyhow!("panicked"))?.map_err(anyhow::Error::from))
        .collect::<Result<_>>()?;
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
    Ok(())
}

#[test]
fn a_lease_is_held_by_one_hub_at_a_time() -> Result<()> {
    let pg = Postgres::start()?;
    let (mut h1, mut h2) = (PostgresStore::open(&pg.url())?, PostgresStore::open(&pg.url())?);
    leases(&mut h1, &mut h2)?;
    // The same rules on SQLite (a hub alone, its lease on its own file).
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("hub.sqlite3");
    let (mut s1, mut s2) = (SqliteStore::open(&path)?, SqliteStore::open(&path)?);
    leases(&mut s1, &mut s2)
}

/// The control state (homes, pins, reports, revocations) written through
/// one connection is what another reads, on both backends.
#[test]
fn the_control_state_is_shared_through_the_store() -> Result<()> {
    let pg = Postgres::start()?;
    let (mut h1, mut h2) = (PostgresStore::open(&pg.url())?, PostgresStore::open(&pg.url())?);
    control_state(&mut h1, &mut h2)?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("hub.sqlite3");
    let (mut s1, mut s2) = (SqliteStore::open(&path)?, SqliteStore::open(&path)?);
    control_state(&mut s1, &mut s2)
}

/// A refresh's read (`ReadDoc`) does not make the chunks it read the
/// reader's: a snapshot it issued before taking them in does not hold them,
/// so its compaction must leave them (found by the simulation of several
/// hubs: a change another hub stored was deleted).
#[test]
fn a_refresh_does_not_cover_what_another_hub_wrote() -> Result<()> {
    let pg = Postgres::start()?;
    let (mut h1, mut h2) = (PostgresStore::open(&pg.url())?, PostgresStore::open(&pg.url())?);
    let mut w1 = AutoCommit::new();
    let first = change(&mut w1, "h1");
    assert_eq!(one(&mut h1, StorageTask::AppendChunk { doc: doc(1), data: first }), StorageResult::Done);
    let mut w2 = w1.fork();
    let other = change(&mut w2, "h2");
    assert_eq!(one(&mut h2, StorageTask::AppendChunk { doc: doc(1), data: other }), StorageResult::Done);
    // h1 reads the document again (a refresh) and, before taking it in,
    // compacts what it has.
    assert!(matches!(one(&mut h1, StorageTask::ReadDoc { doc: doc(1) }), StorageResult::Loaded(Some(_))));
    assert_eq!(one(&mut h1, StorageTask::Compact { doc: doc(1), snapshot: w1.save() }), StorageResult::Done);
    let loaded = load(&mut h2, doc(1)).expect("stored");
    assert_eq!(keys(&loaded), vec!["h1".to_owned(), "h2".to_owned()], "h2's change is kept");
    Ok(())
}

/// With the change feed on, chunks wait in its outbox, and a compaction
/// deletes only the chunks the feed carried (the next one the rest).
#[test]
fn with_the_feed_a_compaction_keeps_what_the_feed_has_not_carried() -> Result<()> {
    let pg = Postgres::start()?;
    let mut store = PostgresStore::open(&pg.url())?.with_feed(true)?;
    assert!(PostgresStore::open(&pg.url())?.keeps_feed(), "a hub opening the database later keeps the outbox too");
    let mut w = AutoCommit::new();
    for key in ["a", "b"] {
        let data = change(&mut w, key);
        assert_eq!(one(&mut store, StorageTask::AppendChunk { doc: doc(1), data }), StorageResult::Done);
    }
    let unfed = store.unfed_chunks(10)?;
    assert_eq!(unfed.iter().map(|c| c.snapshot).collect::<Vec<_>>(), vec![false, false]);
    // The relay carried the first chunk only.
    store.mark_fed(&[unfed[0].seq], &[(doc(1), vec![7; 32])])?;
    assert_eq!(store.fed_heads(&doc(1))?, vec![7; 32]);
    let compacted = StorageTask::Compact { doc: doc(1), snapshot: w.save() };
    assert_eq!(one(&mut store, compacted), StorageResult::Done);
    let left: Vec<(String, bool)> = pg
        .client()?
        .query("SELECT kind, fed FROM chunks WHERE doc_id = $1 ORDER BY seq", &[&doc(1).as_bytes().as_slice()])?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(left, vec![("incremental".into(), false), ("snapshot".into(), false)], "the unfed chunk stays");
    assert_eq!(load(&mut store, doc(1)).map(|d| keys(&d)), Some(vec!["a".into(), "b".into()]));
    // Everything carried: the next compaction leaves its snapshot alone.
    let seqs: Vec<i64> = store.unfed_chunks(10)?.iter().map(|c| c.seq).collect();
    assert_eq!(seqs.len(), 2);
    store.mark_fed(&seqs, &[])?;
    assert_eq!(one(&mut store, StorageTask::Compact { doc: doc(1), snapshot: w.save() }), StorageResult::Done);
    assert_eq!(chunk_rows(&pg, doc(1))?, 1);
    Ok(())
}

fn control_state(a: &mut dyn ControlStore, b: &mut dyn ControlStore) -> Result<()> {
    let home = |n: u8, edge: &str| StoredHome {
        doc: doc(n),
        edge: edge.into(),
        addr: Some(format!("127.0.0.1:{n}")),
        fingerprint: None,
        since_ms: 7,
    };
    // Homes are written by the holder of a lease only (the placer's).
    let fence = |holder: &str, now_ms: u64| LeaseFence { name: "homes".into(), holder: holder.into(), now_ms };
    assert!(!a.set_home(&doc(1), Some(&home(1, "eu")), &fence("h1", 500))?, "nobody holds the lease yet");
    assert!(a.take_lease("homes", "h1", 1_000, 10_000)?);
    assert!(a.set_home(&doc(1), Some(&home(1, "eu")), &fence("h1", 2_000))?);
    assert!(a.set_home(&doc(2), Some(&home(2, "eu")), &fence("h1", 2_000))?);
    assert!(b.set_home(&doc(2), Some(&home(2, "us")), &fence("h1", 2_000))?, "the holder, on another connection");
    assert!(!b.set_home(&doc(1), None, &fence("h2", 2_000))?, "not the holder: refused");
    assert!(!a.set_home(&doc(3), Some(&home(3, "eu")), &fence("h1", 11_000))?, "the lease ran out: refused");
    assert_eq!(a.homes()?, vec![home(1, "eu"), home(2, "us")], "one row per document, the last write wins");
    assert!(b.set_home(&doc(1), None, &fence("h1", 2_000))?);
    assert_eq!(a.homes()?, vec![home(2, "us")], "back at the hub: no row");

    let pin = |n: u8, edge: Option<&str>| StoredPin { doc: doc(n), edge: edge.map(Into::into), at_ms: 9 };
    assert!(a.set_pin(&doc(3), Some(&pin(3, Some("eu"))))?);
    assert!(a.set_pin(&doc(4), Some(&pin(4, None)))?);
    assert_eq!(b.pins()?, vec![pin(3, Some("eu")), pin(4, None)]);
    assert!(b.set_pin(&doc(3), None)?);
    assert!(!b.set_pin(&doc(3), None)?, "nothing left to remove");
    assert_eq!(a.pins()?, vec![pin(4, None)]);

    let report = |edge: &str, hub: &str, at_ms: u64| StoredReport {
        edge: edge.into(),
        hub: hub.into(),
        at_ms,
        report: format!("{{\"at\":{at_ms}}}"),
    };
    a.put_reports(&[report("eu", "h1", 1_000), report("us", "h1", 1_000)])?;
    b.put_reports(&[report("us", "h2", 3_000)])?;
    assert_eq!(a.reports_since(0)?, vec![report("eu", "h1", 1_000), report("us", "h2", 3_000)]);
    assert_eq!(a.reports_since(2_000)?, vec![report("us", "h2", 3_000)], "stale reports are left out");

    let r = |jti: Option<&str>, sub: Option<&str>, at: u64| Revocation {
        jti: jti.map(Into::into),
        sub: sub.map(Into::into),
        at,
    };
    assert!(a.add_revocation(&r(Some("t1"), None, 5))?);
    assert!(!b.add_revocation(&r(Some("t1"), None, 5))?, "the same revocation twice is one");
    assert!(b.add_revocation(&r(None, Some("mallory"), 6))?);
    assert_eq!(a.revocations()?, vec![r(Some("t1"), None, 5), r(None, Some("mallory"), 6)]);
    Ok(())
}

fn leases(h1: &mut dyn ControlStore, h2: &mut dyn ControlStore) -> Result<()> {
    assert!(h1.take_lease("placer", "h1", 1_000, 5_000)?);
    assert!(!h2.take_lease("placer", "h2", 2_000, 5_000)?, "held by h1 until 6,000");
    assert!(h1.take_lease("placer", "h1", 4_000, 5_000)?, "h1 renews it until 9,000");
    assert!(!h2.take_lease("placer", "h2", 8_000, 5_000)?);
    assert_eq!(h2.lease_holder("placer")?, Some(("h1".into(), 9_000)));
    assert!(h2.take_lease("placer", "h2", 9_001, 5_000)?, "expired: h2 takes over");
    assert!(!h1.take_lease("placer", "h1", 9_500, 5_000)?);
    Ok(())
}

/// The server restarts (stopped as a crash would): a write in the meantime
/// waits for it and is done once it is back (the store connects again by
/// itself); past the outage wait it fails, never reported done.
#[test]
fn the_store_survives_a_server_restart() -> Result<()> {
    let pg = Postgres::start()?;
    let mut store = PostgresStore::open(&pg.url())?;
    let mut writer = AutoCommit::new();
    let before = change(&mut writer, "before");
    assert_eq!(one(&mut store, StorageTask::AppendChunk { doc: doc(3), data: before }), StorageResult::Done);

    pg.stop()?;
    let mut store = store.with_outage_wait(std::time::Duration::from_millis(700));
    let lost = change(&mut writer, "lost");
    let failed = one(&mut store, StorageTask::AppendChunk { doc: doc(3), data: lost.clone() });
    assert!(matches!(failed, StorageResult::Failed(_)), "{failed:?}");

    // A write while it is down, with the default wait: done once it is back.
    let mut store = store.with_outage_wait(meridian_node::store::OUTAGE_WAIT);
    let during = change(&mut writer, "during");
    let after = change(&mut writer, "after");
    let restart = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(1));
        pg.restart().map(|()| pg)
    });
    let r = batch(
        &mut store,
        vec![
            // What failed is written again, as the engine would.
            StorageTask::AppendChunk { doc: doc(3), data: lost },
            StorageTask::AppendChunk { doc: doc(3), data: during },
            StorageTask::AppendChunk { doc: doc(3), data: after },
        ],
    );
    let _pg = restart.join().map_err(|_| anyhow::anyhow!("restart panicked"))??;
    assert!(r.iter().all(|r| *r == StorageResult::Done), "{r:?}");
    assert_eq!(keys(&load(&mut store, doc(3)).unwrap()), ["after", "before", "during", "lost"]);
    Ok(())
}

/// Stores one change per key in document `n`, then flips a byte in the
/// database in the `nth` chunk (behind the store's back); the chunks as
/// written, and that chunk's row and corrupted bytes.
fn store_and_corrupt(
    pg: &Postgres,
    store: &mut PostgresStore,
    n: u8,
    keys: &[&str],
    nth: usize,
) -> Result<(Vec<Vec<u8>>, i64, Vec<u8>)> {
    let mut w = AutoCommit::new();
    let chunks: Vec<Vec<u8>> = keys.iter().map(|k| change(&mut w, k)).collect();
    for c in &chunks {
        assert_eq!(one(store, StorageTask::AppendChunk { doc: doc(n), data: c.clone() }), StorageResult::Done);
    }
    let mut raw = pg.client()?;
    let seq: i64 = raw
        .query_one(
            "SELECT seq FROM chunks WHERE doc_id = $1 ORDER BY seq OFFSET $2 LIMIT 1",
            &[&doc(n).as_bytes().as_slice(), &(nth as i64)],
        )?
        .get(0);
    let mut bad = chunks[nth].clone();
    let middle = bad.len() / 2;
    bad[middle] ^= 0x08;
    raw.execute("UPDATE chunks SET data = $1 WHERE seq = $2", &[&bad, &seq])?;
    Ok((chunks, seq, bad))
}

/// A chunk corrupted in the database (a byte flipped behind the store's
/// back) is left out of the load, moved to the quarantine table and
/// counted; the others are served.
#[test]
fn a_corrupt_chunk_is_quarantined_and_never_served() -> Result<()> {
    use meridian_node::store::DocStore;
    let pg = Postgres::start()?;
    let mut store = PostgresStore::open(&pg.url())?;
    let (chunks, seq, bad) = store_and_corrupt(&pg, &mut store, 7, &["a", "b", "c"], 1)?;
    let mut raw = pg.client()?;
    let loaded = one(&mut store, StorageTask::LoadDoc { doc: doc(7) });
    assert_eq!(loaded, StorageResult::Loaded(Some([chunks[0].clone(), chunks[2].clone()].concat())));
    assert_eq!(store.quarantined(), 1);
    assert_eq!(chunk_rows(&pg, doc(7))?, 2);
    let row = raw.query_one("SELECT seq, data, reason FROM quarantine", &[])?;
    assert_eq!((row.get::<_, i64>(0), row.get::<_, Vec<u8>>(1)), (seq, bad));
    assert!(row.get::<_, String>(2).contains("checksum"));
    Ok(())
}

/// The background scrub on PostgreSQL: a chunk corrupted in the database
/// is found by a pass (in steps of a byte budget), quarantined and counted;
/// the next pass finds the store sound.
#[test]
fn the_scrub_finds_and_quarantines_a_corrupt_chunk() -> Result<()> {
    use meridian_node::store::DocStore;
    let pg = Postgres::start()?;
    let mut store = PostgresStore::open(&pg.url())?;
    let (chunks, seq, bad) = store_and_corrupt(&pg, &mut store, 8, &["a", "b", "c", "d"], 2)?;
    let mut raw = pg.client()?;
    // A pass in small steps (one chunk's bytes each).
    let pass = |store: &mut PostgresStore| -> Result<(u64, Vec<i64>)> {
        let (mut after, mut checked, mut corrupt) = (0, 0, Vec::new());
        loop {
            let step = store.scrub(after, 1)?.context("PostgreSQL scrubs")?;
            checked += step.chunks;
            corrupt.extend(step.corrupt.iter().map(|(_, seq, _)| *seq));
            match step.next {
                Some(next) => after = next,
                None => return Ok((checked, corrupt)),
            }
        }
    };
    assert_eq!(pass(&mut store)?, (4, vec![seq]));
    assert_eq!(store.quarantined(), 1);
    assert_eq!(chunk_rows(&pg, doc(8))?, 3);
    let row = raw.query_one("SELECT seq, data FROM quarantine", &[])?;
    assert_eq!((row.get::<_, i64>(0), row.get::<_, Vec<u8>>(1)), (seq, bad));
    assert_eq!(pass(&mut store)?, (3, vec![]), "the next pass finds the store sound");
    let loaded = one(&mut store, StorageTask::LoadDoc { doc: doc(8) });
    assert_eq!(loaded, StorageResult::Loaded(Some([chunks[0].clone(), chunks[1].clone(), chunks[3].clone()].concat())));
    Ok(())
}
