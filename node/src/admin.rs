//! Who may call a node's operator endpoints: the edge's admin API
//! (`/api/docs/…`) and `/homes`, the hub's `/placement`, `/topology`,
//! `/api/auth/revoke`, `/api/auth/keys` and `/api/placement/pins`. One rule for all of them, applied as a layer
//! ([`protect`]); a node serves them on the main HTTP listener, or on a
//! listener of their own with `--admin-listen`.
//!
//! The rule (`Authorization: Bearer …`):
//! - with a fixed secret (`--admin-token`): that secret;
//! - with auth on (`--auth-public-key`): an access token with the admin
//!   right (`auth token --admin`); nothing else, from any address;
//! - otherwise (open dev mode): requests from a loopback address (the
//!   socket's, never a header's such as `X-Forwarded-For`) naming a local
//!   host (`localhost` or an IP: a rebound DNS name is refused).
//!
//! Whatever the credentials, a request that changes something (any method
//! but `GET`/`HEAD`) from a web page of another origin is refused (no
//! cross-site rollback), and a refused token costs a quarter of a second
//! (guessing is slow). None of these endpoints sends CORS headers: a page
//! of another origin cannot read what they list.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::auth::{self, Keyring};
use crate::quic::same_secret;
use crate::server::{bearer, cross_site, local_host};

/// A refused admin token costs this much.
pub const REFUSAL_DELAY: Duration = Duration::from_millis(250);

/// The credentials an operator endpoint accepts (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct AdminGuard {
    /// `--admin-token`.
    pub token: Option<Arc<str>>,
    /// With auth on: tokens with the admin right.
    pub keyring: Option<Arc<Keyring>>,
}

/// An error answer: status and a one-line explanation.
#[derive(Debug)]
pub struct Failure(pub StatusCode, pub String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, format!("{}\n", self.1)).into_response()
    }
}

impl AdminGuard {
    /// `Ok` when `request` may reach an operator endpoint.
    pub fn check(&self, request: &Request) -> Result<(), Failure> {
        let headers = request.headers();
        if !matches!(*request.method(), Method::GET | Method::HEAD) && cross_site(headers) {
            return Err(Failure(
                StatusCode::FORBIDDEN,
                "cross-site request refused (its Origin is not this host)".into(),
            ));
        }
        let given = bearer(headers).unwrap_or_default();
        if let Some(token) = &self.token {
            if same_secret(given.as_bytes(), token.as_bytes()) {
                return Ok(());
            }
            if self.keyring.is_none() {
                let why = "send `Authorization: Bearer <the node's --admin-token>`";
                return Err(Failure(StatusCode::UNAUTHORIZED, why.into()));
            }
        }
        if let Some(keyring) = &self.keyring {
            return match keyring.verify(given, auth::unix_now()) {
                Ok(grant) if grant.admin => Ok(()),
                Ok(_) => Err(Failure(StatusCode::FORBIDDEN, "this token has no admin right".into())),
                Err(reason) => Err(Failure(
                    StatusCode::UNAUTHORIZED,
                    format!(
                        "admin token refused ({reason}): send `Authorization: Bearer` with a token from `auth token --admin`"
                    ),
                )),
            };
        }
        let loopback = request.extensions().get::<ConnectInfo<SocketAddr>>().is_some_and(|c| c.0.ip().is_loopback());
        if !loopback {
            let why = "in open dev mode this endpoint answers only loopback requests (run with --auth-public-key or --admin-token)";
            return Err(Failure(StatusCode::UNAUTHORIZED, why.into()));
        }
        if !local_host(headers) {
            return Err(Failure(StatusCode::FORBIDDEN, "the Host must be localhost or an IP address".into()));
        }
        Ok(())
    }
}

/// `router` with every route behind `guard`.
pub fn protect(router: Router, guard: AdminGuard) -> Router {
    router.layer(axum::middleware::from_fn_with_state(guard, check))
}

async fn check(State(guard): State<AdminGuard>, request: Request, next: Next) -> Response {
    match guard.check(&request) {
        Ok(()) => next.run(request).await,
        Err(failure) => {
            if failure.0 == StatusCode::UNAUTHORIZED {
                tokio::time::sleep(REFUSAL_DELAY).await;
            }
            failure.into_response()
        }
    }
}
