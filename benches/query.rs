//! Exact top-5 over a seeded clustered catalogue (N = 400 DNAs of 2,048 neurons x 256
//! bins) against the naive exact scan (decode every candidate, full distance), in the same
//! run. The larger configurations live in the report bench (`cargo bench --bench report`).
//!
//! First, the decoded-layer cache: the same exact queries repeated with the cache (the
//! layers of the k answers and the candidates the bounds let through stay decoded) and
//! without it (every layer read and decoded again), with the ratio printed.
//! `VDNA_DB_BENCH_ONLY=layer-cache` stops after that part.
//!
//! Then the segment open: the same queries as a fresh process makes them (the space's
//! table built, the segment opened and mapped; nothing is checked at open, each part of a
//! row is checked as it is read) and as a long-running one does (both kept), the "open
//! summary segment" stage printed for both. `VDNA_DB_BENCH_ONLY=segment-open` runs only
//! that part.

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
    // VDNA_DB_BENCH_FAMILIES (of 10 DNAs each) sizes the catalogue; 40 by default.
    let families = std::env::var("VDNA_DB_BENCH_FAMILIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let s = clustered_spec(9, families);
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
    let p50 = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    // The segment open: as a fresh process, against kept.
    let open_stage = |r: &vdna_db::query::QueryResult| {
        r.plan
            .stages
            .iter()
            .find(|s| s.name == "open summary segment")
            .map_or(0.0, |s| s.ms)
    };
    println!(
        "\n| mask | query p50, fresh process | open stage | query p50, kept | open stage | ratio |"
    );
    println!("|---|---|---|---|---|---|");
    for mask in ["all", "block_3"] {
        let req = QueryRequest {
            mask: mask.into(),
            k: 5,
            ..Default::default()
        };
        let timed = |forget: bool| {
            let _ = query(&db, &q, &req).unwrap();
            let (mut t, mut open) = (Vec::new(), Vec::new());
            for _ in 0..15 {
                if forget {
                    vdna_db::query::forget_kept();
                }
                let s = std::time::Instant::now();
                let r = query(&db, &q, &req).unwrap();
                t.push(s.elapsed().as_secs_f64() * 1e3);
                open.push(open_stage(&r));
            }
            (p50(&mut t), p50(&mut open))
        };
        let (each, each_open) = timed(true);
        let (once, once_open) = timed(false);
        println!(
            "| {mask} | {each:.2} ms | {each_open:.2} ms | {once:.2} ms | {once_open:.2} ms | {:.2}x |",
            each / once.max(1e-9)
        );
    }
    if std::env::var("VDNA_DB_BENCH_ONLY").is_ok_and(|v| v == "segment-open") {
        return;
    }
    // The decoded-layer cache, on and off, in one run.
    println!("\n| mask | exact p50, cache off | exact p50, cache warm | ratio | hits per query |");
    println!("|---|---|---|---|---|");
    for mask in ["all", "block_3", "block_0:0-99"] {
        let req = QueryRequest {
            mask: mask.into(),
            k: 5,
            ..Default::default()
        };
        let timed = |budget: usize| {
            db.objects().set_layer_cache_budget(budget);
            let _ = query(&db, &q, &req).unwrap();
            let mut t: Vec<f64> = Vec::new();
            let mut hits = 0;
            for _ in 0..15 {
                let s = std::time::Instant::now();
                let r = query(&db, &q, &req).unwrap();
                t.push(s.elapsed().as_secs_f64() * 1e3);
                hits = r.plan.layer_cache_hits;
            }
            (p50(&mut t), hits)
        };
        let (off, _) = timed(0);
        let (on, hits) = timed(vdna_db::store::DEFAULT_LAYER_CACHE_MB << 20);
        println!(
            "| {mask} | {off:.1} ms | {on:.1} ms | {:.1}x | {hits} |",
            off / on.max(1e-9)
        );
    }
    if std::env::var("VDNA_DB_BENCH_ONLY").is_ok_and(|v| v == "layer-cache") {
        return;
    }
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
