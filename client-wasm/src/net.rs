//! The WebSocket transport: races every configured edge URL, keeps the one
//! that opens first (the lowest round trip) and closes the others,
//! reconnects with exponential backoff and full jitter, and follows the
//! browser's `online`/`offline` events. Frames go to and from the engine
//! unchanged; no protocol decision is made here.

use std::collections::BTreeMap;
use std::time::Duration;

use js_sys::{Array, Reflect, Uint8Array};
use meridian_protocol::backoff::Backoff;
use meridian_protocol::engine::{Direction, ErrorKind};
use meridian_protocol::ids::ConnId;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{BinaryType, MessageEvent, WebSocket};

use crate::driver::{Driver, drive};
use crate::platform::{self, Timer};

/// What the application sees of the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionState {
    /// Opening sockets, or waiting for the server's `peer` reply.
    Connecting,
    /// The handshake is done; documents sync.
    Connected,
    /// Waiting before the next attempt.
    Backoff,
    /// The browser says it is offline; we wait for `online`.
    Offline,
    /// No URLs were given: a local-only client.
    Local,
    Closed,
}

impl ConnectionState {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionState::Connecting => "connecting",
            ConnectionState::Connected => "connected",
            ConnectionState::Backoff => "backoff",
            ConnectionState::Offline => "offline",
            ConnectionState::Local => "local",
            ConnectionState::Closed => "closed",
        }
    }
}

/// One open (or opening) WebSocket and its handlers.
#[derive(Debug)]
struct Socket {
    ws: WebSocket,
    url: String,
    generation: u64,
    started: f64,
    _handlers: [Closure<dyn FnMut(JsValue)>; 3],
}

impl Socket {
    /// Detaches the handlers (so no event reaches a dropped closure) and
    /// closes the socket.
    fn discard(self) {
        self.ws.set_onopen(None);
        self.ws.set_onmessage(None);
        self.ws.set_onclose(None);
        // The error handler stays: a JavaScript no-op, not a Rust closure.
        // (Node's `ws` throws an 'error' nobody listens to, e.g. when a
        // socket still connecting is closed.)
        let _ = self.ws.close();
    }
}

#[derive(Debug)]
pub struct Net {
    urls: Vec<String>,
    ws_ctor: JsValue,
    backoff: Backoff,
    /// How long an open socket may stay silent before the handshake counts as failed.
    handshake_timeout_ms: f64,
    /// Fires if the server accepted the socket but never answered `join`.
    handshake_timer: Option<Timer>,
    state: ConnectionState,
    /// Sockets racing to open.
    attempts: Vec<Socket>,
    /// The socket in use and its engine connection.
    socket: Option<(Socket, ConnId)>,
    next_generation: u64,
    retry: Option<Timer>,
    /// What the browser says (`online`/`offline` events).
    online: bool,
    /// The application asked to stay offline (`goOffline()`).
    paused: bool,
    /// Last measured time to open a socket, per URL.
    rtt_ms: BTreeMap<String, f64>,
    /// The access token, added to the URL of every socket (never to the
    /// URLs the application sees).
    token: Option<String>,
    /// The application's `getToken`: called before every connection
    /// attempt (so an expired or revoked token is replaced on reconnect).
    get_token: Option<js_sys::Function>,
    /// A `getToken` call is under way.
    token_pending: bool,
}

impl Net {
    pub fn new(
        urls: Vec<String>,
        ws_ctor: JsValue,
        min_backoff_ms: f64,
        max_backoff_ms: f64,
        handshake_timeout_ms: f64,
        token: Option<String>,
        get_token: Option<js_sys::Function>,
    ) -> Self {
        let state = if urls.is_empty() { ConnectionState::Local } else { ConnectionState::Connecting };
        Self {
            urls,
            ws_ctor,
            backoff: Backoff::new(
                Duration::from_secs_f64(min_backoff_ms.max(0.0) / 1000.0),
                Duration::from_secs_f64(max_backoff_ms.max(0.0) / 1000.0),
            ),
            handshake_timeout_ms,
            handshake_timer: None,
            state,
            attempts: Vec::new(),
            socket: None,
            next_generation: 0,
            retry: None,
            online: platform::navigator_online(),
            paused: false,
            rtt_ms: BTreeMap::new(),
            token,
            get_token,
            token_pending: false,
        }
    }

    pub fn state(&self) -> ConnectionState {
        self.state
    }

    /// No URLs: documents only come from local storage.
    pub fn is_local(&self) -> bool {
        self.urls.is_empty()
    }

    pub fn conn(&self) -> Option<ConnId> {
        self.socket.as_ref().map(|(_, c)| *c)
    }

    pub fn url(&self) -> Option<&str> {
        self.socket.as_ref().map(|(s, _)| s.url.as_str())
    }

    /// Every URL with its last measured open time, fastest first.
    pub fn edges(&self) -> Vec<(String, Option<f64>)> {
        let mut v: Vec<(String, Option<f64>)> =
            self.urls.iter().map(|u| (u.clone(), self.rtt_ms.get(u).copied())).collect();
        v.sort_by(|a, b| a.1.unwrap_or(f64::INFINITY).total_cmp(&b.1.unwrap_or(f64::INFINITY)));
        v
    }

    pub fn send(&mut self, conn: ConnId, bytes: &[u8]) {
        let Some((socket, c)) = &self.socket else { return };
        if *c != conn {
            return;
        }
        // A failed send shows up as a close event; the engine resends what
        // is missing after reconnecting.
        let _ = socket.ws.send_with_u8_array(bytes);
    }

    /// Closes `conn` if it is the current connection; returns whether it was.
    pub fn close_conn(&mut self, conn: ConnId, _reason: &str) -> bool {
        if self.conn() != Some(conn) {
            return false;
        }
        if let Some((socket, _)) = self.socket.take() {
            socket.discard();
        }
        true
    }

    pub fn handshake_done(&mut self) {
        self.handshake_timer = None;
        self.state = ConnectionState::Connected;
        self.backoff.reset();
    }

    /// Closes everything; returns the connection the engine must forget.
    pub fn shut_down(&mut self) -> Option<ConnId> {
        self.state = ConnectionState::Closed;
        self.retry = None;
        for a in self.attempts.drain(..) {
            a.discard();
        }
        self.socket.take().map(|(s, c)| {
            s.discard();
            c
        })
    }

    /// The wait before the next attempt, in ms (the shared policy of
    /// `meridian_protocol::backoff`, jitter from `Math.random`).
    fn next_backoff(&mut self) -> f64 {
        self.backoff.next_delay(js_sys::Math::random()).as_secs_f64() * 1000.0
    }
}

impl Driver {
    /// Opens a socket to every URL; the first to open wins.
    pub fn connect(&mut self) {
        self.net.retry = None;
        // Not before the local store is open: the handshake names it.
        if self.closed
            || self.opening
            || self.net.urls.is_empty()
            || self.net.socket.is_some()
            || !self.net.attempts.is_empty()
        {
            return;
        }
        if !self.net.online || self.net.paused {
            self.set_state(ConnectionState::Offline);
            return;
        }
        self.set_state(ConnectionState::Connecting);
        if self.net.get_token.is_some() {
            self.fetch_token();
        } else {
            self.open_sockets();
        }
    }

    /// Asks the application's `getToken` for a token, then opens sockets
    /// with it; a failure (a rejected promise, not a string) is retried with
    /// backoff like a failed connection.
    fn fetch_token(&mut self) {
        let Some(get_token) = self.net.get_token.clone() else { return };
        if self.net.token_pending {
            return;
        }
        self.net.token_pending = true;
        let me = self.me.clone();
        let answer = get_token.call0(&JsValue::UNDEFINED);
        wasm_bindgen_futures::spawn_local(async move {
            // A string or a promise of one (or a throw).
            let token = match answer {
                Ok(v) => wasm_bindgen_futures::JsFuture::from(js_sys::Promise::resolve(&v)).await,
                Err(e) => Err(e),
            };
            if let Some(shared) = me.upgrade() {
                drive(&shared, |d| d.token_fetched(token));
            }
        });
    }

    fn token_fetched(&mut self, token: Result<JsValue, JsValue>) {
        self.net.token_pending = false;
        if self.closed || self.net.socket.is_some() || !self.net.attempts.is_empty() {
            return;
        }
        match token.map(|t| t.as_string()) {
            Ok(Some(t)) => {
                self.net.token = Some(t).filter(|t| !t.is_empty());
                self.open_sockets();
            }
            Ok(None) => {
                crate::driver::warn("meridian: getToken must return (or resolve to) a string");
                self.schedule_retry();
            }
            Err(e) => {
                crate::driver::warn(&format!("meridian: getToken failed: {}", crate::store::describe(&e)));
                self.schedule_retry();
            }
        }
    }

    fn open_sockets(&mut self) {
        if !self.net.online || self.net.paused {
            self.set_state(ConnectionState::Offline);
            return;
        }
        for url in self.net.urls.clone() {
            match self.open_socket(&url) {
                Ok(s) => self.net.attempts.push(s),
                Err(e) => crate::driver::warn(&format!("meridian: cannot open {url}: {}", crate::store::describe(&e))),
            }
        }
        if self.net.attempts.is_empty() {
            self.schedule_retry();
        }
    }

    fn open_socket(&mut self, url: &str) -> Result<Socket, JsValue> {
        let ctor = self.net.ws_ctor.dyn_ref::<js_sys::Function>().ok_or_else(|| {
            JsValue::from_str(
                "no WebSocket in this environment; pass { WebSocket } (e.g. from the `ws` package) to Client.open",
            )
        })?;
        let with_token = match &self.net.token {
            Some(token) => {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}token={}", String::from(js_sys::encode_uri_component(token)))
            }
            None => url.to_owned(),
        };
        let ws: WebSocket = Reflect::construct(ctor, &Array::of1(&with_token.into()))?.unchecked_into();
        ws.set_binary_type(BinaryType::Arraybuffer);
        let generation = self.net.next_generation;
        self.net.next_generation += 1;
        let me = self.me.clone();
        let handler = move |f: fn(&mut Driver, u64, JsValue)| {
            let me = me.clone();
            Closure::<dyn FnMut(JsValue)>::new(move |e: JsValue| {
                if let Some(shared) = me.upgrade() {
                    drive(&shared, |d| f(d, generation, e));
                }
            })
        };
        let open = handler(Driver::on_open);
        let message = handler(Driver::on_message);
        let closed = handler(Driver::on_close);
        ws.set_onopen(Some(open.as_ref().unchecked_ref()));
        ws.set_onmessage(Some(message.as_ref().unchecked_ref()));
        ws.set_onclose(Some(closed.as_ref().unchecked_ref()));
        // An error is always followed by a close event, which is what we
        // act on; the handler only keeps Node's `ws` from throwing.
        ws.set_onerror(Some(&js_sys::Function::new_no_args("")));
        Ok(Socket {
            ws,
            url: url.to_owned(),
            generation,
            started: platform::now_ms(),
            _handlers: [open, message, closed],
        })
    }

    fn on_open(&mut self, generation: u64, _e: JsValue) {
        let Some(i) = self.net.attempts.iter().position(|s| s.generation == generation) else { return };
        let socket = self.net.attempts.remove(i);
        self.net.rtt_ms.insert(socket.url.clone(), platform::now_ms() - socket.started);
        if self.net.socket.is_some() {
            // A slower edge: measured, not needed.
            socket.discard();
            return;
        }
        // The fastest edge. The others keep racing only to be measured.
        let now = self.now();
        let conn = self.engine.handle_connect(now, Direction::Outgoing);
        self.net.socket = Some((socket, conn));
        let me = self.me.clone();
        self.net.handshake_timer = Some(Timer::once(self.net.handshake_timeout_ms, move || {
            if let Some(shared) = me.upgrade() {
                drive(&shared, |d| d.handshake_timed_out(generation));
            }
        }));
    }

    /// The server accepted the socket but never answered our `join`: drop
    /// it and try again with backoff, as if it had closed.
    fn handshake_timed_out(&mut self, generation: u64) {
        self.net.handshake_timer = None;
        let Some((socket, _)) = self.net.socket.as_ref().filter(|(s, _)| s.generation == generation) else { return };
        if self.net.state == ConnectionState::Connected {
            return;
        }
        crate::driver::warn(&format!(
            "meridian: {} accepted the connection but did not answer the handshake within {} ms; retrying",
            socket.url, self.net.handshake_timeout_ms
        ));
        self.on_close(generation, JsValue::UNDEFINED);
    }

    fn on_message(&mut self, generation: u64, e: JsValue) {
        let Some(conn) = self.net.socket.as_ref().filter(|(s, _)| s.generation == generation).map(|(_, c)| *c) else {
            return;
        };
        let data = e.unchecked_into::<MessageEvent>().data();
        let now = self.now();
        if data.is_instance_of::<js_sys::ArrayBuffer>() {
            let bytes = Uint8Array::new(&data).to_vec();
            self.engine.handle_frame(now, conn, &bytes);
        } else {
            self.engine.reject(conn, ErrorKind::TextFrame, "text frames are not part of the protocol");
        }
    }

    fn on_close(&mut self, generation: u64, _e: JsValue) {
        if let Some(i) = self.net.attempts.iter().position(|s| s.generation == generation) {
            self.net.attempts.remove(i).discard();
        } else if self.net.socket.as_ref().is_some_and(|(s, _)| s.generation == generation) {
            if let Some((socket, conn)) = self.net.socket.take() {
                socket.discard();
                let now = self.now();
                self.engine.handle_disconnect(now, conn);
                self.ready = false;
            }
        } else {
            return;
        }
        if self.net.socket.is_none() && self.net.attempts.is_empty() {
            self.schedule_retry();
        }
    }

    /// The engine closed the connection (bad input from the server): try
    /// again later.
    pub fn connection_lost(&mut self) {
        self.ready = false;
        if self.net.attempts.is_empty() {
            self.schedule_retry();
        }
    }

    fn schedule_retry(&mut self) {
        if self.closed {
            return;
        }
        if !self.net.online || self.net.paused {
            self.set_state(ConnectionState::Offline);
            return;
        }
        let delay = self.net.next_backoff();
        self.set_state(ConnectionState::Backoff);
        let me = self.me.clone();
        self.net.retry = Some(Timer::once(delay, move || {
            if let Some(shared) = me.upgrade() {
                drive(&shared, Driver::connect);
            }
        }));
    }

    /// The browser went offline: drop the connection and wait for `online`.
    pub fn went_offline(&mut self) {
        self.net.online = false;
        self.disconnect();
    }

    /// `goOffline()` / `goOnline()`.
    pub fn set_paused(&mut self, paused: bool) {
        self.net.paused = paused;
        if paused {
            self.disconnect();
        } else {
            self.net.backoff.reset();
            self.connect();
        }
    }

    /// Drops every socket and waits offline.
    fn disconnect(&mut self) {
        self.net.retry = None;
        for a in self.net.attempts.drain(..) {
            a.discard();
        }
        if let Some((socket, conn)) = self.net.socket.take() {
            socket.discard();
            let now = self.now();
            self.engine.handle_disconnect(now, conn);
            self.ready = false;
        }
        self.set_state(ConnectionState::Offline);
    }

    /// The browser is back online: connect right away.
    pub fn went_online(&mut self) {
        self.net.online = true;
        self.net.backoff.reset();
        self.connect();
    }

    fn set_state(&mut self, state: ConnectionState) {
        if self.net.state != state {
            self.net.state = state;
            self.notify_state();
        }
    }
}
