//! The README's benchmark table: every claim measured beside its competitor in one run.
//!
//! `cargo bench --bench report` (a few minutes on 2 cores): distances and bytes at rest.
//! The query engine's tables come from `cargo bench --bench scale`.

#[path = "common.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use common::{counts, naive_emd};
use vdna_db::db::{compare_dnas, AnyDna};
use vdna_db::format::{decode_layer, decode_object, Codec, Digest};
use vdna_db::mask::Mask;
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

fn distance_section(bins: u32) {
    println!("\n### Pairwise EMD, all 15,104 neurons x {bins} bins\n");
    let mut s = resnet_spec(1);
    s.dist = vdna_db::format::DistKind::Histogram { bins };
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
    let bins = bins as usize;
    let naive = best_of(3, || {
        a.layers
            .iter()
            .zip(&b.layers)
            .map(|(x, y)| naive_emd(counts(x), counts(y), bins))
            .sum::<f64>()
    });
    // The same integer sums one bin at a time (the kernel before its AVX2 path), 1 thread.
    let per_bin = |x: &[u32], y: &[u32]| -> f64 {
        x.chunks_exact(bins)
            .zip(y.chunks_exact(bins))
            .map(|(p, q)| vdna_db::distance::emd_neuron_scalar(p, q))
            .sum()
    };
    let scalar = best_of(5, || {
        a.layers
            .iter()
            .zip(&b.layers)
            .map(|(x, y)| per_bin(std::hint::black_box(counts(x)), counts(y)))
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
        .map(|(x, y)| naive_emd(counts(x), counts(y), bins))
        .sum();
    let d_scalar: f64 = a
        .layers
        .iter()
        .zip(&b.layers)
        .map(|(x, y)| per_bin(counts(x), counts(y)))
        .sum();
    assert!(
        (d_ours - d_naive).abs() < 1e-9 * d_naive && (d_ours - d_scalar).abs() < 1e-9 * d_naive,
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
        "| integer sum one bin at a time (no AVX2 kernel), 1 thread | {scalar:.1} | {:.1}x faster | {:.2}x |",
        naive / scalar,
        scalar / scan
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
    // The unshuffle step alone on a 1000-bin layer's worth of counts (2,048 neurons,
    // 8 MB): by SSE2 unpacks and by the byte loop they replaced, best of 5 each.
    let planes: Vec<u8> = (0..2048 * 1000 * 4u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let gbs = |byte_loop: bool| {
        let t = best_of(5, || {
            std::hint::black_box(vdna_db::format::unshuffle32_for_bench(
                std::hint::black_box(&planes),
                byte_loop,
            ));
        });
        planes.len() as f64 / 1e9 / (t / 1e3)
    };
    let (fast, slow) = (gbs(false), gbs(true));
    println!(
        "\nunshuffle of 8 MB of counts (one thread): unpacks {fast:.2} GB/s, byte loop {slow:.2} GB/s ({:.1}x)",
        fast / slow
    );
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

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    println!(
        "## vdna-db benchmark report ({} threads)",
        rayon::current_num_threads()
    );
    // VDNA_DB_BENCH_ONLY=store (or distance) runs one section.
    let only = std::env::var("VDNA_DB_BENCH_ONLY").ok();
    let run = |s: &str| only.as_deref().is_none_or(|o| o == s);
    if run("distance") {
        distance_section(1000);
        distance_section(100);
    }
    if run("store") {
        store_section();
    }
    // The query engine's tables (top-k at 1,000 to 100,000 DNAs, approximate against exact,
    // FAISS beside them) come from `cargo bench --bench scale`.
}
