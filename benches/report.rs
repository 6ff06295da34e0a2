//! The README's benchmark table: every claim measured beside its competitor in one run.
//!
//! `cargo bench --bench report` (defaults take a few minutes on 2 cores);
//! `VDNA_DB_BENCH_N=10000` sets the query catalogue size (default 2,000),
//! `VDNA_DB_BENCH_BIG=1` adds the N = 1,000 rand_resnet50-size catalogue.

#[path = "common.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use common::{clustered_spec, counts, naive_emd, pct, rss_mb};
use vdna_db::db::{compare_dnas, AnyDna};
use vdna_db::format::{decode_layer, decode_object, Codec, Digest};
use vdna_db::mask::Mask;
use vdna_db::query::{brute_force, query, Mode, QueryRequest};
use vdna_db::refname::RefName;
use vdna_db::{synth, Db};

fn ms<T>(f: impl FnOnce() -> T) -> (f64, T) {
    let t = Instant::now();
    let r = std::hint::black_box(f());
    (t.elapsed().as_secs_f64() * 1e3, r)
}

fn best_of<T>(n: usize, mut f: impl FnMut() -> T) -> f64 {
    (0..n).map(|_| ms(&mut f).0).fold(f64::INFINITY, f64::min)
}

fn resnet_spec(seed: u64) -> synth::CatalogueSpec {
    synth::resnet50_spec(seed)
}

fn distance_section() {
    println!("\n### Pairwise EMD, all 15,104 neurons x 1,000 bins\n");
    let s = resnet_spec(1);
    let (a, b) = (synth::member(&s, 0, 0), synth::member(&s, 1, 0));
    let (qa, qb) = (AnyDna::Owned(a.clone()), AnyDna::Owned(b.clone()));
    let mask = Mask::all(&a.space);
    let ours = best_of(5, || {
        compare_dnas(std::hint::black_box(&qa), &qb, &mask, None, 0)
            .unwrap()
            .distance
    });
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let ours1 = best_of(5, || {
        one.install(|| compare_dnas(&qa, &qb, &mask, None, 0).unwrap().distance)
    });
    let naive = best_of(3, || {
        a.layers
            .iter()
            .zip(&b.layers)
            .map(|(x, y)| naive_emd(counts(x), counts(y), 1000))
            .sum::<f64>()
    });
    let scan = best_of(5, || {
        a.layers
            .iter()
            .zip(&b.layers)
            .map(|(x, y)| {
                let (x, y) = (
                    std::hint::black_box(counts(x)),
                    std::hint::black_box(counts(y)),
                );
                x.iter().map(|v| *v as u64).sum::<u64>() + y.iter().map(|v| *v as u64).sum::<u64>()
            })
            .sum::<u64>()
    });
    let d_ours = compare_dnas(&qa, &qb, &mask, None, 0).unwrap().distance * mask.neurons() as f64;
    let d_naive: f64 = a
        .layers
        .iter()
        .zip(&b.layers)
        .map(|(x, y)| naive_emd(counts(x), counts(y), 1000))
        .sum();
    assert!(
        (d_ours - d_naive).abs() < 1e-9 * d_naive,
        "implementations disagree"
    );
    println!("| implementation | ms | vs straightforward | vs read-only scan (1 thread) |");
    println!("|---|---|---|---|");
    println!(
        "| vdna-db, 2 threads | {ours:.1} | {:.1}x faster | {:.2}x |",
        naive / ours,
        ours / scan
    );
    println!(
        "| vdna-db, 1 thread | {ours1:.1} | {:.1}x faster | {:.2}x |",
        naive / ours1,
        ours1 / scan
    );
    println!(
        "| straightforward f64 (normalise, cumsum, abs-sum) | {naive:.1} | 1x | {:.2}x |",
        naive / scan
    );
    println!("| read both DNAs only (sum of counts) | {scan:.1} | | 1x |");
}

fn store_section() {
    println!("\n### Bytes at rest against the reference's npz (real reference DNAs)\n");
    println!("| DNA | npz | shuffle + zstd 3 (`--codec fast`, default) | zstd 19 | hist-rans (`--codec compact`, bundles) | decode GB/s: zstd 3 / hist | with sha256 re-hash | encode ms: zstd 3 / hist | push ms: fast / compact |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/reference");
    for name in [
        "gradients-histogram-1000",
        "checker-histogram-1000",
        "gradients-histogram-100",
        "checker-gaussian",
    ] {
        let stem = root.join(name);
        let npz = std::fs::metadata(stem.with_extension("npz"))
            .map(|m| m.len())
            .unwrap_or(0);
        let dna = vdna_db::reference::import_pair(&stem).unwrap().dna;
        let enc_z3 = best_of(3, || dna.encode_with(3, Codec::Shuffle32));
        let enc_h = best_of(3, || dna.encode_with(3, Codec::Hist));
        // A whole push (encode, durable writes, catalogue commit, index row) into an empty
        // store of each codec, the codecs taking turns; best of 5 each.
        let (mut push_fast, mut push_compact) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..5 {
            for (codec, best) in [
                (Codec::Shuffle32, &mut push_fast),
                (Codec::Hist, &mut push_compact),
            ] {
                let dir = tempfile::tempdir().unwrap();
                let opts = vdna_db::db::OpenOptions {
                    histogram_codec: codec,
                    ..Default::default()
                };
                let e = vdna_db::engine::Engine::open_with(dir.path(), &opts).unwrap();
                let (t, _) = ms(|| e.push(&dna, None, BTreeMap::new()).unwrap());
                *best = best.min(t);
            }
        }
        let z3 = dna.encode_with(3, Codec::Shuffle32);
        let z19 = dna.encode_with(19, Codec::Shuffle32);
        let h = dna.encode_with(3, Codec::Hist);
        let raw: u64 = z3.raw_bytes;
        let decode = |e: &vdna_db::dna::EncodedDna, hash: bool| {
            let layers: Vec<&Vec<u8>> = e.objects.iter().skip(2).map(|o| &o.1).collect();
            let t = best_of(3, || {
                for l in &layers {
                    let r = decode_object(l, "b").unwrap();
                    if hash {
                        let _ = Digest::of(&r);
                    }
                    decode_layer(r).unwrap();
                }
            });
            raw as f64 / 1e9 / (t / 1e3)
        };
        let ratio = |e: &vdna_db::dna::EncodedDna| {
            format!(
                "{:.2} MB, {:.3}x",
                e.stored_bytes() as f64 / 1e6,
                e.stored_bytes() as f64 / npz as f64
            )
        };
        println!(
            "| {name} | {:.2} MB | {} | {} | {} | {:.2} / {:.2} | {:.2} / {:.2} | {enc_z3:.0} / {enc_h:.0} | {push_fast:.0} / {push_compact:.0} ({:.2}x) |",
            npz as f64 / 1e6,
            ratio(&z3),
            ratio(&z19),
            ratio(&h),
            decode(&z3, false),
            decode(&h, false),
            decode(&z3, true),
            decode(&h, true),
            push_compact / push_fast,
        );
    }
    println!("\n(decode: the query path, one thread: header check, zstd with its content checksum + unshuffle, or the rANS lanes + CRC-32, then rkyv validation; `verify`, imports and transfers also re-hash with sha256. Encode: the whole DNA on every core. Push: encode, durable writes, catalogue commit and index row, into an empty store. Gaussian layers are shuffle + zstd in every column but zstd 19.)");

    println!("\n### Open a stored DNA, first distance under a one-layer mask\n");
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    let s = resnet_spec(2);
    let mut total = 0;
    for m in 0..2 {
        let r = db
            .push(
                &synth::member(&s, m, 0),
                Some(&RefName::parse(&format!("d{m}")).unwrap()),
                BTreeMap::new(),
            )
            .unwrap();
        total = r.stored_bytes;
    }
    println!("| mask | ms (open both + distance) | bytes read | DNA at rest |");
    println!("|---|---|---|---|");
    for mask in ["layer1_0", "layer4_2", "all"] {
        let before = db.objects().bytes_read();
        let (t, _) = ms(|| {
            let qa = AnyDna::Stored(db.open_dna(&db.resolve("d0").unwrap().0).unwrap());
            let qb = AnyDna::Stored(db.open_dna(&db.resolve("d1").unwrap().0).unwrap());
            let m = db.mask(mask, qa.space()).unwrap();
            compare_dnas(&qa, &qb, &m, None, 0).unwrap().distance
        });
        let read = db.objects().bytes_read() - before;
        println!(
            "| {mask} | {t:.1} | {:.2} MB (both DNAs) | {:.2} MB each |",
            read as f64 / 1e6,
            total as f64 / 1e6
        );
    }
}

struct Catalogue {
    _dir: tempfile::TempDir,
    db: Db,
    spec: synth::CatalogueSpec,
}

fn build(spec: synth::CatalogueSpec) -> (Catalogue, f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    let n = spec.families * spec.members;
    let mut gen_ms = 0.0;
    let (push_ms, _) = ms(|| {
        for f in 0..spec.families {
            for m in 0..spec.members {
                let (g, dna) = ms(|| synth::member(&spec, f, m));
                gen_ms += g;
                let name = RefName::parse(&synth::member_name(f, m)).unwrap();
                let r = db.push(&dna, Some(&name), BTreeMap::new()).unwrap();
                vdna_db::query::index_pushed_dna(&db, &r.digest, &dna).unwrap();
            }
        }
    });
    let push_rate = n as f64 / ((push_ms - gen_ms) / 1e3);
    let (reindex_ms, _) = ms(|| vdna_db::query::reindex_with(&db, 1000).unwrap());
    (
        Catalogue {
            _dir: dir,
            db,
            spec,
        },
        push_rate,
        reindex_ms,
    )
}

fn query_section(label: &str, spec: synth::CatalogueSpec, naive_queries: usize) {
    let n = spec.families * spec.members;
    println!("\n### Top-5 queries, N = {n} DNAs, {label}\n");
    let (cat, push_rate, reindex_ms) = build(spec);
    let db = &cat.db;
    let layer = cat.spec.layers[cat.spec.layers.len() / 2].name.clone();
    let mut rng = synth::Rng::new(5);
    let total: u32 = cat.spec.layers.iter().map(|l| l.neurons).sum();
    let random100: Vec<String> = {
        let mut picks: Vec<u32> = (0..100).map(|_| rng.below(total as u64) as u32).collect();
        picks.sort();
        picks.dedup();
        let mut out = Vec::new();
        for p in picks {
            let mut base = 0;
            for l in &cat.spec.layers {
                if p < base + l.neurons {
                    out.push(format!("{}:{}", l.name, p - base));
                    break;
                }
                base += l.neurons;
            }
        }
        out
    };
    let masks = [
        ("all neurons".to_string(), "all".to_string()),
        (format!("one layer ({layer})"), layer.clone()),
        ("100 random neurons".to_string(), random100.join(" ")),
    ];
    let probes: Vec<AnyDna> = (0..12)
        .map(|i| {
            AnyDna::Owned(synth::member(
                &synth::CatalogueSpec {
                    seed: cat.spec.seed + 1000 + i as u64,
                    ..cat.spec.clone()
                },
                i % cat.spec.families,
                0,
            ))
        })
        .collect();
    println!("| mask | exact p50 ms | exact p95 ms | naive scan p50 ms | speed-up | exact distances / query | approx p50 ms | approx recall@5 |");
    println!("|---|---|---|---|---|---|---|---|");
    for (label, mask) in &masks {
        let req = QueryRequest {
            mask: mask.clone(),
            k: 5,
            ..Default::default()
        };
        let approx = QueryRequest {
            mode: Mode::Approx,
            ..req.clone()
        };
        let (mut ex, mut ap, mut exact_n, mut recall) = (Vec::new(), Vec::new(), 0usize, 0.0);
        for q in &probes {
            let (t, r) = ms(|| query(db, q, &req).unwrap());
            ex.push(t);
            exact_n += r.plan.exact_computed;
            let (ta, ra) = ms(|| query(db, q, &approx).unwrap());
            ap.push(ta);
            let truth: Vec<&str> = r.results.iter().map(|h| h.reference.as_str()).collect();
            recall += ra
                .results
                .iter()
                .filter(|h| truth.contains(&h.reference.as_str()))
                .count() as f64
                / truth.len() as f64;
        }
        if let Some(q) = probes.first() {
            eprintln!(
                "{label} exact:\n{}",
                query(db, q, &req).unwrap().plan.explain()
            );
            eprintln!(
                "{label} approx:\n{}",
                query(db, q, &approx).unwrap().plan.explain()
            );
        }
        let mut naive: Vec<f64> = probes
            .iter()
            .take(naive_queries)
            .map(|q| ms(|| brute_force(db, q, &req).unwrap()).0)
            .collect();
        let (p50, p95, nv) = (
            pct(&mut ex.clone(), 0.5),
            pct(&mut ex, 0.95),
            pct(&mut naive, 0.5),
        );
        println!(
            "| {label} | {p50:.1} | {p95:.1} | {nv:.0} | {:.0}x | {:.1} | {:.1} | {:.3} |",
            nv / p50,
            exact_n as f64 / probes.len() as f64,
            pct(&mut ap, 0.5),
            recall / probes.len() as f64
        );
    }
    let (rss, hwm) = rss_mb();
    println!("\npush: {push_rate:.1} DNAs/s into store + index; reindex (summaries + HNSW graphs when N >= 1,000): {:.2} s; resident set {rss:.0} MB (peak {hwm:.0} MB, includes the generator)", reindex_ms / 1e3);
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    println!(
        "## vdna-db benchmark report ({} threads)",
        rayon::current_num_threads()
    );
    // VDNA_DB_BENCH_ONLY=store (or distance, query) runs one section.
    let only = std::env::var("VDNA_DB_BENCH_ONLY").ok();
    let run = |s: &str| only.as_deref().is_none_or(|o| o == s);
    if run("distance") {
        distance_section();
    }
    if run("store") {
        store_section();
    }
    if !run("query") {
        return;
    }
    let n: usize = std::env::var("VDNA_DB_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    query_section(
        "2,048 neurons x 256 bins (8 layers), clustered: 10 members per family",
        clustered_spec(9, n / 10),
        3,
    );
    if std::env::var("VDNA_DB_BENCH_BIG").is_ok() {
        query_section(
            "rand_resnet50 size (15,104 neurons x 1,000 bins), stored compressed",
            synth::CatalogueSpec {
                families: 100,
                members: 10,
                ..resnet_spec(21)
            },
            2,
        );
    }
}
