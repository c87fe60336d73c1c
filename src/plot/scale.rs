//! Axis scales: "nice" tick positions and the data-to-pixel mapping.
//!
//! A reader compares curves by reading values off the axes, so ticks sit on round numbers
//! (1, 2 or 5 times a power of ten) and the axis is widened to the nearest ticks outside
//! the data: every point lies between two labelled gridlines, and the ends of the axis
//! are labelled too. Degenerate inputs (one point, all values equal, an empty chart,
//! non-finite bounds) get a small honest range instead of a zero-width one, which would
//! put every point at a division by zero.
//!
//! Only linear scales: loss curves of these small CNNs span one or two decades at most,
//! where a linear axis reads fine and is what the Keras and PyTorch tutorials show.

/// Ticks covering a range: the axis runs from `lo` to `hi`, which are multiples of
/// `step` (to within float rounding), and labels print with `decimals` digits after the
/// point.
#[derive(Debug, Clone, PartialEq)]
pub struct Ticks {
    pub lo: f64,
    pub hi: f64,
    pub step: f64,
    pub decimals: usize,
}

/// At most this many ticks per axis, whatever the inputs (a guard, not a layout choice).
const MAX_TICKS: i64 = 50;

impl Ticks {
    /// The tick values from `lo` to `hi`, computed as `k * step` (no accumulated error).
    pub fn values(&self) -> impl Iterator<Item = f64> + '_ {
        let first = (self.lo / self.step).round() as i64;
        let last = (self.hi / self.step).round() as i64;
        (first..=last.min(first + MAX_TICKS)).map(move |k| k as f64 * self.step)
    }

    /// A tick's label: fixed decimals, enough to tell neighbouring ticks apart.
    pub fn label(&self, v: f64) -> String {
        let s = format!("{:.*}", self.decimals, v);
        // -0.00 reads as a bug.
        if s.starts_with('-') && s[1..].bytes().all(|b| b == b'0' || b == b'.') {
            s[1..].to_string()
        } else {
            s
        }
    }
}

/// The smallest 1, 2 or 5 times a power of ten that is at least `raw` (> 0, finite).
fn nice_step(raw: f64) -> f64 {
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    // A little slack so that 2.0000000001 (float noise) still counts as 2.
    let nice = if norm <= 1.0 + 1e-9 {
        1.0
    } else if norm <= 2.0 + 1e-9 {
        2.0
    } else if norm <= 5.0 + 1e-9 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

/// Nice ticks covering `[lo, hi]` with about `intervals` gaps between them. With
/// `integer`, the step is at least 1 (epochs).
pub fn ticks(lo: f64, hi: f64, intervals: usize, integer: bool) -> Ticks {
    let (mut lo, mut hi) = if lo.is_finite() && hi.is_finite() {
        (lo.min(hi), lo.max(hi))
    } else {
        (0.0, 1.0)
    };
    // Spans beyond f64 (from ±1e308 values) cannot be divided into steps.
    if !(hi - lo).is_finite() {
        lo /= 4.0;
        hi /= 4.0;
    }
    // All values (nearly) equal: centre them in a range of their own size, or 1 around 0.
    let mid = lo / 2.0 + hi / 2.0;
    if hi - lo <= mid.abs() * 1e-9 {
        let pad = if integer {
            1.0
        } else if mid == 0.0 {
            0.5
        } else {
            mid.abs() * 0.1
        };
        lo = mid - pad;
        hi = mid + pad;
    }
    let mut step = nice_step((hi - lo) / intervals.max(1) as f64);
    if integer {
        step = step.max(1.0);
    }
    // The slack keeps 0.3 / 0.1 = 2.9999999999999996 from adding a tick below 0.3.
    let lo_k = (lo / step + 1e-9).floor();
    let hi_k = (hi / step - 1e-9).ceil();
    let decimals = (-step.log10().floor()).clamp(0.0, 12.0) as usize;
    Ticks {
        // 3 * 0.1 is 0.30000000000000004: the min and max keep the data on the axis.
        lo: (lo_k * step).min(lo),
        hi: (hi_k * step).max(hi),
        step,
        decimals,
    }
}

/// The linear map from a domain (data) onto a range (pixels); the range may run backwards
/// (y grows downwards in SVG).
#[derive(Debug, Clone, Copy)]
pub struct Linear {
    pub d0: f64,
    pub d1: f64,
    pub r0: f64,
    pub r1: f64,
}

impl Linear {
    pub fn map(&self, v: f64) -> f64 {
        self.r0 + (v - self.d0) / (self.d1 - self.d0) * (self.r1 - self.r0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_nice(step: f64) -> bool {
        let mantissa = step / 10f64.powf(step.log10().floor());
        [1.0, 2.0, 5.0, 10.0]
            .iter()
            .any(|m| (mantissa - m).abs() < 1e-6)
    }

    #[test]
    fn ticks_use_1_2_5_steps_and_cover_the_data_range() {
        let mut cases = vec![
            (0.0, 1.0),
            (0.3, 0.7),
            (0.0123, 0.0456),
            (0.98, 0.9912),
            (1.0, 1000.0),
            (-3.2, 7.9),
            (2.3105, 0.0421),
            (1e-7, 3e-7),
            (12345.0, 12399.0),
        ];
        // A deterministic spread of magnitudes and spans.
        let mut x = 0.5f64;
        for i in 0..500 {
            x = (x * 3.7 + 0.123).fract();
            let scale = 10f64.powi(i % 13 - 6);
            let lo = (x - 0.3) * scale;
            cases.push((lo, lo + x * scale * 0.37 + scale * 1e-3));
        }
        for (lo, hi) in cases {
            for intervals in [2, 5, 8] {
                let t = ticks(lo, hi, intervals, false);
                assert!(is_nice(t.step), "{lo}..{hi}: step {}", t.step);
                assert!(
                    t.lo <= lo.min(hi) && t.hi >= hi.max(lo),
                    "{lo}..{hi}: {t:?}"
                );
                let vs: Vec<f64> = t.values().collect();
                assert!(
                    vs.len() >= 2 && vs.len() <= 2 * intervals + 3,
                    "{lo}..{hi}: {vs:?}"
                );
                // Distinct labels for distinct ticks.
                let labels: Vec<String> = vs.iter().map(|v| t.label(*v)).collect();
                assert!(labels.windows(2).all(|w| w[0] != w[1]), "{labels:?}");
            }
        }
    }

    #[test]
    fn ticks_of_epochs_step_by_whole_numbers() {
        let t = ticks(1.0, 5.0, 8, true);
        assert_eq!(t.step, 1.0);
        assert_eq!(t.values().collect::<Vec<_>>(), [1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(t.label(3.0), "3");
        let t = ticks(1.0, 1000.0, 8, true);
        assert_eq!(t.step, 200.0);
        assert_eq!((t.lo, t.hi), (0.0, 1000.0));
    }

    #[test]
    fn ticks_of_one_value_or_none_have_a_nonzero_range() {
        for (lo, hi, integer) in [
            (1.0, 1.0, true),
            (0.5, 0.5, false),
            (0.0, 0.0, false),
            (-2.0, -2.0, false),
            (f64::NAN, 1.0, false),
            (f64::INFINITY, 1.0, false),
            (-1e308, 1e308, false),
        ] {
            let t = ticks(lo, hi, 5, integer);
            assert!(t.hi > t.lo && t.step > 0.0, "{lo}..{hi}: {t:?}");
            assert!(t.values().count() >= 2, "{lo}..{hi}: {t:?}");
            if lo.is_finite() && hi.is_finite() && (hi - lo).is_finite() {
                assert!(t.lo <= lo && t.hi >= hi, "{lo}..{hi}: {t:?}");
            }
        }
    }

    #[test]
    fn tick_labels_print_enough_decimals_and_no_negative_zero() {
        let t = ticks(0.0, 0.1, 5, false);
        assert!((t.step - 0.02).abs() < 1e-12, "{t:?}");
        let labels: Vec<String> = t.values().map(|v| t.label(v)).collect();
        assert_eq!(labels, ["0.00", "0.02", "0.04", "0.06", "0.08", "0.10"]);
        let t = ticks(-1.0, 1.0, 4, false);
        assert_eq!(t.label(-0.0), "0.0");
    }
}
