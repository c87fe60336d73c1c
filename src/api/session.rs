//! `/session`: the web app signs in with a key and keeps a session cookie.
//!
//! An `EventSource` cannot send an `Authorization` header, so the browser needs a cookie.
//! The cookie holds a random session token, not the key: it is `HttpOnly` (no script
//! reads it), `SameSite=Strict` (no other site's page sends it, so no cross-site request
//! acts with it) and, behind a TLS proxy that says so, `Secure`. Signing out deletes the
//! session; revoking its key ends it too.

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::auth::{AuthMode, Caller, SESSION_COOKIE, end_session, session_token};
use super::error::{ApiError, Problem};
use super::input::{body_error, require_json, require_object};

/// `POST /session` (signing in) needs no key: it takes one.
pub fn public_router() -> Router<AppState> {
    Router::new().route("/session", post(sign_in).delete(sign_out))
}

/// `GET /session`: who the request's key or cookie is.
pub fn router() -> Router<AppState> {
    Router::new().route("/session", axum::routing::get(whoami))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SignIn {
    /// An API key (`ty_...`).
    pub key: String,
}

/// Who is signed in.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Session {
    pub account: String,
    pub admin: bool,
    /// Whether the server requires keys (`false` under `--auth off`).
    pub auth: bool,
}

/// Sign in with a key: sets the session cookie.
#[utoipa::path(post, path = "/session", tag = "session", request_body = SignIn,
    responses(
        (status = 200, body = Session, headers(("Set-Cookie" = String))),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
async fn sign_in(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    require_json(&headers)?;
    let body = body.map_err(body_error)?;
    require_object(&body)?;
    let req: SignIn = serde_json::from_slice(&body)
        .map_err(|e| ApiError::field("key", format!("expected {{\"key\": \"ty_...\"}}: {e}")))?;
    let p = state
        .store
        .authenticate_key(req.key.trim())
        .await?
        .ok_or_else(|| ApiError::Unauthorized("the key is unknown or revoked".into()))?;
    let token = state
        .store
        .create_session(p.key_id, state.auth.session_secs)
        .await?;
    let secure = headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    let cookie = format!(
        "{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        state.auth.session_secs as u64,
        if secure { "; Secure" } else { "" }
    );
    tracing::info!(account = %p.account, key = %p.key_id, "signed in");
    let mut res = Json(Session {
        account: p.account,
        admin: p.admin,
        auth: state.auth.mode() == AuthMode::On,
    })
    .into_response();
    res.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).expect("hex and ascii"),
    );
    Ok(res)
}

/// Sign out: ends the cookie's session and clears the cookie.
#[utoipa::path(delete, path = "/session", tag = "session",
    responses((status = 204, headers(("Set-Cookie" = String)))))]
async fn sign_out(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    if let Some(token) = session_token(&headers) {
        end_session(&state, token).await?;
    }
    let clear = format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    Ok((
        StatusCode::NO_CONTENT,
        [(
            header::SET_COOKIE,
            HeaderValue::from_str(&clear).expect("ascii"),
        )],
    )
        .into_response())
}

/// Who the key or session is.
#[utoipa::path(get, path = "/session", tag = "session",
    responses(
        (status = 200, body = Session),
        (status = 401, body = Problem, content_type = "application/problem+json"),
    ))]
async fn whoami(State(state): State<AppState>, caller: Caller) -> Json<Session> {
    Json(Session {
        account: caller.0.account,
        admin: caller.0.admin,
        auth: state.auth.mode() == AuthMode::On,
    })
}
