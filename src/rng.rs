//! The seeded generator every reproducible thing draws from: the portable seeded weight
//! initialisation (`extract::weights`), shuffles of image sources, the demo scenes, and the
//! synthetic catalogues of tests and benches. Its output is frozen: weights made from a
//! seed must be the same numbers on every machine and in every version, so this module
//! owns nothing else, and a test pins its output to values computed independently.

/// A small, fast, portable PRNG (SplitMix64): the same numbers on every machine.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.f64().max(1e-300);
        let u2 = self.f64();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    /// Frozen output. `Rng::new(s)` starts SplitMix64 at state `s ^ 0x9E3779B97F4A7C15`,
    /// so seed 0x9E3779B97F4A7C15 is SplitMix64 from state 0, whose first outputs are
    /// the published reference vectors; the other values were computed by an independent
    /// Python implementation of the same steps. A change here changes every seeded
    /// weight file and shuffle: never update these to match new code.
    #[test]
    fn output_is_frozen() {
        let mut r = Rng::new(0x9E37_79B9_7F4A_7C15);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(r.next_u64(), 0x06C4_5D18_8009_454F);
        let mut r = Rng::new(7);
        assert_eq!(
            [r.next_u64(), r.next_u64(), r.next_u64()],
            [
                17039259473404265729,
                18363971414914884509,
                8043341295829897994
            ]
        );
        let mut r = Rng::new(42);
        assert_eq!(r.f64(), 0.1599103928769201);
        assert_eq!(r.f64(), 0.27860113025513866);
        let mut r = Rng::new(42);
        assert_eq!(
            [r.below(1000), r.below(1000), r.below(1000)],
            [291, 858, 764]
        );
        let mut r = Rng::new(42);
        assert!((r.normal() - -0.34224413473833404).abs() < 1e-15);
    }
}
