//! A seeded generator of realistic DNAs and catalogues, for the demo, tests and benches.
//!
//! Each neuron's histogram is a discretised distribution over the normalised range in bin
//! units, with sampling noise of the order of the square root of each count: either Gaussian-ish (a mean and a spread) or ReLU-spiked (a share of the mass in
//! one spike bin, the rest a one-sided tail above it), scaled to `images * positions`
//! counts and rounded. A catalogue is made of *families*: each family draws one base per
//! neuron, and each member perturbs it, so members of a family are near one another and
//! far from other families, as datasets of one domain are. Gaussian DNAs are drawn the
//! same way with (mean, variance) per neuron. Everything derives from the seed alone.

use crate::dna::{Dna, LayerData};
use crate::format::{DistKind, LayerSpec, SpaceConfig};

pub use crate::rng::Rng;

/// The rand_resnet50 layer list (16 bottleneck outputs, 15,104 neurons).
pub fn resnet50_layers() -> Vec<LayerSpec> {
    let mut v = Vec::new();
    for (stage, (blocks, width)) in [(3, 256), (4, 512), (6, 1024), (3, 2048)]
        .iter()
        .enumerate()
    {
        for b in 0..*blocks {
            v.push(LayerSpec {
                name: format!("layer{}_{}", stage + 1, b),
                neurons: *width,
            });
        }
    }
    v
}

/// The efficientnet_lite0 layer list, the default extractor's (16 block outputs and the
/// head: 17 layers, 3,088 neurons).
pub fn efficientnet_lite0_layers() -> Vec<LayerSpec> {
    let widths = [
        16, 24, 24, 40, 40, 80, 80, 80, 112, 112, 112, 192, 192, 192, 192, 320,
    ];
    let mut v: Vec<LayerSpec> = widths
        .iter()
        .enumerate()
        .map(|(i, w)| LayerSpec {
            name: format!("blocks_{i}"),
            neurons: *w,
        })
        .collect();
    v.push(LayerSpec {
        name: "head".into(),
        neurons: 1280,
    });
    v
}

/// A catalogue spec of rand_resnet50 size: 15,104 neurons x 1,000 bins, 32 images of
/// 196 positions (two families of one member unless changed).
pub fn resnet50_spec(seed: u64) -> CatalogueSpec {
    CatalogueSpec {
        seed,
        families: 2,
        members: 1,
        layers: resnet50_layers(),
        dist: DistKind::Histogram { bins: 1000 },
        extractor: "rand_resnet50".into(),
        images: 32,
        positions: 196,
        spread: 1.0,
    }
}

/// `layers` layers of `neurons` neurons named `block_0`...
pub fn uniform_layers(layers: usize, neurons: u32) -> Vec<LayerSpec> {
    (0..layers)
        .map(|i| LayerSpec {
            name: format!("block_{i}"),
            neurons,
        })
        .collect()
}

/// Per-neuron shape parameters in bin units.
#[derive(Clone, Copy, Debug)]
struct Shape {
    mean: f64,
    sd: f64,
    /// Share of the mass in the spike bin (0 for Gaussian-ish neurons).
    spike: f64,
}

fn base_shapes(rng: &mut Rng, neurons: usize, bins: f64) -> Vec<Shape> {
    (0..neurons)
        .map(|_| {
            let spiked = rng.f64() < 0.4;
            Shape {
                mean: bins * (0.25 + 0.5 * rng.f64()),
                sd: bins * (0.01 + 0.08 * rng.f64()),
                spike: if spiked { 0.3 + 0.6 * rng.f64() } else { 0.0 },
            }
        })
        .collect()
}

fn perturb(rng: &mut Rng, s: &Shape, bins: f64, amount: f64) -> Shape {
    Shape {
        mean: (s.mean + rng.normal() * amount * bins * 0.02).clamp(0.0, bins - 1.0),
        sd: (s.sd * (1.0 + rng.normal() * amount * 0.1)).max(0.5),
        spike: if s.spike > 0.0 {
            (s.spike + rng.normal() * amount * 0.03).clamp(0.05, 0.95)
        } else {
            0.0
        },
    }
}

fn histogram(rng: &mut Rng, s: &Shape, bins: usize, total: u64, out: &mut [u32]) {
    let t = total as f64;
    let spike_bin = if s.spike > 0.0 {
        (s.mean - 2.0 * s.sd).max(0.0) as usize
    } else {
        0
    };
    let rest = t * (1.0 - s.spike);
    let lo = (s.mean - 6.0 * s.sd).floor().max(0.0) as usize;
    let hi = ((s.mean + 6.0 * s.sd).ceil() as usize + 1).min(bins);
    let mut z = 0.0;
    for b in lo..hi {
        let x = (b as f64 + 0.5 - s.mean) / s.sd;
        z += (-0.5 * x * x).exp();
    }
    for (b, o) in out.iter_mut().enumerate().take(hi).skip(lo) {
        let x = (b as f64 + 0.5 - s.mean) / s.sd;
        // Expected count plus sampling noise of its order (sqrt), as real counts have.
        let e = rest * (-0.5 * x * x).exp() / z;
        *o = (e + e.sqrt() * rng.normal()).round().max(0.0) as u32;
    }
    if s.spike > 0.0 {
        let sb = spike_bin.min(bins - 1);
        out[sb] = out[sb].saturating_add((t * s.spike).round() as u32);
    }
    if out.iter().all(|c| *c == 0) {
        out[(s.mean as usize).min(bins - 1)] = 1;
    }
}

/// Options of a synthetic catalogue.
#[derive(Clone, Debug)]
pub struct CatalogueSpec {
    pub seed: u64,
    pub families: usize,
    pub members: usize,
    pub layers: Vec<LayerSpec>,
    pub dist: DistKind,
    pub extractor: String,
    /// Images per DNA and positions per image (histogram totals are their product).
    pub images: u64,
    pub positions: u64,
    /// How far members stray from their family's base (1.0 = default).
    pub spread: f64,
}

impl CatalogueSpec {
    pub fn space(&self) -> SpaceConfig {
        SpaceConfig::unpinned(&self.extractor, self.layers.clone(), self.dist)
    }
}

/// Generates one DNA: member `member` of family `family`.
pub fn member(spec: &CatalogueSpec, family: usize, member: usize) -> Dna {
    let space = spec.space();
    let mut fam_rng = Rng::new(
        spec.seed
            .wrapping_mul(1_000_003)
            .wrapping_add(family as u64),
    );
    let mut rng = Rng::new(
        spec.seed
            .wrapping_mul(7_919)
            .wrapping_add((family as u64) << 32)
            .wrapping_add(member as u64 + 1),
    );
    let bins = match spec.dist {
        DistKind::Histogram { bins } => bins as usize,
        _ => 1000,
    };
    let layers = space
        .layers
        .iter()
        .map(|l| {
            let n = l.neurons as usize;
            let base = base_shapes(&mut fam_rng, n, bins as f64);
            let shapes: Vec<Shape> = base
                .iter()
                .map(|s| perturb(&mut rng, s, bins as f64, spec.spread))
                .collect();
            match spec.dist {
                DistKind::Histogram { .. } => {
                    let mut counts = vec![0u32; n * bins];
                    for (i, s) in shapes.iter().enumerate() {
                        histogram(
                            &mut rng,
                            s,
                            bins,
                            spec.images * spec.positions,
                            &mut counts[i * bins..(i + 1) * bins],
                        );
                    }
                    LayerData::Histogram {
                        bins: bins as u32,
                        counts,
                    }
                }
                DistKind::Gaussian => LayerData::Gaussian {
                    mean: shapes
                        .iter()
                        .map(|s| s.mean / bins as f64 * 2.0 - 1.0)
                        .collect(),
                    var: shapes
                        .iter()
                        .map(|s| (s.sd / bins as f64 * 2.0).powi(2))
                        .collect(),
                },
                DistKind::LayerGaussian => {
                    let mut cov = vec![0.0; n * n];
                    for (i, s) in shapes.iter().enumerate() {
                        cov[i * n + i] = (s.sd / bins as f64 * 2.0).powi(2);
                    }
                    LayerData::LayerGaussian {
                        mean: shapes
                            .iter()
                            .map(|s| s.mean / bins as f64 * 2.0 - 1.0)
                            .collect(),
                        cov,
                    }
                }
                DistKind::ActivationRanges => LayerData::Ranges {
                    min: shapes.iter().map(|s| s.mean - 3.0 * s.sd).collect(),
                    max: shapes.iter().map(|s| s.mean + 3.0 * s.sd).collect(),
                },
            }
        })
        .collect();
    Dna {
        space,
        images: spec.images,
        layers,
    }
}

/// Names a member as the demo and benches do: `family-03/member-07`.
pub fn member_name(family: usize, member: usize) -> String {
    format!("synth/family-{family:02}-{member:02}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distance::emd_neuron;

    #[test]
    fn same_seed_same_dna_and_families_cluster() {
        let spec = CatalogueSpec {
            seed: 7,
            families: 2,
            members: 2,
            layers: uniform_layers(1, 16),
            dist: DistKind::Histogram { bins: 100 },
            extractor: "x".into(),
            images: 10,
            positions: 49,
            spread: 1.0,
        };
        assert_eq!(member(&spec, 0, 0), member(&spec, 0, 0));
        let d = |a: &Dna, b: &Dna| -> f64 {
            let (LayerData::Histogram { counts: x, .. }, LayerData::Histogram { counts: y, .. }) =
                (&a.layers[0], &b.layers[0])
            else {
                unreachable!()
            };
            x.chunks(100)
                .zip(y.chunks(100))
                .map(|(p, q)| emd_neuron(p, q))
                .sum()
        };
        let (a0, a1, b0) = (
            member(&spec, 0, 0),
            member(&spec, 0, 1),
            member(&spec, 1, 0),
        );
        assert!(
            d(&a0, &a1) < d(&a0, &b0),
            "members of a family must be nearer than other families"
        );
        a0.validate().unwrap();
    }
}
