//! The pre-norm transformer encoder block shared by the ViT extractors (DINO / Mugs in
//! [`super::vit`], CLIP in [`super::clip`]), on plain row-major `f32` buffers of shape
//! `(tokens, dim)` with gemm called directly.
//!
//! Engineering: every linear layer is one gemm whose destination is pre-filled with the
//! bias (or with the residual stream plus the bias), so bias and residual additions cost
//! no extra pass; the MLP activation (exact erf GELU through a vectorisable rational erf,
//! or CLIP's QuickGELU) runs in one parallel pass over the hidden buffer; attention runs one
//! task per (image, head) that reads Q, K and V in place from the fused `qkv` buffer through
//! strides (no transposed copies), forms the scores with one gemm, applies the scale, a
//! max-subtracted softmax in place, and writes `P V` straight into its head's columns of
//! the output.
//!
//! Owns: the transformer kernels. Must not: know weight names or files.

use rayon::prelude::*;

/// The MLP activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mlp {
    /// `x * Phi(x)` with the exact (erf) normal CDF, PyTorch's `nn.GELU()`.
    Gelu,
    /// CLIP's `x * sigmoid(1.702 x)`.
    QuickGelu,
}

/// A linear layer `y = x W^T + b` with PyTorch's `(out, in)` weight.
pub struct Linear {
    pub w: Vec<f32>,
    pub b: Vec<f32>,
    pub cin: usize,
    pub cout: usize,
}

/// `x -> (x - mean) / sqrt(var + eps) * g + b` over the last dimension.
pub struct LayerNorm {
    pub g: Vec<f32>,
    pub b: Vec<f32>,
    pub eps: f64,
}

/// One encoder block: `x + attn(norm1(x))`, then `x + mlp(norm2(x))`.
pub struct Block {
    pub norm1: LayerNorm,
    pub qkv: Linear,
    pub proj: Linear,
    pub norm2: LayerNorm,
    pub fc1: Linear,
    pub fc2: Linear,
    pub heads: usize,
    pub act: Mlp,
}

/// A raw pointer that parallel tasks may share because each writes a disjoint region.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: used only where every task writes a region no other task touches (documented at
// each use) and the buffer outlives the parallel section.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// A method, so that closures capture the whole wrapper rather than its raw field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Rows of `dst` get `src` added row by row (`src` has one row of `dst`'s width).
fn add_row(dst: &mut [f32], row: &[f32]) {
    if row.is_empty() {
        return;
    }
    dst.par_chunks_mut(row.len() * 64).for_each(|d| {
        for r in d.chunks_exact_mut(row.len()) {
            for (x, b) in r.iter_mut().zip(row) {
                *x += b;
            }
        }
    });
}

impl Linear {
    /// `dst += x W^T + b`, `x` being `rows x cin` and `dst` `rows x cout` (pass a zeroed
    /// `dst` for a plain layer, the residual stream for a residual one).
    pub fn accumulate(&self, x: &[f32], rows: usize, dst: &mut [f32]) {
        debug_assert_eq!(x.len(), rows * self.cin);
        debug_assert_eq!(dst.len(), rows * self.cout);
        add_row(dst, &self.b);
        if rows == 0 {
            return;
        }
        // SAFETY: dst is rows x cout (row stride cout); lhs is rows x cin (row stride cin);
        // rhs is W^T, cin x cout, read from W (cout x cin) with row stride 1 and column
        // stride cin; the lengths are checked by the callers' shapes above.
        unsafe {
            gemm::gemm(
                rows,
                self.cout,
                self.cin,
                dst.as_mut_ptr(),
                1,
                self.cout as isize,
                true,
                x.as_ptr(),
                1,
                self.cin as isize,
                self.w.as_ptr(),
                self.cin as isize,
                1,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(rayon::current_num_threads()),
            );
        }
    }

    /// `x W^T + b` as a new buffer.
    pub fn forward(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let mut y = vec![0f32; rows * self.cout];
        self.accumulate(x, rows, &mut y);
        y
    }
}

impl LayerNorm {
    /// Normalises each row of width `g.len()`; statistics in f64.
    pub fn forward(&self, x: &[f32]) -> Vec<f32> {
        let c = self.g.len();
        let mut y = vec![0f32; x.len()];
        if c == 0 {
            return y;
        }
        y.par_chunks_mut(c * 16)
            .zip(x.par_chunks(c * 16))
            .for_each(|(yd, xd)| {
                for (yr, xr) in yd.chunks_exact_mut(c).zip(xd.chunks_exact(c)) {
                    let mean = xr.iter().map(|&v| v as f64).sum::<f64>() / c as f64;
                    let var = xr
                        .iter()
                        .map(|&v| {
                            let d = v as f64 - mean;
                            d * d
                        })
                        .sum::<f64>()
                        / c as f64;
                    let inv = 1.0 / (var + self.eps).sqrt();
                    let (m, s) = (mean as f32, inv as f32);
                    for ((o, &v), (g, b)) in yr.iter_mut().zip(xr).zip(self.g.iter().zip(&self.b)) {
                        *o = (v - m) * s * g + b;
                    }
                }
            });
        y
    }
}

/// `erf(x)` for f32 as a ratio of an odd and an even polynomial in `x` clamped to
/// [-4, 4] (the fit used by Eigen and XLA); absolute error below 5e-7, no branches, so
/// the loop over a row vectorises.
#[inline(always)]
pub fn erf_f32(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10f32;
    p = p * x2 + 2.770_681_4e-8;
    p = p * x2 - 2.101_024e-6;
    p = p * x2 - 5.692_506_4e-5;
    p = p * x2 - 7.349_906_3e-4;
    p = p * x2 - 2.954_600_1e-3;
    p = p * x2 - 1.609_603_3e-2;
    let p = x * p;
    let mut q = -1.456_607_2e-5f32;
    q = q * x2 - 2.133_740_6e-4;
    q = q * x2 - 1.682_827e-3;
    q = q * x2 - 7.373_329e-3;
    q = q * x2 - 1.426_474e-2;
    p / q
}

/// `exp(x)` for f32 by range reduction to `2^k * exp(r)`, `|r| <= ln2 / 2`, and a degree-6
/// polynomial (relative error about 2e-7); inputs below -87 give 0. Branch-free, so the
/// softmax loop vectorises.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let k = (x * std::f32::consts::LOG2_E).round();
    let r = x - k * 0.693_145_75 - k * 1.428_606_8e-6;
    let mut p = 1.0 / 720.0f32;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    let scale = f32::from_bits(((k as i32 + 127) as u32) << 23);
    p * scale
}

impl Mlp {
    fn apply_all(self, x: &mut [f32]) {
        x.par_chunks_mut(4096).for_each(|d| match self {
            Mlp::Gelu => {
                for v in d.iter_mut() {
                    *v = 0.5 * *v * (1.0 + erf_f32(*v * std::f32::consts::FRAC_1_SQRT_2));
                }
            }
            Mlp::QuickGelu => {
                for v in d.iter_mut() {
                    *v /= 1.0 + exp_f32(-1.702 * *v);
                }
            }
        });
    }
}

/// Multi-head self-attention of `batch` sequences of `tokens` tokens from the fused
/// projection `qkv` (`batch * tokens` rows of `[q | k | v]`, each `heads x head_dim`):
/// returns `batch * tokens` rows of `dim` values, heads concatenated.
pub fn attention(qkv: &[f32], batch: usize, tokens: usize, heads: usize) -> Vec<f32> {
    let dim3 = qkv.len().checked_div(batch * tokens).unwrap_or(0);
    let dim = dim3 / 3;
    let hd = dim / heads.max(1);
    let mut out = vec![0f32; batch * tokens * dim];
    if out.is_empty() || hd == 0 {
        return out;
    }
    let scale = 1.0 / (hd as f32).sqrt();
    let dst = SharedMut(out.as_mut_ptr());
    (0..batch * heads).into_par_iter().for_each_init(
        || vec![0f32; tokens * tokens],
        |scores, task| {
            let (b, h) = (task / heads, task % heads);
            let base = b * tokens * dim3 + h * hd;
            // SAFETY: Q, K and V of (b, h) are tokens x hd blocks of qkv at offsets
            // base, base + dim, base + 2 dim with row stride dim3, all inside qkv since
            // qkv is batch * tokens rows of dim3; scores is tokens x tokens.
            unsafe {
                gemm::gemm(
                    tokens,
                    tokens,
                    hd,
                    scores.as_mut_ptr(),
                    1,
                    tokens as isize,
                    false,
                    qkv.as_ptr().add(base),
                    1,
                    dim3 as isize,
                    qkv.as_ptr().add(base + dim),
                    dim3 as isize,
                    1,
                    0.0,
                    scale,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            for row in scores.chunks_exact_mut(tokens) {
                let m = row.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
                let mut sum = 0f32;
                for v in row.iter_mut() {
                    *v = exp_f32(*v - m);
                    sum += *v;
                }
                let inv = 1.0 / sum;
                for v in row.iter_mut() {
                    *v *= inv;
                }
            }
            // SAFETY: the destination is the tokens x hd block of out at row b * tokens,
            // column h * hd, row stride dim: the blocks of different (b, h) tasks are
            // disjoint, and out (batch * tokens x dim) outlives the parallel loop. V is read
            // as above.
            unsafe {
                gemm::gemm(
                    tokens,
                    hd,
                    tokens,
                    dst.get().add(b * tokens * dim + h * hd),
                    1,
                    dim as isize,
                    false,
                    scores.as_ptr(),
                    1,
                    tokens as isize,
                    qkv.as_ptr().add(base + 2 * dim),
                    1,
                    dim3 as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        },
    );
    out
}

impl Block {
    /// Runs the block on `batch` sequences of `tokens` tokens; returns the new stream.
    pub fn forward(&self, x: &[f32], batch: usize, tokens: usize) -> Vec<f32> {
        let rows = batch * tokens;
        let h = self.norm1.forward(x);
        let qkv = self.qkv.forward(&h, rows);
        drop(h);
        let a = attention(&qkv, batch, tokens, self.heads);
        drop(qkv);
        let mut y = x.to_vec();
        self.proj.accumulate(&a, rows, &mut y);
        drop(a);
        let h = self.norm2.forward(&y);
        let mut hidden = self.fc1.forward(&h, rows);
        drop(h);
        self.act.apply_all(&mut hidden);
        self.fc2.accumulate(&hidden, rows, &mut y);
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// erf by its Maclaurin series in f64 (|x| <= 3) and the asymptotic continued fraction
    /// beyond: an oracle independent of the rational fit.
    fn erf_f64(x: f64) -> f64 {
        if x.abs() > 3.0 {
            // erfc(x) = exp(-x^2) / (x sqrt(pi)) * 1 / (1 + 1/(2x^2) / (1 + 2/(2x^2) / ...))
            let a = x.abs();
            let mut f = 0.0;
            for k in (1..60).rev() {
                f = (k as f64 / 2.0) / (a + f);
            }
            let erfc = (-a * a).exp() / std::f64::consts::PI.sqrt() / (a + f);
            return x.signum() * (1.0 - erfc);
        }
        let mut term = x;
        let mut sum = x;
        for n in 1..200 {
            term *= -x * x / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn erf_and_exp_fits_are_accurate() {
        for i in -60_000..=60_000 {
            let x = i as f64 / 10_000.0;
            let e = erf_f32(x as f32) as f64;
            assert!(
                (e - erf_f64(x)).abs() < 6e-7,
                "erf({x}): {e} vs {}",
                erf_f64(x)
            );
        }
        for i in -8_700..=8_800 {
            let x = i as f32 / 100.0;
            let (a, b) = (exp_f32(x) as f64, (x as f64).exp());
            assert!((a - b).abs() <= 4e-7 * b, "exp({x}): {a} vs {b}");
        }
        assert!(exp_f32(-1e30) < 1e-37 && exp_f32(f32::NAN).is_nan());
    }

    #[test]
    fn attention_matches_a_direct_computation() {
        let (batch, tokens, heads, hd) = (2, 5, 3, 4);
        let dim = heads * hd;
        let mut r = crate::rng::Rng::new(3);
        let qkv: Vec<f32> = (0..batch * tokens * 3 * dim)
            .map(|_| (r.f64() * 4.0 - 2.0) as f32)
            .collect();
        let got = attention(&qkv, batch, tokens, heads);
        let at = |b: usize, t: usize, which: usize, h: usize, d: usize| {
            qkv[(b * tokens + t) * 3 * dim + which * dim + h * hd + d] as f64
        };
        for b in 0..batch {
            for h in 0..heads {
                for i in 0..tokens {
                    let s: Vec<f64> = (0..tokens)
                        .map(|j| {
                            (0..hd)
                                .map(|d| at(b, i, 0, h, d) * at(b, j, 1, h, d))
                                .sum::<f64>()
                                / (hd as f64).sqrt()
                        })
                        .collect();
                    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = s.iter().map(|v| (v - m).exp()).sum();
                    for d in 0..hd {
                        let want: f64 = (0..tokens)
                            .map(|j| (s[j] - m).exp() / z * at(b, j, 2, h, d))
                            .sum();
                        let g = got[(b * tokens + i) * dim + h * hd + d] as f64;
                        assert!((g - want).abs() < 1e-5, "{b} {h} {i} {d}: {g} vs {want}");
                    }
                }
            }
        }
    }
}
