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
