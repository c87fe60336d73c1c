//! `/keys` and `/accounts`: admins make and revoke keys and set quotas; anyone reads
//! their own account at `/account`.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::Deserialize;
use uuid::Uuid;

use super::AppState;
use super::auth::Caller;
use super::error::ApiError;
use super::error::Problem;
use super::input::{body_error, query, require_json, require_media, require_object};
use crate::store::accounts::{Account, KeyInfo, NewKey, QuotasPatch};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/keys", get(list).post(create))
        .route("/keys/{id}", delete(revoke))
        .route("/accounts", get(accounts))
        .route("/accounts/{name}", get(account).patch(set_quotas))
        .route("/account", get(own))
}

/// What `POST /keys` takes.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    /// The account the key acts for; created when new (1 to 64 letters, digits, `.`,
    /// `_` or `-`).
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    pub account: String,
    /// Whether the key sees and acts on every account's experiments and manages keys.
    #[serde(default)]
    pub admin: bool,
}

/// Make a key (admins only). The key is in this answer and nowhere else.
#[utoipa::path(post, path = "/keys", tag = "keys", operation_id = "create_key", request_body = CreateKey,
    responses(
        (status = 201, body = NewKey),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<NewKey>), ApiError> {
    caller.require_admin()?;
    require_json(&headers)?;
    let body = body.map_err(body_error)?;
    let req: CreateKey = parse_body(&body)?;
    let key = state.store.create_key(&req.account, req.admin).await?;
    tracing::info!(key = %key.info.id, account = %key.info.account, admin = key.info.admin,
        by = %caller.0.account, "key created");
    Ok((StatusCode::CREATED, Json(key)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListKeys {
    /// Only this account's keys.
    pub account: Option<String>,
}

/// Every key, never its secret (admins only).
#[utoipa::path(get, path = "/keys", tag = "keys", operation_id = "list_keys", params(ListKeys),
    responses(
        (status = 200, body = Vec<KeyInfo>),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    q: RawQuery,
) -> Result<Json<Vec<KeyInfo>>, ApiError> {
    caller.require_admin()?;
    let q: ListKeys = query(q)?;
    Ok(Json(state.store.keys(q.account.as_deref()).await?))
}

/// Revoke a key (admins only): it and its browser sessions stop working at once.
#[utoipa::path(delete, path = "/keys/{id}", tag = "keys",
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = KeyInfo),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<KeyInfo>, ApiError> {
    caller.require_admin()?;
    let id: Uuid = id
        .ok()
        .and_then(|Path(id)| id.parse().ok())
        .ok_or(ApiError::NotFound("key"))?;
    let key = state.store.revoke_key(id).await?;
    state.auth.forget();
    tracing::info!(key = %id, by = %caller.0.account, "key revoked");
    Ok(Json(key))
}

/// Every account with its quotas and use (admins only).
#[utoipa::path(get, path = "/accounts", tag = "keys",
    responses(
        (status = 200, body = Vec<Account>),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
    ))]
async fn accounts(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<Account>>, ApiError> {
    caller.require_admin()?;
    Ok(Json(state.store.accounts().await?))
}

/// An account with its quotas and use (admins, or the account's own keys).
#[utoipa::path(get, path = "/accounts/{name}", tag = "keys",
    params(("name" = String, Path)),
    responses(
        (status = 200, body = Account),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
async fn account(
    State(state): State<AppState>,
    caller: Caller,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<Account>, ApiError> {
    let Ok(Path(name)) = name else {
        return Err(ApiError::NotFound("account"));
    };
    // Another account's name answers as an unknown one.
    if !caller.0.admin && name != caller.0.account {
        return Err(ApiError::NotFound("account"));
    }
    Ok(Json(state.store.account(&name).await?))
}

/// The caller's own account, with its quotas and use.
#[utoipa::path(get, path = "/account", tag = "keys",
    responses(
        (status = 200, body = Account),
        (status = 401, body = Problem, content_type = "application/problem+json"),
    ))]
async fn own(State(state): State<AppState>, caller: Caller) -> Result<Json<Account>, ApiError> {
    Ok(Json(state.store.account(&caller.0.account).await?))
}

/// `PATCH /accounts/{name}`: each quota given replaces the stored one; `null` removes it.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct QuotasChange {
    /// Most experiments queued at once (null: no limit).
    #[serde(default, deserialize_with = "present_count")]
    #[schema(value_type = Option<i32>, minimum = 0)]
    pub max_queued: Option<Option<i32>>,
    /// Most experiments running at once; more wait in the queue (null: no limit).
    #[serde(default, deserialize_with = "present_count")]
    #[schema(value_type = Option<i32>, minimum = 0)]
    pub max_running: Option<Option<i32>>,
    /// Most training FLOPs submitted in any 24 hours (null: no limit).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<f64>, minimum = 0)]
    pub max_flops_per_day: Option<Option<f64>>,
}

/// A field that is present (even as `null`) is `Some`.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// A present count (even `null`) is `Some`. A number with nothing after the point is a
/// whole number, as JSON Schema counts it (`5.0` is the integer 5).
fn present_count<'de, D>(d: D) -> Result<Option<Option<i32>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::de::Error;
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(Some(None));
    };
    let whole = match (n.as_i64(), n.as_f64()) {
        (Some(i), _) => Some(i),
        (None, Some(f)) if f.fract() == 0.0 && f.abs() <= i64::MAX as f64 => Some(f as i64),
        _ => None,
    };
    whole
        .and_then(|i| i32::try_from(i).ok())
        .map(|i| Some(Some(i)))
        .ok_or_else(|| {
            D::Error::custom(format!("{n} is not a whole number of at most {}", i32::MAX))
        })
}

/// Set an account's quotas (admins only).
#[utoipa::path(patch, path = "/accounts/{name}", tag = "keys",
    params(("name" = String, Path)),
    request_body(content = QuotasChange, content_type = "application/merge-patch+json"),
    responses(
        (status = 200, body = Account),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
async fn set_quotas(
    State(state): State<AppState>,
    caller: Caller,
    name: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Account>, ApiError> {
    caller.require_admin()?;
    let Ok(Path(name)) = name else {
        return Err(ApiError::NotFound("account"));
    };
    require_media(
        &headers,
        &["application/merge-patch+json", "application/json"],
    )?;
    let body = body.map_err(body_error)?;
    let change: QuotasChange = parse_body(&body)?;
    let patch = quotas_patch(change)?;
    Ok(Json(state.store.set_quotas(&name, patch).await?))
}

/// Checks a quota change: no negative limits, FLOPs a finite number.
fn quotas_patch(c: QuotasChange) -> Result<QuotasPatch, ApiError> {
    for (field, v) in [("max_queued", c.max_queued), ("max_running", c.max_running)] {
        if let Some(Some(n)) = v
            && n < 0
        {
            return Err(ApiError::field(field, "must be 0 or more (null: no limit)"));
        }
    }
    if let Some(Some(f)) = c.max_flops_per_day
        && !(f.is_finite() && f >= 0.0)
    {
        return Err(ApiError::field(
            "max_flops_per_day",
            "must be a number of FLOPs, 0 or more (null: no limit)",
        ));
    }
    Ok(QuotasPatch {
        max_queued: c.max_queued,
        max_running: c.max_running,
        max_flops_per_day: c.max_flops_per_day,
    })
}

/// A JSON body as `T`, with the field at fault named in the 422.
fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    require_object(body)?;
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { String::new() } else { path };
        ApiError::field(field, e.into_inner().to_string())
    })
}
