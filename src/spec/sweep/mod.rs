//! Sweeps: many experiments from one request.
//!
//! A sweep is a base spec and a set of *points*, each a few fields of the base set to
//! other values (paths as [`super::diff`] prints them), trained `repeats` times with
//! seeds `seed, seed + 1, ...`. A grid lists every combination of its axes; a random
//! search draws `n` points from seeded distributions ([`random`]); an ablation
//! ([`ablation`]) takes two experiments and makes one point per field where their
//! resolved specs differ. This module only turns a request into the children's specs;
//! the service validates every child before it queues any, so a sweep is queued whole
//! or not at all.

pub mod ablation;
pub mod path;
pub mod random;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{FieldError, Monitor, SpecErrors};
pub use random::Distribution;

/// Most children one sweep may queue (points times repeats, baselines included).
pub const MAX_CHILDREN: usize = 256;
/// Most repeats of one point.
pub const MAX_REPEATS: u32 = 32;

/// A `POST /sweeps` body, but for `name` and `tags`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SweepRequest {
    /// The spec every child starts from (a preset with overrides, or written out);
    /// required for `grid` and `random`, refused for `ablate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<Value>,
    /// Path to the values it takes: every combination is a point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grid: Option<Map<String, Value>>,
    /// `n` points drawn from `space` with `seed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random: Option<RandomSearch>,
    /// One point per difference between two experiments' resolved specs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ablate: Option<Ablate>,
    /// How many times each point trains, with seeds `seed, seed + 1, ...` (default 1).
    #[serde(default = "one")]
    pub repeats: u32,
    /// What the ranking orders by (its final epoch's value): by default `val_loss` when
    /// the base holds out a validation split, else `test_loss` (an ablation: `test_loss`,
    /// which every child measures alike).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<Monitor>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RandomSearch {
    /// How many points.
    pub n: u32,
    /// The generator's seed: the same seed draws the same points.
    #[serde(default)]
    pub seed: u64,
    /// Path to the distribution its values come from.
    pub space: Map<String, Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Ablate {
    /// The experiment every child starts from (A).
    pub from: Uuid,
    /// The experiment whose values the children take, one difference each (B).
    pub to: Uuid,
}

/// What kind of sweep a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Grid,
    Random,
    Ablation,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Grid => "grid",
            Kind::Random => "random",
            Kind::Ablation => "ablation",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        [Kind::Grid, Kind::Random, Kind::Ablation]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// What an ablation child is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A itself (the baseline the changes are measured from).
    From,
    /// B itself (where the changes head).
    To,
    /// A with one difference set to B's value.
    Change,
}

/// One point of a sweep: the fields it sets on the base, stored with each child.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Point {
    /// An ablation child's part; absent in a grid or random search.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// Path to the value this point gives it.
    pub set: Map<String, Value>,
}

impl Point {
    /// A short name: `a=1, b=2`, or an ablation child's role or changed path.
    pub fn label(&self) -> String {
        match self.role {
            Some(Role::From) => "from (A)".into(),
            Some(Role::To) => "to (B)".into(),
            _ if self.set.is_empty() => "base".into(),
            Some(Role::Change) => self.set.keys().next().cloned().unwrap_or_default(),
            None => self
                .set
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

/// One child: its point, its repeat, and its spec (not yet validated).
#[derive(Debug, Clone)]
pub struct Child {
    pub point: Point,
    pub repeat: u32,
    pub spec: Value,
}

impl SweepRequest {
    /// Parses a body (without `name` and `tags`), naming the field at fault.
    pub fn from_value(value: Value) -> Result<SweepRequest, SpecErrors> {
        let req: SweepRequest = super::deserialize_at("", value)?;
        let kinds = [
            req.grid.is_some(),
            req.random.is_some(),
            req.ablate.is_some(),
        ];
        match kinds.iter().filter(|k| **k).count() {
            1 => {}
            0 => {
                return Err(SpecErrors::one(
                    "",
                    "a sweep needs one of `grid`, `random` or `ablate`",
                ));
            }
            _ => {
                return Err(SpecErrors::one(
                    "",
                    "a sweep takes only one of `grid`, `random` and `ablate`",
                ));
            }
        }
        if !(1..=MAX_REPEATS).contains(&req.repeats) {
            return Err(SpecErrors::one(
                "repeats",
                format!("must be between 1 and {MAX_REPEATS}"),
            ));
        }
        match (&req.base, req.ablate.is_some()) {
            (None, false) => Err(SpecErrors::one(
                "base",
                "required: the spec every child starts from",
            )),
            (Some(_), true) => Err(SpecErrors::one(
                "base",
                "an ablation's children start from `ablate.from`'s spec: leave `base` out",
            )),
            _ => Ok(req),
        }
    }

    pub fn kind(&self) -> Kind {
        match (&self.grid, &self.random) {
            (Some(_), _) => Kind::Grid,
            (_, Some(_)) => Kind::Random,
            _ => Kind::Ablation,
        }
    }

    /// The points of a grid or random search, each checked to be settable (every error
    /// at once, each at its field: `grid["optimizer.learning_rate"]`).
    pub fn points(&self) -> Result<Vec<Point>, SpecErrors> {
        if let Some(grid) = &self.grid {
            return grid_points(grid, self.repeats);
        }
        if let Some(random) = &self.random {
            return random_points(random, self.repeats);
        }
        Ok(Vec::new())
    }
}

/// The field name of a path inside `grid` or `random.space`.
pub fn field(prefix: &str, path: &str) -> String {
    format!("{prefix}[{}]", Value::from(path))
}

fn too_many(field: &str, children: usize, repeats: u32) -> SpecErrors {
    SpecErrors::one(
        field,
        format!(
            "{children} children ({} points times {repeats} repeats) is more than the \
             {MAX_CHILDREN} one sweep may queue",
            children / repeats.max(1) as usize
        ),
    )
}

fn grid_points(grid: &Map<String, Value>, repeats: u32) -> Result<Vec<Point>, SpecErrors> {
    let mut errors = Vec::new();
    let mut axes: Vec<(&String, &Vec<Value>)> = Vec::new();
    if grid.is_empty() {
        return Err(SpecErrors::one("grid", "needs at least one path"));
    }
    for (p, values) in grid {
        let at = field("grid", p);
        if let Err(e) = path::parse(p) {
            errors.push(FieldError {
                field: at,
                reason: e,
            });
            continue;
        }
        match values.as_array() {
            Some(v) if !v.is_empty() => axes.push((p, v)),
            _ => errors.push(FieldError {
                field: at,
                reason: "must be a list of at least one value".into(),
            }),
        }
    }
    if !errors.is_empty() {
        return Err(SpecErrors(errors));
    }
    let points = axes
        .iter()
        .try_fold(1usize, |n, (_, v)| n.checked_mul(v.len()))
        .unwrap_or(usize::MAX);
    let children = points.saturating_mul(repeats as usize);
    if children > MAX_CHILDREN {
        return Err(too_many("grid", children, repeats));
    }
    // Every combination, the last axis varying fastest (as nested loops would).
    let mut out = vec![Map::new()];
    for (p, values) in axes {
        out = out
            .into_iter()
            .flat_map(|m| {
                values.iter().map(move |v| {
                    let mut m = m.clone();
                    m.insert(p.clone(), v.clone());
                    m
                })
            })
            .collect();
    }
    Ok(out
        .into_iter()
        .map(|set| Point { role: None, set })
        .collect())
}

fn random_points(r: &RandomSearch, repeats: u32) -> Result<Vec<Point>, SpecErrors> {
    let mut errors = Vec::new();
    if r.n == 0 {
        errors.push(FieldError {
            field: "random.n".into(),
            reason: "must be at least 1".into(),
        });
    }
    let children = (r.n as usize).saturating_mul(repeats as usize);
    if children > MAX_CHILDREN {
        return Err(too_many("random.n", children, repeats));
    }
    if r.space.is_empty() {
        errors.push(FieldError {
            field: "random.space".into(),
            reason: "needs at least one path".into(),
        });
    }
    let mut space = Vec::new();
    for (p, d) in &r.space {
        let at = field("random.space", p);
        if let Err(e) = path::parse(p) {
            errors.push(FieldError {
                field: at,
                reason: e,
            });
            continue;
        }
        match super::deserialize_at::<Distribution>(&at, d.clone()) {
            Ok(dist) => match dist.check() {
                Ok(()) => space.push((p, dist)),
                Err(e) => errors.push(FieldError {
                    field: at,
                    reason: e,
                }),
            },
            Err(e) => errors.extend(e.0.into_iter().map(|e| FieldError {
                reason: format!(
                    "{}; expected one of {{\"log_uniform\": [low, high]}}, {{\"uniform\": \
                     [low, high]}}, {{\"int_uniform\": [low, high]}}, {{\"choice\": [...]}}",
                    e.reason
                ),
                ..e
            })),
        }
    }
    if !errors.is_empty() {
        return Err(SpecErrors(errors));
    }
    let mut rng = random::SplitMix64::new(r.seed);
    Ok((0..r.n)
        .map(|_| Point {
            role: None,
            set: space
                .iter()
                .map(|(p, d)| ((*p).clone(), d.draw(&mut rng)))
                .collect(),
        })
        .collect())
}

/// The children of `points` on `base` (a resolved spec): each point's fields set, then
/// `repeats` copies with seeds counted up from the point's own. A point whose path does
/// not fit the base is an error at `<prefix>["path"]`.
pub fn children(
    base: &Value,
    points: &[Point],
    repeats: u32,
    prefix: &str,
) -> Result<Vec<Child>, SpecErrors> {
    let mut errors: Vec<FieldError> = Vec::new();
    let mut out = Vec::with_capacity(points.len() * repeats as usize);
    for point in points {
        let mut spec = base.clone();
        for (p, v) in &point.set {
            let set = path::parse(p).and_then(|steps| path::set(&mut spec, &steps, v.clone()));
            if let Err(e) = set {
                let at = field(prefix, p);
                if !errors.iter().any(|x| x.field == at) {
                    errors.push(FieldError {
                        field: at,
                        reason: e,
                    });
                }
            }
        }
        let seed = spec.get("seed").and_then(Value::as_u64).unwrap_or(0);
        for repeat in 0..repeats {
            let mut spec = spec.clone();
            if let Some(obj) = spec.as_object_mut() {
                obj.insert("seed".into(), Value::from(seed.wrapping_add(repeat as u64)));
            }
            out.push(Child {
                point: point.clone(),
                repeat,
                spec,
            });
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(SpecErrors(errors))
    }
}

#[cfg(test)]
mod tests;
