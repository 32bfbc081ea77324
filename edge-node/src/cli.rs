//! Document operations behind `meridian-edge client …` (device scripts):
//! JSON values at dotted paths, text appends, and JSON rendering.

use meridian_protocol::automerge::transaction::{Transactable, Transaction};
use meridian_protocol::automerge::{
    AutoSerde, Automerge, AutomergeError, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, Value,
};
use serde_json::Value as Json;

/// A path like `title` or `meta.tags.0`: map keys, or list indexes where
/// the parent is a list.
pub fn parse_path(path: &str) -> Result<Vec<String>, String> {
    let parts: Vec<String> = path.split('.').map(str::to_owned).collect();
    if parts.iter().any(String::is_empty) {
        return Err(format!("bad path `{path}`: use keys separated by dots, e.g. meta.title"));
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
