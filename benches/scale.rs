//! The query engine at catalogue scale (issue 14): top-5 over N clustered DNAs in the
//! default extractor's layout (efficientnet_lite0: 17 layers, 3,088 neurons) at 100 bins,
//! for several N in one store, with the per-stage plan, the approximate path and the estimates beside the
//! exact one, a cold CLI process, and FAISS over the same per-neuron means when a Python
//! with `faiss` is given.
//!
//! `cargo bench --bench scale`. Environment:
//! - `VDNA_DB_BENCH_SCALE_N`: the sizes (`1000,10000` by default), one store each.
//! - `VDNA_DB_BENCH_SCALE_LAYOUT`: `efficientnet` (default) or `resnet50` (15,104 neurons).
//! - `VDNA_DB_BENCH_SCALE_DIR`: keep the stores there, as `<layout>-<N>` (filled stores
//!   are reused by later runs; a temporary directory otherwise).
//! - `VDNA_DB_BENCH_GRAPHS_MIN`: `reindex --graphs-min` at each size (1000 by default;
//!   0 skips the graphs, and the approximate columns).
//! - `VDNA_DB_BENCH_SCALE_KEEP_INDEX=1`: query the index as it is (no reindex).
//! - `VDNA_DB_BENCH_SCALE_FILL_ONLY=1`: fill the store to each size and stop.
//! - `VDNA_DB_BENCH_SCALE_PUSH=M`: push M more DNAs into each filled store (store and
//!   index, as `push` does), report DNAs/s at that size, then remove their names.
//! - `VDNA_DB_BENCH_SCALE_SERVE=1`: also start `vdna-db serve` on each store and query it
//!   over loopback from 4 clients (exact and approximate, masks `all` and one layer),
//!   reporting the server's resident memory under that load.
//! - `VDNA_DB_BENCH_FAISS_PYTHON`: a Python with `faiss` (PyPI `faiss-cpu`) to run
//!   `tools/faiss_bench.py` at each size.

#[path = "common.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use vdna_db::db::AnyDna;
use vdna_db::format::DistKind;
use vdna_db::query::{brute_force, query, Mode, QueryRequest, QueryResult};
use vdna_db::refname::RefName;
use vdna_db::{synth, Db};

/// The share of `truth`'s answers that `got` also returns (recall@k), by digest.
fn overlap(got: &QueryResult, truth: &QueryResult) -> f64 {
    let found = got
        .results
        .iter()
        .filter(|h| truth.results.iter().any(|t| t.digest == h.digest))
        .count();
    found as f64 / truth.results.len() as f64
}

fn env_or(k: &str, d: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| d.to_string())
}

/// The code bound's checksums over every row of the segment (mask `all`, one thread): a
/// CRC-32 per layer, as the code bound read them before, against one CRC per row checked
/// against the join of the layers' CRCs (`Segment::codes_span`), best of 3 each.
fn checks_row(home: &Path, probe: &AnyDna, n: usize, lines: &mut Vec<String>) {
    use vdna_db::query::segment::{SegKind, Segment};
    let space = probe.space();
    let DistKind::Histogram { bins } = space.dist else {
        return;
    };
    let widths: Vec<u32> = space.layers.iter().map(|l| l.neurons).collect();
    let dir = home.join("index").join(space.digest().hex());
    let kind = SegKind::Histogram {
        q: vdna_db::query::sketch::SKETCH_Q,
        bins,
    };
    let seg = Segment::open(&dir, space.digest(), kind, &widths).unwrap();
    let (rows, nl) = (seg.rows().len(), widths.len());
    let best = |f: &dyn Fn() -> usize, want: usize| {
        (0..3)
            .map(|_| {
                let t = Instant::now();
                assert_eq!(std::hint::black_box(f()), want, "a code check failed");
                t.elapsed().as_secs_f64() * 1e3
            })
            .fold(f64::INFINITY, f64::min)
    };
    let per_layer = best(
        &|| {
            (0..rows)
                .map(|r| (0..nl).filter(|&l| seg.codes(r, l).is_some()).count())
                .sum()
        },
        rows * nl,
    );
    let joined = best(
        &|| {
            (0..rows)
                .filter(|&r| seg.codes_span(r, 0, nl).is_some())
                .count()
        },
        rows,
    );
    lines.push(format!(
        "N = {n}: checking every row's mean codes ({nl} layers, one thread): a CRC-32 per layer {per_layer:.1} ms, one per row joined from the layers' {joined:.1} ms ({:.2}x)",
        per_layer / joined
    ));
}

fn p(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * q).round() as usize]
}

fn spec(layout: &str, families: usize) -> synth::CatalogueSpec {
    synth::CatalogueSpec {
        seed: 41,
        families,
        members: 10,
        layers: if layout == "resnet50" {
            synth::resnet50_layers()
        } else {
            synth::efficientnet_lite0_layers()
        },
        dist: DistKind::Histogram { bins: 100 },
        extractor: format!("bench-{layout}"),
        images: 16,
        positions: 49,
        spread: 1.0,
    }
}

/// DNAs stored so far: named `synth/family-F/member-M`, filled in order.
fn count(db: &Db) -> usize {
    db.catalogue().snapshot_records().unwrap().refs.len()
}

/// Fills the store up to `n` DNAs; returns DNAs/s into store + index (generation, done
/// on the other core meanwhile, not counted).
fn fill(db: &Db, s: &synth::CatalogueSpec, n: usize) -> Option<f64> {
    let have = count(db);
    if have >= n {
        return None;
    }
    let (tx, rx) = std::sync::mpsc::sync_channel(8);
    let gen = {
        let s = s.clone();
        std::thread::spawn(move || {
            for i in have..n {
                let (f, m) = (i / s.members, i % s.members);
                if tx.send((i, synth::member(&s, f, m))).is_err() {
                    return;
                }
            }
        })
    };
    let mut busy = 0.0;
    let t0 = Instant::now();
    for (i, dna) in rx {
        let t = Instant::now();
        let name = RefName::parse(&synth::member_name(i / s.members, i % s.members)).unwrap();
        let r = db.push(&dna, Some(&name), BTreeMap::new()).unwrap();
        vdna_db::query::index_pushed_dna(db, &r.digest, &dna).unwrap();
        busy += t.elapsed().as_secs_f64();
        if (i + 1) % 1000 == 0 {
            eprintln!(
                "filled {} of {n} ({:.0} s)",
                i + 1,
                t0.elapsed().as_secs_f64()
            );
        }
    }
    gen.join().unwrap();
    Some((n - have) as f64 / busy)
}

fn dir_bytes(p: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let m = e.metadata().unwrap();
            total += if m.is_dir() {
                dir_bytes(&e.path())
            } else {
                m.len()
            };
        }
    }
    total
}

/// Milliseconds of a plan spent outside bounds and distances: opening, reading the
/// catalogue, the eligible set, names (what must not grow with N).
fn fixed_ms(r: &QueryResult) -> f64 {
    let work: f64 = r
        .plan
        .stages
        .iter()
        .filter(|s| s.name != "open summary segment")
        .map(|s| s.ms)
        .sum();
    (r.plan.total_ms - work).max(0.0)
}

fn stage(r: &QueryResult, prefix: &str) -> f64 {
    r.plan
        .stages
        .iter()
        .filter(|s| s.name.starts_with(prefix))
        .map(|s| s.ms)
        .sum()
}

fn main() {
    let layout = env_or("VDNA_DB_BENCH_SCALE_LAYOUT", "efficientnet");
    let sizes: Vec<usize> = env_or("VDNA_DB_BENCH_SCALE_N", "1000,10000")
        .split(',')
        .map(|v| v.trim().parse().expect("VDNA_DB_BENCH_SCALE_N: sizes"))
        .collect();
    let graphs_min: usize = env_or("VDNA_DB_BENCH_GRAPHS_MIN", "1000").parse().unwrap();
    let faiss = std::env::var("VDNA_DB_BENCH_FAISS_PYTHON").ok();
    let max_n = *sizes.iter().max().unwrap();
    let s = spec(&layout, max_n.div_ceil(10));
    let tmp = tempfile::tempdir().unwrap();
    // One store per size (`<layout>-<N>`), kept under VDNA_DB_BENCH_SCALE_DIR when given.
    let base = std::env::var("VDNA_DB_BENCH_SCALE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| tmp.path().to_path_buf());
    let neurons: u32 = s.layers.iter().map(|l| l.neurons).sum();
    println!(
        "\n### Top-5 at scale: {} layers, {neurons} neurons x 100 bins, clustered (10 members per family)\n",
        s.layers.len()
    );
    // Probes: new members (not stored) of stored families, as a dataset of a known
    // domain is; families spread over the smallest size.
    let probes: Vec<(AnyDna, std::path::PathBuf)> = (0..10)
        .map(|i| {
            let dna = synth::member(
                &s,
                (i * 7919) % s.families.min(sizes[0] / 10).max(1),
                10 + i,
            );
            let path = tmp.path().join(format!("probe-{i}.vdna"));
            std::fs::write(&path, vdna_db::db::bundle_of(&dna, &BTreeMap::new(), 3)).unwrap();
            (AnyDna::Owned(dna), path)
        })
        .collect();
    // One whole layer: the 112 neurons of blocks_10, or resnet50's 512 of layer2_0.
    let layer = if layout == "resnet50" {
        "layer2_0"
    } else {
        "blocks_10"
    };
    let layer_label = format!("one layer ({layer})");
    let random100: String = {
        let mut rng = synth::Rng::new(5);
        let mut picks: Vec<u32> = (0..100).map(|_| rng.below(neurons as u64) as u32).collect();
        picks.sort();
        picks.dedup();
        let mut out = Vec::new();
        for p in picks {
            let mut base = 0;
            for l in &s.layers {
                if p < base + l.neurons {
                    out.push(format!("{}:{}", l.name, p - base));
                    break;
                }
                base += l.neurons;
            }
        }
        out.join(" ")
    };
    let masks = [
        ("all", "all".to_string()),
        (layer_label.as_str(), layer.to_string()),
        ("100 random neurons", random100),
    ];
    let mut rows = Vec::new();
    let mut sizes_line = Vec::new();
    for &n in &sizes {
        let home = base.join(format!("{layout}-{n}"));
        let home = home.as_path();
        let db = Db::open(home).unwrap();
        let rate = fill(&db, &s, n);
        if std::env::var("VDNA_DB_BENCH_SCALE_FILL_ONLY").is_ok() {
            println!("filled to {n}: {rate:?} DNAs/s");
            continue;
        }
        let graphs_t = Instant::now();
        if graphs_min > 0 && std::env::var("VDNA_DB_BENCH_SCALE_KEEP_INDEX").is_err() {
            vdna_db::query::reindex_with(&db, graphs_min).unwrap();
        }
        let reindex_s = graphs_t.elapsed().as_secs_f64();
        if std::env::var("VDNA_DB_BENCH_SCALE_KEEP_INDEX").is_ok() {
            // A store indexed before the column file of codes existed gets one.
            let t = Instant::now();
            if vdna_db::query::build_columns(&db).unwrap() > 0 {
                println!(
                    "N = {n}: column file of codes built in {:.1} s",
                    t.elapsed().as_secs_f64()
                );
            }
            // And wide graphs built before compact vectors existed get theirs.
            let t = Instant::now();
            let added = vdna_db::query::build_compact_vectors(&db).unwrap();
            if added > 0 {
                println!(
                    "N = {n}: compact vectors added to {added} graphs in {:.1} s",
                    t.elapsed().as_secs_f64()
                );
            }
        }
        vdna_db::query::forget_kept();
        let (rss0, _) = common::rss_mb();
        for (label, mask) in &masks {
            let req = QueryRequest {
                mask: mask.clone(),
                k: 5,
                mode: Mode::Exact,
                ..Default::default()
            };
            let approx = QueryRequest {
                mode: Mode::Approx,
                ..req.clone()
            };
            let estimate = QueryRequest {
                mode: Mode::Estimate,
                ..req.clone()
            };
            // The first query of a process opens and checks what later ones reuse.
            let t = Instant::now();
            let first = query(&db, &probes[0].0, &req).unwrap();
            let first_ms = t.elapsed().as_secs_f64() * 1e3;
            let (mut ex, mut fixed, mut mean, mut emd, mut dists) =
                (vec![], vec![], vec![], vec![], 0);
            let (mut ap, mut recall) = (vec![], 0.0);
            let (mut ex_again, mut ap_again) = (vec![], vec![]);
            // Estimates (no DNA decoded): time, recall against exact, and estimate / exact
            // distance over the answers both return.
            let (mut es, mut es_recall, mut es_ratio) = (vec![], 0.0, vec![]);
            let mut es_again = vec![];
            let mut plan = None;
            // Round 0: every query new to the process's decoded-layer cache (emptied before
            // each query, exact or approximate, so neither finds what the other decoded);
            // round 1: each query repeated, its layers still decoded. Pages stay warm in
            // both: the store is read in place from the OS's cache.
            let budget = db.objects().layer_cache_stats().budget;
            let fresh_cache = || {
                db.objects().set_layer_cache_budget(0);
                db.objects().set_layer_cache_budget(budget);
            };
            for round in 0..2 {
                for (q, _) in &probes {
                    // Plans printed from the first round: a new query's.
                    let show = round == 0 && plan.is_none();
                    if round == 0 {
                        fresh_cache();
                    }
                    let r = query(&db, q, &req).unwrap();
                    if round == 1 {
                        ex_again.push(r.plan.total_ms);
                    } else {
                        ex.push(r.plan.total_ms);
                        fixed.push(fixed_ms(&r));
                        mean.push(stage(&r, "code bound"));
                        emd.push(
                            stage(&r, "hnsw graph seeds")
                                + stage(&r, "exact")
                                + stage(&r, "sketch")
                                + stage(&r, "mean bound"),
                        );
                        dists += r.plan.exact_computed;
                    }
                    if graphs_min > 0 && graphs_min <= n && !label.starts_with("100") {
                        if round == 0 {
                            fresh_cache();
                        }
                        let a = query(&db, q, &approx).unwrap();
                        if round == 1 {
                            ap_again.push(a.plan.total_ms);
                        } else {
                            ap.push(a.plan.total_ms);
                            recall += overlap(&a, &r);
                        }
                        if show {
                            eprintln!("N = {n}, {label}, approx:\n{}", a.plan.explain());
                        }
                    }
                    if round == 1 && n > 200 {
                        es_again.push(query(&db, q, &estimate).unwrap().plan.total_ms);
                    }
                    if round == 0 && n > 200 {
                        let e = query(&db, q, &estimate).unwrap();
                        es.push(e.plan.total_ms);
                        es_recall += overlap(&e, &r);
                        for h in &e.results {
                            if let Some(t) = r.results.iter().find(|t| t.digest == h.digest) {
                                es_ratio.push(h.distance / t.distance);
                            }
                        }
                        if show {
                            eprintln!("N = {n}, {label}, estimate:\n{}", e.plan.explain());
                        }
                    }
                    if show {
                        eprintln!("N = {n}, {label}, exact:\n{}", r.plan.explain());
                        plan = Some(());
                    }
                }
            }
            // The naive exact scan (decode every candidate, full distance) at the smallest
            // size up to 10,000, on three probes; its answers must equal the engine's.
            let mut naive = Vec::new();
            if n == sizes[0] && n <= 10_000 {
                for (q, _) in probes.iter().take(3) {
                    let t = Instant::now();
                    let want = brute_force(&db, q, &req).unwrap();
                    naive.push(t.elapsed().as_secs_f64() * 1e3);
                    let got = query(&db, q, &req).unwrap();
                    let g: Vec<&str> = got.results.iter().map(|h| h.reference.as_str()).collect();
                    let w: Vec<&str> = want.iter().map(|h| h.1.as_str()).collect();
                    assert_eq!(g, w, "the engine's answer differs from brute force");
                }
            }
            let naive = if naive.is_empty() {
                String::new()
            } else {
                let m = p(&mut naive, 0.5);
                format!("{m:.0} ({:.0}x)", m / p(&mut ex.clone(), 0.5))
            };
            let runs = ex.len();
            let (ap50, ap_rep, rec) = if ap.is_empty() {
                (String::new(), String::new(), String::new())
            } else {
                let a = p(&mut ap, 0.5);
                let b = p(&mut ap_again, 0.5);
                (
                    format!("{a:.1} ({:.1}x)", p(&mut ex.clone(), 0.5) / a),
                    format!("{b:.1} ({:.1}x)", p(&mut ex_again.clone(), 0.5) / b),
                    format!("{:.3}", recall / ap.len() as f64),
                )
            };
            let (es50, es_rec) = if es.is_empty() {
                (String::new(), String::new())
            } else {
                let a = p(&mut es, 0.5);
                let b = p(&mut es_again, 0.5);
                let ratio = es_ratio.iter().sum::<f64>() / es_ratio.len().max(1) as f64;
                (
                    format!(
                        "{a:.2} ({:.1}x); repeated {b:.2} ({:.1}x)",
                        p(&mut ex.clone(), 0.5) / a,
                        p(&mut ex_again.clone(), 0.5) / b
                    ),
                    format!("{:.3} ({ratio:.2})", es_recall / es.len() as f64),
                )
            };
            rows.push(format!(
                "| {n} | {label} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {naive} | {ap50} | {:.1} | {ap_rep} | {rec} | {es50} | {es_rec} |",
                p(&mut ex, 0.5),
                p(&mut ex, 0.95),
                first_ms,
                p(&mut fixed, 0.5),
                p(&mut mean, 0.5),
                p(&mut emd, 0.5),
                dists as f64 / runs as f64,
                p(&mut ex_again, 0.5),
            ));
            let _ = first;
        }
        let (rss, peak) = common::rss_mb();
        // Summary bytes: the segment files of the space.
        let index = dir_bytes(&home.join("index"));
        let objects = dir_bytes(&home.join("objects"));
        drop(db);
        // A cold CLI process: opens the store, reads the catalogue, answers, exits.
        let mut cold = Vec::new();
        for (_, path) in probes.iter().take(5) {
            let t = Instant::now();
            let out = Command::new(env!("CARGO_BIN_EXE_vdna-db"))
                .arg("--home")
                .arg(home)
                .args(["--json", "query"])
                .arg(path)
                .args(["--top", "5", "--exact"])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            cold.push(t.elapsed().as_secs_f64() * 1e3);
        }
        sizes_line.push(format!(
            "N = {n}: push {} DNAs/s into store + index; reindex with graphs {reindex_s:.1} s; objects {:.2} GB, index (summaries + graphs) {:.2} GB ({:.0} KB per DNA); bench RSS {rss0:.0} MB before queries, {rss:.0} MB after (peak {peak:.0}); cold CLI exact top-5 (mask all) p50 {:.0} ms",
            rate.map_or("(reused store)".into(), |r| format!("{r:.1}")),
            objects as f64 / 1e9,
            index as f64 / 1e9,
            index as f64 / 1e3 / n as f64,
            p(&mut cold, 0.5),
        ));
        checks_row(home, &probes[0].0, n, &mut sizes_line);
        // FAISS first: the push below leaves rows of removed DNAs in the segment.
        if let Some(py) = &faiss {
            faiss_row(py, home, &s, n, &probes, &mut sizes_line);
        }
        if let Some(m) = std::env::var("VDNA_DB_BENCH_SCALE_PUSH")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
        {
            push_row(home, &s, n, m, &mut sizes_line);
        }
        if std::env::var("VDNA_DB_BENCH_SCALE_SERVE").is_ok() {
            serve_row(home, n, &probes, layer, &mut sizes_line);
        }
    }
    println!("| N | mask | exact p50 ms | p95 | first query of a process | fixed cost p50 | code bound p50 | graph seeds + mean + sketch + exact p50 | exact distances / query | naive scan p50 ms (exact speed-up) | approx p50 ms (speed-up) | repeated: exact p50 ms | repeated: approx p50 ms (speed-up) | approx recall@5 | estimate p50 ms (speed-up over exact; repeated against repeated exact) | estimate recall@5 (estimate / exact distance) |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
    println!();
    for l in sizes_line {
        println!("- {l}");
    }
}

/// FAISS over the per-neuron means of the N stored DNAs (the mean-bound vectors, read from
/// the summary segment), the same probes: IndexFlatL1 and IndexHNSWFlat, with recall
/// against the exact EMD top-5.
fn faiss_row(
    py: &str,
    home: &Path,
    s: &synth::CatalogueSpec,
    n: usize,
    probes: &[(AnyDna, std::path::PathBuf)],
    out: &mut Vec<String>,
) {
    let db = Db::open(home).unwrap();
    let space = s.space();
    let sd = space.digest();
    let neurons = space.total_neurons() as usize;
    let widths: Vec<u32> = space.layers.iter().map(|l| l.neurons).collect();
    let seg = vdna_db::query::segment::Segment::open(
        &home.join("index").join(sd.hex()),
        sd,
        vdna_db::query::segment::SegKind::Histogram {
            q: vdna_db::query::sketch::SKETCH_Q,
            bins: 100,
        },
        &widths,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut base = Vec::with_capacity(seg.rows().len() * neurons * 4);
    for r in 0..seg.rows().len() {
        for v in seg.means(r).unwrap() {
            base.extend_from_slice(&v.to_le_bytes());
        }
    }
    std::fs::write(dir.path().join("base.f32"), &base).unwrap();
    let mut qs = Vec::new();
    let mut truth = Vec::new();
    for (q, _) in probes {
        for v in vdna_db::query::mean_vector(q).unwrap() {
            qs.extend_from_slice(&v.to_le_bytes());
        }
        let r = query(
            &db,
            q,
            &QueryRequest {
                k: 5,
                mode: Mode::Exact,
                ..Default::default()
            },
        )
        .unwrap();
        truth.push(r.results.iter().map(|h| h.digest).collect::<Vec<_>>());
    }
    std::fs::write(dir.path().join("queries.f32"), &qs).unwrap();
    let tool = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/faiss_bench.py");
    let o = Command::new(py)
        .arg(&tool)
        .arg(dir.path())
        .arg(neurons.to_string())
        .arg("5")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = seg.rows();
    for index in ["flat_l1", "hnsw_flat"] {
        let r = &v[index];
        let mut hit = 0.0;
        for (qi, t) in truth.iter().enumerate() {
            let got: Vec<_> = r["ids"][qi]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|x| x.as_i64())
                .filter(|&x| x >= 0)
                .map(|x| rows[x as usize])
                .collect();
            hit += t.iter().filter(|d| got.contains(d)).count() as f64 / t.len() as f64;
        }
        out.push(format!(
            "N = {n}: FAISS {index} (per-neuron means, L1 for flat, L2 for HNSW) p50 {:.2} ms, build {:.1} s, recall@5 against exact EMD {:.3}",
            r["p50_ms"].as_f64().unwrap(),
            r["build_s"].as_f64().unwrap(),
            hit / truth.len() as f64,
        ));
    }
}

/// `vdna-db serve` on the store (a child process, ended by its handle): 4 clients post
/// the probes as bundles, exact and approximate, masks `all` and one layer, for three
/// rounds; the server's resident memory (now and peak) under that load, and the
/// latencies seen by the clients.
fn serve_row(
    home: &Path,
    n: usize,
    probes: &[(AnyDna, std::path::PathBuf)],
    layer: &str,
    out: &mut Vec<String>,
) {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_vdna-db"))
        .arg("--home")
        .arg(home)
        .args(["--json", "serve", "--addr", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).expect("the listening line");
    let url = v["listening"].as_str().unwrap().to_string();
    let bundles: Vec<Vec<u8>> = probes
        .iter()
        .map(|(_, p)| std::fs::read(p).unwrap())
        .collect();
    let status = |k: &str| -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", child.id()))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    let idle = status("VmRSS:");
    let mut lat: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let t0 = Instant::now();
    let (exact_layer, approx_layer) = (format!("exact {layer}"), format!("approx {layer}"));
    let (exact_q, approx_q) = (
        format!("k=5&mode=exact&mask={layer}"),
        format!("k=5&mode=approx&mask={layer}"),
    );
    let kinds = [
        ("exact all", "k=5&mode=exact&mask=all"),
        ("approx all", "k=5&mode=approx&mask=all"),
        (exact_layer.as_str(), exact_q.as_str()),
        (approx_layer.as_str(), approx_q.as_str()),
    ];
    let got = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|sc| {
        for c in 0..4 {
            let (url, bundles, got) = (&url, &bundles, &got);
            sc.spawn(move || {
                let cl = vdna_db::server::client::Client::new(url, None);
                for round in 0..3 {
                    for (i, b) in bundles.iter().enumerate() {
                        let (label, params) = kinds[(i + c + round) % kinds.len()];
                        let t = Instant::now();
                        cl.query_bundle(b, params).expect("query over HTTP");
                        got.lock()
                            .unwrap()
                            .push((label, t.elapsed().as_secs_f64() * 1e3));
                    }
                }
            });
        }
    });
    let wall = t0.elapsed().as_secs_f64();
    let (rss, peak) = (status("VmRSS:"), status("VmHWM:"));
    let _ = child.kill();
    let _ = child.wait();
    let all = got.into_inner().unwrap();
    for (label, ms) in &all {
        lat.entry(label).or_default().push(*ms);
    }
    let per: Vec<String> = lat
        .iter_mut()
        .map(|(k, v)| format!("{k} p50 {:.1} ms", p(v, 0.5)))
        .collect();
    out.push(format!(
        "N = {n}: `serve` under 4 clients ({} queries in {wall:.1} s, {:.1}/s; {}): RSS {idle:.0} MB idle, {rss:.0} MB after, peak {peak:.0} MB",
        all.len(),
        all.len() as f64 / wall,
        per.join(", ")
    ));
}

/// Push throughput at size `n`: `m` new DNAs (members of families beyond the store's)
/// into the store and its index, generated beforehand, then their names removed (their
/// summary rows stay until the next reindex, matched to no name).
fn push_row(home: &Path, s: &synth::CatalogueSpec, n: usize, m: usize, out: &mut Vec<String>) {
    let db = Db::open(home).unwrap();
    let first = s.families + 1000;
    let dnas: Vec<_> = (0..m)
        .map(|i| synth::member(s, first + i / s.members, i % s.members))
        .collect();
    let t = Instant::now();
    let mut names = Vec::new();
    for (i, dna) in dnas.iter().enumerate() {
        let name = format!("bench-extra/{i}");
        let r = db
            .push(dna, Some(&RefName::parse(&name).unwrap()), BTreeMap::new())
            .unwrap();
        vdna_db::query::index_pushed_dna(&db, &r.digest, dna).unwrap();
        names.push(name);
    }
    let secs = t.elapsed().as_secs_f64();
    for name in &names {
        db.remove(name).unwrap();
    }
    out.push(format!(
        "N = {n}: push of {m} more DNAs into store + index: {:.1} DNAs/s ({:.1} ms each)",
        m as f64 / secs,
        secs * 1e3 / m as f64
    ));
}
