//! Summary segments: per space, one fixed-width row of per-neuron summaries per stored
//! DNA, in files read in place through mmap. Derived state: `reindex` rebuilds it, and a
//! segment that fails its checks is rebuilt rather than trusted.
//!
//! Files in `index/<space hex>/`, each opening with a 64-byte header (`b"VDNASUM\0"`,
//! version u32, file kind u8, 3 zero bytes, neurons u32, values per neuron u32, the space
//! digest, 8 zero bytes), then rows:
//! - `rows.bin`: per row, the 32-byte DNA digest, the CRC-32 of the digest and the row's
//!   `a.bin` bytes, and the CRC-32 of its `b.bin` bytes (u32 LE each; 40 bytes a row); its
//!   length decides how many rows exist.
//! - `a.bin`: histograms: the mean (bin units) per neuron as f32; Gaussians: mean and
//!   standard deviation per neuron as f64.
//! - `b.bin`: histograms only: the quantile sketch, `SKETCH_Q` f32 per neuron.
//!
//! An append writes `a.bin` and `b.bin` first and `rows.bin` last, each fsynced, so a
//! counted row always has its data. Opening for reading checks every row's `a` checksum
//! (a damaged segment is rebuilt by the caller) once per process: what a process checked
//! is remembered (the files' identities, `a.bin`'s length and modification time, the row
//! table's bytes), and a later open of the same files, with that table as a prefix, checks
//! only the rows appended since, or every row again when `a.bin` was rewritten in place;
//! so a long-running server pays O(rows x neurons) once, not on every query, while
//! [`Segment::open_verify`] (`verify`) always checks everything. Opening to append (a
//! push) reads only the row table, so a push costs the same at any N, and leaves the
//! checks to the next reader; a row's sketches are checked when read, and a
//! damaged one is withheld (the caller then bounds nothing and computes the exact
//! distance), so a flipped byte never changes an answer.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use memmap2::Mmap;

use crate::format::Digest;

const MAGIC: &[u8; 8] = b"VDNASUM\0";
const VERSION: u32 = 2;
const ROW: usize = 40;
const HEADER: usize = 64;

/// What a segment summarises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegKind {
    /// Histogram DNAs: means and quantile sketches.
    Histogram { q: usize },
    /// Gaussian DNAs: mean and sd per neuron.
    Gaussian,
}

/// What this process has checked of a segment: the identities (device, inode) of its
/// three files, the length and modification time of `a.bin` then, and the bytes of the
/// row table whose `a` checksums passed.
struct Verified {
    ids: [(u64, u64); 3],
    a_stamp: (u64, Option<std::time::SystemTime>),
    /// The check came at least [`SETTLED`] after `a.bin`'s last write, so a write since
    /// would show as a newer modification time (file systems keep coarse clocks).
    settled: bool,
    table: Vec<u8>,
}

/// How long after a file's last write its modification time is trusted to tell a later
/// write apart (coarser than any file system's timestamp granularity in use).
pub(super) const SETTLED: std::time::Duration = std::time::Duration::from_secs(3);

/// A file's length and modification time.
fn stamp(p: &Path) -> io::Result<(u64, Option<std::time::SystemTime>)> {
    let m = std::fs::metadata(p)?;
    Ok((m.len(), m.modified().ok()))
}

fn verified() -> &'static Mutex<HashMap<PathBuf, Verified>> {
    static V: OnceLock<Mutex<HashMap<PathBuf, Verified>>> = OnceLock::new();
    V.get_or_init(Default::default)
}

/// Forgets what this process checked, so every segment opened next is checked in full
/// (benches measure both; `verify` never relies on it).
pub fn forget_verified() {
    verified().lock().unwrap_or_else(|p| p.into_inner()).clear();
    super::table::forget();
}

#[cfg(unix)]
fn file_id(p: &Path) -> io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p)?;
    Ok((m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn file_id(_: &Path) -> io::Result<(u64, u64)> {
    // No stable identity here: a fresh value every time, so a check is never reused.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    Ok((
        u64::MAX,
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
    ))
}

/// How much of a segment's checking an open does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Checks {
    /// None (opening to append).
    None,
    /// Rows this process has not checked yet.
    New,
    /// Every row.
    All,
}

/// One space's summary rows, mapped.
pub struct Segment {
    dir: PathBuf,
    kind: SegKind,
    neurons: usize,
    space: Digest,
    rows: Vec<Digest>,
    /// Per row, the CRC-32 of its sketches.
    crc_b: Vec<u32>,
    /// Which rows' `a` checksums an open (or a reload after an append) checks.
    checks: Checks,
    a: Option<Mmap>,
    b: Option<Mmap>,
}

fn header(file_kind: u8, neurons: usize, width: usize, space: &Digest) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12] = file_kind;
    h[16..20].copy_from_slice(&(neurons as u32).to_le_bytes());
    h[20..24].copy_from_slice(&(width as u32).to_le_bytes());
    h[24..56].copy_from_slice(&space.0);
    h
}

fn bad(path: &Path, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {what}", path.display()),
    )
}

impl Segment {
    fn widths(kind: SegKind) -> (usize, usize) {
        match kind {
            SegKind::Histogram { q } => (4, 4 * q),
            SegKind::Gaussian => (16, 0),
        }
    }

    /// Bytes per row in `a.bin` and `b.bin`.
    /// The byte widths of one row's `a` and `b` parts.
    pub fn row_bytes(&self) -> (usize, usize) {
        let (a, b) = Self::widths(self.kind);
        (a * self.neurons, b * self.neurons)
    }

    fn files(&self) -> [(PathBuf, u8, usize); 3] {
        let (wa, wb) = Self::widths(self.kind);
        [
            (self.dir.join("rows.bin"), 0, 0),
            (self.dir.join("a.bin"), 1, wa),
            (self.dir.join("b.bin"), 2, wb),
        ]
    }

    /// Opens (creating when missing) the segment of `space` under `dir`. Fails with
    /// `InvalidData` when the files do not match, so the caller can rebuild.
    /// Rows this process already checked (same files, same row table) are not checked
    /// again.
    pub fn open(dir: &Path, space: Digest, kind: SegKind, neurons: usize) -> io::Result<Segment> {
        Self::open_with(dir, space, kind, neurons, Checks::New)
    }

    /// Like [`Segment::open`], checking every row whatever this process checked before.
    pub fn open_verify(
        dir: &Path,
        space: Digest,
        kind: SegKind,
        neurons: usize,
    ) -> io::Result<Segment> {
        Self::open_with(dir, space, kind, neurons, Checks::All)
    }

    /// Opens (creating when missing) a segment to append rows: headers and lengths are
    /// checked, row checksums are not (that is O(rows x neurons); readers check them).
    pub fn open_for_append(
        dir: &Path,
        space: Digest,
        kind: SegKind,
        neurons: usize,
    ) -> io::Result<Segment> {
        Self::open_with(dir, space, kind, neurons, Checks::None)
    }

    fn open_with(
        dir: &Path,
        space: Digest,
        kind: SegKind,
        neurons: usize,
        checks: Checks,
    ) -> io::Result<Segment> {
        std::fs::create_dir_all(dir)?;
        let mut seg = Segment {
            dir: dir.to_path_buf(),
            kind,
            neurons,
            space,
            rows: Vec::new(),
            crc_b: Vec::new(),
            checks,
            a: None,
            b: None,
        };
        for (path, fk, width) in seg.files() {
            if !path.exists() {
                let mut f = File::create(&path)?;
                f.write_all(&header(fk, neurons, width, &space))?;
                f.sync_all()?;
            }
            let mut h = [0u8; HEADER];
            let mut f = File::open(&path)?;
            io::Read::read_exact(&mut f, &mut h).map_err(|_| bad(&path, "short header"))?;
            if h != header(fk, neurons, width, &space) {
                return Err(bad(&path, "header does not match the space"));
            }
        }
        seg.load()?;
        Ok(seg)
    }

    fn load(&mut self) -> io::Result<()> {
        let [(rows_p, ..), (a_p, ..), (b_p, ..)] = self.files();
        let rows = std::fs::read(&rows_p)?;
        // A partial last row (an append cut short) is not counted.
        let n = (rows.len() - HEADER) / ROW;
        let (ra, rb) = self.row_bytes();
        let map = |p: &Path, row: usize| -> io::Result<Option<Mmap>> {
            if row == 0 {
                return Ok(None);
            }
            let f = File::open(p)?;
            if (f.metadata()?.len() as usize) < HEADER + row * n {
                return Err(bad(p, "shorter than its rows"));
            }
            // SAFETY: the segment files are private to this store, written only by appends
            // beyond the mapped length, and the store is held by one process (sled's lock).
            Ok(Some(unsafe { Mmap::map(&f)? }))
        };
        self.a = map(&a_p, ra)?;
        self.b = map(&b_p, rb)?;
        self.rows.clear();
        self.crc_b.clear();
        let a_all = self.a.as_ref().map_or(&[][..], |m| &m[..]);
        let table = &rows[HEADER..HEADER + ROW * n];
        let ids = [file_id(&rows_p)?, file_id(&a_p)?, file_id(&b_p)?];
        let a_stamp = stamp(&a_p)?;
        // Rows below `done` were checked by this process in these very files, and `a.bin`
        // was since either untouched (same length and modification time, checked when that
        // time had settled) or only grown (appends write past the checked rows). A file
        // rewritten in place at the same length is checked again in full: a flipped byte
        // never changes an answer.
        let done = match self.checks {
            Checks::New => verified()
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&self.dir)
                .filter(|v| {
                    v.ids == ids
                        && table.starts_with(&v.table)
                        && ((v.settled && v.a_stamp == a_stamp) || a_stamp.0 > v.a_stamp.0)
                })
                .map_or(0, |v| v.table.len() / ROW),
            Checks::All | Checks::None => 0,
        };
        for (r, row) in table.chunks_exact(ROW).enumerate() {
            let mut d = [0u8; 32];
            d.copy_from_slice(&row[..32]);
            let want_a = u32::from_le_bytes([row[32], row[33], row[34], row[35]]);
            let a_row = if ra == 0 {
                &[][..]
            } else {
                &a_all[HEADER + r * ra..HEADER + (r + 1) * ra]
            };
            if self.checks != Checks::None && r >= done && crc_a(&d, a_row) != want_a {
                return Err(bad(&rows_p, &format!("row {r} fails its checksum")));
            }
            self.rows.push(Digest(d));
            self.crc_b
                .push(u32::from_le_bytes([row[36], row[37], row[38], row[39]]));
        }
        if self.checks != Checks::None {
            verified().lock().unwrap_or_else(|p| p.into_inner()).insert(
                self.dir.clone(),
                Verified {
                    ids,
                    a_stamp,
                    settled: a_stamp
                        .1
                        .and_then(|m| std::time::SystemTime::now().duration_since(m).ok())
                        .is_some_and(|age| age >= SETTLED),
                    table: table.to_vec(),
                },
            );
        }
        Ok(())
    }

    /// Appends one row. `a` and `b` are the row's little-endian bytes.
    pub fn append(&mut self, digest: &Digest, a: &[u8], b: &[u8]) -> io::Result<()> {
        self.append_many(&[(*digest, a, b)])
    }

    /// Appends rows with one write and one fsync per file (a cold build appends
    /// thousands): `a.bin` and `b.bin` first, then `rows.bin`, whose length alone decides
    /// how many rows count, so a crash in between leaves the rows before intact.
    pub fn append_many(&mut self, new: &[(Digest, &[u8], &[u8])]) -> io::Result<()> {
        if new.is_empty() {
            return Ok(());
        }
        let (ra, rb) = self.row_bytes();
        for (_, a, b) in new {
            assert_eq!((a.len(), b.len()), (ra, rb), "row width");
        }
        let [(rows_p, ..), (a_p, ..), (b_p, ..)] = self.files();
        let n = self.rows.len();
        for (p, part, width) in [(&a_p, 0, ra), (&b_p, 1, rb)] {
            if width == 0 {
                continue;
            }
            let mut f = OpenOptions::new().write(true).open(p)?;
            // Overwrite any tail a crash left past the counted rows.
            f.set_len((HEADER + width * n) as u64)?;
            io::Seek::seek(&mut f, io::SeekFrom::End(0))?;
            let mut bytes = Vec::with_capacity(width * new.len());
            for (_, a, b) in new {
                bytes.extend_from_slice(if part == 0 { a } else { b });
            }
            failpoint!("segment::write");
            f.write_all(&bytes)?;
            failpoint!("segment::fsync");
            f.sync_all()?;
        }
        let mut records = Vec::with_capacity(ROW * new.len());
        for (digest, a, b) in new {
            let mut row = [0u8; ROW];
            row[..32].copy_from_slice(&digest.0);
            row[32..36].copy_from_slice(&crc_a(&digest.0, a).to_le_bytes());
            row[36..40].copy_from_slice(&crc32fast::hash(b).to_le_bytes());
            records.extend_from_slice(&row);
        }
        let mut f = OpenOptions::new().write(true).open(&rows_p)?;
        f.set_len((HEADER + ROW * n) as u64)?;
        io::Seek::seek(&mut f, io::SeekFrom::End(0))?;
        failpoint!("segment::write_row");
        f.write_all(&records)?;
        failpoint!("segment::fsync_row");
        f.sync_all()?;
        self.load()
    }

    pub fn rows(&self) -> &[Digest] {
        &self.rows
    }

    pub fn space(&self) -> &Digest {
        &self.space
    }

    pub fn kind(&self) -> SegKind {
        self.kind
    }

    /// Mapped bytes of the summaries (what a full scan reads).
    pub fn mapped_bytes(&self) -> u64 {
        let (ra, rb) = self.row_bytes();
        ((ra + rb) * self.rows.len()) as u64
    }

    /// Histogram means of row `r`, one per neuron.
    pub fn means(&self, r: usize) -> &[f32] {
        let (ra, _) = self.row_bytes();
        cast_f32(
            &self.a.as_ref().map_or(&[][..], |m| &m[..])[HEADER + r * ra..HEADER + (r + 1) * ra],
        )
    }

    /// Histogram sketches of row `r`, `q` per neuron, checked against the row's checksum:
    /// `None` when they fail it (the caller must not bound with them).
    pub fn sketches(&self, r: usize) -> Option<&[f32]> {
        let (_, rb) = self.row_bytes();
        let b =
            &self.b.as_ref().map_or(&[][..], |m| &m[..])[HEADER + r * rb..HEADER + (r + 1) * rb];
        (crc32fast::hash(b) == self.crc_b[r]).then(|| cast_f32(b))
    }

    /// Rows whose sketches fail their checksum (for `verify`).
    pub fn damaged_sketches(&self) -> Vec<usize> {
        (0..self.rows.len())
            .filter(|&r| self.row_bytes().1 > 0 && self.sketches(r).is_none())
            .collect()
    }

    /// Gaussian (mean, sd) pairs of row `r`.
    pub fn gauss(&self, r: usize) -> &[f64] {
        let (ra, _) = self.row_bytes();
        cast_f64(
            &self.a.as_ref().map_or(&[][..], |m| &m[..])[HEADER + r * ra..HEADER + (r + 1) * ra],
        )
    }
}

/// The checksum of a row's digest and `a` bytes.
fn crc_a(digest: &[u8; 32], a: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(digest);
    h.update(a);
    h.finalize()
}

fn cast_f32(b: &[u8]) -> &[f32] {
    assert_eq!(b.as_ptr() as usize % 4, 0, "summary rows are 4-aligned");
    // SAFETY: aligned (checked), length a multiple of 4 by construction, every bit
    // pattern is a valid f32, and the target is little-endian (see format::layer).
    unsafe { std::slice::from_raw_parts(b.as_ptr().cast::<f32>(), b.len() / 4) }
}

fn cast_f64(b: &[u8]) -> &[f64] {
    assert_eq!(b.as_ptr() as usize % 8, 0, "summary rows are 8-aligned");
    // SAFETY: as for `cast_f32`.
    unsafe { std::slice::from_raw_parts(b.as_ptr().cast::<f64>(), b.len() / 8) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Flips one byte of `a.bin` in place (the same file, as damage on disk would).
    fn flip(dir: &Path, offset: u64) {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join("a.bin"))
            .unwrap();
        let mut b = [0u8];
        f.seek(SeekFrom::Start(offset)).unwrap();
        f.read_exact(&mut b).unwrap();
        f.seek(SeekFrom::Start(offset)).unwrap();
        f.write_all(&[b[0] ^ 0x40]).unwrap();
    }

    #[test]
    fn rows_are_checked_once_per_process_and_again_when_rewritten_in_place() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("seg");
        let space = Digest([7; 32]);
        let kind = SegKind::Histogram { q: 2 };
        let (a, b) = ([0u8; 12], [1u8; 24]); // 3 neurons
        let row = |i: u8| Digest([i; 32]);
        let mut s = Segment::open(&dir, space, kind, 3).unwrap();
        s.append_many(&[(row(1), &a[..], &b[..]), (row(2), &a[..], &b[..])])
            .unwrap();
        // A row appended by a writer that checks nothing (a push), then damaged: the next
        // reader checks it, as it is new to this process.
        let mut w = Segment::open_for_append(&dir, space, kind, 3).unwrap();
        w.append(&row(3), &a, &b).unwrap();
        let third = (HEADER + 2 * 12 + 5) as u64;
        flip(&dir, third);
        assert!(Segment::open(&dir, space, kind, 3).is_err());
        flip(&dir, third);
        assert_eq!(Segment::open(&dir, space, kind, 3).unwrap().rows().len(), 3);
        // Just written, so not settled: every open checks again, and an in-place write in
        // the same clock tick as the last one is still caught.
        // A file rewritten in place (same length, new modification time) is checked
        // again in full, so damage to a row checked before is found too.
        std::thread::sleep(std::time::Duration::from_millis(20));
        flip(&dir, (HEADER + 1) as u64);
        assert!(Segment::open(&dir, space, kind, 3).is_err());
        assert!(Segment::open_verify(&dir, space, kind, 3).is_err());
        forget_verified();
        assert!(Segment::open(&dir, space, kind, 3).is_err());
        flip(&dir, (HEADER + 1) as u64);
        // Settled (last written long before the check): a later open trusts the rows it
        // checked and reads nothing again. Only damage that keeps both the length and the
        // modification time escapes it until verify, which always checks.
        let set_old = || {
            let past = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
            File::options()
                .write(true)
                .open(dir.join("a.bin"))
                .unwrap()
                .set_modified(past)
                .unwrap();
            past
        };
        let past = set_old();
        assert!(Segment::open(&dir, space, kind, 3).is_ok());
        flip(&dir, (HEADER + 1) as u64);
        File::options()
            .write(true)
            .open(dir.join("a.bin"))
            .unwrap()
            .set_modified(past)
            .unwrap();
        assert!(
            Segment::open(&dir, space, kind, 3).is_ok(),
            "trusted, not re-read"
        );
        assert!(Segment::open_verify(&dir, space, kind, 3).is_err());
    }
}
