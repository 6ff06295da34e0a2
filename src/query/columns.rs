//! The mean codes again, by neuron: `cols.bin`, a column copy of a segment's `c.bin` for
//! masks that touch few neurons of each row.
//!
//! The row layout of `c.bin` suits wide masks: a row's masked codes lie together, and the
//! code bound leaves a row once its partial sum passes the k-th best. A narrow mask (100
//! random neurons, part of a layer, one small layer) reads a few bytes of each 3 KB row,
//! scattered over most of its cache lines, and checks whole layers' CRCs to trust them:
//! it reads about as many bytes as `all`. Here each neuron's codes of a block of rows
//! are contiguous, so such a mask reads `neurons in the mask x rows` bytes, in runs of a
//! block, and checks only those (100 random neurons at N = 100,000: 10 MB, not 140 MB).
//!
//! Derived state like the graphs: `reindex` builds it from the segment (every row's codes
//! checked first) once the space holds `hnsw::min_rows()` DNAs; rows appended afterwards
//! are not in it and the caller bounds them from `c.bin`. A code is a function of the DNA,
//! so the file is right for any segment whose first `rows` rows hold the same digests in
//! the same order, which the header records as a CRC-32 of those digests.
//!
//! ## Layout (little-endian)
//! - a 64-byte header: `b"VDNACOL\0"`, version u32, rows u32, neurons u32, rows per block
//!   u32, the CRC-32 of the first `rows` row digests u32, the space digest (32 bytes), the
//!   CRC-32 of the 60 bytes before it;
//! - blocks of `BLOCK` rows (the last one shorter): per neuron in space order, the block's
//!   codes of that neuron, one byte a row;
//! - the CRC-32 of each (block, neuron) run of codes, u32, block-major.
//!
//! Opening checks the header, the length and the rows' CRC: O(rows), nothing per neuron. A
//! query checks each run it reads against its CRC; a run that fails bounds nothing (its
//! neuron adds 0 to those rows' bounds, which stay lower bounds), and `verify` reports it.

use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use memmap2::Mmap;

use super::segment::{SegKind, Segment};
use crate::Error;

const MAGIC: &[u8; 8] = b"VDNACOL\0";
const VERSION: u32 = 1;
const HEADER: usize = 64;
/// Rows per block: a block's accumulators (2 bytes a row) stay in the first-level cache,
/// and a run of codes is long enough to stream. `VDNA_DB_COLUMN_BLOCK` builds with another
/// (the header records it).
pub const BLOCK: usize = 4096;

/// Rows per block for a new file.
pub fn block_rows() -> usize {
    super::hnsw::knob("VDNA_DB_COLUMN_BLOCK", BLOCK, 1).min(1 << 20)
}
/// The file's name in the space's index directory.
pub const FILE: &str = "cols.bin";

/// The CRC-32 of the first `rows` row digests: which rows a derived file was built over
/// (the column file's header and each graph's metadata record it).
pub(super) fn rows_crc(seg: &Segment, rows: usize) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for d in &seg.rows()[..rows.min(seg.rows().len())] {
        h.update(&d.0);
    }
    h.finalize()
}

fn bad(path: &Path, why: impl std::fmt::Display) -> Error {
    Error::Invalid(format!(
        "{}: {why} (run vdna-db reindex to rebuild it)",
        path.display()
    ))
}

/// Writes (replacing) `index_dir/cols.bin` for a histogram segment of at least `min_rows`
/// rows, or removes a stale one below that; true when written. Every row's codes are
/// checked against their stored CRCs first: a row that fails stops the build (the column
/// CRCs would otherwise vouch for damaged codes).
pub fn build(index_dir: &Path, seg: &Segment, min_rows: usize) -> Result<bool, Error> {
    let path = index_dir.join(FILE);
    let rows = seg.rows().len();
    if !matches!(seg.kind(), SegKind::Histogram { .. })
        || rows < min_rows.max(1)
        || rows > u32::MAX as usize
    {
        if path.exists() {
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        }
        return Ok(false);
    }
    let starts = seg.layer_starts().to_vec();
    let layers = starts.len().saturating_sub(1);
    let neurons = starts.last().copied().unwrap_or(0);
    let block_rows = block_rows();
    let tmp = index_dir.join(format!(".{FILE}.tmp"));
    let result = (|| -> Result<(), Error> {
        let file = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut w = io::BufWriter::with_capacity(1 << 20, file);
        let mut head = [0u8; HEADER];
        head[..8].copy_from_slice(MAGIC);
        head[8..12].copy_from_slice(&VERSION.to_le_bytes());
        head[12..16].copy_from_slice(&(rows as u32).to_le_bytes());
        head[16..20].copy_from_slice(&(neurons as u32).to_le_bytes());
        head[20..24].copy_from_slice(&(block_rows as u32).to_le_bytes());
        head[24..28].copy_from_slice(&rows_crc(seg, rows).to_le_bytes());
        head[28..60].copy_from_slice(&seg.space().0);
        let check = crc32fast::hash(&head[..60]);
        head[60..64].copy_from_slice(&check.to_le_bytes());
        w.write_all(&head).map_err(|e| Error::io(&tmp, e))?;
        let mut crcs: Vec<u8> = Vec::with_capacity(rows.div_ceil(block_rows) * neurons * 4);
        let mut block = vec![0u8; neurons * block_rows];
        for b0 in (0..rows).step_by(block_rows) {
            let n = block_rows.min(rows - b0);
            let block = &mut block[..neurons * n];
            for i in 0..n {
                let r = b0 + i;
                for l in 0..layers {
                    let codes = seg.codes(r, l).ok_or_else(|| {
                        Error::Invalid(format!(
                            "summary row {r} fails its code checksum while building {FILE} (run vdna-db reindex)"
                        ))
                    })?;
                    for (j, &c) in codes.iter().enumerate() {
                        block[(starts[l] + j) * n + i] = c;
                    }
                }
            }
            for run in block.chunks_exact(n) {
                crcs.extend_from_slice(&crc32fast::hash(run).to_le_bytes());
            }
            w.write_all(block).map_err(|e| Error::io(&tmp, e))?;
        }
        w.write_all(&crcs).map_err(|e| Error::io(&tmp, e))?;
        let file = w
            .into_inner()
            .map_err(|e| Error::io(&tmp, e.into_error()))?;
        failpoint!("columns::fsync", |e| Error::io(&tmp, e));
        file.sync_all().map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        crate::fsio::sync_dir(index_dir).map_err(|e| Error::io(index_dir, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| true)
}

/// How many rows the column file in `index_dir` covers and its rows per block, from its
/// header alone; `None` when there is no readable one.
pub fn covered_rows(index_dir: &Path) -> Option<(usize, usize)> {
    use std::io::Read;
    let mut head = [0u8; HEADER];
    std::fs::File::open(index_dir.join(FILE))
        .ok()?
        .read_exact(&mut head)
        .ok()?;
    let word = |i: usize| u32::from_le_bytes(head[i..i + 4].try_into().expect("4 bytes"));
    (&head[..8] == MAGIC && word(60) == crc32fast::hash(&head[..60]))
        .then(|| (word(12) as usize, word(20) as usize))
}

/// A mapped `cols.bin`, checked against its segment.
pub struct Columns {
    map: Mmap,
    rows: usize,
    neurons: usize,
    block: usize,
}

impl Columns {
    /// Maps and checks `path` against `seg`: the header, the length, and the CRC of the
    /// rows it covers.
    fn open(path: &Path, seg: &Segment) -> Result<Columns, Error> {
        let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the file is written under a temporary name and renamed into place,
        // never modified in place; a rebuild replaces it.
        let map = unsafe { Mmap::map(&f) }.map_err(|e| Error::io(path, e))?;
        if map.len() < HEADER || &map[..8] != MAGIC {
            return Err(bad(path, "not a column file"));
        }
        let word = |i: usize| u32::from_le_bytes(map[i..i + 4].try_into().expect("4 bytes"));
        if word(60) != crc32fast::hash(&map[..60]) {
            return Err(bad(path, "its header fails its checksum"));
        }
        if word(8) != VERSION {
            return Err(bad(path, "written by another version"));
        }
        let (rows, neurons, block) = (word(12) as usize, word(16) as usize, word(20) as usize);
        if !(1..=1 << 20).contains(&block) {
            return Err(bad(path, format!("a block of {block} rows")));
        }
        let want_neurons = seg.layer_starts().last().copied().unwrap_or(0);
        if neurons != want_neurons || map[28..60] != seg.space().0 {
            return Err(bad(path, "built for another space"));
        }
        if rows > seg.rows().len() || word(24) != rows_crc(seg, rows) {
            return Err(bad(path, "built over other rows than the segment's"));
        }
        let want_len = HEADER + rows * neurons + rows.div_ceil(block) * neurons * 4;
        if map.len() != want_len {
            return Err(bad(
                path,
                format!("{} bytes, {want_len} expected", map.len()),
            ));
        }
        Ok(Columns {
            map,
            rows,
            neurons,
            block,
        })
    }

    /// Rows covered: the segment's first `rows()`.
    pub fn rows(&self) -> usize {
        self.rows
    }

    fn blocks(&self) -> usize {
        self.rows.div_ceil(self.block)
    }

    /// Block `b`'s first row and row count.
    fn block(&self, b: usize) -> (usize, usize) {
        let r0 = b * self.block;
        (r0, self.block.min(self.rows - r0))
    }

    /// Neuron `j`'s codes in block `b`, checked against their CRC (`None` when they fail).
    fn run(&self, b: usize, j: usize) -> Option<&[u8]> {
        let (r0, n) = self.block(b);
        let at = HEADER + r0 * self.neurons + j * n;
        let run = &self.map[at..at + n];
        let c = HEADER + self.rows * self.neurons + (b * self.neurons + j) * 4;
        let want = u32::from_le_bytes(self.map[c..c + 4].try_into().expect("4 bytes"));
        (crc32fast::hash(run) == want).then_some(run)
    }

    /// The code bound of every covered row, in code steps: for each row, the sum over the
    /// masked neurons (`runs`: first neuron in a row, count; `qcodes` the query's codes in
    /// the same order) of `max(|q - c| - 1, 0)`, as `sketch::code_l1` sums it. A run of
    /// codes that fails its CRC adds nothing. Returns the sums and the bytes read.
    pub fn code_bounds(&self, runs: &[(usize, usize)], qcodes: &[u8]) -> (Vec<u32>, u64) {
        use rayon::prelude::*;
        let masked: Vec<usize> = runs.iter().flat_map(|&(s, n)| s..s + n).collect();
        debug_assert_eq!(masked.len(), qcodes.len());
        let mut out = vec![0u32; self.rows];
        out.par_chunks_mut(self.block)
            .enumerate()
            .for_each(|(b, sums)| {
                // 16-bit partial sums, folded into the 32-bit ones every 256 neurons (at
                // most 254 a neuron).
                let mut part = vec![0u16; sums.len()];
                for (i, (&j, &q)) in masked.iter().zip(qcodes).enumerate() {
                    if let Some(codes) = self.run(b, j) {
                        add_codes(&mut part, codes, q);
                    }
                    if i % 256 == 255 {
                        for (s, p) in sums.iter_mut().zip(&mut part) {
                            *s += *p as u32;
                            *p = 0;
                        }
                    }
                }
                for (s, p) in sums.iter_mut().zip(&part) {
                    *s += *p as u32;
                }
            });
        (out, (masked.len() * self.rows) as u64)
    }

    /// Every run that fails its CRC, as (block, neuron): for `verify`.
    pub fn damaged(&self) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for b in 0..self.blocks() {
            for j in 0..self.neurons {
                if self.run(b, j).is_none() {
                    out.push((b, j));
                }
            }
        }
        out
    }
}

/// `acc[i] += max(|codes[i] - q| - 1, 0)`: one neuron's term of the code bound for a block
/// of rows. With AVX2 (chosen at run time), 32 rows at a time in bytes (`max - min`, then
/// a saturating `- 1`), widened to 16 bits in row order; elsewhere, and for the tail, the
/// loop (the compiler vectorises it through 32-bit lanes, at half the speed).
#[inline]
fn add_codes(acc: &mut [u16], codes: &[u8], q: u8) {
    let n = acc.len().min(codes.len());
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            done = n - n % 32;
            // SAFETY: the CPU supports AVX2 (checked just above); `done` is within both.
            unsafe { add_codes_avx2(&mut acc[..done], &codes[..done], q) };
        }
    }
    add_codes_body(&mut acc[done..n], &codes[done..n], q)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn add_codes_avx2(acc: &mut [u16], codes: &[u8], q: u8) {
    use std::arch::x86_64::*;
    assert!(acc.len() == codes.len() && codes.len().is_multiple_of(32));
    let qv = _mm256_set1_epi8(q as i8);
    let one = _mm256_set1_epi8(1);
    for i in (0..codes.len()).step_by(32) {
        // SAFETY: i + 32 <= len of both slices (asserted above); unaligned loads and
        // stores, 32 code bytes and 2 x 16 accumulators of 2 bytes.
        unsafe {
            let c = _mm256_loadu_si256(codes.as_ptr().add(i).cast());
            let d = _mm256_sub_epi8(_mm256_max_epu8(c, qv), _mm256_min_epu8(c, qv));
            let t = _mm256_subs_epu8(d, one);
            let lo = _mm256_cvtepu8_epi16(_mm256_castsi256_si128(t));
            let hi = _mm256_cvtepu8_epi16(_mm256_extracti128_si256::<1>(t));
            let p = acc.as_mut_ptr().add(i);
            let a0 = _mm256_loadu_si256(p.cast());
            let a1 = _mm256_loadu_si256(p.add(16).cast());
            _mm256_storeu_si256(p.cast(), _mm256_add_epi16(a0, lo));
            _mm256_storeu_si256(p.add(16).cast(), _mm256_add_epi16(a1, hi));
        }
    }
}

#[inline(always)]
fn add_codes_body(acc: &mut [u16], codes: &[u8], q: u8) {
    for (a, &c) in acc.iter_mut().zip(codes) {
        *a += c.abs_diff(q).saturating_sub(1) as u16;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector kernel adds what the loop adds, row for row, at every length (tails
    /// included) and every query code, from non-zero accumulators.
    #[test]
    fn add_codes_equals_the_loop() {
        let mut rng = crate::rng::Rng::new(7);
        for len in [0, 1, 31, 32, 33, 64, 100, 4096] {
            for q in [0u8, 1, 2, 127, 254, 255] {
                let codes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
                let start: Vec<u16> = (0..len).map(|_| (rng.next_u64() % 1000) as u16).collect();
                let (mut fast, mut slow) = (start.clone(), start);
                add_codes(&mut fast, &codes, q);
                add_codes_body(&mut slow, &codes, q);
                assert_eq!(fast, slow, "len {len}, q {q}");
            }
        }
    }
}

/// A file's identity: a rebuild renames a new file into place (a new inode, while the
/// old one stays mapped by whoever holds it).
#[derive(Clone, Copy, PartialEq, Eq)]
struct FileId {
    ino: u64,
    len: u64,
    modified: Option<std::time::SystemTime>,
}

fn file_id(path: &Path) -> Option<FileId> {
    let m = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let ino = 0;
    Some(FileId {
        ino,
        len: m.len(),
        modified: m.modified().ok(),
    })
}

/// The column file as an open segment last found it: kept with the segment (one slot per
/// opened segment, so the rows' check runs once per file and segment, not per query), and
/// looked at again only when the file's identity changes.
#[derive(Default)]
pub struct Slot(Mutex<Option<Found>>);

/// The file's identity when last looked at (`None`: no file) and what it gave.
type Found = (Option<FileId>, Option<Arc<Columns>>);

impl Slot {
    /// The column file of the space in `index_dir` for `seg` (the segment this slot belongs
    /// to), opened and checked once per file; `None` when there is none or it fails its
    /// checks (the caller then bounds rows from `c.bin`, which is always correct; `verify`
    /// reports a bad file).
    pub fn get(&self, index_dir: &Path, seg: &Segment) -> Option<Arc<Columns>> {
        let path = index_dir.join(FILE);
        let id = file_id(&path);
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((kept, cols)) = slot.as_ref() {
            if *kept == id {
                return cols.clone();
            }
        }
        let cols = id.and_then(|_| Columns::open(&path, seg).ok().map(Arc::new));
        *slot = Some((id, cols.clone()));
        cols
    }
}

/// `verify`'s check of the column file in `index_dir`, if any: the problem found.
pub fn check(index_dir: &Path, seg: &Segment) -> Option<String> {
    let path = index_dir.join(FILE);
    if !path.exists() {
        return None;
    }
    match Columns::open(&path, seg) {
        Err(e) => Some(e.to_string()),
        Ok(cols) => {
            let bad = cols.damaged();
            (!bad.is_empty()).then(|| {
                format!(
                    "{}: {} runs of codes fail their CRC (first: block {}, neuron {}; run vdna-db reindex)",
                    path.display(),
                    bad.len(),
                    bad[0].0,
                    bad[0].1
                )
            })
        }
    }
}
