//! Streaming accumulation of activations into DNA layers, one batch at a time: memory is
//! bounded by the batch, never by the dataset.
//!
//! - histogram-B: the reference's binning exactly: in f64, `x' = (x - mid) / half`
//!   clamped to [-1, 1], bin `trunc((x' + 1) * B / 2)` with bin B folded into B - 1
//!   (half-open bins, last closed, as `torch.histc`); integer counts.
//! - gaussian: per neuron count / mean / M2 in f64, batches merged with Chan's formula.
//! - layer-gaussian: per layer mean vector and co-moment matrix in f64, likewise.
//! - activation-ranges: per neuron min / max of the raw activations.
//!
//! NaN and infinite activations are counted and reported, never binned or summed.
//!
//! Owns: the arithmetic of accumulation. Must not: run networks or touch files.

use rayon::prelude::*;

use crate::dna::LayerData;
use crate::format::DistKind;

/// Normalisation parameters of one layer: `x' = (x - mid) / half`.
#[derive(Clone, Debug)]
pub struct Norm {
    pub mid: Vec<f64>,
    pub half: Vec<f64>,
}

impl Norm {
    /// From calibration ranges and the scale `s`: the ranges are scaled (`min * s`,
    /// `max * s`) first, then `mid = (min + max) / 2`, `half = (max - min) / 2 + 1e-8`.
    pub fn from_ranges(min: &[f64], max: &[f64], scale: f64) -> Norm {
        let mid = min
            .iter()
            .zip(max)
            .map(|(a, b)| (a * scale + b * scale) / 2.0)
            .collect();
        let half = min
            .iter()
            .zip(max)
            .map(|(a, b)| (b * scale - a * scale) / 2.0 + 1e-8)
            .collect();
        Norm { mid, half }
    }
}

/// One layer's running state.
#[derive(Clone)]
pub enum LayerAcc {
    Histogram {
        bins: usize,
        norm: Norm,
        counts: Vec<u64>,
    },
    Gaussian {
        n: u64,
        mean: Vec<f64>,
        m2: Vec<f64>,
    },
    LayerGaussian {
        n: u64,
        mean: Vec<f64>,
        /// Co-moment matrix `sum (x - mean)(x - mean)^T`, row-major `C x C`.
        m2: Vec<f64>,
    },
    Ranges {
        min: Vec<f64>,
        max: Vec<f64>,
    },
}

/// Channels per parallel task: enough work per task, and at least one task per thread.
fn channel_group(c: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    c.div_ceil(threads * 4).clamp(1, 64)
}

impl LayerAcc {
    pub fn new(kind: DistKind, channels: usize, norm: Option<Norm>) -> LayerAcc {
        match kind {
            DistKind::Histogram { bins } => LayerAcc::Histogram {
                bins: bins as usize,
                norm: norm.unwrap_or(Norm {
                    mid: vec![0.0; channels],
                    half: vec![1.0; channels],
                }),
                counts: vec![0; channels * bins as usize],
            },
            DistKind::Gaussian => LayerAcc::Gaussian {
                n: 0,
                mean: vec![0.0; channels],
                m2: vec![0.0; channels],
            },
            DistKind::LayerGaussian => LayerAcc::LayerGaussian {
                n: 0,
                mean: vec![0.0; channels],
                m2: vec![0.0; channels * channels],
            },
            DistKind::ActivationRanges => LayerAcc::Ranges {
                min: vec![f64::INFINITY; channels],
                max: vec![f64::NEG_INFINITY; channels],
            },
        }
    }

    /// Adds a batch of activations `x` laid out `(rows, C)` (NHWC flattened). Returns the
    /// number of non-finite values skipped.
    pub fn add(&mut self, x: &[f32], c: usize) -> u64 {
        let rows = x.len() / c;
        // Rows with a non-finite value are skipped whole for the joint (layer) statistics
        // and value by value for the per-neuron ones.
        match self {
            LayerAcc::Histogram { bins, norm, counts } => {
                let b = *bins;
                let g = channel_group(c);
                counts
                    .par_chunks_mut(g * b)
                    .enumerate()
                    .map(|(gi, cnt)| {
                        let c0 = gi * g;
                        let gc = cnt.len() / b;
                        let mut bad = 0u64;
                        let bf = b as f64;
                        let (mid, half) = (&norm.mid[c0..c0 + gc], &norm.half[c0..c0 + gc]);
                        // Bin indices of a row first (a loop the compiler vectorises),
                        // then the increments; u32::MAX marks a non-finite value.
                        let mut idx = vec![0u32; gc];
                        for r in 0..rows {
                            let row = &x[r * c + c0..r * c + c0 + gc];
                            for (j, &v) in row.iter().enumerate() {
                                let xn = ((v as f64 - mid[j]) / half[j]).clamp(-1.0, 1.0);
                                let k = (((xn + 1.0) * bf / 2.0) as u32).min(b as u32 - 1);
                                idx[j] = if v.is_finite() { k } else { u32::MAX };
                            }
                            for (j, &k) in idx.iter().enumerate() {
                                if k == u32::MAX {
                                    bad += 1;
                                } else {
                                    cnt[j * b + k as usize] += 1;
                                }
                            }
                        }
                        bad
                    })
                    .sum()
            }
            LayerAcc::Gaussian { n, mean, m2 } => {
                let g = channel_group(c);
                // Per-channel batch count / mean / M2 (two passes), then Chan's merge.
                let stats: Vec<(u64, f64, f64, u64)> = (0..c)
                    .into_par_iter()
                    .with_min_len(g)
                    .map(|j| {
                        let (mut k, mut s, mut bad) = (0u64, 0f64, 0u64);
                        for r in 0..rows {
                            let v = x[r * c + j];
                            if v.is_finite() {
                                k += 1;
                                s += v as f64;
                            } else {
                                bad += 1;
                            }
                        }
                        let mu = if k > 0 { s / k as f64 } else { 0.0 };
                        let mut q = 0f64;
                        for r in 0..rows {
                            let v = x[r * c + j];
                            if v.is_finite() {
                                let d = v as f64 - mu;
                                q += d * d;
                            }
                        }
                        (k, mu, q, bad)
                    })
                    .collect();
                // Per-neuron counts can differ only through non-finite values; the layer
                // keeps one count, so a neuron with skipped values merges with its own k.
                let mut bad_total = 0;
                let n_old = *n;
                let mut n_new = n_old;
                for (j, &(k, mu, q, bad)) in stats.iter().enumerate() {
                    bad_total += bad;
                    let (na, nb) = (n_old as f64, k as f64);
                    if k == 0 {
                        continue;
                    }
                    let tot = na + nb;
                    let d = mu - mean[j];
                    mean[j] += d * nb / tot;
                    m2[j] += q + d * d * na * nb / tot;
                    n_new = n_new.max(n_old + k);
                }
                *n = n_new;
                bad_total
            }
            LayerAcc::LayerGaussian { n, mean, m2 } => {
                // Drop rows holding a non-finite value.
                let good: Vec<usize> = (0..rows)
                    .filter(|&r| x[r * c..(r + 1) * c].iter().all(|v| v.is_finite()))
                    .collect();
                let bad = (rows - good.len()) as u64;
                let k = good.len();
                if k == 0 {
                    return bad;
                }
                let mut mu = vec![0f64; c];
                for &r in &good {
                    for (m, v) in mu.iter_mut().zip(&x[r * c..(r + 1) * c]) {
                        *m += *v as f64;
                    }
                }
                for m in &mut mu {
                    *m /= k as f64;
                }
                // Centred batch in f64, then Xc^T Xc by rows of the output in parallel.
                let xc: Vec<f64> = good
                    .iter()
                    .flat_map(|&r| {
                        x[r * c..(r + 1) * c]
                            .iter()
                            .zip(&mu)
                            .map(|(v, m)| *v as f64 - m)
                    })
                    .collect();
                let q = gram(&xc, k, c);
                let (na, nb) = (*n as f64, k as f64);
                let tot = na + nb;
                let d: Vec<f64> = mu.iter().zip(mean.iter()).map(|(a, b)| a - b).collect();
                let f = na * nb / tot;
                m2.par_chunks_mut(c).enumerate().for_each(|(i, row)| {
                    for j in 0..c {
                        row[j] += q[i * c + j] + d[i] * d[j] * f;
                    }
                });
                for j in 0..c {
                    mean[j] += d[j] * nb / tot;
                }
                *n += k as u64;
                bad
            }
            LayerAcc::Ranges { min, max } => {
                let g = channel_group(c);
                min.par_chunks_mut(g)
                    .zip(max.par_chunks_mut(g))
                    .enumerate()
                    .map(|(gi, (mn, mx))| {
                        let c0 = gi * g;
                        let mut bad = 0;
                        for r in 0..rows {
                            for (j, &v) in x[r * c + c0..r * c + c0 + mn.len()].iter().enumerate() {
                                if !v.is_finite() {
                                    bad += 1;
                                    continue;
                                }
                                let v = v as f64;
                                if v < mn[j] {
                                    mn[j] = v;
                                }
                                if v > mx[j] {
                                    mx[j] = v;
                                }
                            }
                        }
                        bad
                    })
                    .sum()
            }
        }
    }

    /// Merges another accumulator of the same layer (used to combine worker results).
    /// The finished layer as the DNA stores it. Histogram counts above `u32::MAX` are an
    /// error (a neuron saw more than 4.29e9 positions).
    pub fn finish(self) -> Result<LayerData, String> {
        Ok(match self {
            LayerAcc::Histogram { bins, counts, .. } => {
                let mut out = Vec::with_capacity(counts.len());
                for v in counts {
                    out.push(u32::try_from(v).map_err(|_| {
                        format!("a histogram bin exceeds {} counts; extract in shards and keep them apart", u32::MAX)
                    })?);
                }
                LayerData::Histogram {
                    bins: bins as u32,
                    counts: out,
                }
            }
            LayerAcc::Gaussian { n, mean, m2 } => LayerData::Gaussian {
                var: m2
                    .iter()
                    .map(|q| if n > 1 { q / (n - 1) as f64 } else { 0.0 })
                    .collect(),
                mean,
            },
            LayerAcc::LayerGaussian { n, mean, m2 } => LayerData::LayerGaussian {
                cov: m2
                    .iter()
                    .map(|q| if n > 1 { q / (n - 1) as f64 } else { 0.0 })
                    .collect(),
                mean,
            },
            LayerAcc::Ranges { min, max } => LayerData::Ranges { min, max },
        })
    }
}

/// `X^T X` for a row-major `(k, c)` matrix, in f64.
fn gram(x: &[f64], k: usize, c: usize) -> Vec<f64> {
    let mut out = vec![0f64; c * c];
    out.par_chunks_mut(c).enumerate().for_each(|(i, row)| {
        for r in 0..k {
            let xr = &x[r * c..(r + 1) * c];
            let a = xr[i];
            if a != 0.0 {
                for (o, b) in row.iter_mut().zip(xr) {
                    *o += a * b;
                }
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_binning_follows_histc_at_the_edges() {
        // mid 0, half 1 (scale chosen so): values map to themselves.
        let norm = Norm {
            mid: vec![0.0],
            half: vec![1.0],
        };
        let mut acc = LayerAcc::new(DistKind::Histogram { bins: 4 }, 1, Some(norm));
        // -1 -> bin 0; -0.5 -> bin 1 (left edge belongs to the bin); 0.999 -> 3; 1 -> folded 3;
        // 7 clamps to 1 -> 3; -9 clamps to -1 -> 0; NaN and inf are skipped.
        let xs = [
            -1.0f32,
            -0.5,
            0.999,
            1.0,
            7.0,
            -9.0,
            f32::NAN,
            f32::INFINITY,
        ];
        assert_eq!(acc.add(&xs, 1), 2);
        let LayerData::Histogram { counts, .. } = acc.finish().unwrap() else {
            panic!()
        };
        assert_eq!(counts, vec![2, 1, 0, 3]);
    }

    #[test]
    fn dead_neuron_ranges_put_zero_in_the_middle_and_positives_last() {
        let norm = Norm::from_ranges(&[0.0], &[0.0], 1.2);
        let mut acc = LayerAcc::new(DistKind::Histogram { bins: 10 }, 1, Some(norm));
        acc.add(&[0.0, 0.5], 1);
        let LayerData::Histogram { counts, .. } = acc.finish().unwrap() else {
            panic!()
        };
        assert_eq!(counts[5], 1);
        assert_eq!(counts[9], 1);
    }

    #[test]
    fn batched_gaussians_equal_the_two_pass_statistics_of_everything() {
        let mut r = crate::rng::Rng::new(11);
        let c = 3;
        let all: Vec<f32> = (0..c * 1000)
            .map(|_| (r.normal() * 3.0 + 100.0) as f32)
            .collect();
        let mut g = LayerAcc::new(DistKind::Gaussian, c, None);
        let mut lg = LayerAcc::new(DistKind::LayerGaussian, c, None);
        for chunk in all.chunks(c * 137) {
            g.add(chunk, c);
            lg.add(chunk, c);
        }
        let n = 1000.0;
        let mean: Vec<f64> = (0..c)
            .map(|j| {
                all.iter()
                    .skip(j)
                    .step_by(c)
                    .map(|&v| v as f64)
                    .sum::<f64>()
                    / n
            })
            .collect();
        let cov = |a: usize, b: usize| {
            (0..1000)
                .map(|r| (all[r * c + a] as f64 - mean[a]) * (all[r * c + b] as f64 - mean[b]))
                .sum::<f64>()
                / (n - 1.0)
        };
        let LayerData::Gaussian { mean: gm, var } = g.finish().unwrap() else {
            panic!()
        };
        let LayerData::LayerGaussian { mean: lm, cov: lc } = lg.finish().unwrap() else {
            panic!()
        };
        for j in 0..c {
            assert!((gm[j] - mean[j]).abs() < 1e-9);
            assert!((lm[j] - mean[j]).abs() < 1e-9);
            assert!((var[j] - cov(j, j)).abs() < 1e-9 * cov(j, j));
            for k in 0..c {
                assert!((lc[j * c + k] - cov(j, k)).abs() < 1e-9 * cov(j, j).max(1.0));
            }
        }
    }
}
