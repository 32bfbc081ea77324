//! Revoked tokens: kept in the hub's store (table `revocations`, so they
//! survive restarts and every hub on a shared store has them), pushed to
//! every edge (all of them after `welcome`, then each change), and added
//! over `POST /api/auth/revoke` (what `meridian-hub auth revoke` calls).
//! A hub reads the store again every [`FOLLOW_EVERY`], so a revocation
//! made through another hub reaches its edges and clients too. A
//! `revocations.json` an older hub left in the data folder is imported.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use meridian_node::auth::{self, Keyring, Revocation};
use meridian_node::runtime::NodeEvents;
use meridian_protocol::codec::federation::{Control, RevokeNotice};
use meridian_protocol::log::Maybe;
use serde::Deserialize;
use tokio::sync::watch;

use crate::HubError;
use crate::control::ControlState;

/// How often a hub reads the revocations in the store again.
pub const FOLLOW_EVERY: Duration = Duration::from_secs(2);

/// The hub's revocations and their subscribers (one per connected edge).
#[derive(Debug)]
pub struct Revocations {
    control: ControlState,
    list: watch::Sender<Vec<Revocation>>,
}

impl Revocations {
    /// Reads the revocations in the store, after importing those of a
    /// `dir/revocations.json` an older hub kept.
    pub async fn load(control: ControlState, dir: &Path) -> Result<Self, HubError> {
        let path = dir.join("revocations.json");
        let old = auth::load_revocations(&path).map_err(|source| HubError::Io { path: path.clone(), source })?;
        let list = control
            .call(move |s| {
                for r in &old {
                    s.add_revocation(r)?;
                }
                s.revocations()
            })
            .await?;
        Ok(Self { control, list: watch::Sender::new(list) })
    }

    pub fn list(&self) -> Vec<Revocation> {
        self.list.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Vec<Revocation>> {
        self.list.subscribe()
    }

    /// Adds one, stored before it is announced; `false` if it was known.
    pub async fn add(&self, r: Revocation) -> Result<bool, HubError> {
        let (added, list) = self.control.call(move |s| Ok((s.add_revocation(&r)?, s.revocations()?))).await?;
        self.list.send_replace(list);
        Ok(added)
    }

    /// Reads the store again; the revocations it did not know yet (made
    /// through another hub), which its edges are then told of.
    pub async fn refresh(&self) -> Result<Vec<Revocation>, HubError> {
        let list = self.control.call(|s| s.revocations()).await?;
        let known = self.list();
        let new: Vec<Revocation> = list.iter().filter(|r| !known.contains(r)).cloned().collect();
        if !new.is_empty() {
            self.list.send_replace(list);
        }
        Ok(new)
    }
}

/// Follows the store every [`FOLLOW_EVERY`]: a revocation another hub
/// stored is applied here too (the clients this hub serves, live
/// connections holding the token, and its edges through the subscribers).
pub async fn follow(revocations: Arc<Revocations>, keyring: Option<Arc<Keyring>>, events: NodeEvents) {
    let mut every = tokio::time::interval(FOLLOW_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        match revocations.refresh().await {
            Ok(new) if !new.is_empty() => {
                if let Some(k) = &keyring {
                    k.revoke(&new);
                }
                auth::close_revoked(&events, &new).await;
                tracing::info!(count = new.len(), "revocations made through another hub; telling every edge");
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "cannot read the revocations in the store"),
        }
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
    pub events: NodeEvents,
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
    let new = api
        .revocations
        .add(revocation.clone())
        .await
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")))?;
    if let Some(k) = &api.keyring {
        k.revoke(std::slice::from_ref(&revocation));
    }
    auth::close_revoked(&api.events, std::slice::from_ref(&revocation)).await;
    tracing::info!(jti = %Maybe(&revocation.jti), sub = %Maybe(&revocation.sub), new, "token revoked; telling every edge");
    Ok(Json(serde_json::json!({ "revoked": revocation, "new": new })))
}
