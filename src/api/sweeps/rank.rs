//! What a sweep's results say: its points ranked by a metric, with the mean and spread
//! over repeats, and for an ablation how far each difference moves A towards B.
//!
//! Only children that succeeded count (a cancelled or failed run's last epoch is not a
//! result), each by its last stored epoch. The spread is the sample standard deviation
//! (n - 1), absent below two values: one seed says nothing about the spread.

use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::spec::Monitor;
use crate::spec::sweep::{Point, Role};
use crate::store::Status;
use crate::store::sweeps::SweepChild;

/// Values over repeats.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Spread {
    /// How many repeats have a value.
    pub n: usize,
    pub mean: Option<f64>,
    /// Sample standard deviation; absent below two values.
    pub std: Option<f64>,
    /// By repeat; `null` for one without a result (yet).
    pub values: Vec<Option<f64>>,
}

impl Spread {
    pub fn of(values: Vec<Option<f64>>) -> Spread {
        let got: Vec<f64> = values.iter().flatten().copied().collect();
        let n = got.len();
        let mean = (n > 0).then(|| got.iter().sum::<f64>() / n as f64);
        let std = mean
            .filter(|_| n > 1)
            .map(|m| (got.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt());
        Spread {
            n,
            mean,
            std,
            values,
        }
    }
}

/// One point of a grid or random search, ranked.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RankedPoint {
    /// 1 for the best mean; points with no result yet come last, unranked.
    pub rank: Option<usize>,
    pub label: String,
    /// The fields this point set on the base.
    #[schema(value_type = Object)]
    pub set: Map<String, Value>,
    /// Its children, by repeat.
    pub experiments: Vec<Uuid>,
    /// The metric's final value over repeats.
    pub metric: Spread,
}

/// Children grouped by point, in the order of their first child, each group by repeat.
fn groups(children: &[SweepChild], repeats: usize) -> Vec<(Point, Vec<Option<&SweepChild>>)> {
    let mut out: Vec<(Point, Vec<Option<&SweepChild>>)> = Vec::new();
    for c in children {
        let Ok(point) = serde_json::from_value::<Point>(c.point.clone()) else {
            continue;
        };
        let i = match out.iter().position(|(p, _)| *p == point) {
            Some(i) => i,
            None => {
                out.push((point, vec![None; repeats]));
                out.len() - 1
            }
        };
        if let Some(slot) = out[i].1.get_mut(c.repeat as usize) {
            *slot = Some(c);
        }
    }
    out
}

/// The final value of `metric` of a child that succeeded.
fn result(c: Option<&SweepChild>, metric: &str) -> Option<f64> {
    let c = c?;
    if c.experiment.status != Status::Succeeded {
        return None;
    }
    c.last.and_then(|l| l.get(metric))
}

fn ids(group: &[Option<&SweepChild>]) -> Vec<Uuid> {
    group.iter().flatten().map(|c| c.experiment.id).collect()
}

/// Sorts by `key` (best first: ascending, or descending when `higher`), ranking those with
/// a key 1, 2, ... and leaving the rest unranked at the end.
fn order<T>(items: &mut [T], key: impl Fn(&T) -> Option<f64>, higher: bool) -> Vec<Option<usize>> {
    items.sort_by(|a, b| match (key(a), key(b)) {
        (Some(x), Some(y)) if higher => y.total_cmp(&x),
        (Some(x), Some(y)) => x.total_cmp(&y),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    });
    let mut rank = 0;
    items
        .iter()
        .map(|i| {
            key(i).map(|_| {
                rank += 1;
                rank
            })
        })
        .collect()
}

/// A grid's or random search's points, best mean first.
pub fn points(children: &[SweepChild], repeats: usize, metric: Monitor) -> Vec<RankedPoint> {
    let mut out: Vec<RankedPoint> = groups(children, repeats)
        .into_iter()
        .map(|(point, group)| RankedPoint {
            rank: None,
            label: point.label(),
            experiments: ids(&group),
            metric: Spread::of(group.iter().map(|c| result(*c, metric.name())).collect()),
            set: point.set,
        })
        .collect();
    let ranks = order(&mut out, |r| r.metric.mean, metric.higher_is_better());
    for (r, rank) in out.iter_mut().zip(ranks) {
        r.rank = rank;
    }
    out
}

/// How a change moved one metric, against A's and B's own values on the same seeds.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Moved {
    pub metric: String,
    /// The child's final values.
    pub value: Spread,
    /// Child minus A, repeat by repeat (the same seed).
    pub delta: Spread,
    /// (child - A) / (B - A), repeat by repeat: 1 moves all the way to B, 0 not at all,
    /// negative away from B; absent for a repeat where A and B are equal.
    pub fraction: Spread,
}

/// One difference between A and B, ranked by how far it moves the metric.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Effect {
    /// 1 for the largest mean |delta| of the ranking metric.
    pub rank: Option<usize>,
    pub path: String,
    /// A's value and B's.
    #[schema(value_type = Object)]
    pub from: Value,
    #[schema(value_type = Object)]
    pub to: Value,
    pub experiments: Vec<Uuid>,
    /// The ranking metric (a loss unless asked otherwise).
    pub loss: Moved,
    /// The matching accuracy (`test_accuracy` beside `test_loss`).
    pub accuracy: Moved,
}

/// An ablation's answer.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Ablation {
    pub from: Option<Uuid>,
    pub to: Option<Uuid>,
    /// A's and B's own results on the same seeds (the baselines).
    pub baseline_from: Baseline,
    pub baseline_to: Baseline,
    /// Every difference tried, the largest effect first.
    pub differences: Vec<Effect>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Baseline {
    pub experiments: Vec<Uuid>,
    pub loss: Spread,
    pub accuracy: Spread,
}

/// The accuracy measured beside a metric (`val_loss` -> `val_accuracy`).
fn companion(metric: Monitor) -> Monitor {
    match metric {
        Monitor::ValLoss => Monitor::ValAccuracy,
        Monitor::ValAccuracy => Monitor::ValLoss,
        Monitor::TestLoss => Monitor::TestAccuracy,
        Monitor::TestAccuracy => Monitor::TestLoss,
        Monitor::TrainLoss => Monitor::TrainAccuracy,
        Monitor::TrainAccuracy => Monitor::TrainLoss,
    }
}

pub fn ablation(
    children: &[SweepChild],
    repeats: usize,
    metric: Monitor,
    ends: (Option<Uuid>, Option<Uuid>),
    changes: &[(String, Value, Value)],
) -> Ablation {
    let groups = groups(children, repeats);
    let of = |role: Role| {
        groups
            .iter()
            .find(|(p, _)| p.role == Some(role))
            .map(|(_, g)| g.clone())
            .unwrap_or_else(|| vec![None; repeats])
    };
    let (a, b) = (of(Role::From), of(Role::To));
    let values = |g: &[Option<&SweepChild>], m: Monitor| -> Vec<Option<f64>> {
        g.iter().map(|c| result(*c, m.name())).collect()
    };
    let accuracy = companion(metric);
    let baseline = |g: &[Option<&SweepChild>]| Baseline {
        experiments: ids(g),
        loss: Spread::of(values(g, metric)),
        accuracy: Spread::of(values(g, accuracy)),
    };
    let moved = |g: &[Option<&SweepChild>], m: Monitor| {
        let (c, a, b) = (values(g, m), values(&a, m), values(&b, m));
        let delta = (0..repeats).map(|r| Some(c[r]? - a[r]?)).collect();
        let fraction = (0..repeats)
            .map(|r| {
                let gap = b[r]? - a[r]?;
                let moved = c[r]? - a[r]?;
                (gap != 0.0).then(|| moved / gap)
            })
            .collect();
        Moved {
            metric: m.name().to_string(),
            value: Spread::of(c),
            delta: Spread::of(delta),
            fraction: Spread::of(fraction),
        }
    };
    let mut differences: Vec<Effect> = changes
        .iter()
        .filter_map(|(path, from, to)| {
            let (_, g) = groups
                .iter()
                .find(|(p, _)| p.role == Some(Role::Change) && p.set.keys().next() == Some(path))?;
            Some(Effect {
                rank: None,
                path: path.clone(),
                from: from.clone(),
                to: to.clone(),
                experiments: ids(g),
                loss: moved(g, metric),
                accuracy: moved(g, accuracy),
            })
        })
        .collect();
    let ranks = order(&mut differences, |e| e.loss.delta.mean.map(f64::abs), true);
    for (e, rank) in differences.iter_mut().zip(ranks) {
        e.rank = rank;
    }
    Ablation {
        from: ends.0,
        to: ends.1,
        baseline_from: baseline(&a),
        baseline_to: baseline(&b),
        differences,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spread_is_the_sample_standard_deviation() {
        let s = Spread::of(vec![Some(1.0), Some(3.0), None]);
        assert_eq!((s.n, s.mean), (2, Some(2.0)));
        assert!((s.std.unwrap() - 2f64.sqrt()).abs() < 1e-12);
        let one = Spread::of(vec![Some(1.0)]);
        assert_eq!(one.std, None);
        assert_eq!(Spread::of(vec![None]).mean, None);
    }

    #[test]
    fn ranks_go_best_first_and_leave_the_unmeasured_last() {
        let mut v = vec![Some(0.3), None, Some(0.1), Some(0.2)];
        let r = order(&mut v, |x| *x, false);
        assert_eq!(v, [Some(0.1), Some(0.2), Some(0.3), None]);
        assert_eq!(r, [Some(1), Some(2), Some(3), None]);
        let r = order(&mut v, |x| *x, true);
        assert_eq!(v[0], Some(0.3));
        assert_eq!(r[3], None);
    }
}
