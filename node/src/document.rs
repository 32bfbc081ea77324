//! Document operations behind `meridian-edge client …` (device scripts and
//! operators): JSON values at dotted paths, text appends, JSON rendering,
//! and inspection — history, earlier versions, rollback.

use meridian_protocol::automerge::Prop as AmProp;
use meridian_protocol::automerge::transaction::{Transactable, Transaction};
use meridian_protocol::automerge::{
    AutoSerde, Automerge, AutomergeError, ChangeHash, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, Value,
};
use serde_json::Value as Json;

/// A path given on the command line that is not keys separated by dots.
#[derive(Debug, thiserror::Error)]
#[error("bad path `{0}`: use keys separated by dots, e.g. meta.title")]
pub struct BadPath(pub String);

/// Why heads given on a command line (or in `?at=`, `?to=`) name no
/// version of the document.
#[derive(Debug, thiserror::Error)]
pub enum VersionError {
    #[error("`{0}` is not a change hash (hex, at least 6 digits)")]
    NotAHash(String),
    #[error("no change of this document starts with `{0}`")]
    NoMatch(String),
    #[error("`{part}` matches {count} changes; give more digits")]
    Ambiguous { part: String, count: usize },
    #[error("no change hash given")]
    Empty,
    /// Not a `#[source]`: the message already says it, and the CLI prints
    /// the message alone.
    #[error("no such version: {0}")]
    NoSuchVersion(AutomergeError),
}

/// A path like `title` or `meta.tags.0`: map keys, or list indexes where
/// the parent is a list.
pub fn parse_path(path: &str) -> Result<Vec<String>, BadPath> {
    let parts: Vec<String> = path.split('.').map(str::to_owned).collect();
    if parts.iter().any(String::is_empty) {
        return Err(BadPath(path.to_owned()));
    }
    Ok(parts)
}

/// A path problem, reported through automerge's error type because the
/// edit runs inside a transaction closure (its message is shown as is).
fn bad(msg: String) -> AutomergeError {
    AutomergeError::EncodingError(msg)
}

/// Walks to the parent object of the last path segment, creating maps on
/// the way.
fn parent<'a>(tx: &mut Transaction<'_>, path: &'a [String]) -> Result<(ObjId, &'a str), AutomergeError> {
    let (last, dirs) = path.split_last().ok_or_else(|| bad("empty path".into()))?;
    let mut obj = ROOT;
    for key in dirs {
        obj = match child(tx, &obj, key)? {
            Some((Value::Object(_), id)) => id,
            Some(_) => return Err(bad(format!("`{key}` is not an object"))),
            None => match tx.object_type(&obj)? {
                ObjType::Map | ObjType::Table => tx.put_object(&obj, key.as_str(), ObjType::Map)?,
                _ => return Err(bad(format!("no element `{key}`"))),
            },
        };
    }
    Ok((obj, last))
}

fn child(tx: &Transaction<'_>, obj: &ObjId, key: &str) -> Result<Option<(Value<'static>, ObjId)>, AutomergeError> {
    let got = match tx.object_type(obj)? {
        ObjType::List | ObjType::Text => {
            let i: usize = key.parse().map_err(|_| bad(format!("`{key}` is not a list index")))?;
            tx.get(obj, i)?
        }
        _ => tx.get(obj, key)?,
    };
    Ok(got.map(|(v, id)| (v.to_owned(), id)))
}

/// Sets `path` to a JSON value (objects and arrays become maps and lists,
/// strings become text so they can be appended to).
pub fn set_json(tx: &mut Transaction<'_>, path: &[String], value: &Json) -> Result<(), AutomergeError> {
    let (obj, key) = parent(tx, path)?;
    put_json(tx, &obj, Prop::Key(key), value)
}

enum Prop<'a> {
    Key(&'a str),
    Insert(usize),
}

fn put_json(tx: &mut Transaction<'_>, obj: &ObjId, prop: Prop<'_>, value: &Json) -> Result<(), AutomergeError> {
    let new_obj = |tx: &mut Transaction<'_>, t: ObjType| match &prop {
        Prop::Key(k) => tx.put_object(obj, *k, t),
        Prop::Insert(i) => tx.insert_object(obj, *i, t),
    };
    match value {
        Json::Object(map) => {
            let id = new_obj(tx, ObjType::Map)?;
            for (k, v) in map {
                put_json(tx, &id, Prop::Key(k), v)?;
            }
        }
        Json::Array(items) => {
            let id = new_obj(tx, ObjType::List)?;
            for (i, v) in items.iter().enumerate() {
                put_json(tx, &id, Prop::Insert(i), v)?;
            }
        }
        Json::String(s) => {
            let id = new_obj(tx, ObjType::Text)?;
            tx.splice_text(&id, 0, 0, s)?;
        }
        scalar => {
            let v = scalar_of(scalar);
            match prop {
                Prop::Key(k) => tx.put(obj, k, v)?,
                Prop::Insert(i) => tx.insert(obj, i, v)?,
            }
        }
    }
    Ok(())
}

fn scalar_of(v: &Json) -> ScalarValue {
    match v {
        Json::Bool(b) => ScalarValue::Boolean(*b),
        Json::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => ScalarValue::Int(i),
            (None, Some(f)) => ScalarValue::F64(f),
            _ => ScalarValue::Null,
        },
        _ => ScalarValue::Null,
    }
}

/// Fills the root of a new document from a JSON object.
pub fn set_root(tx: &mut Transaction<'_>, value: &Json) -> Result<(), AutomergeError> {
    let Json::Object(map) = value else { return Err(bad("a document must be a JSON object".into())) };
    for (k, v) in map {
        put_json(tx, &ROOT, Prop::Key(k), v)?;
    }
    Ok(())
}

/// Appends to the text at `path`, creating it if missing.
pub fn append_text(tx: &mut Transaction<'_>, path: &[String], text: &str) -> Result<(), AutomergeError> {
    let (obj, key) = parent(tx, path)?;
    let id = match child(tx, &obj, key)? {
        Some((Value::Object(ObjType::Text), id)) => id,
        Some(_) => return Err(bad(format!("`{key}` is not text"))),
        None => tx.put_object(&obj, key, ObjType::Text)?,
    };
    let len = tx.length(&id);
    tx.splice_text(&id, len, 0, text)
}

/// The document as JSON (text as strings).
pub fn to_json(doc: &Automerge) -> Json {
    serde_json::to_value(AutoSerde::from(doc)).unwrap_or(Json::Null)
}

// ----- inspection: history, earlier versions, rollback ----------------------

/// One change of a document's history.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ChangeSummary {
    pub hash: String,
    pub actor: String,
    pub seq: u64,
    /// Seconds since the Unix epoch as the author's clock said (0: not recorded).
    pub time: i64,
    pub message: Option<String>,
    pub deps: Vec<String>,
}

/// Every change, in an order where each comes after its dependencies.
pub fn history(doc: &Automerge) -> Vec<ChangeSummary> {
    doc.get_changes(&[])
        .iter()
        .map(|c| ChangeSummary {
            hash: c.hash().to_string(),
            actor: c.actor_id().to_hex_string(),
            seq: c.seq(),
            time: c.timestamp(),
            message: c.message().map(str::to_owned),
            deps: c.deps().iter().map(ToString::to_string).collect(),
        })
        .collect()
}

/// Heads as written on a command line: comma-separated change hashes, each
/// in full or as a unique prefix (6 hex digits or more) of a change in the
/// document's history.
pub fn resolve_heads(doc: &Automerge, spec: &str) -> Result<Vec<ChangeHash>, VersionError> {
    let hashes: Vec<ChangeHash> = doc.get_changes(&[]).iter().map(|c| c.hash()).collect();
    let mut heads = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let prefix = part.to_ascii_lowercase();
        if prefix.len() < 6 || !prefix.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(VersionError::NotAHash(part.to_owned()));
        }
        let matches: Vec<&ChangeHash> = hashes.iter().filter(|h| h.to_string().starts_with(&prefix)).collect();
        match matches[..] {
            [h] => heads.push(*h),
            [] => return Err(VersionError::NoMatch(part.to_owned())),
            _ => return Err(VersionError::Ambiguous { part: part.to_owned(), count: matches.len() }),
        }
    }
    if heads.is_empty() {
        return Err(VersionError::Empty);
    }
    Ok(heads)
}

/// The document as it was at `heads`, as JSON.
pub fn json_at(doc: &Automerge, heads: &[ChangeHash]) -> Result<Json, VersionError> {
    let old = doc.fork_at(heads).map_err(VersionError::NoSuchVersion)?;
    Ok(to_json(&old))
}

/// Makes the document equal to its version at `heads`, as ordinary
/// operations in the current transaction: a rollback is a new change, so
/// it syncs to every replica like any edit and can itself be undone.
///
/// Objects that still exist are restored in place (text by a minimal
/// splice, counters by incrementing); objects created or replaced since
/// are recreated from the old version.
pub fn rollback(tx: &mut Transaction<'_>, heads: &[ChangeHash]) -> Result<(), AutomergeError> {
    restore_obj(tx, &ROOT, ObjType::Map, heads)
}

fn restore_obj(tx: &mut Transaction<'_>, obj: &ObjId, ty: ObjType, heads: &[ChangeHash]) -> Result<(), AutomergeError> {
    match ty {
        ObjType::Map | ObjType::Table => {
            let old: Vec<String> = tx.keys_at(obj, heads).collect();
            let gone: Vec<String> = tx.keys(obj).filter(|k| !old.contains(k)).collect();
            for k in gone {
                tx.delete(obj, k.as_str())?;
            }
            for k in old {
                restore_prop(tx, obj, AmProp::Map(k), heads)?;
            }
        }
        ObjType::List => {
            let (old_len, cur_len) = (tx.length_at(obj, heads), tx.length(obj));
            for i in 0..old_len.min(cur_len) {
                restore_prop(tx, obj, AmProp::Seq(i), heads)?;
            }
            for _ in old_len..cur_len {
                tx.delete(obj, old_len)?;
            }
            for i in cur_len..old_len {
                insert_old_element(tx, obj, obj, i, heads)?;
            }
        }
        ObjType::Text => {
            let old = tx.text_at(obj, heads)?;
            if tx.text(obj)? != old {
                tx.update_text(obj, old)?;
            }
        }
    }
    Ok(())
}

/// Restores one map entry or list element to its value at `heads`.
fn restore_prop(
    tx: &mut Transaction<'_>,
    obj: &ObjId,
    prop: AmProp,
    heads: &[ChangeHash],
) -> Result<(), AutomergeError> {
    let Some((old, old_id)) = tx.get_at(obj, prop.clone(), heads)?.map(|(v, id)| (v.to_owned(), id)) else {
        return Ok(());
    };
    let cur = tx.get(obj, prop.clone())?.map(|(v, id)| (v.to_owned(), id));
    match old {
        Value::Object(ty) => match cur {
            // The same object: restore inside it.
            Some((Value::Object(_), id)) if id == old_id => restore_obj(tx, &old_id, ty, heads),
            _ => {
                let new = tx.put_object(obj, prop, ty)?;
                copy_obj(tx, &new, ty, &old_id, heads)
            }
        },
        Value::Scalar(old) => match (old.as_ref(), cur) {
            (ScalarValue::Counter(o), Some((Value::Scalar(c), _))) if matches!(c.as_ref(), ScalarValue::Counter(_)) => {
                let (o, c) = (i64::from(o), counter_value(c.as_ref()));
                if o != c { tx.increment(obj, prop, o - c) } else { Ok(()) }
            }
            (_, Some((Value::Scalar(c), _))) if c.as_ref() == old.as_ref() => Ok(()),
            _ => tx.put(obj, prop, old.into_owned()),
        },
    }
}

fn counter_value(s: &ScalarValue) -> i64 {
    match s {
        ScalarValue::Counter(c) => i64::from(c),
        _ => 0,
    }
}

/// Inserts element `i` of the list `old` as it was at `heads` at index `i`
/// of the list `new` (objects are copied).
fn insert_old_element(
    tx: &mut Transaction<'_>,
    new: &ObjId,
    old: &ObjId,
    i: usize,
    heads: &[ChangeHash],
) -> Result<(), AutomergeError> {
    let (value, id) = tx.get_at(old, i, heads)?.ok_or_else(|| bad(format!("list element {i} vanished")))?;
    match value.to_owned() {
        Value::Scalar(s) => tx.insert(new, i, s.into_owned()),
        Value::Object(ty) => {
            let child = tx.insert_object(new, i, ty)?;
            copy_obj(tx, &child, ty, &id, heads)
        }
    }
}

/// Fills the new, empty object `new` with the content of `old` at `heads`.
fn copy_obj(
    tx: &mut Transaction<'_>,
    new: &ObjId,
    ty: ObjType,
    old: &ObjId,
    heads: &[ChangeHash],
) -> Result<(), AutomergeError> {
    match ty {
        ObjType::Map | ObjType::Table => {
            let keys: Vec<String> = tx.keys_at(old, heads).collect();
            for k in keys {
                let Some((value, id)) = tx.get_at(old, k.as_str(), heads)?.map(|(v, id)| (v.to_owned(), id)) else {
                    continue;
                };
                match value {
                    Value::Scalar(s) => tx.put(new, k.as_str(), s.into_owned())?,
                    Value::Object(ty) => {
                        let child = tx.put_object(new, k.as_str(), ty)?;
                        copy_obj(tx, &child, ty, &id, heads)?;
                    }
                }
            }
        }
        ObjType::List => {
            for i in 0..tx.length_at(old, heads) {
                insert_old_element(tx, new, old, i, heads)?;
            }
        }
        ObjType::Text => {
            let text = tx.text_at(old, heads)?;
            tx.splice_text(new, 0, 0, &text)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod inspect_tests {
    use meridian_protocol::automerge::transaction::CommitOptions;
    use proptest::prelude::*;

    use super::*;

    /// One random edit of a small document with text, a list, a map and a counter.
    #[derive(Clone, Debug)]
    enum Edit {
        Put(u8, i64),
        Delete(u8),
        Splice(usize, usize, String),
        Push(i64),
        Pop,
        Count(i64),
        Nested(u8, String),
    }

    fn edit() -> impl Strategy<Value = Edit> {
        prop_oneof![
            (0u8..4, any::<i64>()).prop_map(|(k, v)| Edit::Put(k, v)),
            (0u8..4).prop_map(Edit::Delete),
            (0usize..20, 0usize..4, "[a-zé😀 ]{0,4}").prop_map(|(i, d, t)| Edit::Splice(i, d, t)),
            any::<i64>().prop_map(Edit::Push),
            Just(Edit::Pop),
            (-5i64..5).prop_map(Edit::Count),
            (0u8..3, "[a-z]{0,3}").prop_map(|(k, v)| Edit::Nested(k, v)),
        ]
    }

    fn apply(doc: &mut Automerge, e: &Edit) {
        let mut tx = doc.transaction();
        let text = match tx.get(ROOT, "text").unwrap() {
            Some((Value::Object(ObjType::Text), id)) => id,
            _ => tx.put_object(ROOT, "text", ObjType::Text).unwrap(),
        };
        let list = match tx.get(ROOT, "list").unwrap() {
            Some((Value::Object(ObjType::List), id)) => id,
            _ => tx.put_object(ROOT, "list", ObjType::List).unwrap(),
        };
        match e {
            Edit::Put(k, v) => tx.put(ROOT, format!("k{k}"), *v).unwrap(),
            Edit::Delete(k) => {
                let _ = tx.delete(ROOT, format!("k{k}"));
            }
            Edit::Splice(i, d, t) => {
                let len = tx.length(&text);
                let i = (*i).min(len);
                let d = (*d).min(len - i);
                tx.splice_text(&text, i, d as isize, t).unwrap();
            }
            Edit::Push(v) => {
                let len = tx.length(&list);
                tx.insert(&list, len, *v).unwrap();
            }
            Edit::Pop => {
                let len = tx.length(&list);
                if len > 0 {
                    tx.delete(&list, len - 1).unwrap();
                }
            }
            Edit::Count(by) => match tx.get(ROOT, "n").unwrap() {
                Some((Value::Scalar(s), _)) if matches!(s.as_ref(), ScalarValue::Counter(_)) => {
                    tx.increment(ROOT, "n", *by).unwrap()
                }
                _ => tx.put(ROOT, "n", ScalarValue::counter(*by)).unwrap(),
            },
            Edit::Nested(k, v) => {
                let m = tx.put_object(ROOT, format!("m{k}"), ObjType::Map).unwrap();
                tx.put(&m, "v", v.as_str()).unwrap();
            }
        }
        tx.commit_with(CommitOptions::default().with_message("edit"));
    }

    proptest! {
        /// Rolling back to any earlier version gives exactly that version's
        /// value, as one new change on top of the history.
        #[test]
        fn rollback_restores_any_earlier_version(
            edits in prop::collection::vec(edit(), 1..25),
            concurrent in prop::collection::vec(edit(), 0..8),
            fork_at in any::<prop::sample::Index>(),
            pick in any::<prop::sample::Index>(),
        ) {
            let mut doc = Automerge::new();
            let mut versions = Vec::new();
            let fork_at = fork_at.index(edits.len());
            let mut other = None;
            for (i, e) in edits.iter().enumerate() {
                apply(&mut doc, e);
                versions.push(doc.get_heads());
                if i == fork_at {
                    // Another replica edits concurrently from here.
                    let mut fork = doc.fork();
                    for e in &concurrent {
                        apply(&mut fork, e);
                        versions.push(fork.get_heads());
                    }
                    other = Some(fork);
                }
            }
            if let Some(mut fork) = other {
                doc.merge(&mut fork).unwrap();
                versions.push(doc.get_heads());
            }
            let target = versions[pick.index(versions.len())].clone();
            let before = doc.get_changes(&[]).len();
            let expected = json_at(&doc, &target).unwrap();
            let mut tx = doc.transaction();
            rollback(&mut tx, &target).unwrap();
            tx.commit();
            prop_assert_eq!(to_json(&doc), expected);
            prop_assert!(doc.get_changes(&[]).len() <= before + 1);
        }
    }

    #[test]
    fn heads_resolve_from_unique_prefixes_and_bad_specs_are_clear_errors() {
        let mut doc = Automerge::new();
        apply(&mut doc, &Edit::Put(0, 1));
        apply(&mut doc, &Edit::Put(1, 2));
        let hist = history(&doc);
        assert_eq!(hist.len(), 2);
        assert_eq!(hist[0].message.as_deref(), Some("edit"));
        let h = &hist[1].hash;
        assert_eq!(resolve_heads(&doc, &h[..10]).unwrap(), doc.get_heads());
        assert_eq!(resolve_heads(&doc, h).unwrap(), doc.get_heads());
        assert!(resolve_heads(&doc, "abc").unwrap_err().to_string().contains("at least 6"));
        assert!(resolve_heads(&doc, "zzzzzzzz").unwrap_err().to_string().contains("not a change hash"));
        assert!(
            resolve_heads(&doc, "ffffffffff").is_err_and(|e| e.to_string().contains("no change"))
                || h.starts_with("ffffffffff")
        );
        assert!(resolve_heads(&doc, " , ").unwrap_err().to_string().contains("no change hash"));
        assert_eq!(
            json_at(&doc, &resolve_heads(&doc, &hist[0].hash).unwrap()).unwrap(),
            serde_json::json!({"k0": 1, "text": "", "list": []})
        );
    }
}
