//! From a `POST /sweeps` body to children that are each a valid submission.
//!
//! Every child goes through [`specs::check`], the same reading `POST /experiments`
//! gives one spec, before any is queued. An error a child meets is reported at the
//! request's field that caused it: the sweep path whose value a point set
//! (`grid["optimizer.learning_rate"]`), or the base field (`base.epochs`), with the point
//! named in the reason. An ablation's difference whose child cannot train (B's layers on
//! A's input size, say) is not an error: it is listed as skipped, with why, and the
//! others are tried.

use serde::Serialize;
use serde_json::Value;

use super::super::auth::Caller;
use super::super::specs::{self, Submitted};
use super::super::{AppState, error::ApiError};
use crate::spec::sweep::{self, Child, Kind, MAX_CHILDREN, SweepRequest, ablation};
use crate::spec::{FieldError, Monitor, SpecErrors};
use crate::store::StoreError;

/// At most this many errors in one answer: a grid of 200 children with the same fault
/// says it once per field anyway.
const MAX_ERRORS: usize = 20;

/// A sweep's children, each validated.
pub struct Built {
    pub kind: Kind,
    pub metric: Monitor,
    pub children: Vec<(Child, Submitted)>,
    /// An ablation's differences its children try.
    pub changes: Vec<ablation::Change>,
    pub skipped: Vec<Skipped>,
}

/// An ablation's difference that no child could try.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Skipped {
    pub path: String,
    #[schema(value_type = Object)]
    pub from: Value,
    #[schema(value_type = Object)]
    pub to: Value,
    /// Why A with this one value of B's does not validate.
    pub errors: Vec<FieldError>,
}

pub async fn build(
    state: &AppState,
    caller: &Caller,
    req: &SweepRequest,
) -> Result<Built, ApiError> {
    match req.ablate {
        Some(a) => ablate(state, caller, req, a).await,
        None => search(state, caller, req).await,
    }
}

/// A grid or a random search.
async fn search(state: &AppState, caller: &Caller, req: &SweepRequest) -> Result<Built, ApiError> {
    let kind = req.kind();
    let prefix = match kind {
        Kind::Grid => "grid",
        _ => "random.space",
    };
    let points = req.points()?;
    let base = req.base.clone().unwrap_or_default();
    let base = specs::check(state, caller, base)
        .await
        .map_err(|e| relocate(e, |f| join("base", &f.field), |r| r.to_string()))?;
    let metric = metric_for(req.metric, &base, "metric")?;
    let resolved = base.resolved()?;
    let children = sweep::children(&resolved, &points, req.repeats, prefix)?;
    let mut errors: Vec<FieldError> = Vec::new();
    let mut out = Vec::with_capacity(children.len());
    for child in children {
        match specs::check(state, caller, child.spec.clone()).await {
            Ok(s) => out.push((child, s)),
            Err(ApiError::Invalid(e)) => {
                for f in e.0 {
                    let set_here = child.point.set.keys().find(|p| {
                        f.field == **p
                            || f.field
                                .strip_prefix(p.as_str())
                                .is_some_and(|r| r.starts_with(['.', '[']))
                    });
                    let field = match set_here {
                        Some(p) => sweep::field(prefix, p),
                        None => join("base", &f.field),
                    };
                    let reason = format!("with {}: {}", child.point.label(), f.reason);
                    if errors.len() < MAX_ERRORS && !errors.iter().any(|x| x.field == field) {
                        errors.push(FieldError { field, reason });
                    }
                }
            }
            Err(e) => return Err(e),
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Invalid(SpecErrors(errors)));
    }
    Ok(Built {
        kind,
        metric,
        children: out,
        changes: Vec::new(),
        skipped: Vec::new(),
    })
}

async fn ablate(
    state: &AppState,
    caller: &Caller,
    req: &SweepRequest,
    a: sweep::Ablate,
) -> Result<Built, ApiError> {
    let lookup = |id, field: &'static str| async move {
        match state.store.experiment_in(caller.scope(), id).await {
            Ok(e) => Ok(e),
            Err(StoreError::NotFound) => Err(ApiError::field(field, format!("no experiment {id}"))),
            Err(e) => Err(e.into()),
        }
    };
    let from = lookup(a.from, "ablate.from").await?;
    let to = lookup(a.to, "ablate.to").await?;
    if a.from == a.to {
        return Err(ApiError::field(
            "ablate.to",
            "is the same experiment as ablate.from",
        ));
    }
    let changes = ablation::changes(&from.spec, &to.spec);
    if changes.is_empty() {
        return Err(ApiError::field(
            "ablate.to",
            "its spec differs from ablate.from's in nothing an ablation can try (seeds and \
             devices are not tried: repeats vary the seed alike for every child)",
        ));
    }
    let count = (changes.len() + 2) * req.repeats as usize;
    if count > MAX_CHILDREN {
        return Err(ApiError::field(
            "repeats",
            format!(
                "{} differences and the two baselines, times {} repeats, are {count} \
                 children: more than the {MAX_CHILDREN} one sweep may queue",
                changes.len(),
                req.repeats
            ),
        ));
    }
    let mut out = Vec::with_capacity(count);
    let mut skipped: Vec<Skipped> = Vec::new();
    for child in ablation::children(&from.spec, &to.spec, &changes, req.repeats) {
        let changed = child.point.set.keys().next().cloned();
        if changed
            .as_ref()
            .is_some_and(|p| skipped.iter().any(|s| &s.path == p))
        {
            continue;
        }
        match (
            specs::check(state, caller, child.spec.clone()).await,
            changed,
        ) {
            (Ok(s), _) => out.push((child, s)),
            (Err(ApiError::Invalid(e)), Some(path)) => {
                let c = changes.iter().find(|c| c.path == path).expect("its change");
                // Drop the repeats of this change already accepted.
                out.retain(|(k, _): &(Child, Submitted)| !k.point.set.contains_key(&path));
                skipped.push(Skipped {
                    path,
                    from: c.from.clone(),
                    to: c.to.clone(),
                    errors: e.0,
                });
            }
            (Err(e), None) => {
                // A baseline: the experiment as stored no longer validates (its uploaded
                // dataset was deleted, say).
                let field = match child.point.role {
                    Some(sweep::Role::To) => "ablate.to",
                    _ => "ablate.from",
                };
                return Err(relocate(
                    e,
                    |_| field.to_string(),
                    |r| format!("the experiment's spec does not validate now: {r}"),
                ));
            }
            (Err(e), Some(_)) => return Err(e),
        }
    }
    let metric = match req.metric {
        None => Monitor::TestLoss,
        Some(m) if m.needs_validation() => {
            let both = [&from.spec, &to.spec]
                .iter()
                .all(|s| s["dataset"]["validation"].get("split").is_some());
            if !both {
                return Err(ApiError::field(
                    "metric",
                    "A and B do not both hold out a validation split, so only test_* and \
                     train_* metrics compare them",
                ));
            }
            m
        }
        Some(m) => m,
    };
    let tried = changes
        .into_iter()
        .filter(|c| !skipped.iter().any(|s| s.path == c.path))
        .collect();
    Ok(Built {
        kind: Kind::Ablation,
        metric,
        children: out,
        changes: tried,
        skipped,
    })
}

/// The ranking's metric: the one asked for, which the base must measure, or by default
/// the validation loss where there is a validation split, else the test loss.
fn metric_for(asked: Option<Monitor>, base: &Submitted, field: &str) -> Result<Monitor, ApiError> {
    let split = base.spec.dataset.validation.split().is_some();
    match asked {
        None if split => Ok(Monitor::ValLoss),
        None => Ok(Monitor::TestLoss),
        Some(m) if m.needs_validation() && !split => Err(ApiError::field(
            field,
            format!(
                "the base holds out no validation split, so it has no {}: use test_loss or \
                 test_accuracy, or set base.dataset.validation",
                m.name()
            ),
        )),
        Some(m) => Ok(m),
    }
}

fn join(prefix: &str, field: &str) -> String {
    match field {
        "" => prefix.to_string(),
        f if f.starts_with('[') => format!("{prefix}{f}"),
        f => format!("{prefix}.{f}"),
    }
}

/// The same 422 with its fields and reasons rewritten; other errors as they are.
fn relocate(
    e: ApiError,
    field: impl Fn(&FieldError) -> String,
    reason: impl Fn(&str) -> String,
) -> ApiError {
    match e {
        ApiError::Invalid(errs) => ApiError::Invalid(SpecErrors(
            errs.0
                .iter()
                .map(|f| FieldError {
                    field: field(f),
                    reason: reason(&f.reason),
                })
                .collect(),
        )),
        other => other,
    }
}
