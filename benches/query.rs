//! Exact top-5 over a seeded clustered catalogue (N = 400 DNAs of 2,048 neurons x 256
//! bins) against the naive exact scan (decode every candidate, full distance), in the same
//! run. The larger configurations live in the report bench (`cargo bench --bench report`).

#[path = "common.rs"]
mod common;

use std::collections::BTreeMap;

use common::clustered_spec;
use criterion::{criterion_group, criterion_main, Criterion};
use vdna_db::db::AnyDna;
use vdna_db::query::{brute_force, query, QueryRequest};
use vdna_db::refname::RefName;
use vdna_db::{synth, Db};

fn bench(c: &mut Criterion) {
    let s = clustered_spec(9, 40);
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    for f in 0..s.families {
        for m in 0..s.members {
            let name = RefName::parse(&synth::member_name(f, m)).unwrap();
            let r = db
                .push(&synth::member(&s, f, m), Some(&name), BTreeMap::new())
                .unwrap();
            vdna_db::query::index_pushed(&db, &r.digest).unwrap();
        }
    }
    let q = AnyDna::Owned(synth::member(
        &synth::CatalogueSpec {
            seed: 10,
            ..s.clone()
        },
        3,
        0,
    ));
    let mut g = c.benchmark_group("top5_n400_2048x256");
    g.sample_size(10);
    for mask in ["all", "block_3", "block_0:0-99"] {
        let req = QueryRequest {
            mask: mask.into(),
            k: 5,
            ..Default::default()
        };
        g.bench_function(format!("exact_bounded/{mask}"), |b| {
            b.iter(|| query(&db, &q, &req).unwrap())
        });
        g.bench_function(format!("naive_scan/{mask}"), |b| {
            b.iter(|| brute_force(&db, &q, &req).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
