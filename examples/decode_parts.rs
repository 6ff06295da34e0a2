use std::time::Instant;
fn main() {
    let stem = std::path::Path::new("fixtures/reference/checker-histogram-1000");
    let dna = vdna_db::reference::import_pair(stem).unwrap().dna;
    let enc = dna.encode(3);
    let layers: Vec<&Vec<u8>> = enc.objects.iter().skip(2).map(|o| &o.1).collect();
    for l in &layers {
        vdna_db::format::decode_object(l, "b").unwrap();
    }
    let t = Instant::now();
    let mut raws = vec![];
    for l in &layers {
        raws.push(vdna_db::format::decode_object(l, "b").unwrap());
    }
    let d = t.elapsed().as_secs_f64();
    let raw: usize = raws.iter().map(|r| r.len()).sum();
    println!("decode_object {:.2} GB/s", raw as f64 / 1e9 / d);
    let t = Instant::now();
    for r in &raws {
        std::hint::black_box(vdna_db::format::Digest::of(r));
    }
    println!(
        "sha256 {:.2} GB/s",
        raw as f64 / 1e9 / t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    for l in &layers {
        let mut d = zstd::bulk::Decompressor::new().unwrap();
        let v = d.decompress(&l[32..], 10_000_000).unwrap();
        std::hint::black_box(v);
    }
    let planes = vec![7u8; 8_000_000];
    let t = Instant::now();
    for _ in 0..10 {
        std::hint::black_box(vdna_db::format::bench_unshuffle4(&planes));
    }
    println!(
        "unshuffle {:.2} GB/s",
        80e6 / 1e9 / t.elapsed().as_secs_f64()
    );
    println!(
        "zstd only {:.2} GB/s",
        raw as f64 / 1e9 / t.elapsed().as_secs_f64()
    );
}
#[allow(dead_code)]
fn x() {}
