//! A small seeded random generator that we own.
//!
//! Candle's CPU generator cannot be seeded, and a run must be reproducible from its spec's
//! seed alone — including after a resume from any epoch. So every random decision draws
//! from a stream derived from `(seed, purpose, index)`: the initial weights from
//! `("init", 0)`, epoch `e`'s shuffle from `("shuffle", e)`, its dropout masks from
//! `("dropout", e)`. Resuming at epoch `k` needs no generator state, only the seed.
//!
//! The generator is xoshiro256++ seeded through SplitMix64: fast, well tested, and simple
//! enough to keep here instead of pulling a crate whose output could change between versions.

/// xoshiro256++ (Blackman and Vigna).
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a, to turn a purpose name into a stream number.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let s = [
            splitmix64(&mut x),
            splitmix64(&mut x),
            splitmix64(&mut x),
            splitmix64(&mut x),
        ];
        Rng { s }
    }

    /// The independent stream for one purpose (`"init"`, `"shuffle"`, `"dropout"`) and index.
    pub fn derive(seed: u64, purpose: &str, index: u64) -> Self {
        let mut x = seed ^ fnv1a(purpose).rotate_left(17);
        let a = splitmix64(&mut x);
        Rng::new(a ^ index.wrapping_mul(0xD605_BBB5_8C8A_BBB5))
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next_f64()
    }

    /// Uniform integer in 0..n (Lemire's method, unbiased).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        loop {
            let m = (self.next_u64() as u128) * (n as u128);
            let lo = m as u64;
            if lo >= n.wrapping_neg() % n {
                return (m >> 64) as u64;
            }
        }
    }

    /// A uniformly random permutation of 0..n (Fisher-Yates).
    pub fn permutation(&mut self, n: usize) -> Vec<u32> {
        let mut p: Vec<u32> = (0..n as u32).collect();
        for i in (1..n).rev() {
            let j = self.below(i as u64 + 1) as usize;
            p.swap(i, j);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_purposes_differ() {
        let a: Vec<u64> = (0..4).map(|_| Rng::new(7).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        let mut s = Rng::derive(7, "shuffle", 1);
        let mut d = Rng::derive(7, "dropout", 1);
        let mut s2 = Rng::derive(7, "shuffle", 2);
        let x = s.next_u64();
        assert_ne!(x, d.next_u64());
        assert_ne!(x, s2.next_u64());
    }

    #[test]
    fn permutation_is_a_permutation() {
        let mut p = Rng::new(1).permutation(1000);
        assert_ne!(p[..10], (0..10).collect::<Vec<u32>>()[..]);
        p.sort();
        assert_eq!(p, (0..1000).collect::<Vec<u32>>());
    }

    #[test]
    fn uniform_stays_in_range_with_the_right_mean() {
        let mut r = Rng::new(3);
        let xs: Vec<f64> = (0..100_000).map(|_| r.uniform(-2.0, 2.0)).collect();
        assert!(xs.iter().all(|x| (-2.0..2.0).contains(x)));
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        assert!(mean.abs() < 0.02, "mean {mean}");
    }
}
