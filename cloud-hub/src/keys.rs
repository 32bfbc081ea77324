//! The tier's token-signing public keys, kept in the hub's store (table
//! `auth_keys`), so every hub on one database accepts the same tokens and
//! hands the same keys to its edges.
//!
//! Operators add and remove keys for the whole tier with `meridian-hub auth
//! keys add FILE` / `remove KEY_ID` (the admin API's `POST /api/auth/keys`,
//! `DELETE /api/auth/keys/{id}`, `GET` to list). A hub reads the store
//! again every [`FOLLOW_EVERY`]: a key added through any hub is accepted by
//! every hub and its edges within that, and a key removed is dropped by
//! them. Only a hub whose operator routes want a credential (keys of its
//! own or `--admin-token`) changes them. A hub started without keys of its
//! own while the store had none keeps serving its own `/sync` clients in
//! dev mode (it hands the keys to its edges, which enforce them).
//! A hub's own `--auth-public-key` files are its own configuration,
//! not the tier's: it accepts them besides the stored keys, and a hub
//! restarted without one no longer does (issue 15's rotation).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use meridian_node::auth::{Keyring, Verifier};
use meridian_node::store::StoredKey;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::HubError;
use crate::control::{ControlState, unix_ms};

/// How often a hub reads the keys in the store again.
pub const FOLLOW_EVERY: Duration = Duration::from_secs(2);

/// The keys this hub accepts and hands to its edges.
#[derive(Debug)]
pub struct TierKeys {
    control: ControlState,
    /// Its own `--auth-public-key` keys: `(id, PEM)`.
    own: Vec<(String, String)>,
    /// The keys in the store at the last read.
    stored: std::sync::Mutex<Vec<StoredKey>>,
    /// Every key accepted (own, then stored), PEMs: what edges are told.
    list: watch::Sender<Vec<String>>,
}

impl TierKeys {
    /// This hub's keys (`own`: the PEMs of `--auth-public-key`) and the
    /// tier's, read from the store.
    pub async fn load(control: ControlState, own: Vec<String>) -> Result<Self, HubError> {
        let mut own_ids = Vec::with_capacity(own.len());
        for pem in own {
            let id = Verifier::default().add_pem(&pem, "--auth-public-key")?;
            own_ids.push((id, pem));
        }
        let stored = control.call(|s| s.auth_keys()).await?;
        let list: Vec<String> = own_ids.iter().map(|(_, pem)| pem.clone()).collect();
        let keys = Self { control, own: own_ids, stored: Default::default(), list: watch::Sender::new(list) };
        keys.set_stored(stored);
        Ok(keys)
    }

    /// Every key accepted (PEM).
    pub fn list(&self) -> Vec<String> {
        self.list.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Vec<String>> {
        self.list.subscribe()
    }

    /// The stored keys (PEM) that are not this hub's own.
    pub fn others(&self) -> Vec<String> {
        let stored = self.stored.lock().map(|s| s.clone()).unwrap_or_default();
        stored.into_iter().filter(|k| !self.own.iter().any(|(id, _)| *id == k.key_id)).map(|k| k.pem).collect()
    }

    /// Takes a fresh read of the store; `true` if the keys changed.
    fn set_stored(&self, stored: Vec<StoredKey>) -> bool {
        let Ok(mut current) = self.stored.lock() else { return false };
        if *current == stored {
            return false;
        }
        *current = stored;
        drop(current);
        let mut list: Vec<String> = self.own.iter().map(|(_, pem)| pem.clone()).collect();
        list.extend(self.others());
        self.list.send_replace(list);
        true
    }

    /// Reads the store again; `true` if the keys changed (then `keyring`
    /// and every edge connection follow).
    pub async fn refresh(&self, keyring: Option<&Keyring>) -> Result<bool, HubError> {
        let stored = self.control.call(|s| s.auth_keys()).await?;
        let changed = self.set_stored(stored);
        if changed && let Some(k) = keyring {
            k.set_hub_keys(&self.others())?;
        }
        Ok(changed)
    }
}

/// Follows the store every [`FOLLOW_EVERY`].
pub async fn follow(keys: Arc<TierKeys>, keyring: Option<Arc<Keyring>>) {
    let mut every = tokio::time::interval(FOLLOW_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        match keys.refresh(keyring.as_deref()).await {
            Ok(true) => tracing::info!(keys = keys.list().len(), "the tier's signing keys changed; telling every edge"),
            Ok(false) => {}
            Err(error) => tracing::warn!(%error, "cannot read the signing keys in the store"),
        }
    }
}

/// What the key routes need.
#[derive(Clone, Debug)]
pub struct KeysApi {
    pub keys: Arc<TierKeys>,
    pub keyring: Option<Arc<Keyring>>,
    /// The hub's operator routes want a credential (it has keys of its own
    /// or `--admin-token`): only then may it change the tier's keys, which
    /// every hub on the store trusts (a hub in open dev mode answers any
    /// local process).
    pub protected: bool,
}

/// Refuses to change the tier's keys through a hub in open dev mode.
fn guarded(api: &KeysApi) -> Result<(), (StatusCode, String)> {
    if api.protected {
        return Ok(());
    }
    Err((
        StatusCode::FORBIDDEN,
        "this hub runs its operator routes in open dev mode (no --auth-public-key, no --admin-token): change the \
         tier's keys through a hub that has one\n"
            .into(),
    ))
}

type Answer = Result<Json<Value>, (StatusCode, String)>;

fn failed(e: impl std::fmt::Display) -> (StatusCode, String) {
    (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n"))
}

/// `GET /api/auth/keys`.
pub async fn list(State(api): State<KeysApi>) -> Answer {
    let stored = api.keys.control.call(|s| s.auth_keys()).await.map_err(failed)?;
    let own = |id: &str| api.keys.own.iter().any(|(k, _)| k == id);
    let keys: Vec<Value> = stored
        .iter()
        .map(|k| json!({ "id": k.key_id, "pem": k.pem, "at_ms": k.at_ms, "this_hub_flag": own(&k.key_id) }))
        .collect();
    Ok(Json(json!({ "keys": keys })))
}

#[derive(Debug, Deserialize)]
pub struct AddKey {
    pub pem: String,
}

/// `POST /api/auth/keys` with `{"pem": …}`.
pub async fn add(State(api): State<KeysApi>, Json(request): Json<AddKey>) -> Answer {
    guarded(&api)?;
    let id = Verifier::default()
        .add_pem(&request.pem, "the request")
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("not an Ed25519 public key in PEM: {e}\n")))?;
    let key = StoredKey { key_id: id.clone(), pem: request.pem, at_ms: unix_ms() };
    let new = api.keys.control.call(move |s| s.add_auth_key(&key)).await.map_err(failed)?;
    api.keys.refresh(api.keyring.as_deref()).await.map_err(failed)?;
    tracing::info!(key = %id, new, "signing key added for the tier");
    Ok(Json(json!({ "added": id, "new": new })))
}

/// `DELETE /api/auth/keys/{id}`.
pub async fn remove(State(api): State<KeysApi>, Path(id): Path<String>) -> Answer {
    guarded(&api)?;
    let key = id.clone();
    let removed = api.keys.control.call(move |s| s.remove_auth_key(&key)).await.map_err(failed)?;
    if !removed {
        return Err((StatusCode::NOT_FOUND, format!("no key {id} in the store\n")));
    }
    api.keys.refresh(api.keyring.as_deref()).await.map_err(failed)?;
    let note = api.keys.own.iter().any(|(k, _)| *k == id).then_some(
        "this hub was also started with it (--auth-public-key) and keeps accepting it until started without it",
    );
    tracing::info!(key = %id, "signing key removed from the tier");
    Ok(Json(json!({ "removed": id, "note": note })))
}
