//! Helpers shared by the benches: the competitor implementations they measure against,
//! and the seeded catalogue they query. Each bench uses a subset.
#![allow(dead_code)]

use vdna_db::dna::LayerData;
use vdna_db::format::DistKind;
use vdna_db::synth;

/// The reference's EMD definition written plainly: normalise each histogram, cumsum the
/// difference, abs-sum; summed over the neurons of a flat neuron-major array.
pub fn naive_emd(a: &[u32], b: &[u32], bins: usize) -> f64 {
    let mut total = 0.0;
    for (x, y) in a.chunks(bins).zip(b.chunks(bins)) {
        let sx: f64 = x.iter().map(|v| *v as f64).sum();
        let sy: f64 = y.iter().map(|v| *v as f64).sum();
        let p: Vec<f64> = x.iter().map(|v| *v as f64 / sx).collect();
        let q: Vec<f64> = y.iter().map(|v| *v as f64 / sy).collect();
        let (mut c, mut s) = (0.0, 0.0);
        for k in 0..bins {
            c += p[k] - q[k];
            s += f64::abs(c);
        }
        total += s;
    }
    total
}

/// A histogram layer's counts (empty for other kinds).
pub fn counts(l: &LayerData) -> &[u32] {
    match l {
        LayerData::Histogram { counts, .. } => counts,
        _ => &[],
    }
}

/// The clustered query catalogue: `families` families of 10 members, 2,048 neurons
/// (8 layers of 256) x 256 bins.
pub fn clustered_spec(seed: u64, families: usize) -> synth::CatalogueSpec {
    synth::CatalogueSpec {
        seed,
        families,
        members: 10,
        layers: synth::uniform_layers(8, 256),
        dist: DistKind::Histogram { bins: 256 },
        extractor: "bench".into(),
        images: 16,
        positions: 49,
        spread: 1.0,
    }
}

/// Resident set and its peak, in MB (Linux; zeros elsewhere).
pub fn rss_mb() -> (f64, f64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let get = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (get("VmRSS:"), get("VmHWM:"))
}

/// The `p` quantile (0..1) of `v`, sorting it.
pub fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}
