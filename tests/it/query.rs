//! The query engine against its oracle, brute force: random catalogues, masks and k; a
//! model-based sequence of push / rm / reindex / reopen; CLI behaviour and errors.

use std::collections::BTreeMap;

use proptest::prelude::*;
use vdna_db::db::AnyDna;
use vdna_db::format::DistKind;
use vdna_db::query::{brute_force, query, reindex, QueryRequest};
use vdna_db::refname::RefName;
use vdna_db::{synth, Db};

use crate::util::*;

fn spec(seed: u64, dist: DistKind) -> synth::CatalogueSpec {
    synth::CatalogueSpec {
        seed,
        families: 3,
        members: 3,
        layers: synth::uniform_layers(3, 24),
        dist,
        extractor: "x".into(),
        images: 8,
        positions: 16,
        spread: 1.0,
    }
}

fn fill(db: &Db, s: &synth::CatalogueSpec) {
    for f in 0..s.families {
        for m in 0..s.members {
            let name = RefName::parse(&synth::member_name(f, m)).unwrap();
            let r = db
                .push(&synth::member(s, f, m), Some(&name), BTreeMap::new())
                .unwrap();
            vdna_db::query::index_pushed(db, &r.digest).unwrap();
        }
    }
}

/// A store of 4 families x 3 members over 4 histogram layers of `width` neurons and `bins`
/// bins, reindexed with graphs and column codes at any size (`reindex_with(1)`).
fn indexed_store(
    seed: u64,
    bins: u32,
    width: u32,
) -> (
    tempfile::TempDir,
    Db,
    synth::CatalogueSpec,
    vdna_db::query::ReindexReport,
) {
    let h = tmp();
    let db = Db::open(h.path()).unwrap();
    let mut s = spec(seed, DistKind::Histogram { bins });
    s.layers = synth::uniform_layers(4, width);
    s.families = 4;
    s.members = 3;
    fill(&db, &s);
    let r = vdna_db::query::reindex_with(&db, 1).unwrap();
    (h, db, s, r)
}

/// The top 5 of `q` under `mask` in planner mode `mode`.
fn top5(
    db: &Db,
    q: &AnyDna,
    mask: &str,
    mode: vdna_db::query::Mode,
) -> vdna_db::query::QueryResult {
    let req = QueryRequest {
        mask: mask.into(),
        k: 5,
        mode,
        ..Default::default()
    };
    query(db, q, &req).unwrap()
}

fn assert_same(got: &vdna_db::query::QueryResult, want: &[(f64, String)]) {
    let g: Vec<&str> = got.results.iter().map(|h| h.reference.as_str()).collect();
    let w: Vec<&str> = want.iter().map(|h| h.1.as_str()).collect();
    assert_eq!(g, w, "refs differ");
    for (h, (d, _)) in got.results.iter().zip(want) {
        assert!(
            (h.distance - d).abs() <= 1e-9 * d.abs().max(1e-12),
            "{} vs {d}",
            h.distance
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn exact_query_equals_brute_force(seed in 0u64..10_000, k in 1usize..12, mask_kind in 0usize..4, probe in 0usize..9, gauss in any::<bool>(), indexed in any::<bool>()) {
        let h = tmp();
        let db = Db::open(h.path()).unwrap();
        let dist = if gauss { DistKind::Gaussian } else { DistKind::Histogram { bins: 32 } };
        let s = spec(seed, dist);
        fill(&db, &s);
        if indexed {
            // Graphs and the column file of codes, then one DNA appended past them.
            vdna_db::query::reindex_with(&db, 1).unwrap();
            let name = RefName::parse("late/dna:v1").unwrap();
            let r = db.push(&synth::member(&spec(seed + 2, dist), 0, 1), Some(&name), BTreeMap::new()).unwrap();
            vdna_db::query::index_pushed(&db, &r.digest).unwrap();
        }
        let mask = ["all", "block_1", "block_0:3,5-9 block_2:0-3", "-block_1:0-20"][mask_kind];
        // A query DNA from outside the store, and a stored one.
        let outside = AnyDna::Owned(synth::member(&spec(seed + 1, dist), probe % 3, 0));
        let (d, _) = db.resolve(&synth::member_name(probe % 3, probe / 3)).unwrap();
        let inside = AnyDna::Stored(db.open_dna(&d).unwrap());
        for q in [&outside, &inside] {
            let req = QueryRequest { mask: mask.into(), k, ..Default::default() };
            let got = query(&db, q, &req).unwrap();
            let want = brute_force(&db, q, &req).unwrap();
            assert_same(&got, &want);
        }
    }
}

/// Exact queries whose first distances come from the mask's graph and whose code bound
/// leaves a row once it passes their k-th best: layers wide enough to be read in several
/// chunks, graphs for `all` and every layer, with and without a tag and --exclude-self.
#[test]
fn graph_seeded_exact_queries_equal_brute_force() {
    let (_h, db, s, r) = indexed_store(77, 8, 1500);
    assert_eq!(r.graphs, 5, "graphs for all + 4 layers");
    db.tag(&synth::member_name(1, 0), "kept:v1").unwrap();
    db.tag(&synth::member_name(2, 2), "kept:v1").unwrap();
    let (mut seeded, mut left_early, mut partial_by_all, mut by_neuron) = (0, 0, 0, 0);
    for probe in 0..4 {
        let other = synth::CatalogueSpec {
            seed: 91 + probe,
            ..s.clone()
        };
        let outside = AnyDna::Owned(synth::member(&other, probe as usize, 0));
        let (d, _) = db.resolve(&synth::member_name(probe as usize, 1)).unwrap();
        let inside = AnyDna::Stored(db.open_dna(&d).unwrap());
        for q in [&outside, &inside] {
            for (mask, k, tag, exclude_self) in [
                ("all", 3, None, false),
                ("all", 5, None, true),
                ("block_2", 1, None, false),
                ("all", 1, Some("v1"), false),
                ("block_0:0-99 block_3", 2, None, false),
                // Touches every layer, has no graph of its own: seeded by `all`'s.
                (
                    "block_0:0-99 block_1:200-260 block_2:7-9 block_3:1000-1499",
                    3,
                    None,
                    false,
                ),
            ] {
                for mode in [vdna_db::query::Mode::Exact, vdna_db::query::Mode::Auto] {
                    let req = QueryRequest {
                        mask: mask.into(),
                        k,
                        mode,
                        tag: tag.map(String::from),
                        exclude_self,
                        ..Default::default()
                    };
                    let got = query(&db, q, &req).unwrap();
                    // Brute force over every name, then the tag and --exclude-self.
                    let every = QueryRequest {
                        k: usize::MAX,
                        ..req.clone()
                    };
                    let want: Vec<(f64, String)> = brute_force(&db, q, &every)
                        .unwrap()
                        .into_iter()
                        .filter(|(_, name)| tag.is_none_or(|t| name.ends_with(&format!(":{t}"))))
                        .filter(|(_, name)| {
                            !exclude_self || db.resolve(name).unwrap().0 != q.digest()
                        })
                        .take(k)
                        .collect();
                    assert_same(&got, &want);
                    let stages = &got.plan.stages;
                    if stages
                        .iter()
                        .any(|st| st.name.starts_with("hnsw graph seeds"))
                    {
                        seeded += 1;
                        partial_by_all += (!mask.starts_with("all")
                            && stages
                                .iter()
                                .any(|st| st.name.starts_with("hnsw graph seeds (all")))
                            as usize;
                        // "code bound (..., N% of codes read)", or by neuron from the
                        // column file (read whole: nothing to leave early).
                        let code = stages.iter().find(|st| st.name.starts_with("code bound"));
                        if code.is_some_and(|st| st.name.starts_with("code bound (by neuron")) {
                            by_neuron += 1;
                            continue;
                        }
                        let read: f64 = code
                            .and_then(|st| st.name.rsplit(", ").next())
                            .and_then(|t| t.strip_suffix("% of codes read)"))
                            .and_then(|p| p.parse().ok())
                            .expect("a seeded code bound states what it read");
                        left_early += (read < 100.0) as usize;
                    }
                }
            }
        }
    }
    // The masks with graphs take seeds from their own (all, block_2), the mask over part
    // of every layer from `all`'s, when k names are eligible; the mask over two layers of
    // twelve DNAs has too few rows to repay reading the query's other layers.
    assert!(seeded >= 24, "{seeded} queries seeded by a graph");
    assert_eq!(
        partial_by_all, 16,
        "the partial mask over every layer, seeded by `all`"
    );
    assert!(left_early > 0, "no code bound stopped early");
    assert!(by_neuron > 0, "no narrow mask read the codes by neuron");
}

/// The column copy of the mean codes (`cols.bin`), which narrow masks read by neuron:
/// answers equal brute force with it, for rows appended after it was built (bounded from
/// their rows), and after codes in it are damaged in place (a run that fails its CRC
/// bounds nothing); `verify` reports the damage and `reindex` repairs it.
#[test]
fn column_codes_answer_like_brute_force_when_grown_or_damaged() {
    let (h, db, s, _) = indexed_store(41, 16, 600);
    let probe = AnyDna::Owned(synth::member(
        &synth::CatalogueSpec {
            seed: 42,
            ..s.clone()
        },
        1,
        0,
    ));
    let file = h
        .path()
        .join("index")
        .join(probe.space().digest().hex())
        .join("cols.bin");
    assert!(file.exists(), "reindex writes the column file");
    assert!(vdna_db::query::verify_index(&db).unwrap().is_empty());
    let masks = [
        "block_2:0-40",
        "block_0:5 block_1:17,300-310 block_3:590-599",
        "block_1",
    ];
    let check = |why: &str| {
        let mut by_neuron = 0;
        for mask in masks {
            // (k below the 12 DNAs: asking for them all is a plain scan.)
            for k in [1, 4, 7] {
                let req = QueryRequest {
                    mask: mask.into(),
                    k,
                    mode: vdna_db::query::Mode::Exact,
                    ..Default::default()
                };
                let got = query(&db, &probe, &req).unwrap();
                let want = brute_force(&db, &probe, &req).unwrap();
                assert_same(&got, &want);
                by_neuron += got
                    .plan
                    .stages
                    .iter()
                    .any(|st| st.name.starts_with("code bound (by neuron"))
                    as usize;
            }
        }
        assert_eq!(by_neuron, 9, "{why}: every narrow mask reads by neuron");
    };
    check("as built");
    // Three more DNAs, past the rows the file covers.
    let other = synth::CatalogueSpec {
        seed: 43,
        ..s.clone()
    };
    for m in 0..3 {
        let name = RefName::parse(&format!("late/dna-{m}:v1")).unwrap();
        let r = db
            .push(&synth::member(&other, 1, m), Some(&name), BTreeMap::new())
            .unwrap();
        vdna_db::query::index_pushed(&db, &r.digest).unwrap();
    }
    check("with rows appended after it");
    // Every code of the first block (all 12 rows) made 255 in place, under the kept
    // mapping: read unchecked, every row's bound would pass any distance and prune it.
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::File::options().write(true).open(&file).unwrap();
        f.seek(SeekFrom::Start(64)).unwrap();
        f.write_all(&vec![0xff; 12 * 4 * 600]).unwrap();
    }
    check("with every run of codes damaged");
    let problems = vdna_db::query::verify_index(&db).unwrap();
    assert!(
        problems
            .iter()
            .any(|(_, p)| p.contains("2400 runs of codes fail")),
        "{problems:?}"
    );
    vdna_db::query::reindex_with(&db, 1).unwrap();
    assert!(vdna_db::query::verify_index(&db).unwrap().is_empty());
    check("rebuilt");
}

#[test]
fn bounds_prune_on_clustered_data() {
    let h = tmp();
    let db = Db::open(h.path()).unwrap();
    let mut s = spec(5, DistKind::Histogram { bins: 64 });
    s.families = 6;
    s.members = 4;
    fill(&db, &s);
    let q = AnyDna::Owned(synth::member(&s, 2, 0));
    let res = query(
        &db,
        &q,
        &QueryRequest {
            k: 3,
            ..Default::default()
        },
    )
    .unwrap();
    assert_same(
        &res,
        &brute_force(
            &db,
            &q,
            &QueryRequest {
                k: 3,
                ..Default::default()
            },
        )
        .unwrap(),
    );
    assert!(
        res.plan.exact_computed < 24,
        "bounds should spare exact distances: {}",
        res.plan.explain()
    );
    assert!(res
        .results
        .iter()
        .all(|h| h.reference.starts_with("synth/family-02")));
}

#[test]
fn model_based_push_rm_reindex_reopen() {
    let h = tmp();
    let s = spec(77, DistKind::Histogram { bins: 16 });
    let mut model: BTreeMap<String, usize> = BTreeMap::new(); // ref -> (family*3+member)
    let mut rng = synth::Rng::new(3);
    let mut db = Db::open(h.path()).unwrap();
    for step in 0..40 {
        match rng.below(5) {
            0 | 1 => {
                let i = rng.below(9) as usize;
                let name = format!("d{}", rng.below(6));
                let r = db
                    .push(
                        &synth::member(&s, i / 3, i % 3),
                        Some(&RefName::parse(&name).unwrap()),
                        BTreeMap::new(),
                    )
                    .unwrap();
                vdna_db::query::index_pushed(&db, &r.digest).unwrap();
                model.insert(format!("{name}:latest"), i);
            }
            2 => {
                if let Some(name) = model
                    .keys()
                    .nth(rng.below(model.len().max(1) as u64) as usize)
                    .cloned()
                {
                    db.remove(&name).unwrap();
                    model.remove(&name);
                }
            }
            3 => {
                reindex(&db).unwrap();
            }
            _ => {
                drop(db);
                db = Db::open(h.path()).unwrap();
            }
        }
        assert_eq!(
            names(&db).into_keys().collect::<Vec<_>>(),
            model.keys().cloned().collect::<Vec<_>>(),
            "step {step}"
        );
        if !model.is_empty() {
            let q = AnyDna::Owned(synth::member(&s, 1, 1));
            let req = QueryRequest {
                k: 3,
                ..Default::default()
            };
            let got = query(&db, &q, &req).unwrap();
            assert_same(&got, &brute_force(&db, &q, &req).unwrap());
            assert!(
                got.results
                    .iter()
                    .all(|hit| model.contains_key(&hit.reference)),
                "step {step}"
            );
        }
    }
}

#[test]
fn cli_query_json_filters_and_errors() {
    let h = tmp();
    let home = h.path();
    ok(
        home,
        &[
            "demo",
            "--images",
            "0",
            "--fixtures",
            root().join("fixtures/reference").to_str().unwrap(),
            "--families",
            "3",
            "--members",
            "2",
        ],
    );
    let v = json(
        home,
        &[
            "query",
            "synth/family-01-00",
            "--top",
            "3",
            "--explain",
            "--per-layer",
        ],
    );
    let r = v["results"].as_array().unwrap();
    assert_eq!(r.len(), 3);
    assert_eq!(r[0]["ref"], "synth/family-01-00:latest");
    assert_eq!(r[0]["distance"], 0.0);
    assert!(r[0]["digest"].as_str().unwrap().starts_with("sha256:"));
    assert!(v["plan"]["strategy"].as_str().unwrap().starts_with("exact"));
    let v = json(
        home,
        &[
            "query",
            "synth/family-01-00",
            "--top",
            "3",
            "--exclude-self",
            "--filter",
            "family=01",
        ],
    );
    let r = v["results"].as_array().unwrap();
    assert_eq!(r.len(), 1, "one other member of family 01");
    assert_eq!(r[0]["ref"], "synth/family-01-01:latest");
    // A reference file as the query source, ranked among stored reference DNAs.
    let q = fixture("gradients", "histogram-1000");
    let v = json(home, &["query", q.to_str().unwrap(), "--top", "2"]);
    assert_eq!(
        v["results"][0]["ref"],
        "reference/gradients-histogram-1000:latest"
    );
    for (args, needle) in [
        (
            vec!["query", "synth/family-01-00", "--top", "0"],
            "at least 1",
        ),
        (
            vec!["query", "synth/family-01-00", "--filter", "colour=red"],
            "colour",
        ),
        (
            vec!["query", "synth/family-01-00", "--mask", "nothing*"],
            "no layer matches",
        ),
    ] {
        let o = run(home, &args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    }
    // A space with nothing stored says so and lists the spaces that exist.
    let other = h.path().join("x.vdna");
    let dna = synth::member(&spec(1, DistKind::Histogram { bins: 8 }), 0, 0);
    std::fs::write(&other, vdna_db::db::bundle_of(&dna, &BTreeMap::new(), 3)).unwrap();
    let o = run(home, &["query", other.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("stored spaces") && stderr(&o).contains("rand_resnet50"),
        "{}",
        stderr(&o)
    );
}

/// The approximate path's recall bound on seeded clustered data: HNSW graphs over means
/// plus exact re-ranking find at least 95% of the exact top 5 (measured 1.0 in the report).
#[test]
fn approx_recall_at_5_is_at_least_0_95_on_clustered_data() {
    let h = tmp();
    let db = Db::open(h.path()).unwrap();
    let mut s = spec(31, DistKind::Histogram { bins: 32 });
    s.families = 30;
    s.members = 8;
    fill(&db, &s);
    let r = vdna_db::query::reindex_with(&db, 100).unwrap();
    assert_eq!(r.graphs, 4, "graphs for all + 3 layers");
    let (mut hits, mut total) = (0, 0);
    for i in 0..20 {
        let q = AnyDna::Owned(synth::member(
            &spec(1000 + i, DistKind::Histogram { bins: 32 }),
            (i as usize * 7) % 30,
            0,
        ));
        for mask in ["all", "block_2"] {
            let exact = top5(&db, &q, mask, vdna_db::query::Mode::Auto);
            let approx = top5(&db, &q, mask, vdna_db::query::Mode::Approx);
            assert!(
                approx.plan.strategy.contains("HNSW"),
                "{}",
                approx.plan.strategy
            );
            let truth: Vec<&str> = exact.results.iter().map(|h| h.reference.as_str()).collect();
            hits += approx
                .results
                .iter()
                .filter(|h| truth.contains(&h.reference.as_str()))
                .count();
            total += truth.len();
            // Whatever the approximate path returns carries exact distances.
            for a in &approx.results {
                if let Some(e) = exact.results.iter().find(|e| e.reference == a.reference) {
                    assert!((a.distance - e.distance).abs() < 1e-12);
                }
            }
        }
    }
    let recall = hits as f64 / total as f64;
    assert!(recall >= 0.95, "recall@5 {recall}");
}

/// Files named `name` under `dir`, at any depth.
fn files_named(dir: &std::path::Path, name: &str) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_named(&p, name));
        } else if e.file_name() == name {
            out.push(p);
        }
    }
    out
}

/// A graph over 512 neurons or more finds its candidates by scanning compact vectors
/// (projections of the mean codes) instead of walking: on seeded clustered data it keeps
/// the walk's recall bound for approximate and estimated answers, and a damaged file of
/// compact vectors is reported by `verify` and never used (the query falls back to the
/// exact cascade, with the same answers as brute force).
#[test]
fn wide_graphs_scan_compact_vectors_at_the_same_recall_and_refuse_damaged_ones() {
    let h = tmp();
    let db = Db::open(h.path()).unwrap();
    let mut s = spec(37, DistKind::Histogram { bins: 32 });
    s.layers = synth::uniform_layers(3, 200);
    s.families = 30;
    s.members = 8;
    fill(&db, &s);
    let r = vdna_db::query::reindex_with(&db, 100).unwrap();
    assert_eq!(r.graphs, 4, "graphs for all + 3 layers");
    // Only `all` (600 neurons) is wide enough for compact vectors.
    let navs = files_named(h.path(), "nav.bin");
    assert_eq!(navs.len(), 1, "{navs:?}");
    assert!(
        navs[0].parent().unwrap().ends_with("graphs/all"),
        "{navs:?}"
    );
    assert!(vdna_db::query::verify_index(&db).unwrap().is_empty());
    let queries: Vec<AnyDna> = (0..20)
        .map(|i| {
            let mut qs = spec(2000 + i, DistKind::Histogram { bins: 32 });
            qs.layers = s.layers.clone();
            AnyDna::Owned(synth::member(&qs, (i as usize * 7) % 30, 0))
        })
        .collect();
    let (mut hits, mut est_hits, mut total) = (0, 0, 0);
    for q in &queries {
        let exact = top5(&db, q, "all", vdna_db::query::Mode::Exact);
        let truth: Vec<&str> = exact.results.iter().map(|h| h.reference.as_str()).collect();
        for (mode, n) in [
            (vdna_db::query::Mode::Approx, &mut hits),
            (vdna_db::query::Mode::Estimate, &mut est_hits),
        ] {
            let a = top5(&db, q, "all", mode);
            assert!(a.plan.strategy.contains("HNSW"), "{}", a.plan.strategy);
            assert!(
                a.plan
                    .stages
                    .iter()
                    .any(|st| st.name == "hnsw graph (all, compact-vector scan)"),
                "{}",
                a.plan.explain()
            );
            *n += a
                .results
                .iter()
                .filter(|h| truth.contains(&h.reference.as_str()))
                .count();
        }
        total += truth.len();
    }
    for (what, n) in [("approx", hits), ("estimate", est_hits)] {
        let recall = n as f64 / total as f64;
        assert!(recall >= 0.95, "{what} recall@5 {recall}");
    }
    // One flipped byte in the compact vectors of a store not yet queried (a process
    // checks a graph's files when it first loads them; they are never changed in place):
    // verify names the graph, and approximate queries no longer use it but still answer
    // exactly as brute force does.
    drop(db);
    let h = tmp();
    let db = Db::open(h.path()).unwrap();
    fill(&db, &s);
    vdna_db::query::reindex_with(&db, 100).unwrap();
    let navs = files_named(h.path(), "nav.bin");
    let mut b = std::fs::read(&navs[0]).unwrap();
    let at = b.len() - 7;
    b[at] ^= 0x40;
    std::fs::write(&navs[0], &b).unwrap();
    let problems = vdna_db::query::verify_index(&db).unwrap();
    assert!(
        problems
            .iter()
            .any(|(what, p)| what.contains("all") && p.contains("nav.bin")),
        "{problems:?}"
    );
    for q in &queries[..3] {
        let req = QueryRequest {
            mask: "all".into(),
            k: 5,
            mode: vdna_db::query::Mode::Approx,
            ..Default::default()
        };
        let got = query(&db, q, &req).unwrap();
        assert!(!got.plan.strategy.contains("HNSW"), "{}", got.plan.strategy);
        assert_same(&got, &brute_force(&db, q, &req).unwrap());
    }
}

/// The means of a neuron's quantile function (in bin units) over `q` equal intervals of
/// probability, from its counts: a second implementation of the sketch, in integers.
/// Scaled by `q`, the bin `k` holding `c` of `t` counts covers `[q cum, q (cum + c))` of
/// `q t` units and interval `j` covers `[j t, (j + 1) t)`, so every overlap is an integer.
fn quantile_means(counts: &[u32], q: u64) -> Vec<f64> {
    let t: u64 = counts.iter().map(|&c| c as u64).sum();
    let mut sums = vec![0u128; q as usize];
    let mut cum = 0u64;
    for (k, &c) in counts.iter().enumerate() {
        let (lo, hi) = (q * cum, q * (cum + c as u64));
        cum += c as u64;
        for (j, s) in sums.iter_mut().enumerate() {
            let (a, b) = (j as u64 * t, (j as u64 + 1) * t);
            let overlap = hi.min(b).saturating_sub(lo.max(a));
            *s += k as u128 * overlap as u128;
        }
    }
    // Interval j holds t units of mass: its mean position is sum / t.
    sums.iter()
        .map(|&s| if t == 0 { 0.0 } else { s as f64 / t as f64 })
        .collect()
}

/// `--estimate` (Mode::Estimate) answers with the k smallest sketch bounds among the
/// candidates and decodes nothing: without graphs its answers are the k DNAs with the
/// smallest bound computed here from the histograms by a second implementation, each
/// distance equal to that bound and never above the exact distance (brute force); with
/// graphs, its recall@5 against the exact answer.
#[test]
fn estimates_are_the_smallest_sketch_bounds_and_never_exceed_exact_distances() {
    use vdna_db::query::Mode;
    let h = tmp();
    let db = Db::open(h.path()).unwrap();
    let bins = 32u32;
    let mut s = spec(37, DistKind::Histogram { bins });
    s.families = 30;
    s.members = 8;
    fill(&db, &s);
    // (ref, its histograms) of every stored member.
    let stored: Vec<(String, vdna_db::dna::Dna)> = (0..s.families)
        .flat_map(|f| (0..s.members).map(move |m| (f, m)))
        .map(|(f, m)| {
            (
                format!("{}:latest", synth::member_name(f, m)),
                synth::member(&s, f, m),
            )
        })
        .collect();
    let counts = |d: &vdna_db::dna::Dna, layer: usize| -> Vec<u32> {
        match &d.layers[layer] {
            vdna_db::dna::LayerData::Histogram { counts, .. } => counts.clone(),
            _ => unreachable!("histogram layers"),
        }
    };
    // The masked (layer, neuron)s of each mask asked, written out here.
    let masks: Vec<(&str, Vec<(usize, usize)>)> = vec![
        (
            "all",
            (0..3).flat_map(|l| (0..24).map(move |n| (l, n))).collect(),
        ),
        ("block_2", (0..24).map(|n| (2, n)).collect()),
        ("block_1:3,5,17", vec![(1, 3), (1, 5), (1, 17)]),
    ];
    let bound = |a: &vdna_db::dna::Dna, b: &vdna_db::dna::Dna, cells: &[(usize, usize)]| -> f64 {
        let q = vdna_db::query::sketch::SKETCH_Q as u64;
        let mut sum = 0.0;
        for &(l, n) in cells {
            let (ca, cb) = (counts(a, l), counts(b, l));
            let r = n * bins as usize..(n + 1) * bins as usize;
            let (ma, mb) = (quantile_means(&ca[r.clone()], q), quantile_means(&cb[r], q));
            sum += ma.iter().zip(&mb).map(|(x, y)| (x - y).abs()).sum::<f64>() / q as f64;
        }
        sum / cells.len() as f64
    };
    let estimate = |q: &AnyDna, mask: &str| top5(&db, q, mask, Mode::Estimate);
    // Stored f32 summaries: each neuron's bound within 2^-23 bins of its f64 value.
    let tol = bins as f64 * 2f64.powi(-20);
    for i in 0..6u64 {
        // New members of stored families, as a user's dataset near some of the catalogue.
        let probe = synth::member(&s, (i as usize * 5) % 30, s.members + i as usize);
        let q = AnyDna::Owned(probe.clone());
        for (mask, cells) in &masks {
            let got = estimate(&q, mask);
            assert!(
                got.plan.strategy.starts_with("estimate"),
                "{}",
                got.plan.strategy
            );
            assert_eq!(got.plan.exact_computed, 0, "no exact distance");
            assert_eq!(got.plan.layer_cache_misses, 0, "no layer decoded");
            assert_eq!(got.results.len(), 5);
            let mut want: Vec<(f64, &str)> = stored
                .iter()
                .map(|(name, d)| (bound(&probe, d, cells), name.as_str()))
                .collect();
            want.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(b.1)));
            let kth = want[4].0;
            let exact = brute_force(
                &db,
                &q,
                &QueryRequest {
                    mask: mask.to_string(),
                    k: stored.len(),
                    ..Default::default()
                },
            )
            .unwrap();
            for hit in &got.results {
                assert!(hit.estimated, "{} not marked estimated", hit.reference);
                let mine = want.iter().find(|w| w.1 == hit.reference).unwrap().0;
                assert!(
                    (hit.distance - mine).abs() <= tol,
                    "{mask}: {} estimated {} against the bound {mine}",
                    hit.reference,
                    hit.distance
                );
                assert!(
                    mine <= kth + 2.0 * tol,
                    "{mask}: {} is not among the 5 smallest bounds",
                    hit.reference
                );
                let e = exact.iter().find(|e| e.1 == hit.reference).unwrap().0;
                assert!(
                    hit.distance <= e + tol,
                    "{mask}: estimate {} above the exact {e}",
                    hit.distance
                );
            }
        }
    }
    // With graphs: the graph's nearest, ranked by the bound; recall against the exact top 5.
    vdna_db::query::reindex_with(&db, 100).unwrap();
    let (mut hits, mut total) = (0, 0);
    for i in 0..20usize {
        let q = AnyDna::Owned(synth::member(&s, (i * 7) % 30, s.members + i));
        for mask in ["all", "block_2"] {
            let got = estimate(&q, mask);
            assert!(got.plan.strategy.contains("HNSW"), "{}", got.plan.strategy);
            assert_eq!(got.plan.exact_computed, 0);
            let exact = top5(&db, &q, mask, Mode::Exact);
            hits += got
                .results
                .iter()
                .filter(|h| exact.results.iter().any(|e| e.reference == h.reference))
                .count();
            total += exact.results.len();
        }
    }
    let recall = hits as f64 / total as f64;
    eprintln!("estimate recall@5 {recall}");
    assert!(recall >= 0.95, "recall@5 {recall}");
}

#[test]
fn cli_reindex_builds_graphs_and_tiny_approx_queries_answer_exactly() {
    let h = tmp();
    let home = h.path();
    ok(home, &demo_args("4", "3"));
    let r = json(home, &["reindex", "--graphs-min", "5"]);
    assert_eq!(r["graphs"], 17, "all + 16 layers");
    // Twelve candidates are fewer than the 200 neighbours an approximate search fetches:
    // the planner answers exactly even under --approx, says why, and the answer is the
    // exact one (issue 19). The graph path itself is tested on 240 DNAs above.
    let v = json(
        home,
        &["query", "synth/family-02-01", "--approx", "--top", "3"],
    );
    let strategy = v["plan"]["strategy"].as_str().unwrap();
    assert!(strategy.starts_with("exact"), "{v}");
    let rule = v["plan"]["rule"].as_str().unwrap();
    assert!(rule.contains("12 candidates <= 200"), "{rule}");
    let e = json(
        home,
        &["query", "synth/family-02-01", "--exact", "--top", "3"],
    );
    assert_eq!(v["results"], e["results"]);
    assert_eq!(v["results"][0]["ref"], "synth/family-02-01:latest");
    // The index is derived state: damaging or deleting it loses nothing.
    let rows = std::fs::read_dir(home.join("index"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join("a.bin");
    let mut b = std::fs::read(&rows).unwrap();
    b[3] ^= 0xff;
    std::fs::write(&rows, b).unwrap();
    let r = json(home, &["verify", "--repair"]);
    assert_eq!(r["reindexed"]["dnas"], 12);
    let v = json(home, &["query", "synth/family-02-01", "--top", "3"]);
    assert_eq!(v["results"][0]["ref"], "synth/family-02-01:latest");
    std::fs::remove_dir_all(home.join("index")).unwrap();
    let v = json(home, &["query", "synth/family-02-01", "--top", "3"]);
    assert_eq!(v["results"][0]["ref"], "synth/family-02-01:latest");
}

/// Pushes keep the column file of codes near the segment's end: once a whole block of rows
/// lies past it, the push that completes the block rebuilds it (blocks of 4 rows here).
/// Answers read by neuron equal those read from the rows.
#[test]
fn pushes_extend_the_column_file_a_block_at_a_time() {
    let h = tmp();
    let home = h.path();
    let vdna = |args: &[&str]| -> serde_json::Value {
        let o = bin()
            .env("VDNA_DB_COLUMN_BLOCK", "4")
            .arg("--home")
            .arg(home)
            .arg("--json")
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null)
    };
    let demo = |families: &str| vdna(&demo_args(families, "3"));
    demo("4");
    vdna(&["reindex", "--graphs-min", "5"]);
    let file = std::fs::read_dir(home.join("index"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join("cols.bin");
    let covered = || {
        let b = std::fs::read(&file).unwrap();
        u32::from_le_bytes(b[12..16].try_into().unwrap())
    };
    assert_eq!(covered(), 12);
    // Six more DNAs: 16 rows complete a block past the 12 covered, 18 do not.
    demo("6");
    assert_eq!(covered(), 16);
    let ask = || {
        let v = vdna(&[
            "query",
            "synth/family-05-01",
            "--mask",
            "layer1_1:0-3 layer3_0:10",
            "--exact",
            "--top",
            "5",
        ]);
        let by_neuron = v["plan"]["stages"].as_array().unwrap().iter().any(|s| {
            s["name"]
                .as_str()
                .unwrap()
                .starts_with("code bound (by neuron")
        });
        (v["results"].clone(), by_neuron)
    };
    let (cols, by_neuron) = ask();
    assert!(by_neuron);
    std::fs::remove_file(&file).unwrap();
    let (rows, by_neuron) = ask();
    assert!(!by_neuron);
    assert_eq!(cols, rows);
    assert_eq!(rows.as_array().unwrap().len(), 5);
}

/// A process keeps each space's table and open segment between queries (reused while the
/// segment files are the same and no row was appended). Every change must still show:
/// pushes and removals through the catalogue, and bytes rewritten in place under a kept
/// mapping (each part of a row is checked as it is read).
#[test]
fn kept_tables_and_segments_follow_every_change() {
    let h = tmp();
    let db = Db::open(h.path()).unwrap();
    let s = spec(77, DistKind::Histogram { bins: 32 });
    fill(&db, &s);
    let q = AnyDna::Owned(synth::member(&spec(78, s.dist), 1, 0));
    let seg_dir = h.path().join("index").join(q.space().digest().hex());
    let req = QueryRequest {
        k: 3,
        ..Default::default()
    };
    let check = |why: &str| {
        let got = query(&db, &q, &req).unwrap();
        let want = brute_force(&db, &q, &req).unwrap();
        let g: Vec<&str> = got.results.iter().map(|h| h.reference.as_str()).collect();
        let w: Vec<&str> = want.iter().map(|h| h.1.as_str()).collect();
        assert_eq!(g, w, "{why}");
        got
    };
    check("first query");
    check("kept segment");
    // A push: the table changes, and the segment grows.
    let name = RefName::parse("copy/of-query:v1").unwrap();
    let Some(owned) = (match &q {
        AnyDna::Owned(d) => Some(d.clone()),
        _ => None,
    }) else {
        unreachable!()
    };
    let pushed = db.push(&owned, Some(&name), BTreeMap::new()).unwrap();
    vdna_db::query::index_pushed(&db, &pushed.digest).unwrap();
    let got = check("after a push");
    assert_eq!(got.results[0].reference, "copy/of-query:v1");
    assert_eq!(got.results[0].distance, 0.0);
    // A removal with the segment files unchanged: the kept segment is mapped to the new
    // table, without the removed DNA.
    check("kept again");
    db.remove("copy/of-query:v1").unwrap();
    let got = check("after a removal");
    assert!(got.results.iter().all(|h| h.digest != pushed.digest));
    // Bytes rewritten in place under the kept mapping: the best answer's first mean made
    // huge, and every code of its first layer made 255, either of which would prune it
    // if read unchecked.
    let top = check("kept before the damage").results[0].digest;
    // rows.bin rows: the digest, then two CRC-32s per layer (3).
    let rows = std::fs::read(seg_dir.join("rows.bin")).unwrap();
    let r = rows[64..]
        .chunks_exact(32 + 8 * 3)
        .position(|row| row[..32] == top.0)
        .unwrap();
    let neurons = 3 * 24;
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::File::options()
            .write(true)
            .open(seg_dir.join("a.bin"))
            .unwrap();
        f.seek(SeekFrom::Start((64 + r * 4 * neurons + 3) as u64))
            .unwrap();
        f.write_all(&[0x7f]).unwrap();
        // c.bin rows: 72 codes, then a CRC-32 per layer (3).
        let mut f = std::fs::File::options()
            .write(true)
            .open(seg_dir.join("c.bin"))
            .unwrap();
        f.seek(SeekFrom::Start((64 + r * (72 + 12)) as u64))
            .unwrap();
        f.write_all(&[0xff; 24]).unwrap();
    }
    let got = check("after damage in place");
    assert_eq!(got.results[0].digest, top);
}

/// The space's table is kept on disk, stamped with the catalogue state: a new process
/// reads it in place instead of decoding every record, and rebuilds it after any change
/// to the catalogue (pushes, annotations, removals) or any damage to the file; answers,
/// names and filters stay those of brute force throughout.
#[test]
fn a_new_process_reads_the_table_on_disk_and_follows_catalogue_changes() {
    use std::os::unix::fs::MetadataExt;
    let h = tmp();
    let s = spec(91, DistKind::Histogram { bins: 32 });
    let q = AnyDna::Owned(synth::member(&spec(92, s.dist), 0, 0));
    let file = h
        .path()
        .join("index")
        .join(q.space().digest().hex())
        .join("table.bin");
    // Family 0 is annotated split=train, the others split=test.
    {
        let db = Db::open(h.path()).unwrap();
        for f in 0..s.families {
            for m in 0..s.members {
                let name = RefName::parse(&synth::member_name(f, m)).unwrap();
                let split = if f == 0 { "train" } else { "test" };
                let ann = BTreeMap::from([("split".to_string(), split.to_string())]);
                let r = db.push(&synth::member(&s, f, m), Some(&name), ann).unwrap();
                vdna_db::query::index_pushed(&db, &r.digest).unwrap();
            }
        }
    }
    // A new process each time: the store reopened and nothing kept from before.
    let fresh = || {
        vdna_db::query::forget_kept();
        Db::open(h.path()).unwrap()
    };
    let req = |filters: &[(&str, &str)]| QueryRequest {
        k: 3,
        filters: filters
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    };
    // Brute force over every name, then the filter applied by hand to the names.
    let expect = |db: &Db, keep: &dyn Fn(&str) -> bool| -> Vec<String> {
        let all = brute_force(
            db,
            &q,
            &QueryRequest {
                k: 1000,
                ..Default::default()
            },
        )
        .unwrap();
        all.into_iter()
            .map(|(_, n)| n)
            .filter(|n| keep(n))
            .take(3)
            .collect()
    };
    let names = |r: vdna_db::query::QueryResult| -> Vec<String> {
        r.results.into_iter().map(|h| h.reference).collect()
    };
    let train = |n: &str| n.starts_with("synth/family-00-");
    let db = fresh();
    assert_eq!(
        names(query(&db, &q, &req(&[])).unwrap()),
        expect(&db, &|_| true)
    );
    let ino = std::fs::metadata(&file)
        .expect("the first query writes the table")
        .ino();
    // The answers, unfiltered and filtered, are brute force's.
    let same_answers = |db: &Db| {
        assert_eq!(
            names(query(db, &q, &req(&[])).unwrap()),
            expect(db, &|_| true)
        );
        assert_eq!(
            names(query(db, &q, &req(&[("split", "train")])).unwrap()),
            expect(db, &|n| train(n))
        );
    };
    // Read in place by the next process (the same file, not written again).
    drop(db);
    let db = fresh();
    same_answers(&db);
    assert_eq!(
        std::fs::metadata(&file).unwrap().ino(),
        ino,
        "read, not rebuilt"
    );
    // A push with a new annotation: the next process sees it (the table is rebuilt).
    let owned = match &q {
        AnyDna::Owned(d) => d.clone(),
        _ => unreachable!(),
    };
    let copy = RefName::parse("copy/of-query:v1").unwrap();
    let ann = BTreeMap::from([("split".to_string(), "val".to_string())]);
    let pushed = db.push(&owned, Some(&copy), ann).unwrap();
    vdna_db::query::index_pushed(&db, &pushed.digest).unwrap();
    drop(db);
    let db = fresh();
    let got = query(&db, &q, &req(&[("split", "val")])).unwrap();
    assert_eq!(names(got), vec!["copy/of-query:v1".to_string()]);
    assert_ne!(std::fs::metadata(&file).unwrap().ino(), ino, "rebuilt");
    assert_eq!(
        names(query(&db, &q, &req(&[])).unwrap()),
        expect(&db, &|_| true)
    );
    // A removal: gone for the next process.
    db.remove("copy/of-query:v1").unwrap();
    drop(db);
    let db = fresh();
    let got = names(query(&db, &q, &req(&[])).unwrap());
    assert!(!got.contains(&"copy/of-query:v1".to_string()));
    assert_eq!(got, expect(&db, &|_| true));
    // A flipped byte: verify reports it, the next process rebuilds it and answers the same.
    let mut b = std::fs::read(&file).unwrap();
    let at = b.len() / 2;
    b[at] ^= 0x10;
    std::fs::write(&file, &b).unwrap();
    let problems = vdna_db::query::verify_index(&db).unwrap();
    assert!(
        problems.iter().any(|(_, p)| p.contains("table.bin")),
        "{problems:?}"
    );
    drop(db);
    let db = fresh();
    same_answers(&db);
    assert!(vdna_db::query::verify_index(&db).unwrap().is_empty());
}
