//! `GET /compare?ids=a,b,...`: several experiments side by side, with their curves and
//! every field in which their resolved specs differ (see [`crate::spec::diff`]).

use axum::extract::{RawQuery, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::auth::Caller;
use super::input::query;
use super::view::ExperimentView;
use super::{AppState, error::ApiError};
use crate::spec::diff::{Difference, differences};
use crate::store::Experiment;
use crate::store::queue::StoredEpoch;

/// How many experiments one comparison takes.
const MIN_IDS: usize = 2;
const MAX_IDS: usize = 8;

pub fn router() -> Router<AppState> {
    Router::new().route("/compare", get(compare))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct CompareParams {
    /// 2 to 8 experiment ids, comma-separated.
    #[param(required = true, value_type = String, pattern = "^[0-9a-fA-F-]{32,36}(,[0-9a-fA-F-]{32,36}){1,7}$")]
    pub ids: Option<String>,
}

/// The experiments of `?ids=`, in order, each once: 422 for the wrong number, 404
/// naming every id that does not exist, then 422 for an id given twice.
pub async fn experiments(
    state: &AppState,
    caller: &Caller,
    ids: Option<&str>,
) -> Result<Vec<Experiment>, ApiError> {
    let raw: Vec<&str> = ids
        .ok_or_else(|| ApiError::field("ids", "required: 2 to 8 experiment ids, comma-separated"))?
        .split(',')
        .map(str::trim)
        .collect();
    if !(MIN_IDS..=MAX_IDS).contains(&raw.len()) {
        return Err(ApiError::field(
            "ids",
            format!(
                "compare {MIN_IDS} to {MAX_IDS} experiments, got {}",
                raw.len()
            ),
        ));
    }
    let mut ids = Vec::with_capacity(raw.len());
    let mut unknown = Vec::new();
    let mut twice = None;
    for r in &raw {
        match r.parse::<Uuid>() {
            Ok(id) if ids.contains(&id) => twice = Some(id),
            Ok(id) => ids.push(id),
            // Not even an id: unknown, like an id that does not exist.
            Err(_) => unknown.push(format!("{r:?}")),
        }
    }
    match state.store.experiments(caller.scope(), &ids).await {
        Ok(_) if unknown.is_empty() && twice.is_some() => Err(ApiError::field(
            "ids",
            format!("{} is given twice", twice.unwrap_or_default()),
        )),
        Ok(found) if unknown.is_empty() => Ok(found),
        Ok(_) => Err(ApiError::NotFoundNamed(format!(
            "unknown experiments: {}",
            unknown.join(", ")
        ))),
        Err(crate::store::StoreError::NotFoundIds(missing)) => {
            unknown.extend(missing.iter().map(Uuid::to_string));
            Err(ApiError::NotFoundNamed(format!(
                "unknown experiments: {}",
                unknown.join(", ")
            )))
        }
        Err(e) => Err(e.into()),
    }
}

/// One experiment of a comparison.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Compared {
    #[serde(flatten)]
    pub experiment: ExperimentView,
    /// Its stored epochs, as `/experiments/{id}/metrics` lists them.
    pub metrics: Vec<StoredEpoch>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Comparison {
    pub experiments: Vec<Compared>,
    /// Every field whose value differs between the resolved specs, each experiment's
    /// value in the order of `experiments`.
    pub diff: Vec<Difference>,
}

/// Compare experiments: their curves and their spec difference.
#[utoipa::path(get, path = "/compare", tag = "experiments", params(CompareParams),
    responses(
        (status = 200, body = Comparison),
        (status = 404, description = "Unknown experiments, each named", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Fewer than 2 or more than 8 ids, or one given twice", body = super::error::Problem, content_type = "application/problem+json"),
    ))]
async fn compare(
    State(state): State<AppState>,
    caller: Caller,
    p: RawQuery,
) -> Result<Json<Comparison>, ApiError> {
    let p: CompareParams = query(p)?;
    let found = experiments(&state, &caller, p.ids.as_deref()).await?;
    let diff = differences(&found.iter().map(|e| e.spec.clone()).collect::<Vec<_>>());
    let mut out = Vec::with_capacity(found.len());
    for e in found {
        let metrics = state.store.stored_epochs(e.id).await?;
        out.push(Compared {
            experiment: ExperimentView::new(e, true),
            metrics,
        });
    }
    Ok(Json(Comparison {
        experiments: out,
        diff,
    }))
}
