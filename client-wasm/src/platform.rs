//! The few globals the client needs, bound so that they work in browsers
//! and in Node 20 alike (no `window`): timers, a monotonic clock, random
//! numbers and the `online`/`offline` events.

use js_sys::{Function, Reflect};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_name = setTimeout)]
    fn set_timeout(cb: &Function, ms: f64) -> JsValue;
    #[wasm_bindgen(js_name = clearTimeout)]
    fn clear_timeout(id: &JsValue);
    #[wasm_bindgen(js_namespace = performance, js_name = now)]
    fn performance_now() -> f64;
}

/// Milliseconds on a monotonic clock.
pub fn now_ms() -> f64 {
    performance_now()
}

/// A random `u64` (seeds the engine's RNG; not for cryptography).
pub fn random_u64() -> u64 {
    let hi = (js_sys::Math::random() * 4_294_967_296.0) as u64;
    let lo = (js_sys::Math::random() * 4_294_967_296.0) as u64;
    (hi << 32) | lo
}

/// A one-shot timer, cancelled when dropped.
#[derive(Debug)]
pub struct Timer {
    id: JsValue,
    _callback: Closure<dyn FnMut()>,
}

impl Timer {
    pub fn once(ms: f64, f: impl FnMut() + 'static) -> Self {
        let callback = Closure::<dyn FnMut()>::new(f);
        let id = set_timeout(callback.as_ref().unchecked_ref(), ms);
        Self { id, _callback: callback }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        clear_timeout(&self.id);
    }
}

/// Listeners for the browser's `online` and `offline` events, removed when
/// dropped. `None` where the environment has no such events (Node).
#[derive(Debug)]
pub struct NetworkListener {
    target: JsValue,
    online: Closure<dyn FnMut()>,
    offline: Closure<dyn FnMut()>,
}

impl NetworkListener {
    pub fn install(online: impl FnMut() + 'static, offline: impl FnMut() + 'static) -> Option<Self> {
        let target: JsValue = js_sys::global().into();
        let add = Reflect::get(&target, &"addEventListener".into()).ok()?.dyn_into::<Function>().ok()?;
        // Node has `addEventListener` on nothing global; browsers and workers do.
        Reflect::get(&target, &"navigator".into()).ok().filter(|n| !n.is_undefined())?;
        let online = Closure::<dyn FnMut()>::new(online);
        let offline = Closure::<dyn FnMut()>::new(offline);
        add.call2(&target, &"online".into(), online.as_ref()).ok()?;
        add.call2(&target, &"offline".into(), offline.as_ref()).ok()?;
        Some(Self { target, online, offline })
    }
}

impl Drop for NetworkListener {
    fn drop(&mut self) {
        if let Ok(remove) =
            Reflect::get(&self.target, &"removeEventListener".into()).and_then(|f| f.dyn_into::<Function>())
        {
            let _ = remove.call2(&self.target, &"online".into(), self.online.as_ref());
            let _ = remove.call2(&self.target, &"offline".into(), self.offline.as_ref());
        }
    }
}

/// `navigator.onLine`, or `true` where there is no such thing.
pub fn navigator_online() -> bool {
    let global: JsValue = js_sys::global().into();
    Reflect::get(&global, &"navigator".into())
        .ok()
        .filter(|n| n.is_object())
        .and_then(|n| Reflect::get(&n, &"onLine".into()).ok())
        .and_then(|v| v.as_bool())
        .unwrap_or(true)
}
