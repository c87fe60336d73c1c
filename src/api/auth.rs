//! Who is asking: API keys in `Authorization: Bearer`, or the web app's session cookie.
//!
//! Every route but health (the Open Inference Protocol's too), the OpenAPI document, the
//! web app's files, `/metrics` and signing in goes through [`authenticate`], which puts
//! the [`Caller`] in the request's extensions; handlers take it as an extractor and pass
//! its [`Scope`] to the store, which answers another account's experiments exactly as
//! unknown ones.
//!
//! Checking a key costs a database round trip, too much for every `/predict`: a checked
//! key (or session) is remembered for [`CACHE_SECS`]. Revoking a key `NOTIFY`s every
//! process, which then forgets every key it had checked, so a revoked key stops working
//! at once everywhere the `LISTEN` connection is up (and within [`CACHE_SECS`] otherwise).
//!
//! A key is never read from a URL: URLs end up in access logs, proxies and histories.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::Response;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use uuid::Uuid;

use super::AppState;
use super::error::ApiError;
use crate::store::accounts::{DEFAULT_ACCOUNT, digest};
use crate::store::listen::{Hub, Signal};
use crate::store::{Principal, Scope, Store};

/// Seconds a checked key or session is trusted without asking the database again.
const CACHE_SECS: u64 = 30;
/// The web app's session cookie.
pub const SESSION_COOKIE: &str = "trainyard_session";

/// Whether requests must carry a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// Every request but the public ones needs a key or a session.
    On,
    /// No keys: every request acts as an admin of the `default` account. Only for a
    /// server bound to a loopback address.
    Off,
}

/// Token buckets per key: requests per period, and as many at once (the burst).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// `POST /experiments` per minute and key (0: unlimited).
    pub experiments_per_minute: u32,
    /// `POST /predict` and `/v2` inference requests per second and key, together (0:
    /// unlimited).
    pub predict_per_second: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            experiments_per_minute: 60,
            predict_per_second: 200,
        }
    }
}

/// What a rate limit guards.
#[derive(Debug, Clone, Copy)]
pub enum Limited {
    Experiments,
    Predict,
}

/// The authenticated side of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub Principal);

impl Caller {
    /// The experiments this caller may see: all for an admin, else its account's.
    pub fn scope(&self) -> Scope {
        if self.0.admin {
            Scope::All
        } else {
            Scope::Account(self.0.account_id)
        }
    }

    pub fn account_id(&self) -> Uuid {
        self.0.account_id
    }

    /// 403 unless an admin asks.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.0.admin {
            Ok(())
        } else {
            Err(ApiError::Forbidden("this needs an admin key".into()))
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::Unauthorized("this route needs a key".into()))
    }
}

type Cached = HashMap<[u8; 32], (Option<Principal>, Instant)>;

/// Keys, sessions and rate limits, shared by every request of a process.
pub struct Auth {
    mode: AuthMode,
    cache: Mutex<Cached>,
    experiments: Option<DefaultKeyedRateLimiter<Uuid>>,
    predict: Option<DefaultKeyedRateLimiter<Uuid>>,
    /// Seconds a browser session lasts.
    pub session_secs: f64,
}

/// Most entries the cache holds; past that it starts over (an attacker trying keys
/// fills it with refusals).
const CACHE_SIZE: usize = 10_000;

impl Auth {
    pub fn new(mode: AuthMode, limits: RateLimits) -> Self {
        let bucket = |n: u32, per: Duration| {
            NonZeroU32::new(n).map(|n| {
                RateLimiter::keyed(
                    Quota::with_period(per / n.get())
                        .expect("a positive period")
                        .allow_burst(n),
                )
            })
        };
        Auth {
            mode,
            cache: Mutex::default(),
            experiments: bucket(limits.experiments_per_minute, Duration::from_secs(60)),
            predict: bucket(limits.predict_per_second, Duration::from_secs(1)),
            session_secs: 7.0 * 86400.0,
        }
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// Forgets every checked key when one is revoked (or notifications may have been
    /// missed), for as long as `auth` lives.
    pub fn follow_revocations(auth: &Arc<Auth>, hub: &Hub) {
        let weak: Weak<Auth> = Arc::downgrade(auth);
        let mut signals = hub.subscribe();
        tokio::spawn(async move {
            loop {
                let s = signals.recv().await;
                let Some(auth) = weak.upgrade() else { return };
                match s {
                    Ok(Signal::KeyRevoked(_) | Signal::Resync)
                    | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => auth.forget(),
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }

    /// Forgets every checked key and session.
    pub fn forget(&self) {
        self.cache.lock().unwrap().clear();
    }

    fn forget_one(&self, credential: &str) {
        self.cache.lock().unwrap().remove(&digest(credential));
    }

    /// Who `credential` (`key:...` or `session:...`) belongs to, from the cache or the
    /// store.
    async fn principal(
        &self,
        store: &Store,
        credential: &str,
    ) -> Result<Option<Principal>, ApiError> {
        let d = digest(credential);
        if let Some((p, at)) = self.cache.lock().unwrap().get(&d)
            && at.elapsed() < Duration::from_secs(CACHE_SECS)
        {
            return Ok(p.clone());
        }
        let p = match credential.split_once(':') {
            Some(("key", k)) => store.authenticate_key(k).await?,
            Some(("session", t)) => store.authenticate_session(t).await?,
            _ => None,
        };
        let mut cache = self.cache.lock().unwrap();
        if cache.len() >= CACHE_SIZE {
            cache.clear();
        }
        cache.insert(d, (p.clone(), Instant::now()));
        Ok(p)
    }

    /// Takes one token of `caller`'s bucket for `what`; 429 with the wait when empty.
    /// Without keys (`--auth off`) nothing is limited.
    pub fn limit(&self, what: Limited, caller: &Caller) -> Result<(), ApiError> {
        if self.mode == AuthMode::Off {
            return Ok(());
        }
        let (limiter, name) = match what {
            Limited::Experiments => (&self.experiments, "POST /experiments"),
            // One bucket for both ways of predicting.
            Limited::Predict => (&self.predict, "predictions (POST /predict and /v2 infer)"),
        };
        let Some(limiter) = limiter else {
            return Ok(());
        };
        limiter.check_key(&caller.0.key_id).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            ApiError::RateLimited {
                detail: format!("this key's rate limit for {name} is spent; retry later"),
                retry_after: wait.as_secs_f64().ceil().max(1.0) as u64,
            }
        })
    }
}

/// The caller `--auth off` makes of every request.
fn local_admin() -> Caller {
    Caller(Principal {
        key_id: Uuid::nil(),
        account_id: DEFAULT_ACCOUNT,
        account: "default".into(),
        admin: true,
    })
}

/// What a request presents: a bearer key, else a session cookie.
fn credential(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let v = v.to_str().unwrap_or_default();
        let key = v
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, k)| k.trim())
            .ok_or_else(|| {
                ApiError::Unauthorized("the Authorization header must be `Bearer <key>`".into())
            })?;
        return Ok(Some(format!("key:{key}")));
    }
    Ok(session_token(headers).map(|t| format!("session:{t}")))
}

/// The session cookie's token, if the request has one.
pub fn session_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, token)| token)
}

/// Middleware: the request's [`Caller`], or a 401.
pub async fn authenticate(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let caller = match state.auth.mode {
        AuthMode::Off => local_admin(),
        AuthMode::On => {
            let cred = credential(req.headers())?.ok_or_else(|| {
                ApiError::Unauthorized(
                    "this needs an API key: send `Authorization: Bearer <key>`".into(),
                )
            })?;
            let p = state
                .auth
                .principal(&state.store, &cred)
                .await?
                .ok_or_else(|| {
                    ApiError::Unauthorized(
                        "the key or session is unknown, revoked or expired".into(),
                    )
                })?;
            Caller(p)
        }
    };
    tracing::Span::current().record("account", caller.0.account.as_str());
    req.extensions_mut().insert(caller);
    Ok(next.run(req).await)
}

/// Ends a session here and now (signing out); other processes forget it within
/// [`CACHE_SECS`].
pub async fn end_session(state: &AppState, token: &str) -> Result<(), ApiError> {
    state.auth.forget_one(&format!("session:{token}"));
    state.store.end_session(token).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn a_bearer_key_comes_before_a_cookie() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=b; trainyard_session=abc"),
        );
        assert_eq!(credential(&h).unwrap().as_deref(), Some("session:abc"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer ty_x"),
        );
        assert_eq!(credential(&h).unwrap().as_deref(), Some("key:ty_x"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic dXNlcg=="),
        );
        assert!(credential(&h).is_err());
    }

    #[test]
    fn a_spent_bucket_says_when_to_retry() {
        let auth = Auth::new(
            AuthMode::On,
            RateLimits {
                experiments_per_minute: 2,
                predict_per_second: 0,
            },
        );
        let c = Caller(Principal {
            key_id: Uuid::now_v7(),
            ..local_admin().0
        });
        assert!(auth.limit(Limited::Experiments, &c).is_ok());
        assert!(auth.limit(Limited::Experiments, &c).is_ok());
        match auth.limit(Limited::Experiments, &c) {
            Err(ApiError::RateLimited { retry_after, .. }) => {
                assert!((1..=30).contains(&retry_after), "{retry_after}")
            }
            other => panic!("{other:?}"),
        }
        // Unlimited, and another key has its own bucket.
        assert!(auth.limit(Limited::Predict, &c).is_ok());
        let d = Caller(Principal {
            key_id: Uuid::now_v7(),
            ..c.0.clone()
        });
        assert!(auth.limit(Limited::Experiments, &d).is_ok());
    }
}
