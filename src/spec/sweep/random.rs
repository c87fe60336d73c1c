//! Random search: points drawn from a seeded generator, so the same request draws the
//! same points on every machine and in every release.
//!
//! The generator is SplitMix64 (Steele, Lea and Flood, 2014), written out here rather
//! than taken from a crate whose default algorithm may change between versions: a
//! sweep's points are part of its reproducible record.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How one path's values are drawn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Distribution {
    /// `[low, high]`, uniform in the logarithm (learning rates, weight decay).
    LogUniform([f64; 2]),
    /// `[low, high]`, uniform.
    Uniform([f64; 2]),
    /// `[low, high]`, an integer, both ends included (batch sizes, units).
    IntUniform([i64; 2]),
    /// One of these values, each as likely.
    Choice(Vec<Value>),
}

impl Distribution {
    /// Why this distribution cannot be drawn from, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        match self {
            Distribution::LogUniform([lo, hi]) if !(lo.is_finite() && hi.is_finite()) => {
                Err("both ends must be finite numbers".into())
            }
            Distribution::LogUniform([lo, hi]) if *lo <= 0.0 || lo > hi => {
                Err("needs 0 < low <= high".into())
            }
            Distribution::Uniform([lo, hi]) if !(lo.is_finite() && hi.is_finite()) || lo > hi => {
                Err("needs finite low <= high".into())
            }
            Distribution::IntUniform([lo, hi]) if lo > hi => Err("needs low <= high".into()),
            Distribution::Choice(v) if v.is_empty() => Err("needs at least one value".into()),
            _ => Ok(()),
        }
    }

    /// One value, drawn with `rng`.
    pub fn draw(&self, rng: &mut SplitMix64) -> Value {
        let u = rng.unit();
        match self {
            Distribution::LogUniform([lo, hi]) => {
                Value::from((lo.ln() + (hi.ln() - lo.ln()) * u).exp().clamp(*lo, *hi))
            }
            Distribution::Uniform([lo, hi]) => Value::from((lo + (hi - lo) * u).clamp(*lo, *hi)),
            Distribution::IntUniform([lo, hi]) => {
                let span = (*hi as i128 - *lo as i128 + 1) as f64;
                let k = ((u * span) as i128).min(*hi as i128 - *lo as i128);
                Value::from((*lo as i128 + k) as i64)
            }
            Distribution::Choice(values) => {
                values[((u * values.len() as f64) as usize).min(values.len() - 1)].clone()
            }
        }
    }
}

/// SplitMix64: a 64-bit state, one addition and a mix per number.
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in [0, 1) with 53 random bits.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn splitmix64_gives_the_published_sequence() {
        // The first outputs for seed 1234567, as the reference C implementation prints them.
        let mut r = SplitMix64::new(1234567);
        assert_eq!(r.next_u64(), 6457827717110365317);
        assert_eq!(r.next_u64(), 3203168211198807973);
    }

    #[test]
    fn draws_stay_in_their_ranges() {
        let mut r = SplitMix64::new(1);
        for _ in 0..1000 {
            let v = Distribution::LogUniform([1e-4, 1e-1])
                .draw(&mut r)
                .as_f64()
                .unwrap();
            assert!((1e-4..=1e-1).contains(&v));
            let v = Distribution::IntUniform([16, 18])
                .draw(&mut r)
                .as_i64()
                .unwrap();
            assert!((16..=18).contains(&v));
            let v = Distribution::Choice(vec![json!("a"), json!("b")]).draw(&mut r);
            assert!(v == json!("a") || v == json!("b"));
        }
        assert!(Distribution::LogUniform([0.0, 1.0]).check().is_err());
        assert!(Distribution::Uniform([2.0, 1.0]).check().is_err());
        assert!(Distribution::Choice(vec![]).check().is_err());
    }
}
