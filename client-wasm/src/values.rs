//! Document values between JavaScript and Automerge, losslessly, the way
//! `@automerge/automerge` 3 maps them:
//!
//! | JavaScript                      | Automerge                 |
//! |---------------------------------|---------------------------|
//! | `string`                        | text (can be spliced)     |
//! | `ImmutableString`               | scalar string             |
//! | `number` (whole / fractional)   | int / f64 (uint is read)  |
//! | `boolean`, `null`               | boolean, null             |
//! | `Counter`                       | counter                   |
//! | `Date`                          | timestamp (milliseconds)  |
//! | `Uint8Array`                    | bytes                     |
//! | array / plain object            | list / map                |
//!
//! `Counter` and `ImmutableString` are the package's classes
//! (`index.js`), registered once with [`set_value_types`].

use std::cell::Cell;

use automerge::transaction::Transactable;
use automerge::{AutomergeError, ObjId, ObjType, Patch, PatchAction, Prop, ReadDoc, ScalarValue, Value, ValueRef};
use js_sys::{Array, Function, Object, Reflect, Uint8Array};
use wasm_bindgen::prelude::*;

/// Objects nested deeper than this are refused (a cycle would otherwise
/// recurse for ever).
const MAX_DEPTH: usize = 100;

/// `Number.MAX_SAFE_INTEGER`.
const MAX_SAFE: u64 = (1 << 53) - 1;

#[wasm_bindgen(inline_js = r#"
let C = null, S = null;
export function setTypes(c, s) { C = c; S = s; }
// The symbols @automerge/automerge marks its value classes with: its own
// Counter, ImmutableString, Int, Uint and Float64 are recognised too.
const COUNTER = Symbol.for("_am_counter"), STRING = Symbol.for("_am_immutableString");
const INT = Symbol.for("_am_int"), UINT = Symbol.for("_am_uint"), F64 = Symbol.for("_am_f64");
// 0 null, 1 boolean, 2 number, 3 string, 4 bytes, 5 date, 6 counter,
// 7 immutable string, 8 array, 9 plain object, 10 undefined, 11 other,
// 12 int, 13 uint, 14 f64, 15 bigint, 16 an object of another class.
export function kindOf(v) {
  if (v === null) return 0;
  switch (typeof v) {
    case "boolean": return 1;
    case "number": return 2;
    case "string": return 3;
    case "undefined": return 10;
    case "bigint": return 15;
    case "object":
      if (Array.isArray(v)) return 8;
      if (v instanceof Uint8Array) return 4;
      if (v instanceof Date) return 5;
      if (v[COUNTER] === true) return 6;
      if (v[STRING] === true) return 7;
      if (v[INT] === true) return 12;
      if (v[UINT] === true) return 13;
      if (v[F64] === true) return 14;
      const proto = Object.getPrototypeOf(v);
      return proto === Object.prototype || proto === null ? 9 : 16;
    default: return 11;
  }
}
export function numberValue(v) { return Number(v.value); }
export function bigintValue(v) { return BigInt.asIntN(64, v) === v ? String(v) : ""; }
export function className(v) { return v?.constructor?.name || "object"; }
export function stringValue(v) { return String(v.val); }
export function newCounter(n) { return new C(n); }
export function newString(s) { return new S(s); }
"#)]
extern "C" {
    #[wasm_bindgen(js_name = setTypes)]
    fn set_types(counter: &Function, immutable_string: &Function);
    #[wasm_bindgen(js_name = kindOf)]
    fn kind_of(v: &JsValue) -> u8;
    #[wasm_bindgen(js_name = numberValue)]
    fn number_value(v: &JsValue) -> f64;
    #[wasm_bindgen(js_name = stringValue)]
    fn string_value(v: &JsValue) -> String;
    #[wasm_bindgen(js_name = bigintValue)]
    fn bigint_value(v: &JsValue) -> String;
    #[wasm_bindgen(js_name = className)]
    fn class_name(v: &JsValue) -> String;
    #[wasm_bindgen(js_name = newCounter)]
    fn new_counter(n: f64) -> JsValue;
    #[wasm_bindgen(js_name = newString)]
    fn new_string(s: &str) -> JsValue;
}

thread_local! {
    static REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// Registers the package's `Counter` and `ImmutableString` classes
/// (`index.js` does this once, at load).
#[wasm_bindgen(js_name = setValueTypes)]
pub fn set_value_types(counter: Function, immutable_string: Function) {
    set_types(&counter, &immutable_string);
    REGISTERED.with(|r| r.set(true));
}

fn registered() -> bool {
    REGISTERED.with(Cell::get)
}

/// A value read from JavaScript, checked, ready to write.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Scalar(ScalarValue),
    Text(String),
    List(Vec<Val>),
    Map(Vec<(String, Val)>),
}

/// Reads a JavaScript value to write into a document.
pub fn val_from_js(v: &JsValue) -> Result<Val, JsError> {
    read(v, 0, &mut Vec::new())
}

fn read(v: &JsValue, depth: usize, at: &mut Vec<String>) -> Result<Val, JsError> {
    let refuse =
        |what: &str, at: &[String]| JsError::new(&format!("{what}{} cannot be stored in a document", place(at)));
    if depth > MAX_DEPTH {
        return Err(JsError::new(&format!(
            "value nested more than {MAX_DEPTH} levels deep (a cycle?) cannot be stored in a document"
        )));
    }
    Ok(match kind_of(v) {
        0 => Val::Scalar(ScalarValue::Null),
        1 => Val::Scalar(ScalarValue::Boolean(v.is_truthy())),
        2 => {
            // As automerge: whole numbers are ints, the rest (NaN and the
            // infinities too) f64.
            let n = v.as_f64().unwrap_or(f64::NAN);
            if n.fract() == 0.0 && n.abs() < 2f64.powi(63) {
                Val::Scalar(ScalarValue::Int(n as i64))
            } else {
                Val::Scalar(ScalarValue::F64(n))
            }
        }
        15 => match bigint_value(v).parse::<i64>() {
            Ok(i) => Val::Scalar(ScalarValue::Int(i)),
            Err(_) => return Err(refuse("a BigInt beyond 64 bits", at)),
        },
        3 => Val::Text(v.as_string().unwrap_or_default()),
        4 => Val::Scalar(ScalarValue::Bytes(Uint8Array::from(v.clone()).to_vec())),
        5 => {
            let t = js_sys::Date::from(v.clone()).get_time();
            if !t.is_finite() {
                return Err(refuse("an invalid Date", at));
            }
            Val::Scalar(ScalarValue::Timestamp(t as i64))
        }
        6 => Val::Scalar(ScalarValue::counter(whole(number_value(v), "a Counter", at)?)),
        12 => Val::Scalar(ScalarValue::Int(whole(number_value(v), "an Int", at)?)),
        13 => Val::Scalar(ScalarValue::Uint(
            u64::try_from(whole(number_value(v), "a Uint", at)?).map_err(|_| refuse("a negative Uint", at))?,
        )),
        14 => Val::Scalar(ScalarValue::F64(number_value(v))),
        7 => Val::Scalar(ScalarValue::Str(string_value(v).into())),
        8 => {
            let items = Array::from(v);
            let mut out = Vec::with_capacity(items.length() as usize);
            for (i, item) in items.iter().enumerate() {
                at.push(i.to_string());
                out.push(read(&item, depth + 1, at)?);
                at.pop();
            }
            Val::List(out)
        }
        9 => {
            let mut out = Vec::new();
            for entry in Object::entries(v.unchecked_ref::<Object>()).iter() {
                let entry = Array::from(&entry);
                let key = entry.get(0).as_string().unwrap_or_default();
                if key == "__proto__" {
                    return Err(refuse("the key \"__proto__\"", at));
                }
                at.push(key.clone());
                let value = read(&entry.get(1), depth + 1, at)?;
                at.pop();
                out.push((key, value));
            }
            Val::Map(out)
        }
        10 => return Err(refuse("undefined", at)),
        16 => return Err(refuse(&format!("a {} (only plain objects, arrays and the value types)", class_name(v)), at)),
        _ => return Err(refuse(&format!("a {}", v.js_typeof().as_string().unwrap_or_default()), at)),
    })
}

/// A whole number that fits, for a counter or an integer.
fn whole(n: f64, what: &str, at: &[String]) -> Result<i64, JsError> {
    if n.is_finite() && n.fract() == 0.0 && n.abs() < 2f64.powi(63) {
        Ok(n as i64)
    } else {
        Err(JsError::new(&format!("{what} of {n}{} is not a whole number", place(at))))
    }
}

/// " at a.b.0" for a value inside another, nothing for the value itself.
fn place(at: &[String]) -> String {
    if at.is_empty() { String::new() } else { format!(" at {}", at.join(".")) }
}

/// Where a value goes: a map key or list index is set, or it is inserted
/// into a list.
#[derive(Debug)]
pub enum Place {
    Put(Prop),
    Insert(usize),
}

/// Writes a value (recursively) at `place` in `obj`.
pub fn write<T: Transactable>(tx: &mut T, obj: &ObjId, place: Place, v: &Val) -> Result<(), AutomergeError> {
    let ty = match v {
        Val::Scalar(s) => {
            return match place {
                Place::Put(p) => tx.put(obj, p, s.clone()),
                Place::Insert(i) => tx.insert(obj, i, s.clone()),
            };
        }
        Val::Map(_) => ObjType::Map,
        Val::List(_) => ObjType::List,
        Val::Text(_) => ObjType::Text,
    };
    let id = match place {
        Place::Put(p) => tx.put_object(obj, p, ty)?,
        Place::Insert(i) => tx.insert_object(obj, i, ty)?,
    };
    match v {
        Val::Map(fields) => {
            for (k, v) in fields {
                write(tx, &id, Place::Put(Prop::Map(k.clone())), v)?;
            }
        }
        Val::List(items) => {
            for (i, v) in items.iter().enumerate() {
                write(tx, &id, Place::Insert(i), v)?;
            }
        }
        Val::Text(s) if !s.is_empty() => tx.splice_text(&id, 0, 0, s)?,
        _ => {}
    }
    Ok(())
}

// ----- Automerge -> JavaScript ----------------------------------------------

/// The whole document as JavaScript values, maps and lists frozen (the
/// same object is handed out until the document changes, so nobody may
/// edit it in place; edits go through a change).
pub fn doc_to_js<R: ReadDoc>(doc: &R) -> JsValue {
    obj_to_js(doc, &automerge::ROOT, ObjType::Map)
}

fn obj_to_js<R: ReadDoc>(doc: &R, obj: &ObjId, ty: ObjType) -> JsValue {
    match ty {
        ObjType::Map | ObjType::Table => {
            let out = Object::new();
            for item in doc.map_range(obj, ..) {
                let v = value_ref_to_js(doc, &item.value, || item.id());
                if item.key == "__proto__" {
                    // A key, not the object's prototype.
                    let d = Object::new();
                    let _ = Reflect::set(&d, &"value".into(), &v);
                    let _ = Reflect::set(&d, &"enumerable".into(), &JsValue::TRUE);
                    let _ = Reflect::define_property(&out, &JsValue::from_str(&item.key), &d);
                } else {
                    let _ = Reflect::set(&out, &JsValue::from_str(&item.key), &v);
                }
            }
            Object::freeze(&out).into()
        }
        ObjType::List => {
            let out = Array::new();
            for item in doc.list_range(obj, ..) {
                out.push(&value_ref_to_js(doc, &item.value, || item.id()));
            }
            Object::freeze(&out).into()
        }
        ObjType::Text => JsValue::from_str(&doc.text(obj).unwrap_or_default()),
    }
}

fn value_ref_to_js<R: ReadDoc>(doc: &R, v: &ValueRef<'_>, id: impl FnOnce() -> ObjId) -> JsValue {
    match v {
        ValueRef::Object(ty) => obj_to_js(doc, &id(), *ty),
        ValueRef::Scalar(s) => scalar_to_js(&ScalarValue::from(s)),
    }
}

/// A scalar as JavaScript: counters as `Counter`, scalar strings as
/// `ImmutableString` (plain values if the classes are not registered).
pub fn scalar_to_js(s: &ScalarValue) -> JsValue {
    match s {
        ScalarValue::Str(s) if registered() => new_string(s),
        ScalarValue::Str(s) => JsValue::from_str(s),
        // Beyond 2^53 a number would round: a BigInt, as automerge gives.
        ScalarValue::Int(i) if i.unsigned_abs() > MAX_SAFE => js_sys::BigInt::from(*i).into(),
        ScalarValue::Int(i) => JsValue::from_f64(*i as f64),
        ScalarValue::Uint(u) if *u > MAX_SAFE => js_sys::BigInt::from(*u).into(),
        ScalarValue::Uint(u) => JsValue::from_f64(*u as f64),
        ScalarValue::F64(f) => JsValue::from_f64(*f),
        ScalarValue::Counter(c) if registered() => new_counter(i64::from(c) as f64),
        ScalarValue::Counter(c) => JsValue::from_f64(i64::from(c) as f64),
        ScalarValue::Timestamp(t) => js_sys::Date::new(&JsValue::from_f64(*t as f64)).into(),
        ScalarValue::Boolean(b) => JsValue::from_bool(*b),
        ScalarValue::Bytes(b) => Uint8Array::from(b.as_slice()).into(),
        ScalarValue::Null | ScalarValue::Unknown { .. } => JsValue::NULL,
    }
}

// ----- patches --------------------------------------------------------------

/// Patches in the shape `@automerge/automerge` uses: `{ action, path, ... }`
/// with `action` one of put, insert, splice, inc, del, conflict, mark.
/// Text positions are UTF-16 code units.
pub fn patches_to_js(patches: &[Patch]) -> JsValue {
    patches.iter().map(patch_to_js).collect::<Array>().into()
}

fn patch_to_js(p: &Patch) -> JsValue {
    let path: Array = p.path.iter().map(|(_, prop)| prop_to_js(prop)).collect();
    let out = Object::new();
    let set = |k: &str, v: &JsValue| {
        let _ = Reflect::set(&out, &JsValue::from_str(k), v);
    };
    let action = match &p.action {
        PatchAction::PutMap { key, value, conflict } => {
            path.push(&JsValue::from_str(key));
            set("value", &value_to_js(&value.0));
            if *conflict {
                set("conflict", &JsValue::TRUE);
            }
            "put"
        }
        PatchAction::PutSeq { index, value, conflict } => {
            path.push(&JsValue::from_f64(*index as f64));
            set("value", &value_to_js(&value.0));
            if *conflict {
                set("conflict", &JsValue::TRUE);
            }
            "put"
        }
        PatchAction::Insert { index, values } => {
            path.push(&JsValue::from_f64(*index as f64));
            set("values", &values.iter().map(|(v, _, _)| value_to_js(v)).collect::<Array>());
            "insert"
        }
        PatchAction::SpliceText { index, value, .. } => {
            path.push(&JsValue::from_f64(*index as f64));
            set("value", &JsValue::from_str(&value.make_string()));
            "splice"
        }
        PatchAction::Increment { prop, value } => {
            path.push(&prop_to_js(prop));
            set("value", &JsValue::from_f64(*value as f64));
            "inc"
        }
        PatchAction::DeleteMap { key } => {
            path.push(&JsValue::from_str(key));
            "del"
        }
        PatchAction::DeleteSeq { index, length } => {
            path.push(&JsValue::from_f64(*index as f64));
            if *length > 1 {
                set("length", &JsValue::from_f64(*length as f64));
            }
            "del"
        }
        PatchAction::Conflict { prop } => {
            path.push(&prop_to_js(prop));
            "conflict"
        }
        PatchAction::Mark { .. } => "mark",
    };
    set("action", &JsValue::from_str(action));
    set("path", &path);
    out.into()
}

fn prop_to_js(p: &Prop) -> JsValue {
    match p {
        Prop::Map(k) => JsValue::from_str(k),
        Prop::Seq(i) => JsValue::from_f64(*i as f64),
    }
}

/// A value in a patch: objects appear empty (later patches fill them).
fn value_to_js(v: &Value<'_>) -> JsValue {
    match v {
        Value::Object(ObjType::Map | ObjType::Table) => Object::new().into(),
        Value::Object(ObjType::List) => Array::new().into(),
        Value::Object(ObjType::Text) => JsValue::from_str(""),
        Value::Scalar(s) => scalar_to_js(s),
    }
}
