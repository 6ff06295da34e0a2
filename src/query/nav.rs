//! Compact vectors for wide histogram graphs: each row's mean codes projected onto an
//! orthonormal basis of their top principal subspace and quantised to one signed byte a
//! dimension, 32 bytes a row instead of one byte a neuron (3,088 in the default layout).
//!
//! They find a wide graph's candidates by a scan instead of a walk. A walk of the `all`
//! graph at N = 100,000 meets 1,000-2,300 nodes and reads each one's 3 KB code row from
//! a random place: about 0.8 ms, bound by memory bandwidth (docs/QUERY.md). A scan of the
//! compact vectors reads 3.2 MB in order and keeps the [`SCAN_KEEP`] nearest; those are
//! re-ranked by the graph's own distance (L1 between the full code rows), so what is
//! handed on is ordered as a walk's candidates are. A scan costs O(N) where a walk costs
//! about O(log N), so graphs whose compact vectors pass [`SCAN_MAX_BYTES`] are walked.
//!
//! Walking the graph by these vectors instead was tried and dropped: on the scale bench's
//! catalogue recall@5 fell to 0 (0.6-0.7 with ef 150-400). Far from the query the
//! projection's error swamps the small differences that lead a greedy walk to the right
//! family, though near the query it ranks as the full codes do (a scan finds the true
//! top-5 among its 32 nearest for 499 of 500 queries at N = 100,000).
//!
//! Why a principal subspace: the distance between two rows' projections onto an
//! orthonormal basis is at most their L2 distance, and all of it when their difference
//! lies in the basis's span; where rows vary most is where they are told apart. On a
//! catalogue whose variance is spread evenly (as the synthetic ones are) the top
//! subspace is as good as any, and random projections did as well there.
//!
//! The basis comes from subspace iteration over a fixed-seed sample of rows, so a build
//! is a pure function of the rows, as graph builds are.
//!
//! ## The file (`graphs/<mask>/nav.bin`)
//! Little-endian: a 64-byte header (`b"VDNANAV\0"`, then u32 version, dims, k, rows, the
//! f32 scale, and zeros); the basis (`k` rows of `dims` f32, orthonormal); `k` f32
//! offsets (each basis row's product with the sample's mean codes); then each row's
//! projection less the offsets, `k` i8 in units of the scale (one scale for every
//! dimension, so that squared distances add up in integers). Its CRC-32 is recorded in
//! the graph's `meta.json` with the graph file's.

use memmap2::Mmap;

/// The compact-vector file of a graph directory.
pub const FILE: &str = "nav.bin";
const MAGIC: &[u8; 8] = b"VDNANAV\0";
const VERSION: u32 = 1;
const HEADER: usize = 64;

/// Graphs over at least this many neurons get compact vectors: narrower ones read at
/// most a few cache lines a node already.
pub const MIN_DIMS: usize = 512;

/// Dimensions of a compact vector (`VDNA_DB_NAV_DIMS` overrides).
pub fn dims_for(neurons: usize) -> usize {
    super::hnsw::knob("VDNA_DB_NAV_DIMS", 32, 1).min(neurons)
}

/// Scans keep this many rows for the re-rank by full codes (`VDNA_DB_NAV_KEEP`
/// overrides): 128 code rows cost about 50 us to read.
pub fn scan_keep() -> usize {
    super::hnsw::knob("VDNA_DB_NAV_KEEP", SCAN_KEEP, 1)
}
pub const SCAN_KEEP: usize = 128;

/// Graphs whose compact vectors take more bytes than this are walked, not scanned
/// (`VDNA_DB_NAV_SCAN_MAX` overrides): 8 MB is 250,000 rows of 32 bytes.
pub fn scan_max_bytes() -> usize {
    super::hnsw::knob("VDNA_DB_NAV_SCAN_MAX", SCAN_MAX_BYTES, 0)
}
pub const SCAN_MAX_BYTES: usize = 8 << 20;

/// Rows the basis is fitted on (all of them below this), and the rounds of subspace
/// iteration: each round costs 2 x SAMPLE x neurons x k multiply-adds.
const SAMPLE: usize = 2048;
const ROUNDS: usize = 5;

/// `sum_i a_i b_i` with eight independent accumulators, so that it vectorises.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for j in 0..8 {
            acc[j] += x[j] * y[j];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// Makes the `k` rows of `w` (each `dims` long) orthonormal, in order (modified
/// Gram-Schmidt); a row that is (numerically) in the span of those before it is replaced
/// by a unit vector along the first axis not yet covered, so the basis keeps `k` rows.
fn orthonormalise(w: &mut [f32], dims: usize) {
    let k = w.len() / dims;
    for j in 0..k {
        for attempt in 0..=dims {
            for i in 0..j {
                let (done, rest) = w.split_at_mut(j * dims);
                let (wi, wj) = (&done[i * dims..(i + 1) * dims], &mut rest[..dims]);
                let p = dot(wi, wj);
                wj.iter_mut().zip(wi).for_each(|(x, y)| *x -= p * y);
            }
            let row = &mut w[j * dims..(j + 1) * dims];
            let norm = dot(row, row).sqrt();
            if norm > 1e-3 || attempt == dims {
                let s = if norm > 0.0 { 1.0 / norm } else { 0.0 };
                row.iter_mut().for_each(|x| *x *= s);
                break;
            }
            row.fill(0.0);
            row[attempt] = 1.0;
        }
    }
}

/// A fitted projection: `k` orthonormal rows of `dims` f32, and each row's product with
/// the sample's mean codes (subtracted from projections, so that they centre on 0).
pub struct Basis {
    pub rows: Vec<f32>,
    pub offsets: Vec<f32>,
}

/// An orthonormal basis (`k` rows of `dims`) of the top principal subspace of `rows`
/// (mean codes, each `dims` long): centred on a sample's mean, `ROUNDS` rounds of
/// subspace iteration from a fixed-seed start. Deterministic: every sum runs in one
/// order whatever the threads.
pub fn fit(rows: &[&[u8]], dims: usize, k: usize) -> Basis {
    use rayon::prelude::*;
    let n = rows.len();
    let k = k.min(dims);
    // A fixed-seed sample without repeats (a partial Fisher-Yates shuffle).
    let mut rng = crate::rng::Rng::new(0x6e61_7631);
    let mut pick: Vec<usize> = (0..n).collect();
    let s = n.min(SAMPLE);
    for i in 0..s {
        let j = i + rng.below((n - i) as u64) as usize;
        pick.swap(i, j);
    }
    let sample = &pick[..s];
    let mut mean = vec![0f64; dims];
    for &r in sample {
        mean.iter_mut()
            .zip(rows[r])
            .for_each(|(m, &c)| *m += c as f64);
    }
    let mean: Vec<f32> = mean.iter().map(|m| (m / s.max(1) as f64) as f32).collect();
    let x: Vec<f32> = sample
        .par_iter()
        .flat_map_iter(|&r| rows[r].iter().zip(&mean).map(|(&c, m)| c as f32 - m))
        .collect();
    let mut w: Vec<f32> = (0..k * dims).map(|_| rng.normal() as f32).collect();
    orthonormalise(&mut w, dims);
    let mut y = vec![0f32; s * k];
    for _ in 0..ROUNDS {
        // Y = X W^T (s x k), then W = Y^T X (k x dims): one step of the power method on
        // the sample's covariance, for k directions at once.
        y.par_chunks_mut(k.max(1)).enumerate().for_each(|(i, yi)| {
            let xi = &x[i * dims..(i + 1) * dims];
            for (j, v) in yi.iter_mut().enumerate() {
                *v = dot(xi, &w[j * dims..(j + 1) * dims]);
            }
        });
        w.par_chunks_mut(dims.max(1))
            .enumerate()
            .for_each(|(j, wj)| {
                wj.fill(0.0);
                for i in 0..s {
                    let c = y[i * k + j];
                    wj.iter_mut()
                        .zip(&x[i * dims..(i + 1) * dims])
                        .for_each(|(a, b)| *a += c * b);
                }
            });
        orthonormalise(&mut w, dims);
    }
    let offsets = w.chunks_exact(dims.max(1)).map(|b| dot(b, &mean)).collect();
    Basis { rows: w, offsets }
}

/// The centred projection of one row of mean codes onto `basis` (rows of `codes.len()`,
/// with `offsets`), into `out`. Rows and queries are projected by this same code.
pub fn project(basis: &[f32], offsets: &[f32], codes: &[u8], out: &mut [f32]) {
    let dims = codes.len();
    let v: Vec<f32> = codes.iter().map(|&c| c as f32).collect();
    for ((o, b), off) in out
        .iter_mut()
        .zip(basis.chunks_exact(dims.max(1)))
        .zip(offsets)
    {
        *o = dot(&v, b) - off;
    }
}

/// The bytes of a compact-vector file: the basis, and every row's projection quantised
/// with one scale (the largest magnitude over the rows and dimensions maps to 127).
pub fn file_bytes(basis: &Basis, dims: usize, rows: &[&[u8]]) -> Vec<u8> {
    use rayon::prelude::*;
    let k = basis.offsets.len();
    let mut header = [0u32; HEADER / 4];
    header[0] = u32::from_le_bytes(MAGIC[..4].try_into().unwrap());
    header[1] = u32::from_le_bytes(MAGIC[4..].try_into().unwrap());
    header[2] = VERSION;
    header[3] = dims as u32;
    header[4] = k as u32;
    header[5] = rows.len() as u32;
    let mut projected = vec![0f32; rows.len() * k];
    projected
        .par_chunks_mut(k.max(1))
        .zip(rows.par_iter())
        .for_each(|(out, r)| project(&basis.rows, &basis.offsets, r, out));
    let top = projected.iter().fold(0f32, |m, v| m.max(v.abs()));
    // Rows with no spread at all get scale 1 (their values are all 0).
    let scale = if top > 0.0 { top / 127.0 } else { 1.0 };
    header[6] = scale.to_bits();
    let mut bytes = Vec::with_capacity(HEADER + 4 * (basis.rows.len() + k) + rows.len() * k);
    bytes.extend(header.iter().flat_map(|w| w.to_le_bytes()));
    for f in [&basis.rows, &basis.offsets] {
        bytes.extend(f.iter().flat_map(|x| x.to_le_bytes()));
    }
    bytes.extend(
        projected
            .iter()
            .map(|v| (v / scale).round().clamp(-127.0, 127.0) as i8 as u8),
    );
    bytes
}

/// A compact-vector file, mapped and checked for its shape.
pub struct Nav {
    pub(super) map: Mmap,
    dims: usize,
    k: usize,
    rows: usize,
    scale: f32,
}

impl Nav {
    /// Checks a mapped compact-vector file's header and size against the graph it serves
    /// (`rows` nodes over `dims` neurons).
    pub fn parse(map: Mmap, dims: usize, rows: usize) -> Result<Nav, String> {
        let bad = |what: &str| Err(format!("{FILE}: {what}"));
        if map.len() < HEADER {
            return bad("truncated");
        }
        let word = |i: usize| u32::from_le_bytes(map[4 * i..4 * i + 4].try_into().unwrap());
        if map[..8] != MAGIC[..] || word(2) != VERSION {
            return bad("not a version-1 compact-vector file");
        }
        let (d, k, r) = (word(3) as usize, word(4) as usize, word(5) as usize);
        if d != dims || r != rows || k == 0 || k > d {
            return bad(&format!(
                "made for {r} rows of {d} neurons ({k} dimensions), the graph has {rows} of {dims}"
            ));
        }
        let scale = f32::from_bits(word(6));
        if !(scale.is_finite() && scale > 0.0) {
            return bad("bad scale");
        }
        if map.len() != HEADER + 4 * k * (d + 1) + r * k {
            return bad("wrong size");
        }
        Ok(Nav {
            map,
            dims: d,
            k,
            rows: r,
            scale,
        })
    }

    fn floats(&self) -> &[f32] {
        let end = HEADER + 4 * self.k * (self.dims + 1);
        // SAFETY: a mapping is page-aligned and HEADER is a multiple of 4; every bit
        // pattern is a valid f32; the file is little-endian, as every target this crate
        // builds for is (see format::layer).
        let (head, f, _) = unsafe { self.map[HEADER..end].align_to::<f32>() };
        assert!(head.is_empty(), "mappings are page-aligned");
        f
    }

    /// The basis, `k` rows of `dims`, and its offsets.
    fn parts(&self) -> (&[f32], &[f32]) {
        self.floats().split_at(self.k * self.dims)
    }

    /// The rows' quantised projections, `k` bytes each.
    fn vectors(&self) -> &[i8] {
        let at = HEADER + 4 * self.k * (self.dims + 1);
        let v = &self.map[at..at + self.rows * self.k];
        // SAFETY: i8 and u8 have the same size and alignment, and every bit pattern.
        unsafe { std::slice::from_raw_parts(v.as_ptr() as *const i8, v.len()) }
    }

    /// Bytes a scan reads.
    pub fn scan_bytes(&self) -> usize {
        self.rows * self.k
    }

    /// The query's projection in the rows' units, rounded (a query farther out than
    /// any row is clamped at twice their range: it is far from every row either way).
    pub fn query(&self, codes: &[u8]) -> Vec<i16> {
        let (b, o) = self.parts();
        let mut q = vec![0f32; self.k];
        project(b, o, codes, &mut q);
        q.iter()
            .map(|v| (v / self.scale).round().clamp(-254.0, 254.0) as i16)
            .collect()
    }

    /// The `keep` rows nearest to a query (from [`Nav::query`]) by the squared distance
    /// between projections, nearest first (ties by row). Large files are scanned in
    /// parallel blocks, each keeping its own nearest, merged in one order.
    pub fn nearest(&self, q: &[i16], keep: usize) -> Vec<u32> {
        use rayon::prelude::*;
        const BLOCK: usize = 32768;
        let k = self.k;
        let v = self.vectors();
        let block = |b: usize| -> Vec<(u32, u32)> {
            let rows = b * BLOCK..((b + 1) * BLOCK).min(self.rows);
            let first = rows.start as u32;
            scan_block(q, &v[rows.start * k..rows.end * k], first, keep)
        };
        let blocks = self.rows.div_ceil(BLOCK);
        let mut all: Vec<(u32, u32)> = if blocks > 1 {
            (0..blocks).into_par_iter().flat_map_iter(block).collect()
        } else {
            (0..blocks).flat_map(block).collect()
        };
        all.sort_unstable();
        all.truncate(keep);
        all.into_iter().map(|(_, r)| r).collect()
    }
}

/// The `keep` nearest of a block of rows (`k = q.len()` bytes each, the first numbered
/// `first`), unordered; compiled for AVX2 where the CPU has it (the default target's SSE2
/// has no sign extension of bytes, and this loop ran 3x slower without it).
fn scan_block(q: &[i16], v: &[i8], first: u32, keep: usize) -> Vec<(u32, u32)> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { scan_block_avx2(q, v, first, keep) };
        }
    }
    scan_block_body(q, v, first, keep)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn scan_block_avx2(q: &[i16], v: &[i8], first: u32, keep: usize) -> Vec<(u32, u32)> {
    use std::arch::x86_64::*;
    if q.len() != 32 {
        return scan_block_body(q, v, first, keep);
    }
    // The default 32 dimensions: a row is one 32-byte load, widened to i16 in two halves;
    // vpmaddwd squares and pairs the differences into i32 lanes.
    // SAFETY: `q` holds 32 i16 (64 bytes); unaligned loads.
    let (q0, q1) = unsafe {
        (
            _mm256_loadu_si256(q.as_ptr() as *const __m256i),
            _mm256_loadu_si256(q.as_ptr().add(16) as *const __m256i),
        )
    };
    let mut best = Nearest::new(keep);
    for (i, row) in v.chunks_exact(32).enumerate() {
        // SAFETY: `row` is 32 bytes; unaligned loads.
        let d = unsafe {
            let r = _mm256_loadu_si256(row.as_ptr() as *const __m256i);
            let lo = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(r));
            let hi = _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(r));
            let (d0, d1) = (_mm256_sub_epi16(q0, lo), _mm256_sub_epi16(q1, hi));
            let s = _mm256_add_epi32(_mm256_madd_epi16(d0, d0), _mm256_madd_epi16(d1, d1));
            let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
            _mm_cvtsi128_si32(s) as u32
        };
        best.offer(d, first + i as u32);
    }
    best.into_vec()
}

/// The `keep` smallest (distance, row) pairs offered so far, largest on top; a pair
/// above the current largest is dropped with one comparison once `keep` are held.
struct Nearest {
    heap: std::collections::BinaryHeap<(u32, u32)>,
    keep: usize,
    worst: u32,
}

impl Nearest {
    fn new(keep: usize) -> Nearest {
        Nearest {
            heap: std::collections::BinaryHeap::with_capacity(keep + 1),
            keep,
            worst: u32::MAX,
        }
    }

    #[inline(always)]
    fn offer(&mut self, d: u32, row: u32) {
        if d <= self.worst {
            self.heap.push((d, row));
            if self.heap.len() > self.keep {
                self.heap.pop();
            }
            if self.heap.len() == self.keep {
                self.worst = self.heap.peek().map_or(u32::MAX, |t| t.0);
            }
        }
    }

    fn into_vec(self) -> Vec<(u32, u32)> {
        self.heap.into_vec()
    }
}

#[inline(always)]
fn scan_block_body(q: &[i16], v: &[i8], first: u32, keep: usize) -> Vec<(u32, u32)> {
    let k = q.len().max(1);
    let mut best = Nearest::new(keep);
    for (i, row) in v.chunks_exact(k).enumerate() {
        let d = l2sq_steps(q, row);
        best.offer(d, first + i as u32);
    }
    best.into_vec()
}

/// `sum_j (q_j - v_j)^2` in integers: exact, and below 2^31 for up to 8,000 dimensions
/// (each term at most (254 + 127)^2).
#[inline(always)]
fn l2sq_steps(q: &[i16], v: &[i8]) -> u32 {
    let n = q.len().min(v.len());
    let (q, v) = (&q[..n], &v[..n]);
    let mut acc = [0i32; 16];
    let (cq, cv) = (q.chunks_exact(16), v.chunks_exact(16));
    let (rq, rv) = (cq.remainder(), cv.remainder());
    for (a, b) in cq.zip(cv) {
        for j in 0..16 {
            let d = a[j] as i32 - b[j] as i32;
            acc[j] += d * d;
        }
    }
    let tail: i32 = rq
        .iter()
        .zip(rv)
        .map(|(a, b)| (*a as i32 - *b as i32).pow(2))
        .sum();
    (acc.iter().sum::<i32>() + tail) as u32
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn the_basis_is_orthonormal_and_finds_the_directions_rows_vary_in() {
        // Rows that vary along 3 hidden orthogonal directions (strongly) and a little in
        // every neuron: the fitted 3-dimensional basis must span the hidden directions.
        let dims = 600;
        let mut rng = Rng::new(9);
        let hidden: Vec<Vec<f64>> = (0..3)
            .map(|h| {
                (0..dims)
                    .map(|i| if i % 3 == h { 1.0 } else { 0.0 })
                    .collect()
            })
            .collect();
        let rows: Vec<Vec<u8>> = (0..900)
            .map(|_| {
                let a: Vec<f64> = (0..3).map(|_| rng.f64() * 2.0 - 1.0).collect();
                (0..dims)
                    .map(|i| {
                        let v = 128.0
                            + (0..3).map(|h| 80.0 * a[h] * hidden[h][i]).sum::<f64>()
                            + rng.f64() * 6.0
                            - 3.0;
                        v.round().clamp(0.0, 255.0) as u8
                    })
                    .collect()
            })
            .collect();
        let refs: Vec<&[u8]> = rows.iter().map(|r| r.as_slice()).collect();
        let w = fit(&refs, dims, 3).rows;
        for i in 0..3 {
            for j in 0..3 {
                let p: f64 = (0..dims)
                    .map(|t| w[i * dims + t] as f64 * w[j * dims + t] as f64)
                    .sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((p - want).abs() < 1e-4, "<w{i}, w{j}> = {p}");
            }
        }
        // Each hidden direction (normalised) lies in the basis's span: its projection
        // keeps (nearly) all of its length.
        for (h, v) in hidden.iter().enumerate() {
            let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            let kept: f64 = (0..3)
                .map(|j| {
                    let p: f64 = (0..dims).map(|t| w[j * dims + t] as f64 * v[t]).sum();
                    (p / norm).powi(2)
                })
                .sum();
            assert!(
                kept > 0.99,
                "hidden direction {h}: {kept} of its length kept"
            );
        }
    }

    /// `rows` rows of `dims` codes in families of 8 around random centres, from `seed`
    /// (also the graph tests' data).
    pub(in crate::query) fn families(rows: usize, dims: usize, seed: u64) -> Vec<Vec<u8>> {
        let mut rng = Rng::new(seed);
        let mut centre = vec![0u8; dims];
        (0..rows)
            .map(|i| {
                if i % 8 == 0 {
                    centre = (0..dims).map(|_| rng.below(256) as u8).collect();
                }
                centre
                    .iter()
                    .map(|&c| c.saturating_add(rng.below(24) as u8).saturating_sub(12))
                    .collect()
            })
            .collect()
    }

    fn mapped(p: &std::path::Path) -> Mmap {
        // SAFETY: the test's own file, not modified while mapped.
        unsafe { Mmap::map(&std::fs::File::open(p).unwrap()) }.unwrap()
    }

    #[test]
    fn a_scan_finds_what_brute_force_over_the_projections_finds_and_the_file_round_trips() {
        let dims = 700;
        let rows = families(40_000, dims, 4);
        let refs: Vec<&[u8]> = rows.iter().map(|r| r.as_slice()).collect();
        let basis = fit(&refs, dims, 32);
        let bytes = file_bytes(&basis, dims, &refs);
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join(FILE);
        std::fs::write(&p, &bytes).unwrap();
        let nav = Nav::parse(mapped(&p), dims, rows.len()).unwrap();
        assert_eq!(nav.parts().0, &basis.rows[..]);
        assert_eq!(nav.parts().1, &basis.offsets[..]);
        let mut found = 0;
        for a in (0..rows.len()).step_by(997) {
            let q = nav.query(&rows[a]);
            let got = nav.nearest(&q, 20);
            // Brute force over the stored vectors, one distance at a time in i64: the
            // same rows in the same order (ties by row), though the scan runs in blocks
            // on several threads.
            let mut want: Vec<(i64, u32)> = (0..rows.len())
                .map(|r| {
                    let v = &nav.vectors()[r * 32..(r + 1) * 32];
                    let d: i64 = (0..32).map(|j| (q[j] as i64 - v[j] as i64).pow(2)).sum();
                    (d, r as u32)
                })
                .collect();
            want.sort_unstable();
            let want: Vec<u32> = want[..20].iter().map(|p| p.1).collect();
            assert_eq!(got, want, "row {a}");
            assert_eq!(got[0], a as u32, "row {a} finds itself first");
            // Its family (rows 8 apart in blocks of 8) is among its nearest 20.
            let fam = a / 8 * 8..a / 8 * 8 + 8;
            found += got.iter().filter(|r| fam.contains(&(**r as usize))).count();
        }
        let asked = rows.len().div_ceil(997) * 8;
        assert!(
            found as f64 >= 0.99 * asked as f64,
            "{found} of {asked} family members"
        );
        // A file made for another graph, or cut short, is refused.
        assert!(Nav::parse(mapped(&p), dims, rows.len() + 1).is_err());
        assert!(Nav::parse(mapped(&p), dims + 1, rows.len()).is_err());
        std::fs::write(&p, &bytes[..bytes.len() - 1]).unwrap();
        assert!(Nav::parse(mapped(&p), dims, rows.len()).is_err());
    }

    #[test]
    fn a_projection_is_a_contraction_of_l2() {
        let dims = 700;
        let rows = families(300, dims, 7);
        let refs: Vec<&[u8]> = rows.iter().map(|r| r.as_slice()).collect();
        let b = fit(&refs, dims, 16);
        let proj = |r: &[u8]| {
            let mut o = vec![0f32; 16];
            project(&b.rows, &b.offsets, r, &mut o);
            o
        };
        for a in (0..rows.len()).step_by(17) {
            for c in (0..rows.len()).step_by(23) {
                let full: f64 = rows[a]
                    .iter()
                    .zip(&rows[c])
                    .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
                    .sum();
                let (pa, pc) = (proj(&rows[a]), proj(&rows[c]));
                let near: f64 = pa
                    .iter()
                    .zip(&pc)
                    .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
                    .sum();
                assert!(near <= full * (1.0 + 1e-4) + 1e-2, "{near} > {full}");
            }
        }
    }
}
