//! The store: encode (compress) and decode (decompress + verify + validate) a
//! rand_resnet50-size histogram layer, and open a stored DNA then compute a first
//! distance under a one-layer mask (reading only that layer).

use std::collections::BTreeMap;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use vdna_db::db::{compare_dnas, AnyDna};
use vdna_db::format::{decode_layer, decode_object};
use vdna_db::refname::RefName;
use vdna_db::{synth, Db};

fn bench(c: &mut Criterion) {
    let s = synth::resnet50_spec(3);
    let dna = synth::member(&s, 0, 0);
    let enc = dna.encode(3);
    // The largest layer (layer4_*: 2048 x 1000 counts, 8 MB raw).
    let (_, big) = enc
        .objects
        .iter()
        .skip(2)
        .max_by_key(|o| o.1.len())
        .unwrap()
        .clone();
    let raw_len = decode_object(&big, "b").unwrap().len() as u64;
    let mut g = c.benchmark_group("layer_blob_8MB");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(raw_len));
    g.bench_function("decode_verify_validate", |b| {
        b.iter(|| {
            let raw = decode_object(black_box(&big), "b").unwrap();
            let _ = vdna_db::format::Digest::of(&raw);
            decode_layer(raw).unwrap()
        })
    });
    g.bench_function("encode_zstd3", |b| {
        b.iter(|| vdna_db::dna::Dna::encode(black_box(&dna), 3).stored_bytes())
    });
    g.finish();

    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    for (i, m) in [0usize, 1].iter().enumerate() {
        let name = RefName::parse(&format!("d{i}")).unwrap();
        db.push(&synth::member(&s, *m, 0), Some(&name), BTreeMap::new())
            .unwrap();
    }
    let mask = db.mask("layer1_0", &dna.space).unwrap();
    let mut g = c.benchmark_group("open_and_first_distance");
    g.sample_size(20);
    g.bench_function("one_layer_mask", |b| {
        b.iter(|| {
            let (a, _) = db.resolve("d0").unwrap();
            let (bb, _) = db.resolve("d1").unwrap();
            let qa = AnyDna::Stored(db.open_dna(&a).unwrap());
            let qb = AnyDna::Stored(db.open_dna(&bb).unwrap());
            compare_dnas(&qa, &qb, &mask, None, 0).unwrap().distance
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
