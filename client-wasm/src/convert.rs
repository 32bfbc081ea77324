//! Values between JavaScript, JSON, Automerge and CBOR.
//!
//! JavaScript values cross the boundary as JSON (`JSON.stringify` /
//! `JSON.parse`), which keeps the binding small. Strings written by the
//! application become Automerge text objects (as in `@automerge/automerge`
//! 3, so they can be spliced); `{ "__counter": n }` (what `new Counter(n)`
//! in `index.js` serialises to) becomes a counter.

use automerge::transaction::Transactable;
use automerge::{AutomergeError, Patch, PatchAction};
use automerge::{ObjId, ObjType, Prop, ReadDoc, ScalarValue, Value, ValueRef};
use serde_json::{Map, Number, Value as Json};
use wasm_bindgen::prelude::*;

/// The key `new Counter(n)` serialises to.
const COUNTER_KEY: &str = "__counter";

// ----- JavaScript <-> JSON ------------------------------------------------

pub fn json_from_js(v: &JsValue) -> Result<Json, JsError> {
    if v.is_undefined() {
        return Ok(Json::Null);
    }
    let text = js_sys::JSON::stringify(v).map_err(|_| JsError::new("value is not JSON-serialisable"))?;
    let text = text.as_string().ok_or_else(|| JsError::new("value is not JSON-serialisable"))?;
    serde_json::from_str(&text).map_err(|e| JsError::new(&format!("value is not JSON: {e}")))
}

pub fn js_from_json(v: &Json) -> JsValue {
    // Serialising a `serde_json::Value` cannot fail.
    let text = serde_json::to_string(v).unwrap_or_else(|_| "null".into());
    js_sys::JSON::parse(&text).unwrap_or(JsValue::NULL)
}

// ----- paths --------------------------------------------------------------

/// A path into a document: `"title"` or `["todos", 0, "done"]`.
pub fn path_from_js(v: &JsValue) -> Result<Vec<Prop>, JsError> {
    if let Some(key) = v.as_string() {
        return Ok(vec![Prop::Map(key)]);
    }
    if !js_sys::Array::is_array(v) {
        return Err(JsError::new("a path is a key or an array of keys and indexes"));
    }
    js_sys::Array::from(v)
        .iter()
        .map(|p| match (p.as_string(), p.as_f64()) {
            (Some(k), _) => Ok(Prop::Map(k)),
            (None, Some(i)) if i >= 0.0 && i.fract() == 0.0 => Ok(Prop::Seq(i as usize)),
            _ => Err(JsError::new("path elements are strings (map keys) or non-negative integers (list indexes)")),
        })
        .collect()
}

/// The object at `path` (which must be an object, not a scalar).
pub fn resolve_obj<R: ReadDoc>(doc: &R, path: &[Prop]) -> Result<ObjId, AutomergeError> {
    let mut obj = automerge::ROOT;
    for prop in path {
        match doc.get(&obj, prop.clone())? {
            Some((Value::Object(_), id)) => obj = id,
            _ => return Err(AutomergeError::InvalidObjId(format!("no object at {prop:?}"))),
        }
    }
    Ok(obj)
}

/// The parent object of `path` and the last element.
pub fn resolve_parent<R: ReadDoc>(doc: &R, path: &[Prop]) -> Result<(ObjId, Prop), AutomergeError> {
    let (last, parent) = path.split_last().ok_or_else(|| AutomergeError::InvalidObjId("empty path".into()))?;
    Ok((resolve_obj(doc, parent)?, last.clone()))
}

// ----- JSON -> Automerge ----------------------------------------------------

/// Where a value goes: a map key or list index is set, or it is inserted
/// into a list.
#[derive(Debug)]
pub enum Place {
    Put(Prop),
    Insert(usize),
}

/// Writes a JSON value (recursively) at `place` in `obj`.
pub fn write_json<T: Transactable>(tx: &mut T, obj: &ObjId, place: Place, v: &Json) -> Result<(), AutomergeError> {
    let ty = match v {
        Json::Object(m) if counter_value(m).is_some() => None,
        Json::Object(_) => Some(ObjType::Map),
        Json::Array(_) => Some(ObjType::List),
        Json::String(_) => Some(ObjType::Text),
        _ => None,
    };
    let Some(ty) = ty else {
        let s = scalar(v);
        return match place {
            Place::Put(p) => tx.put(obj, p, s),
            Place::Insert(i) => tx.insert(obj, i, s),
        };
    };
    let id = match place {
        Place::Put(p) => tx.put_object(obj, p, ty)?,
        Place::Insert(i) => tx.insert_object(obj, i, ty)?,
    };
    match v {
        Json::Object(m) => {
            for (k, v) in m {
                write_json(tx, &id, Place::Put(Prop::Map(k.clone())), v)?;
            }
        }
        Json::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                write_json(tx, &id, Place::Insert(i), v)?;
            }
        }
        Json::String(s) => tx.splice_text(&id, 0, 0, s)?,
        _ => {}
    }
    Ok(())
}

fn counter_value(m: &Map<String, Json>) -> Option<i64> {
    if m.len() != 1 {
        return None;
    }
    m.get(COUNTER_KEY)?.as_f64().map(|n| n as i64)
}

fn scalar(v: &Json) -> ScalarValue {
    match v {
        Json::Null => ScalarValue::Null,
        Json::Bool(b) => ScalarValue::Boolean(*b),
        Json::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => ScalarValue::Int(i),
            (None, Some(u), _) => ScalarValue::Uint(u),
            (_, _, f) => ScalarValue::F64(f.unwrap_or(0.0)),
        },
        Json::Object(m) => ScalarValue::counter(counter_value(m).unwrap_or(0)),
        // Strings and containers are objects; not reached.
        Json::String(s) => ScalarValue::Str(s.as_str().into()),
        Json::Array(_) => ScalarValue::Null,
    }
}

// ----- Automerge -> JSON ----------------------------------------------------

/// The whole document as plain JSON.
pub fn doc_to_json<R: ReadDoc>(doc: &R) -> Json {
    obj_to_json(doc, &automerge::ROOT, ObjType::Map)
}

fn obj_to_json<R: ReadDoc>(doc: &R, obj: &ObjId, ty: ObjType) -> Json {
    match ty {
        ObjType::Map | ObjType::Table => {
            let mut m = Map::new();
            for item in doc.map_range(obj, ..) {
                let v = value_ref_to_json(doc, &item.value, || item.id());
                m.insert(item.key.into_owned(), v);
            }
            Json::Object(m)
        }
        ObjType::List => {
            Json::Array(doc.list_range(obj, ..).map(|item| value_ref_to_json(doc, &item.value, || item.id())).collect())
        }
        ObjType::Text => Json::String(doc.text(obj).unwrap_or_default()),
    }
}

fn value_ref_to_json<R: ReadDoc>(doc: &R, v: &ValueRef<'_>, id: impl FnOnce() -> ObjId) -> Json {
    match v {
        ValueRef::Object(ty) => obj_to_json(doc, &id(), *ty),
        ValueRef::Scalar(s) => scalar_to_json(&ScalarValue::from(s)),
    }
}

pub fn scalar_to_json(s: &ScalarValue) -> Json {
    match s {
        ScalarValue::Str(s) => Json::String(s.to_string()),
        ScalarValue::Int(i) => Json::from(*i),
        ScalarValue::Uint(u) => Json::from(*u),
        ScalarValue::F64(f) => Number::from_f64(*f).map_or(Json::Null, Json::Number),
        ScalarValue::Counter(c) => Json::from(i64::from(c)),
        ScalarValue::Timestamp(t) => Json::from(*t),
        ScalarValue::Boolean(b) => Json::Bool(*b),
        ScalarValue::Bytes(b) => Json::Array(b.iter().map(|x| Json::from(*x)).collect()),
        ScalarValue::Null | ScalarValue::Unknown { .. } => Json::Null,
    }
}

// ----- patches --------------------------------------------------------------

/// Patches in the shape `@automerge/automerge` uses: `{ action, path, ... }`
/// with `action` one of put, insert, splice, inc, del, conflict, mark.
/// Text positions are UTF-16 code units.
pub fn patches_to_json(patches: &[Patch]) -> Json {
    Json::Array(patches.iter().map(patch_to_json).collect())
}

fn patch_to_json(p: &Patch) -> Json {
    let mut path: Vec<Json> = p.path.iter().map(|(_, prop)| prop_to_json(prop)).collect();
    let mut out = Map::new();
    let action = match &p.action {
        PatchAction::PutMap { key, value, conflict } => {
            path.push(Json::from(key.as_str()));
            out.insert("value".into(), value_to_json(&value.0));
            if *conflict {
                out.insert("conflict".into(), Json::Bool(true));
            }
            "put"
        }
        PatchAction::PutSeq { index, value, conflict } => {
            path.push(Json::from(*index));
            out.insert("value".into(), value_to_json(&value.0));
            if *conflict {
                out.insert("conflict".into(), Json::Bool(true));
            }
            "put"
        }
        PatchAction::Insert { index, values } => {
            path.push(Json::from(*index));
            out.insert("values".into(), Json::Array(values.iter().map(|(v, _, _)| value_to_json(v)).collect()));
            "insert"
        }
        PatchAction::SpliceText { index, value, .. } => {
            path.push(Json::from(*index));
            out.insert("value".into(), Json::String(value.make_string()));
            "splice"
        }
        PatchAction::Increment { prop, value } => {
            path.push(prop_to_json(prop));
            out.insert("value".into(), Json::from(*value));
            "inc"
        }
        PatchAction::DeleteMap { key } => {
            path.push(Json::from(key.as_str()));
            "del"
        }
        PatchAction::DeleteSeq { index, length } => {
            path.push(Json::from(*index));
            if *length > 1 {
                out.insert("length".into(), Json::from(*length));
            }
            "del"
        }
        PatchAction::Conflict { prop } => {
            path.push(prop_to_json(prop));
            "conflict"
        }
        PatchAction::Mark { .. } => "mark",
    };
    out.insert("action".into(), Json::from(action));
    out.insert("path".into(), Json::Array(path));
    Json::Object(out)
}

fn prop_to_json(p: &Prop) -> Json {
    match p {
        Prop::Map(k) => Json::from(k.as_str()),
        Prop::Seq(i) => Json::from(*i),
    }
}

/// A value in a patch: objects appear empty (later patches fill them).
fn value_to_json(v: &Value<'_>) -> Json {
    match v {
        Value::Object(ObjType::Map | ObjType::Table) => Json::Object(Map::new()),
        Value::Object(ObjType::List) => Json::Array(Vec::new()),
        Value::Object(ObjType::Text) => Json::String(String::new()),
        Value::Scalar(s) => scalar_to_json(s),
    }
}

// ----- CBOR (ephemeral messages) ------------------------------------------

/// Encodes a JSON value as CBOR, the way `cbor-x` encodes the same
/// JavaScript value closely enough for automerge-repo peers to decode it.
pub fn cbor_from_json(v: &Json) -> Vec<u8> {
    let mut e = minicbor::Encoder::new(Vec::new());
    encode_json(&mut e, v);
    e.into_writer()
}

fn encode_json(e: &mut minicbor::Encoder<Vec<u8>>, v: &Json) {
    // Writing into a Vec cannot fail.
    let _ = match v {
        Json::Null => e.null().map(drop),
        Json::Bool(b) => e.bool(*b).map(drop),
        Json::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => e.u64(u).map(drop),
            (None, Some(i), _) => e.i64(i).map(drop),
            (_, _, f) => e.f64(f.unwrap_or(0.0)).map(drop),
        },
        Json::String(s) => e.str(s).map(drop),
        Json::Array(items) => {
            let _ = e.array(items.len() as u64);
            for item in items {
                encode_json(e, item);
            }
            Ok(())
        }
        Json::Object(m) => {
            let _ = e.map(m.len() as u64);
            for (k, v) in m {
                let _ = e.str(k);
                encode_json(e, v);
            }
            Ok(())
        }
    };
}

/// Decodes CBOR (as written by `cbor-x` or [`cbor_from_json`]) into JSON;
/// byte strings become arrays of numbers, tags are unwrapped.
pub fn json_from_cbor(bytes: &[u8]) -> Result<Json, minicbor::decode::Error> {
    decode_json(&mut minicbor::Decoder::new(bytes), 0)
}

fn decode_json(d: &mut minicbor::Decoder<'_>, depth: usize) -> Result<Json, minicbor::decode::Error> {
    use minicbor::data::Type;
    if depth > 64 {
        return Err(minicbor::decode::Error::message("CBOR nested too deeply"));
    }
    Ok(match d.datatype()? {
        Type::Null | Type::Undefined => {
            d.skip()?;
            Json::Null
        }
        Type::Bool => Json::Bool(d.bool()?),
        Type::U8 | Type::U16 | Type::U32 | Type::U64 => Json::from(d.u64()?),
        Type::I8 | Type::I16 | Type::I32 | Type::I64 => Json::from(d.i64()?),
        Type::Int => Json::from(i64::try_from(d.int()?).unwrap_or(i64::MIN)),
        Type::F16 | Type::F32 => Number::from_f64(f64::from(d.f32()?)).map_or(Json::Null, Json::Number),
        Type::F64 => Number::from_f64(d.f64()?).map_or(Json::Null, Json::Number),
        Type::String => Json::String(d.str()?.to_owned()),
        Type::Bytes => Json::Array(d.bytes()?.iter().map(|b| Json::from(*b)).collect()),
        Type::Array => {
            let n =
                d.array()?.ok_or_else(|| minicbor::decode::Error::message("indefinite arrays are not supported"))?;
            (0..n).map(|_| decode_json(d, depth + 1)).collect::<Result<Vec<_>, _>>().map(Json::Array)?
        }
        Type::Map => {
            let n = d.map()?.ok_or_else(|| minicbor::decode::Error::message("indefinite maps are not supported"))?;
            let mut m = Map::new();
            for _ in 0..n {
                let k = match decode_json(d, depth + 1)? {
                    Json::String(s) => s,
                    other => other.to_string(),
                };
                m.insert(k, decode_json(d, depth + 1)?);
            }
            Json::Object(m)
        }
        Type::Tag => {
            d.tag()?;
            decode_json(d, depth + 1)?
        }
        _ => {
            d.skip()?;
            Json::Null
        }
    })
}
