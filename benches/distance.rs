//! Pairwise EMD over every neuron of two rand_resnet50-size DNAs (15,104 neurons x 1,000
//! bins), against a straightforward f64 implementation and a plain scan that only reads
//! both DNAs (the memory-bandwidth floor), in the same run.

#[path = "common.rs"]
mod common;

use common::{counts, naive_emd};
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use vdna_db::db::{compare_dnas, AnyDna};
use vdna_db::mask::Mask;
use vdna_db::synth;

fn spec() -> synth::CatalogueSpec {
    synth::resnet50_spec(1)
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
