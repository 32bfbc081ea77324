use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use meridian_protocol::automerge::transaction::Transactable;
use meridian_protocol::automerge::{AutoCommit, Automerge, ROOT, ReadDoc};
use tempfile::TempDir;

use super::*;
use StorageResult::{Done, Failed, Loaded};

fn db_path(dir: &TempDir) -> PathBuf {
    dir.path().join("nested").join("edge.db")
}

fn temp_store() -> (TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&db_path(&dir)).unwrap();
    (dir, store)
}

/// A real automerge change chunk (the store checks every chunk it loads).
fn chunk(tag: &str) -> Vec<u8> {
    // The same bytes for the same tag: actor and time fixed.
    let mut d = AutoCommit::new().with_actor(meridian_protocol::automerge::ActorId::from(tag.as_bytes()));
    d.put(ROOT, "tag", tag).unwrap();
    d.commit_with(meridian_protocol::automerge::transaction::CommitOptions::default().with_time(0));
    d.save_incremental()
}

/// What loading the chunks `tags` stored in that order gives.
fn chunks(tags: &[&str]) -> Vec<u8> {
    tags.iter().flat_map(|t| chunk(t)).collect()
}

fn doc(n: u8) -> DocumentId {
    DocumentId::from_bytes([n; 16])
}

fn append(doc: DocumentId, data: &[u8]) -> StorageTask {
    StorageTask::AppendChunk { doc, data: data.to_vec() }
}

fn load(doc: DocumentId) -> StorageTask {
    StorageTask::LoadDoc { doc }
}

fn chunk_count(store: &SqliteStore, id: DocumentId) -> usize {
    store.list_documents().unwrap().iter().find(|(d, _, _)| *d == id).map_or(0, |(_, _, chunks)| *chunks)
}

fn load_automerge(store: &mut SqliteStore, id: DocumentId) -> Automerge {
    let Loaded(Some(bytes)) = store.execute(&load(id)) else { panic!("document {id} not stored") };
    Automerge::load(&bytes).unwrap()
}

#[test]
fn open_creates_parent_dir_with_wal_and_current_schema() {
    let (dir, store) = temp_store();
    assert!(db_path(&dir).exists());
    let version: i64 = store.conn.pragma_query_value(None, "user_version", |row| row.get(0)).unwrap();
    assert_eq!(version, SCHEMA_VERSION as i64);
    let mode: String = store.conn.pragma_query_value(None, "journal_mode", |row| row.get(0)).unwrap();
    assert_eq!(mode, "wal");
    assert_eq!(store.document_count().unwrap(), 0);
}

#[test]
fn commits_are_fsynced_unless_told_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let synchronous =
        |store: &SqliteStore| -> i64 { store.conn.pragma_query_value(None, "synchronous", |row| row.get(0)).unwrap() };
    let store = SqliteStore::open(&db_path(&dir)).unwrap();
    assert_eq!(synchronous(&store), 2, "FULL by default");
    drop(store);
    let store = SqliteStore::open_with(&db_path(&dir), StoreOptions { fsync: false }).unwrap();
    assert_eq!(synchronous(&store), 1, "NORMAL with --unsafe-no-fsync");
}

#[test]
fn append_then_load_round_trips() {
    let (_dir, mut store) = temp_store();
    assert_eq!(store.execute(&load(doc(1))), Loaded(None));
    assert_eq!(store.execute(&append(doc(1), &chunk("ab"))), Done);
    assert_eq!(store.execute(&append(doc(1), &chunk("cd"))), Done);
    assert_eq!(store.execute(&append(doc(2), &chunk("zz"))), Done);
    assert_eq!(store.execute(&load(doc(1))), Loaded(Some(chunks(&["ab", "cd"]))));
    let len = |tags: &[&str]| chunks(tags).len();
    assert_eq!(store.list_documents().unwrap(), vec![(doc(1), len(&["ab", "cd"]), 2), (doc(2), len(&["zz"]), 1)]);
    assert_eq!(store.document_count().unwrap(), 2);
}

#[test]
fn compaction_replaces_chunks_and_keeps_automerge_content() {
    let (_dir, mut store) = temp_store();
    let id = doc(3);
    let mut am = AutoCommit::new();
    am.put(ROOT, "title", "draft").unwrap();
    assert_eq!(store.execute(&append(id, &am.save())), Done);
    for i in 0..3_i64 {
        let heads = am.get_heads();
        am.put(ROOT, "count", i).unwrap();
        assert_eq!(store.execute(&append(id, &am.save_after(&heads))), Done);
    }
    assert_eq!(chunk_count(&store, id), 4);
    assert_eq!(load_automerge(&mut store, id).get_heads(), am.get_heads());

    assert_eq!(store.execute(&StorageTask::Compact { doc: id, snapshot: am.save() }), Done);
    assert_eq!(chunk_count(&store, id), 1);
    assert_eq!(load_automerge(&mut store, id).get_heads(), am.get_heads());

    // An incremental appended after compaction loads after the snapshot.
    let heads = am.get_heads();
    am.put(ROOT, "title", "final").unwrap();
    assert_eq!(store.execute(&append(id, &am.save_after(&heads))), Done);
    let loaded = load_automerge(&mut store, id);
    assert_eq!(loaded.get_heads(), am.get_heads());
    let (title, _) = loaded.get(ROOT, "title").unwrap().unwrap();
    assert_eq!(title.as_str(), Some("final"));
}

#[test]
fn storage_id_persists_across_reopen() {
    let (dir, store) = temp_store();
    let id = store.storage_id().clone();
    assert_eq!(id.as_str().len(), 36, "UUID-shaped: {id}");
    store.close().unwrap();
    let reopened = SqliteStore::open(&db_path(&dir)).unwrap();
    assert_eq!(reopened.storage_id(), &id);
    let (_other_dir, other) = temp_store();
    assert_ne!(other.storage_id(), &id);
}

#[test]
fn sync_states_put_load_and_overwrite() {
    let (_dir, mut store) = temp_store();
    let (a, b) = (StorageId::new("peer-a"), StorageId::new("peer-b"));
    let load_a = StorageTask::LoadSyncState { doc: doc(1), peer: a.clone() };
    let put = |peer: &StorageId, state: &[u8]| StorageTask::PutSyncState {
        doc: doc(1),
        peer: peer.clone(),
        state: state.to_vec(),
    };
    assert_eq!(store.execute(&load_a), Loaded(None));
    assert_eq!(store.execute(&put(&a, b"one")), Done);
    assert_eq!(store.execute(&put(&b, b"other")), Done);
    assert_eq!(store.execute(&load_a), Loaded(Some(b"one".to_vec())));
    assert_eq!(store.execute(&put(&a, b"two")), Done);
    assert_eq!(store.execute(&load_a), Loaded(Some(b"two".to_vec())));
    let load_b_other_doc = StorageTask::LoadSyncState { doc: doc(2), peer: b };
    assert_eq!(store.execute(&load_b_other_doc), Loaded(None));
}

#[test]
fn delete_doc_removes_chunks_and_sync_states() {
    let (_dir, mut store) = temp_store();
    let peer = StorageId::new("peer");
    let put = StorageTask::PutSyncState { doc: doc(1), peer: peer.clone(), state: b"s".to_vec() };
    assert_eq!(store.execute(&append(doc(1), &chunk("x"))), Done);
    assert_eq!(store.execute(&append(doc(2), &chunk("y"))), Done);
    assert_eq!(store.execute(&put), Done);
    assert_eq!(store.execute(&StorageTask::DeleteDoc { doc: doc(1) }), Done);
    assert_eq!(store.execute(&load(doc(1))), Loaded(None));
    assert_eq!(store.execute(&StorageTask::LoadSyncState { doc: doc(1), peer }), Loaded(None));
    assert_eq!(store.execute(&load(doc(2))), Loaded(Some(chunks(&["y"]))));
    assert_eq!(store.document_count().unwrap(), 1);
}

#[test]
fn batch_runs_in_order_and_commits_together() {
    let (dir, mut store) = temp_store();
    let batch = vec![
        (StorageTaskId(10), append(doc(1), &chunk("a"))),
        (StorageTaskId(11), load(doc(1))),
        (StorageTaskId(12), StorageTask::Compact { doc: doc(1), snapshot: chunk("S") }),
        (StorageTaskId(13), append(doc(1), &chunk("b"))),
        (StorageTaskId(14), load(doc(1))),
        (StorageTaskId(15), StorageTask::PutSyncState { doc: doc(1), peer: StorageId::new("p"), state: vec![1] }),
    ];
    let results = store.execute_batch(&batch);
    let expected = vec![
        (StorageTaskId(10), Done),
        (StorageTaskId(11), Loaded(Some(chunks(&["a"])))),
        (StorageTaskId(12), Done),
        (StorageTaskId(13), Done),
        (StorageTaskId(14), Loaded(Some(chunks(&["S", "b"])))),
        (StorageTaskId(15), Done),
    ];
    assert_eq!(results, expected);
    assert!(store.execute_batch(&[]).is_empty());
    drop(store);

    let mut reopened = SqliteStore::open(&db_path(&dir)).unwrap();
    assert_eq!(reopened.execute(&load(doc(1))), Loaded(Some(chunks(&["S", "b"]))));
    let sync = StorageTask::LoadSyncState { doc: doc(1), peer: StorageId::new("p") };
    assert_eq!(reopened.execute(&sync), Loaded(Some(vec![1])));
}

#[test]
fn failed_batch_fails_every_task_and_commits_nothing() {
    let (_dir, mut store) = temp_store();
    // Break the second task of the batch so the transaction must roll back.
    store.conn.execute_batch("DROP TABLE sync_states").unwrap();
    let batch = vec![
        (StorageTaskId(1), append(doc(1), &chunk("lost"))),
        (StorageTaskId(2), StorageTask::PutSyncState { doc: doc(1), peer: StorageId::new("p"), state: vec![] }),
        (StorageTaskId(3), load(doc(1))),
    ];
    let results = store.execute_batch(&batch);
    assert_eq!(results.len(), 3);
    for ((id, result), (expected_id, _)) in results.iter().zip(&batch) {
        assert_eq!(id, expected_id);
        assert!(matches!(result, Failed(message) if message.contains("rolled back")), "{result:?}");
    }
    assert_eq!(store.execute(&load(doc(1))), Loaded(None));
    assert!(matches!(store.execute(&StorageTask::DeleteDoc { doc: doc(1) }), Failed(_)));
}

#[test]
fn newer_schema_version_is_refused() {
    let (dir, store) = temp_store();
    store.close().unwrap();
    let path = db_path(&dir);
    let raw = Connection::open(&path).unwrap();
    raw.pragma_update(None, "user_version", SCHEMA_VERSION as i64 + 1).unwrap();
    drop(raw);

    let error = SqliteStore::open(&path).unwrap_err();
    assert!(matches!(error, StoreError::SchemaTooNew { found, supported, .. }
        if found == SCHEMA_VERSION as i64 + 1 && supported == SCHEMA_VERSION));
    let message = error.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
}

#[test]
fn open_error_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    // A directory where the database file should be cannot be opened.
    let path = dir.path().join("is-a-dir");
    std::fs::create_dir(&path).unwrap();
    let message = SqliteStore::open(&path).unwrap_err().to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
}

#[test]
fn data_survives_drop_without_close() {
    let (dir, mut store) = temp_store();
    assert_eq!(store.execute(&append(doc(1), &chunk("kept"))), Done);
    drop(store);
    let mut reopened = SqliteStore::open(&db_path(&dir)).unwrap();
    assert_eq!(reopened.execute(&load(doc(1))), Loaded(Some(chunks(&["kept"]))));
}

#[test]
fn data_survives_a_connection_that_never_closes() {
    let (dir, mut store) = temp_store();
    assert_eq!(store.execute(&append(doc(1), &chunk("in-wal"))), Done);
    // Leak the connection: no close, no checkpoint, like a killed process.
    std::mem::forget(store);
    let wal = dir.path().join("nested").join("edge.db-wal");
    assert!(std::fs::metadata(&wal).unwrap().len() > 0, "the commit should still be in the WAL");
    let mut reopened = SqliteStore::open(&db_path(&dir)).unwrap();
    assert_eq!(reopened.execute(&load(doc(1))), Loaded(Some(chunks(&["in-wal"]))));
}

/// Set for the child process of `committed_writes_survive_sigkill`.
const CRASH_CHILD_DB: &str = "MERIDIAN_STORE_CRASH_CHILD_DB";
const CRASH_CHILD_COMMITTED: &str = "MERIDIAN-CRASH-CHILD-COMMITTED";

/// The child half of `committed_writes_survive_sigkill`: it commits a
/// batch, says so, and waits to be killed. A no-op in a normal run.
#[test]
fn crash_child() {
    let Some(path) = std::env::var_os(CRASH_CHILD_DB) else { return };
    let mut store = SqliteStore::open(Path::new(&path)).unwrap();
    let results = store.execute_batch(&[(StorageTaskId(1), append(doc(1), &chunk("committed")))]);
    assert_eq!(results, vec![(StorageTaskId(1), Done)]);
    println!("\n{CRASH_CHILD_COMMITTED}");
    std::io::stdout().flush().unwrap();
    std::thread::sleep(Duration::from_secs(60));
    panic!("crash child was not killed");
}

#[test]
fn committed_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["store::sqlite::tests::crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CRASH_CHILD_DB, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let committed = BufReader::new(stdout).lines().map_while(Result::ok).any(|line| line == CRASH_CHILD_COMMITTED);
    // `Child::kill` is SIGKILL on Unix: no destructors, no SQLite close.
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(committed, "the child never reported its commit");

    let mut store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.execute(&load(doc(1))), Loaded(Some(chunk("committed"))));
}

#[test]
fn a_corrupt_chunk_is_quarantined_and_never_served() {
    let (dir, mut store) = temp_store();
    let mut w = AutoCommit::new();
    let mut appended = Vec::new();
    for i in 0..3 {
        w.put(ROOT, format!("k{i}"), i).unwrap();
        let chunk = w.save_incremental();
        assert_eq!(store.execute(&append(doc(1), &chunk)), Done);
        appended.push(chunk);
    }
    // A bit flips on disk in the second chunk (another connection, as a
    // failing disk would, behind the store's back).
    {
        let raw = Connection::open(db_path(&dir)).unwrap();
        let seq: i64 = raw
            .query_row(
                "SELECT seq FROM chunks WHERE doc_id = ?1 ORDER BY seq LIMIT 1 OFFSET 1",
                [doc(1).as_bytes()],
                |r| r.get(0),
            )
            .unwrap();
        let mut data = appended[1].clone();
        let last = data.len() - 1;
        data[last] ^= 0x01;
        raw.execute("UPDATE chunks SET data = ?1 WHERE seq = ?2", params![data, seq]).unwrap();
    }
    let Loaded(Some(bytes)) = store.execute(&load(doc(1))) else { panic!("loaded") };
    let good: Vec<u8> = [appended[0].clone(), appended[2].clone()].concat();
    assert_eq!(bytes, good, "the corrupt chunk is left out, the others served");
    assert_eq!(store.quarantined(), 1);
    assert_eq!(chunk_count(&store, doc(1)), 2);
    let (kept, reason): (Vec<u8>, String) =
        store.conn.query_row("SELECT data, reason FROM quarantine", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
    assert_ne!(kept, appended[1], "kept as it was found");
    assert_eq!(kept.len(), appended[1].len());
    assert!(reason.contains("checksum"), "{reason}");
    // Loaded again: nothing more to quarantine.
    assert_eq!(store.execute(&load(doc(1))), Loaded(Some(good)));
    assert_eq!(store.quarantined(), 1);
}
