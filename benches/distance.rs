//! Pairwise EMD over every neuron of two rand_resnet50-size DNAs (15,104 neurons x 1,000
//! bins), against a straightforward f64 implementation and a plain scan that only reads
//! both DNAs (the memory-bandwidth floor), in the same run.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use vdna_db::db::{compare_dnas, AnyDna};
use vdna_db::dna::LayerData;
use vdna_db::format::DistKind;
use vdna_db::mask::Mask;
use vdna_db::synth;

fn spec() -> synth::CatalogueSpec {
    synth::CatalogueSpec {
        seed: 1,
        families: 2,
        members: 1,
        layers: synth::resnet50_layers(),
        dist: DistKind::Histogram { bins: 1000 },
        extractor: "rand_resnet50".into(),
        images: 32,
        positions: 196,
        spread: 1.0,
    }
}

/// The reference's definition written plainly: normalise, cumsum the difference, abs-sum.
pub fn naive_emd(a: &[u32], b: &[u32], bins: usize) -> f64 {
    let mut total = 0.0;
    for (x, y) in a.chunks(bins).zip(b.chunks(bins)) {
        let sx: f64 = x.iter().map(|v| *v as f64).sum();
        let sy: f64 = y.iter().map(|v| *v as f64).sum();
        let p: Vec<f64> = x.iter().map(|v| *v as f64 / sx).collect();
        let q: Vec<f64> = y.iter().map(|v| *v as f64 / sy).collect();
        let mut c = 0.0;
        let mut s = 0.0;
        for k in 0..bins {
            c += p[k] - q[k];
            s += f64::abs(c);
        }
        total += s;
    }
    total
}

fn counts(l: &LayerData) -> &[u32] {
    match l {
        LayerData::Histogram { counts, .. } => counts,
        _ => &[],
    }
}

fn bench(c: &mut Criterion) {
    let s = spec();
    let (a, b) = (synth::member(&s, 0, 0), synth::member(&s, 1, 0));
    let mask = Mask::all(&a.space);
    let (qa, qb) = (AnyDna::Owned(a.clone()), AnyDna::Owned(b.clone()));
    let mut g = c.benchmark_group("emd_all_neurons_15104x1000");
    g.sample_size(10);
    g.bench_function("vdna-db", |bn| {
        bn.iter(|| {
            compare_dnas(black_box(&qa), black_box(&qb), &mask, None, 0)
                .unwrap()
                .distance
        })
    });
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    g.bench_function("vdna-db_1_thread", |bn| {
        bn.iter(|| {
            one.install(|| {
                compare_dnas(black_box(&qa), black_box(&qb), &mask, None, 0)
                    .unwrap()
                    .distance
            })
        })
    });
    g.bench_function("straightforward_f64", |bn| {
        bn.iter(|| {
            a.layers
                .iter()
                .zip(&b.layers)
                .map(|(x, y)| naive_emd(counts(x), counts(y), 1000))
                .sum::<f64>()
        })
    });
    g.bench_function("read_both_scan", |bn| {
        bn.iter(|| {
            a.layers
                .iter()
                .zip(&b.layers)
                .map(|(x, y)| {
                    let (x, y) = (black_box(counts(x)), black_box(counts(y)));
                    x.iter().map(|v| *v as u64).sum::<u64>()
                        + y.iter().map(|v| *v as u64).sum::<u64>()
                })
                .sum::<u64>()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
