//! Per-neuron summaries and the lower bounds they give (proofs in docs/QUERY.md).
//!
//! For a histogram over bins 0..B with masses p_k, the EMD the reference computes,
//! `sum_k |P_k - Q_k|`, is the 1-Wasserstein distance between the two distributions
//! placed on the integers 0..B-1, which equals `∫_0^1 |F⁻¹(u) - G⁻¹(u)| du` (quantile
//! functions). Cutting [0, 1] into Q equal intervals and keeping the mean of F⁻¹ on each
//! (`m_j`), Jensen's inequality on each interval gives
//! `EMD >= (1/Q) sum_j |m_j(F) - m_j(G)|`; with Q = 1 this is `|mean_F - mean_G|`.
//! Coarser sketches are averages of finer ones, so one stored sketch serves a cascade.

/// Quantile intervals kept per neuron (measured in benches/query.rs: 8 keeps the bound
/// within a few percent of the exact EMD on realistic histograms at 8 floats a neuron).
pub const SKETCH_Q: usize = 8;

/// The loop of [`histogram_sketch`] in integers of type `$int`.
macro_rules! sketch_in {
    ($int:ty, $counts:expr, $out:expr, $t:expr) => {{
        let (counts, out): (&[u32], &mut [f64]) = ($counts, $out);
        let t = $t as $int;
        let q = out.len();
        let qq = q as $int;
        // The next interior edge (its index and its position `edge t` in scaled mass) and
        // H at the previous one; `cum` and `s` are the count and position-weighted count
        // of the bins before the current one.
        let (mut edge, mut x, mut h_prev) = (1usize, t, 0 as $int);
        let (mut cum, mut s) = (0 as $int, 0 as $int);
        let tf = t as f64;
        for (k, &c) in counts.iter().enumerate() {
            let next = cum + c as $int;
            // Edges covered by this bin: `x <= q next`.
            while edge < q && x <= qq * next {
                let h = qq * s + k as $int * (x - qq * cum);
                out[edge - 1] = (h - h_prev) as f64 / tf;
                (h_prev, edge, x) = (h, edge + 1, x + t);
            }
            cum = next;
            s += k as $int * c as $int;
        }
        out[q - 1] = (qq * s - h_prev) as f64 / tf;
        s as f64 / tf
    }};
}

/// Fills `out[..q]` with the means of the quantile function of `counts` on each of `q`
/// equal probability intervals, in bin units; returns the mean. A neuron with no count
/// gets zeros.
///
/// One pass in integers: with every bin's mass scaled by `q`, the interval edges fall on
/// the multiples of the total `t`, and `H(X)`, the integral of the bin position over the
/// first `X` of scaled mass, is an integer at each of them (`q S + k (X - q C)` inside
/// bin `k`, where `C` and `S` are the count and the position-weighted count of the bins
/// before it). Interval `j` then has mean `(H((j+1) t) - H(j t)) / t`: exact up to the
/// final division, and with no floating point in the loop over bins (a query computes
/// this for every neuron of its mask).
pub fn histogram_sketch(counts: &[u32], out: &mut [f64]) -> f64 {
    let q = out.len();
    out.iter_mut().for_each(|x| *x = 0.0);
    let t: u64 = counts.iter().map(|c| *c as u64).sum();
    if t == 0 || q == 0 {
        return 0.0;
    }
    // In u64 while `q bins t` fits (it bounds every term: `q S < q bins t`), as it does
    // for any histogram of realistic counts; else in u128.
    let fits = t
        .checked_mul(q as u64)
        .and_then(|v| v.checked_mul(counts.len() as u64))
        .is_some();
    if fits {
        sketch_in!(u64, counts, out, t)
    } else {
        sketch_in!(u128, counts, out, t)
    }
}

/// The mean of `counts` in bin units, 0 without a count: bit for bit what
/// [`histogram_sketch`] returns (the same integers, divided once), in one pass.
pub fn histogram_mean(counts: &[u32]) -> f64 {
    let (mut t, mut s) = (0u64, 0u128);
    for (k, &c) in counts.iter().enumerate() {
        t += c as u64;
        s += (k as u64 * c as u64) as u128;
    }
    if t == 0 {
        0.0
    } else {
        s as f64 / t as f64
    }
}

/// The sketch lower bound of one neuron's EMD: `(1/Q) sum_j |a_j - b_j|`.
#[inline]
pub fn sketch_bound(a: &[f64], b: &[f32]) -> f64 {
    l1(a, b) / a.len() as f64
}

/// Defines `pub fn $name` running `$body` compiled for AVX2 when the CPU has it (chosen
/// at run time on x86-64), else the portable build: the same operations in the same
/// order, so both return identical results.
macro_rules! avx2_or_portable {
    ($(#[$doc:meta])* fn $name:ident / $avx2:ident ($a:ident: $ta:ty, $b:ident: $tb:ty) -> $ret:ty = $body:expr) => {
        $(#[$doc])*
        #[inline]
        pub fn $name($a: $ta, $b: $tb) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU supports AVX2 (checked just above).
                    return unsafe { $avx2($a, $b) };
                }
            }
            $body($a, $b)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        unsafe fn $avx2($a: $ta, $b: $tb) -> $ret {
            $body($a, $b)
        }
    };
}

avx2_or_portable! {
    /// `sum_i |a_i - b_i|` in f64: the kernel of every bound scan (means over a run of
    /// neurons, or their sketches, which are contiguous too). Eight independent
    /// accumulators let it vectorise.
    fn l1 / l1_avx2(a: &[f64], b: &[f32]) -> f64 = l1_body
}

avx2_or_portable! {
    /// `sum_i max(|a_i - b_i| - 1, 0)` over one-byte mean codes: the code bound of a run
    /// of neurons in code steps (docs/QUERY.md). Integer arithmetic, so exact.
    fn code_l1 / code_l1_avx2(a: &[u8], b: &[u8]) -> u32 = code_body::<1>
}

/// `sum_i |a_i - b_i|` over one-byte mean codes: the histogram graphs' distance (the L1
/// of means at a resolution of `bins / 256`, a quarter of the bytes of f32 means: faster
/// to build, search and hold in memory). Integer, so the same on every CPU. With AVX2,
/// one `vpsadbw` sums 32 byte differences (the compiler does not find it).
#[inline]
pub fn code_sad(a: &[u8], b: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { code_sad_avx2(a, b) };
        }
    }
    code_body::<0>(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn code_sad_avx2(a: &[u8], b: &[u8]) -> u32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let whole = n - n % 32;
    let mut acc = _mm256_setzero_si256();
    for i in (0..whole).step_by(32) {
        // SAFETY: i + 32 <= n, within both slices; unaligned loads.
        let (x, y) = unsafe {
            (
                _mm256_loadu_si256(a.as_ptr().add(i) as *const __m256i),
                _mm256_loadu_si256(b.as_ptr().add(i) as *const __m256i),
            )
        };
        acc = _mm256_add_epi64(acc, _mm256_sad_epu8(x, y));
    }
    let mut lanes = [0u64; 4];
    // SAFETY: `lanes` is 32 bytes; unaligned store.
    unsafe { _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, acc) };
    lanes.iter().sum::<u64>() as u32 + code_body::<0>(&a[whole..n], &b[whole..n])
}

#[inline(always)]
fn l1_body(a: &[f64], b: &[f32]) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for j in 0..8 {
            acc[j] += (x[j] - y[j] as f64).abs();
        }
    }
    let mut tail = 0f64;
    for (x, y) in ra.iter().zip(rb) {
        tail += (x - *y as f64).abs();
    }
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) + tail
}

/// `sum_i max(|a_i - b_i| - SLACK, 0)`, vectorisable.
#[inline(always)]
fn code_body<const SLACK: u8>(a: &[u8], b: &[u8]) -> u32 {
    let mut total = 0u32;
    // Blocks of 256: 16-bit lanes hold up to 256 x 255 without overflow.
    for (x, y) in a.chunks(256).zip(b.chunks(256)) {
        let mut acc = [0u16; 32];
        let (cx, cy) = (x.chunks_exact(32), y.chunks_exact(32));
        let (rx, ry) = (cx.remainder(), cy.remainder());
        for (p, q) in cx.zip(cy) {
            for j in 0..32 {
                acc[j] += p[j].abs_diff(q[j]).saturating_sub(SLACK) as u16;
            }
        }
        total += acc.iter().map(|v| *v as u32).sum::<u32>();
        total += rx
            .iter()
            .zip(ry)
            .map(|(p, q)| p.abs_diff(*q).saturating_sub(SLACK) as u32)
            .sum::<u32>();
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distance::emd_neuron;
    use crate::rng::Rng;

    #[test]
    fn code_bound_is_below_the_mean_bound_and_its_kernel_exact() {
        use crate::query::segment::code_of;
        let mut rng = Rng::new(3);
        for bins in [8u32, 100, 1000] {
            for len in [0usize, 1, 31, 32, 33, 255, 256, 257, 700] {
                let a: Vec<f64> = (0..len).map(|_| rng.f64() * (bins - 1) as f64).collect();
                let b: Vec<f64> = (0..len).map(|_| rng.f64() * (bins - 1) as f64).collect();
                let ca: Vec<u8> = a.iter().map(|m| code_of(*m, bins)).collect();
                let cb: Vec<u8> = b.iter().map(|m| code_of(*m, bins)).collect();
                let plain: u32 = ca
                    .iter()
                    .zip(&cb)
                    .map(|(x, y)| (*x as i32 - *y as i32).unsigned_abs().max(1) - 1)
                    .sum();
                assert_eq!(code_l1(&ca, &cb), plain);
                let sad: u32 = ca
                    .iter()
                    .zip(&cb)
                    .map(|(x, y)| (*x as i32 - *y as i32).unsigned_abs())
                    .sum();
                assert_eq!(code_sad(&ca, &cb), sad);
                let mean_bound: f64 = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum();
                let code_bound = plain as f64 * bins as f64 / 256.0;
                assert!(
                    code_bound <= mean_bound + 1e-9,
                    "{code_bound} > {mean_bound}"
                );
                // Within two code steps a neuron of the mean bound.
                assert!(mean_bound - code_bound <= len as f64 * 2.0 * bins as f64 / 256.0 + 1e-9);
            }
        }
    }

    #[test]
    fn l1_kernel_equals_a_plain_sum() {
        let mut rng = Rng::new(5);
        for n in [0, 1, 7, 8, 9, 63, 1000] {
            let a: Vec<f64> = (0..n).map(|_| rng.f64() * 100.0).collect();
            let b: Vec<f32> = (0..n).map(|_| (rng.f64() * 100.0) as f32).collect();
            let plain: f64 = a.iter().zip(&b).map(|(x, y)| (x - *y as f64).abs()).sum();
            assert!((l1(&a, &b) - plain).abs() <= 1e-9 * (1.0 + plain), "n={n}");
        }
    }

    /// The sketch by spreading each bin's mass over the intervals it overlaps, in floating
    /// point: a second implementation for [`histogram_sketch`].
    fn sketch_by_overlap(counts: &[u32], q: usize) -> Vec<f64> {
        let t: f64 = counts.iter().map(|c| *c as f64).sum();
        let mut out = vec![0.0; q];
        if t == 0.0 {
            return out;
        }
        let width = t / q as f64;
        let mut cum = 0.0;
        for (k, &c) in counts.iter().enumerate() {
            let (lo, hi) = (cum, cum + c as f64);
            for (j, o) in out.iter_mut().enumerate() {
                let (a, b) = (width * j as f64, width * (j + 1) as f64);
                let overlap = hi.min(b) - lo.max(a);
                if overlap > 0.0 {
                    *o += k as f64 * overlap / width;
                }
            }
            cum = hi;
        }
        out
    }

    #[test]
    fn sketch_equals_spreading_the_mass_over_the_intervals() {
        let mut rng = Rng::new(23);
        for case in 0..2000 {
            let bins = 1 + rng.below(260) as usize;
            let big = case % 3 == 0;
            let counts: Vec<u32> = (0..bins)
                .map(|_| match rng.below(4) {
                    0 => 0,
                    _ if big => rng.below(u32::MAX as u64 / 4) as u32,
                    _ => rng.below(40) as u32,
                })
                .collect();
            for q in [1, 2, 3, 7, 8, 16] {
                let mut got = vec![0.0; q];
                let mean = histogram_sketch(&counts, &mut got);
                let want = sketch_by_overlap(&counts, q);
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (g - w).abs() <= 1e-9 * (1.0 + w.abs()),
                        "case {case} q={q}: {got:?} vs {want:?}"
                    );
                }
                let plain = want.iter().sum::<f64>() / q as f64;
                assert!(
                    (mean - plain).abs() <= 1e-9 * (1.0 + plain),
                    "case {case}: mean"
                );
                // The one-pass mean is the sketch's, to the bit (codes made from either
                // must agree).
                assert_eq!(
                    histogram_mean(&counts).to_bits(),
                    mean.to_bits(),
                    "case {case}"
                );
            }
        }
        // Every count at u32::MAX over many bins, in u64 (5,000 bins) and in u128 (40,000
        // bins: q bins t passes 2^64): no overflow.
        for bins in [5000, 40_000] {
            let counts = vec![u32::MAX; bins];
            let mut got = [0.0; 8];
            let mean = histogram_sketch(&counts, &mut got);
            assert!((mean - (bins - 1) as f64 / 2.0).abs() < 1e-9, "{bins} bins");
            let want = sketch_by_overlap(&counts, 8);
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() <= 1e-9 * w,
                    "{bins} bins: {got:?} vs {want:?}"
                );
            }
        }
    }

    #[test]
    fn hand_worked_sketch() {
        // Mass 1 at bin 0 and 3 at bin 2: quartiles are 0, 2, 2, 2.
        let mut out = [0.0; 4];
        let mean = histogram_sketch(&[1, 0, 3], &mut out);
        assert_eq!(out, [0.0, 2.0, 2.0, 2.0]);
        assert_eq!(mean, 1.5);
        // Halves: [0,2) holds 1 at 0 and 1 at 2 -> 1.0; [2,4) -> 2.0.
        let mut out = [0.0; 2];
        histogram_sketch(&[1, 0, 3], &mut out);
        assert_eq!(out, [1.0, 2.0]);
    }

    #[test]
    fn bounds_hold_and_tighten_with_q_on_random_histograms() {
        let mut rng = Rng::new(11);
        for _ in 0..500 {
            let bins = 1 + rng.below(300) as usize;
            let gen = |rng: &mut Rng| -> Vec<u32> {
                let sparse = rng.f64() < 0.5;
                let mut v: Vec<u32> = (0..bins)
                    .map(|_| {
                        if sparse && rng.f64() < 0.9 {
                            0
                        } else {
                            rng.below(50) as u32
                        }
                    })
                    .collect();
                v[rng.below(bins as u64) as usize] += 1;
                v
            };
            let (a, b) = (gen(&mut rng), gen(&mut rng));
            let emd = emd_neuron(&a, &b);
            let mut prev = 0.0;
            for q in [1, 2, 4, 8, 16] {
                let (mut sa, mut sb) = (vec![0.0; q], vec![0.0; q]);
                let ma = histogram_sketch(&a, &mut sa);
                let mb = histogram_sketch(&b, &mut sb);
                let sbf: Vec<f32> = sb.iter().map(|x| *x as f32).collect();
                let lb = sketch_bound(&sa, &sbf);
                let exact_lb: f64 =
                    sa.iter().zip(&sb).map(|(x, y)| (x - y).abs()).sum::<f64>() / q as f64;
                assert!(
                    exact_lb <= emd + 1e-9 * (1.0 + emd),
                    "q={q}: bound {exact_lb} > emd {emd}"
                );
                assert!(
                    exact_lb + 1e-9 >= prev,
                    "q={q}: bound must not loosen as q doubles"
                );
                assert!((lb - exact_lb).abs() <= 1e-6 * bins as f64);
                if q == 1 {
                    assert!(((ma - mb).abs() - exact_lb).abs() < 1e-9 * (1.0 + emd));
                }
                prev = exact_lb;
            }
        }
    }
}
