//! The server under load over loopback, beside the same queries made in-process.
//!
//! `cargo bench --bench server`: builds a catalogue of N rand_resnet50-size DNAs
//! (15,104 neurons x 100 bins; `VDNA_DB_BENCH_N`, default 200; the README's table used
//! 1,000) pushed over HTTP (push throughput), then runs top-5 queries with 1, 8 and 32
//! concurrent clients (`VDNA_DB_BENCH_QUERIES` per level, default 256) and reports
//! queries/s, p50/p99 latency and the process's resident memory; the in-process query
//! engine on the same catalogue is the baseline for the HTTP overhead.

#[path = "common.rs"]
mod common;

use std::sync::Arc;
use std::time::Instant;

use vdna_db::db::AnyDna;
use vdna_db::format::DistKind;
use vdna_db::query::{query, QueryRequest};
use vdna_db::refname::RefName;
use vdna_db::server::client::Client;
use vdna_db::server::{self, AppState, Limits};
use vdna_db::{synth, Db};

use common::{pct, rss_mb};

fn env(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn main() {
    let n = env("VDNA_DB_BENCH_N", 200);
    let per_level = env("VDNA_DB_BENCH_QUERIES", 256);
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Db::open(&dir.path().join("server")).expect("store");
    let (token, rec) = server::new_token("push", "bench").expect("token");
    db.put_token(&rec).expect("token");
    let state = Arc::new(AppState::new(db, false, Limits::default()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (tx, rx) = std::sync::mpsc::channel();
    let st = state.clone();
    rt.spawn(async move {
        let _ = server::serve(st, "127.0.0.1:0".parse().unwrap(), move |a| {
            let _ = tx.send(a);
        })
        .await;
    });
    let url = format!("http://{}", rx.recv().expect("bound address"));

    let mut spec = synth::resnet50_spec(11);
    spec.dist = DistKind::Histogram { bins: 100 };
    spec.families = n.div_ceil(10);
    spec.members = 10;
    let client = Client::new(&url, Some(token));
    let mut push_s = 0.0;
    let mut bytes = 0u64;
    for i in 0..n {
        let dna = synth::member(&spec, i / 10, i % 10);
        let enc = dna.encode(3);
        bytes += enc.objects.iter().map(|o| o.1.len() as u64).sum::<u64>();
        let name = RefName::parse(&synth::member_name(i / 10, i % 10)).expect("name");
        let t = Instant::now();
        client
            .push_objects(&enc.objects, &name, &Default::default())
            .expect("push");
        push_s += t.elapsed().as_secs_f64();
    }
    println!(
        "\n### Server over loopback, N = {n} DNAs of 15,104 neurons x 100 bins\n\npush over HTTP: {:.1} DNAs/s ({:.1} MB/s of encoded objects, each verified and committed by the server)\n",
        n as f64 / push_s,
        bytes as f64 / 1e6 / push_s
    );

    // In-process baseline.
    let probes: Vec<String> = (0..16)
        .map(|i| synth::member_name((i * 7) % spec.families, i % 10))
        .collect();
    let mut lat = Vec::new();
    for p in &probes {
        let (d, _) = state.engine.db().resolve(p).expect("probe");
        let q = AnyDna::Stored(state.engine.db().open_dna(&d).expect("open"));
        let t = Instant::now();
        query(state.engine.db(), &q, &QueryRequest::default()).expect("query");
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let base = pct(&mut lat, 0.5);
    println!("| clients | queries/s | p50 ms | p99 ms | errors | server RSS MB (peak) |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| in-process engine, 1 | {:.1} | {base:.1} | {:.1} | 0 | |",
        1e3 / base,
        pct(&mut lat, 0.99)
    );
    for clients in [1usize, 8, 32] {
        let errors = std::sync::atomic::AtomicUsize::new(0);
        let lats = std::sync::Mutex::new(Vec::new());
        let t0 = Instant::now();
        std::thread::scope(|s| {
            for c in 0..clients {
                let (url, probes, errors, lats) = (&url, &probes, &errors, &lats);
                s.spawn(move || {
                    let cl = Client::new(url, None);
                    let mut mine = Vec::new();
                    for j in 0..per_level / clients {
                        let p = &probes[(c + j) % probes.len()];
                        let t = Instant::now();
                        let r = cl.post_json("/v1/query", &serde_json::json!({"ref": p, "k": 5}));
                        mine.push(t.elapsed().as_secs_f64() * 1e3);
                        if r.map(|v| {
                            v["results"][0]["ref"] != serde_json::json!(format!("{p}:latest"))
                        })
                        .unwrap_or(true)
                        {
                            errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                    lats.lock().expect("lock").extend(mine);
                });
            }
        });
        let wall = t0.elapsed().as_secs_f64();
        let mut l = lats.into_inner().expect("lock");
        let (rss, peak) = rss_mb();
        println!(
            "| {clients} | {:.1} | {:.1} | {:.1} | {} | {rss:.0} ({peak:.0}) |",
            l.len() as f64 / wall,
            pct(&mut l, 0.5),
            pct(&mut l, 0.99),
            errors.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
    println!("\n(the in-process row is the query engine alone on the same catalogue: the difference is HTTP, JSON and scheduling)");
}
