//! Paths into documents, and JSON and CBOR for what is not a document
//! value (history entries, ephemeral messages). Document values go through
//! [`crate::values`], losslessly.

use automerge::AutomergeError;
use automerge::{ObjId, Prop, ReadDoc, Value};
use serde_json::{Map, Number, Value as Json};
use wasm_bindgen::prelude::*;

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
