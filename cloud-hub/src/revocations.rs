//! Revoked tokens: kept in the hub's data folder (`revocations.json`, so
//! they survive restarts), pushed to every edge (all of them after
//! `welcome`, then each change), and added over `POST /api/auth/revoke`
//! (what `meridian-hub auth revoke` calls).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use meridian_node::auth::{self, Keyring, Revocation};
use meridian_node::runtime::NodeEvent;
use meridian_protocol::codec::federation::{Control, RevokeNotice};
use serde::Deserialize;
use tokio::sync::{mpsc, watch};

use crate::HubError;

/// The hub's revocations and their subscribers (one per connected edge).
#[derive(Debug)]
pub struct Revocations {
    path: PathBuf,
    list: watch::Sender<Vec<Revocation>>,
}

impl Revocations {
    /// Reads `dir/revocations.json` (none yet: an empty list).
    pub fn load(dir: &Path) -> Result<Self, HubError> {
        let path = dir.join("revocations.json");
        let list = auth::load_revocations(&path).map_err(|source| HubError::Io { path: path.clone(), source })?;
        Ok(Self { path, list: watch::Sender::new(list) })
    }

    pub fn list(&self) -> Vec<Revocation> {
        self.list.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Vec<Revocation>> {
        self.list.subscribe()
    }

    /// Adds one, stored before it is announced; `false` if it was known.
    pub fn add(&self, r: Revocation) -> Result<bool, HubError> {
        let mut list = self.list();
        if list.contains(&r) {
            return Ok(false);
        }
        list.push(r);
        auth::save_revocations(&self.path, &list).map_err(|source| HubError::Io { path: self.path.clone(), source })?;
        self.list.send_replace(list);
        Ok(true)
    }
}

/// The control message announcing `list` to an edge.
pub fn notice(list: &[Revocation]) -> Control {
    Control::Revoke(list.iter().map(|r| RevokeNotice { jti: r.jti.clone(), sub: r.sub.clone(), at: r.at }).collect())
}

/// What `POST /api/auth/revoke` needs.
#[derive(Clone, Debug)]
pub struct RevokeApi {
    pub revocations: Arc<Revocations>,
    /// The keys and revocations of clients the hub serves itself.
    pub keyring: Option<Arc<Keyring>>,
    pub events: mpsc::Sender<NodeEvent>,
}

#[derive(Debug, Deserialize)]
pub struct RevokeRequest {
    pub jti: Option<String>,
    pub sub: Option<String>,
}

/// `POST /api/auth/revoke` with `{"jti": …}` or `{"sub": …}` (behind the
/// admin guard: an admin token with auth on, loopback in dev mode).
pub async fn revoke(
    State(api): State<RevokeApi>,
    Json(request): Json<RevokeRequest>,
) -> Result<Json<serde_json::Value>, (StatusCode, String)> {
    let jti = request.jti.filter(|j| !j.is_empty());
    let sub = request.sub.filter(|s| !s.is_empty());
    if jti.is_none() && sub.is_none() {
        return Err((StatusCode::BAD_REQUEST, "give `jti` (one token) or `sub` (every token of a subject)\n".into()));
    }
    let revocation = Revocation { jti, sub, at: auth::unix_now() };
    let new =
        api.revocations.add(revocation.clone()).map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")))?;
    if let Some(k) = &api.keyring {
        k.revoke(std::slice::from_ref(&revocation));
    }
    auth::close_revoked(&api.events, std::slice::from_ref(&revocation)).await;
    tracing::info!(jti = ?revocation.jti, sub = ?revocation.sub, new, "token revoked; telling every edge");
    Ok(Json(serde_json::json!({ "revoked": revocation, "new": new })))
}
