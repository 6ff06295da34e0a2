//! The catalogue's listing at scale (issue 17): pages of the web catalogue and
//! `GET /v1/datasets` (search, filters, sorting, paging through `Engine::browse`) over N
//! named DNAs, against what every page did before the listing was kept per catalogue
//! state: decode every ref and DNA record from sled, then filter, sort and page.
//!
//! The catalogue is filled with records only (the pages read no DNA objects): N refs with
//! an annotation in ten groups, their DNA records, and a card on every tenth.
//! `VDNA_DB_BENCH_N` (default 100,000) sets N.

use std::collections::BTreeMap;
use std::time::Instant;

use vdna_db::card::CardRecord;
use vdna_db::catalogue::{Change, DnaRecord, RefRecord, SpaceRecord};
use vdna_db::engine::{Browse, Engine, SortKey};
use vdna_db::format::Digest;
use vdna_db::refname::RefName;
use vdna_db::{synth, Db};

fn p50(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time_ms(runs: usize, mut f: impl FnMut()) -> f64 {
    p50((0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect())
}

fn main() {
    let n: usize = std::env::var("VDNA_DB_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    let space = synth::CatalogueSpec {
        seed: 1,
        families: 1,
        members: 1,
        layers: synth::uniform_layers(2, 8),
        dist: vdna_db::format::DistKind::Histogram { bins: 16 },
        extractor: "rand_resnet50".into(),
        images: 8,
        positions: 4,
        spread: 1.0,
    }
    .space();
    let sd = space.digest();
    let t = Instant::now();
    let mut changes = vec![Change::PutSpace {
        digest: sd,
        record: SpaceRecord {
            config: serde_json::to_value(&space).unwrap(),
            description: space.describe(),
        },
    }];
    for i in 0..n {
        let digest = Digest::of(format!("dna {i}").as_bytes());
        let name = RefName::parse(&format!("bench/d{i:06}:v1")).unwrap();
        changes.push(Change::PutDna {
            digest,
            record: DnaRecord {
                space: sd,
                dist: "histogram-16".into(),
                images: 100 + (i as u64 * 7919) % 100_000,
                stored_bytes: 10_000 + (i as u64 * 104_729) % 1_000_000,
                raw_bytes: 0,
                created: 1_700_000_000 + i as u64,
            },
        });
        changes.push(Change::SetRef {
            name: name.clone(),
            record: RefRecord {
                digest,
                created: 1_700_000_000 + i as u64,
                annotations: BTreeMap::from([("split".to_string(), format!("s{}", i % 10))]),
            },
            prev: None,
        });
        if i % 10 == 0 {
            changes.push(Change::PutCard {
                name,
                record: CardRecord {
                    markdown: format!("---\ntitle: Dataset {i}\nlicense: CC-BY-4.0\ntags: [bench]\n---\nA benchmark dataset, number {i}, of procedural images."),
                    updated: 0,
                },
            });
        }
        if changes.len() >= 6_000 {
            db.catalogue().apply(None, &changes).unwrap();
            changes.clear();
        }
    }
    db.catalogue().apply(None, &changes).unwrap();
    println!(
        "catalogue of {n} named DNAs ({} with cards) filled in {:.1} s",
        n / 10,
        t.elapsed().as_secs_f64()
    );
    // The query path's candidates: every ref and DNA record, decoded per query before,
    // now shared per catalogue state.
    let decoded = time_ms(5, || {
        let (r, d) = (
            db.catalogue().refs().unwrap(),
            db.catalogue().dnas().unwrap(),
        );
        assert_eq!(r.len() + d.len(), 2 * n);
    });
    let t = Instant::now();
    db.catalogue().snapshot_records().unwrap();
    let first = t.elapsed().as_secs_f64() * 1e3;
    let shared_us = 1e3
        * time_ms(21, || {
            let s = db.catalogue().snapshot_records().unwrap();
            assert_eq!(s.refs.len(), n);
        });
    println!(
        "a query's read of every ref and DNA record: decoded {decoded:.0} ms per query, shared {shared_us:.1} µs (the first read after a commit decodes once: {first:.0} ms)\n"
    );
    let engine = Engine::from_db(db);
    let page =
        |sort: SortKey, offset: usize, q: Option<&str>, filter: Option<(&str, &str)>| Browse {
            q: q.map(str::to_string),
            filters: filter
                .map(|(k, v)| BTreeMap::from([(k.to_string(), v.to_string())]))
                .unwrap_or_default(),
            sort,
            offset,
            limit: 50,
            ..Default::default()
        };
    let t = Instant::now();
    let rows = engine.listing().unwrap().len();
    let cold = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!(rows, n);
    println!("listing built once per catalogue state: {cold:.0} ms ({n} rows)\n");
    println!("| page | kept listing p50 | decoded per page p50 | ratio |");
    println!("|---|---|---|---|");
    let cases: Vec<(&str, Browse)> = vec![
        ("first page, by name", page(SortKey::Name, 0, None, None)),
        (
            "page 1,000, by images",
            page(SortKey::Images, 49_950.min(n / 2), None, None),
        ),
        (
            "search in cards (\"number 12\")",
            page(SortKey::Name, 0, Some("number 12"), None),
        ),
        (
            "filter split=s3, newest first",
            page(SortKey::Date, 0, None, Some(("split", "s3"))),
        ),
    ];
    for (label, b) in cases {
        let kept = time_ms(21, || {
            let p = engine.browse(&b).unwrap();
            assert!(p.total > 0);
        });
        // What a page cost before: every record decoded, then the same filter, order and page.
        let decoded = time_ms(5, || {
            let mut all = engine.db().list().unwrap();
            all.retain(|r| {
                b.q.as_deref().is_none_or(|q| {
                    r.reference.contains(q)
                        || r.card
                            .as_ref()
                            .is_some_and(|c| c.summary.to_lowercase().contains(q))
                }) && b
                    .filters
                    .iter()
                    .all(|(k, v)| r.annotations.get(k) == Some(v))
            });
            match b.sort {
                SortKey::Images => all.sort_by_key(|r| std::cmp::Reverse(r.images)),
                SortKey::Date => all.sort_by_key(|r| std::cmp::Reverse(r.created)),
                _ => {}
            }
            let page: Vec<_> = all.into_iter().skip(b.offset).take(50).collect();
            assert!(!page.is_empty());
        });
        println!(
            "| {label} | {kept:.1} ms | {decoded:.0} ms | {:.0}x |",
            decoded / kept.max(1e-6)
        );
    }
}
