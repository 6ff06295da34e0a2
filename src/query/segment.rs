//! Summary segments: per space, one fixed-width row of per-neuron summaries per stored
//! DNA, in files read in place through mmap. Derived state: `reindex` rebuilds it, and a
//! segment that fails its checks is rebuilt rather than trusted.
//!
//! Files in `index/<space hex>/`, each opening with a 64-byte header (`b"VDNASUM\0"`,
//! version u32, file kind u8, 3 zero bytes, neurons u32, values per neuron u32, the space
//! digest, 8 zero bytes), then rows:
//! - `rows.bin` (version 4): per row, the 32-byte DNA digest, then per layer the CRC-32 of
//!   the digest and the layer's `a.bin` bytes, then per layer the CRC-32 of its `b.bin`
//!   bytes (u32 LE each; 32 + 8 x layers bytes a row); its length decides how many rows
//!   exist. A checksum per layer lets a query check only the layers its mask reads. A
//!   version-3 `rows.bin` (one checksum of each part per row, 40 bytes) is upgraded at
//!   open: each row's old checksums are checked once and the new ones written (those of a
//!   row that failed its old check are written inverted, so it keeps failing).
//! - `a.bin`: histograms: the mean (bin units) per neuron as f32; Gaussians: mean and
//!   standard deviation per neuron as f64.
//! - `b.bin`: histograms only: the quantile sketch, `SKETCH_Q` f32 per neuron.
//! - `c.bin`: histograms only: per neuron, the mean's one-byte code (`code_of`: the mean
//!   in units of bins/256, floored, at most 255), padded with zeros to a multiple of 4,
//!   then the CRC-32 of each layer's codes (u32 LE, one per layer of the space). The code
//!   bound scans these: a quarter of the means' bytes, each layer checked as it is read.
//!
//! An append writes `a.bin`, `b.bin` and `c.bin` first and `rows.bin` last, each fsynced,
//! so a counted row always has its data. Nothing is checked at open but the headers and
//! lengths: each part of a row is checked against its checksum when a query reads it (a
//! layer's codes on every scan, a row's means or sketches when the cascade visits it), so
//! opening costs O(rows) at any width and a flipped byte never changes an answer: a part
//! that fails its check bounds nothing, and the candidate's exact distance decides.
//! The other files' headers stay at version 3 (their layout did not change).
//! [`Segment::open_verify`] (`verify`) checks every part of every row.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::format::Digest;

const MAGIC: &[u8; 8] = b"VDNASUM\0";
/// Version of `a.bin`, `b.bin` and `c.bin`.
const VERSION: u32 = 3;
/// Version of `rows.bin`: 4 since its checksums are per layer.
const ROWS_VERSION: u32 = 4;
/// A version-3 `rows.bin` row: digest, CRC of digest + means, CRC of sketches.
const ROW_V3: usize = 40;
const HEADER: usize = 64;

/// What a segment summarises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegKind {
    /// Histogram DNAs of `bins` bins: means, quantile sketches and mean codes.
    Histogram { q: usize, bins: u32 },
    /// Gaussian DNAs: mean and sd per neuron.
    Gaussian,
}

/// How much of a segment's checking an open does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Checks {
    /// Headers and lengths (parts of rows are checked as they are read).
    None,
    /// Every part of every row.
    All,
}

/// The one-byte code of a mean `m` (bin units) of a histogram of `bins` bins: `m` lies in
/// `[c, c + 1) * bins / 256` for code `c`, or above for 255.
pub fn code_of(m: f64, bins: u32) -> u8 {
    (m * 256.0 / bins as f64).floor().clamp(0.0, 255.0) as u8
}

/// One space's summary rows, mapped.
pub struct Segment {
    dir: PathBuf,
    kind: SegKind,
    /// Neurons per layer, in space order.
    layers: Vec<u32>,
    /// First neuron of each layer, and the total at the end.
    starts: Vec<usize>,
    neurons: usize,
    space: Digest,
    rows: Vec<Digest>,
    /// `rows.bin`, mapped: each row's per-layer checksums are read in place (copying
    /// them at open would cost O(N x layers) in every new process).
    rows_map: Option<Mmap>,
    checks: Checks,
    a: Option<Mmap>,
    b: Option<Mmap>,
    c: Option<Mmap>,
    /// Per layer, the CRC shift past its codes ([`Segment::codes_span`]); empty for
    /// Gaussian segments.
    shifts: Vec<super::crc::Shift>,
}

fn header(file_kind: u8, neurons: usize, width: usize, space: &Digest) -> [u8; HEADER] {
    let version = if file_kind == 0 {
        ROWS_VERSION
    } else {
        VERSION
    };
    header_of(version, file_kind, neurons, width, space)
}

fn header_of(
    version: u32,
    file_kind: u8,
    neurons: usize,
    width: usize,
    space: &Digest,
) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&version.to_le_bytes());
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
    /// Values per neuron in `a.bin`, `b.bin` and `c.bin` (bytes).
    fn widths(kind: SegKind) -> (usize, usize, usize) {
        match kind {
            SegKind::Histogram { q, .. } => (4, 4 * q, 1),
            SegKind::Gaussian => (16, 0, 0),
        }
    }

    /// The byte widths of one row's `a` and `b` parts.
    pub fn row_bytes(&self) -> (usize, usize) {
        let (a, b, _) = Self::widths(self.kind);
        (a * self.neurons, b * self.neurons)
    }

    /// Bytes of one row of `rows.bin`: the digest, then two CRC-32s per layer.
    fn row_record_bytes(&self) -> usize {
        32 + 8 * self.layers.len()
    }

    /// Bytes of one row of `c.bin`: codes padded to 4, then a CRC-32 per layer.
    fn code_row_bytes(&self) -> usize {
        match self.kind {
            SegKind::Histogram { .. } => self.neurons.div_ceil(4) * 4 + 4 * self.layers.len(),
            SegKind::Gaussian => 0,
        }
    }

    fn files(&self) -> [(PathBuf, u8, usize); 4] {
        let (wa, wb, wc) = Self::widths(self.kind);
        [
            (self.dir.join("rows.bin"), 0, 0),
            (self.dir.join("a.bin"), 1, wa),
            (self.dir.join("b.bin"), 2, wb),
            (self.dir.join("c.bin"), 3, wc),
        ]
    }

    /// Opens (creating when missing) the segment of `space`, whose layers have `layers`
    /// neurons each, under `dir`. Fails with `InvalidData` when the files do not match, so
    /// the caller can rebuild. Checks headers and lengths only: O(rows), whatever the
    /// width; parts of rows are checked as they are read.
    pub fn open(dir: &Path, space: Digest, kind: SegKind, layers: &[u32]) -> io::Result<Segment> {
        Self::open_with(dir, space, kind, layers, Checks::None)
    }

    /// Like [`Segment::open`], checking every part of every row (for `verify`); fails on
    /// damaged means or codes. Damaged sketches are listed by [`Segment::damaged_sketches`].
    pub fn open_verify(
        dir: &Path,
        space: Digest,
        kind: SegKind,
        layers: &[u32],
    ) -> io::Result<Segment> {
        Self::open_with(dir, space, kind, layers, Checks::All)
    }

    /// Opens (creating when missing) a segment to append rows (the same as [`Segment::open`]).
    pub fn open_for_append(
        dir: &Path,
        space: Digest,
        kind: SegKind,
        layers: &[u32],
    ) -> io::Result<Segment> {
        Self::open_with(dir, space, kind, layers, Checks::None)
    }

    fn open_with(
        dir: &Path,
        space: Digest,
        kind: SegKind,
        layers: &[u32],
        checks: Checks,
    ) -> io::Result<Segment> {
        std::fs::create_dir_all(dir)?;
        let mut starts = Vec::with_capacity(layers.len() + 1);
        let mut at = 0usize;
        for &l in layers {
            starts.push(at);
            at += l as usize;
        }
        starts.push(at);
        let mut seg = Segment {
            dir: dir.to_path_buf(),
            kind,
            layers: layers.to_vec(),
            starts,
            neurons: at,
            space,
            rows: Vec::new(),
            rows_map: None,
            checks,
            a: None,
            b: None,
            c: None,
            shifts: match kind {
                SegKind::Histogram { .. } => layers
                    .iter()
                    .map(|&n| super::crc::Shift::new(n as usize))
                    .collect(),
                SegKind::Gaussian => Vec::new(),
            },
        };
        for (path, fk, width) in seg.files() {
            if fk == 0 && path.exists() {
                seg.upgrade_v3_rows(&path)?;
            }
            if !path.exists() {
                let mut f = File::create(&path)?;
                f.write_all(&header(fk, seg.neurons, width, &space))?;
                f.sync_all()?;
            }
            let mut h = [0u8; HEADER];
            let mut f = File::open(&path)?;
            io::Read::read_exact(&mut f, &mut h).map_err(|_| bad(&path, "short header"))?;
            if h != header(fk, seg.neurons, width, &space) {
                return Err(bad(&path, "header does not match the space"));
            }
        }
        seg.load()?;
        Ok(seg)
    }

    /// Maps `a.bin`, `b.bin` and `c.bin`, each required to hold `n` rows.
    fn map_files(&mut self, n: usize) -> io::Result<()> {
        let [_, (a_p, ..), (b_p, ..), (c_p, ..)] = self.files();
        let (ra, rb) = self.row_bytes();
        let rc = self.code_row_bytes();
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
        self.c = map(&c_p, rc)?;
        Ok(())
    }

    /// Rewrites a version-3 `rows.bin` (one checksum of each part per row) as version 4
    /// (one per layer), reading every row's `a` and `b` bytes once; leaves any other file
    /// as it is (its header is then checked by the caller). Crash-safe: the new file is
    /// written and synced beside the old one, then renamed over it.
    fn upgrade_v3_rows(&mut self, path: &Path) -> io::Result<()> {
        let old_header = header_of(3, 0, self.neurons, 0, &self.space);
        let mut h = [0u8; HEADER];
        {
            let mut f = File::open(path)?;
            if io::Read::read_exact(&mut f, &mut h).is_err() || h != old_header {
                return Ok(());
            }
        }
        let old = std::fs::read(path)?;
        let n = (old.len() - HEADER) / ROW_V3;
        self.map_files(n)?;
        let (ra, rb) = self.row_bytes();
        let (wa, wb, _) = Self::widths(self.kind);
        let nl = self.layers.len();
        let mut out = Vec::with_capacity(HEADER + n * self.row_record_bytes());
        out.extend_from_slice(&header(0, self.neurons, 0, &self.space));
        for (r, rec) in old[HEADER..HEADER + n * ROW_V3]
            .chunks_exact(ROW_V3)
            .enumerate()
        {
            let digest: &[u8; 32] = rec[..32].try_into().expect("32 bytes");
            let a_row = row_of(&self.a, r, ra);
            let b_row = row_of(&self.b, r, rb);
            let ok_a = crc_a(digest, a_row) == u32::from_le_bytes(rec[32..36].try_into().unwrap());
            let ok_b =
                crc32fast::hash(b_row) == u32::from_le_bytes(rec[36..40].try_into().unwrap());
            out.extend_from_slice(digest);
            for (part, row, w, ok) in [(0, a_row, wa, ok_a), (1, b_row, wb, ok_b)] {
                for l in 0..nl {
                    let bytes = &row[w * self.starts[l]..w * self.starts[l + 1]];
                    let crc = if part == 0 {
                        crc_a(digest, bytes)
                    } else {
                        crc32fast::hash(bytes)
                    };
                    // A row that failed its old check must keep failing.
                    out.extend_from_slice(&(if ok { crc } else { !crc }).to_le_bytes());
                }
            }
        }
        let tmp = path.with_extension("bin.v4");
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&out)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = File::open(&self.dir) {
            d.sync_all()?;
        }
        Ok(())
    }

    /// Maps `rows.bin` (its header at least); returns how many whole rows it holds.
    fn map_rows(&mut self) -> io::Result<usize> {
        let [(rows_p, ..), ..] = self.files();
        let f = File::open(&rows_p)?;
        let len = f.metadata()?.len() as usize;
        if len < HEADER {
            return Err(bad(&rows_p, "short header"));
        }
        // SAFETY: as for the other files (`map_files`): private to this store, appended
        // beyond the mapped length only, the store held by one process.
        self.rows_map = Some(unsafe { Mmap::map(&f)? });
        // A partial last row (an append cut short) is not counted.
        Ok((len - HEADER) / self.row_record_bytes())
    }

    /// The stored CRC-32 of row `r`'s layer `l` in part `part` (0: digest and `a`; 1: `b`).
    fn stored_crc(&self, r: usize, part: usize, l: usize) -> u32 {
        let m = self
            .rows_map
            .as_ref()
            .expect("rows.bin is mapped once opened");
        let at = HEADER + r * self.row_record_bytes() + 32 + 4 * (part * self.layers.len() + l);
        u32::from_le_bytes([m[at], m[at + 1], m[at + 2], m[at + 3]])
    }

    fn load(&mut self) -> io::Result<()> {
        let [(rows_p, ..), _, _, (c_p, ..)] = self.files();
        let n = self.map_rows()?;
        let row_len = self.row_record_bytes();
        let rc = self.code_row_bytes();
        self.map_files(n)?;
        self.rows.clear();
        let map = self.rows_map.take().expect("mapped just above");
        self.count_rows(&map[HEADER..HEADER + row_len * n]);
        self.rows_map = Some(map);
        if self.checks == Checks::All {
            for r in 0..n {
                if self.a_bytes(r, None).is_none() {
                    return Err(bad(&rows_p, &format!("row {r} fails its checksum")));
                }
                for l in 0..self.layers.len() {
                    if rc > 0 && self.codes(r, l).is_none() {
                        return Err(bad(
                            &c_p,
                            &format!("row {r}: the codes of layer {l} fail their checksum"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Appends one row. `a` and `b` are the row's little-endian bytes.
    pub fn append(&mut self, digest: &Digest, a: &[u8], b: &[u8]) -> io::Result<()> {
        self.append_many(&[(*digest, a, b)])
    }

    /// A histogram row's `c.bin` bytes, from its means.
    fn code_row(&self, a: &[u8]) -> Vec<u8> {
        let SegKind::Histogram { bins, .. } = self.kind else {
            return Vec::new();
        };
        let mut out = vec![0u8; self.code_row_bytes()];
        for (o, m) in out.iter_mut().zip(a.chunks_exact(4)) {
            *o = code_of(f32::from_le_bytes([m[0], m[1], m[2], m[3]]) as f64, bins);
        }
        let at = self.neurons.div_ceil(4) * 4;
        for l in 0..self.layers.len() {
            let crc = crc32fast::hash(&out[self.starts[l]..self.starts[l + 1]]);
            out[at + 4 * l..at + 4 * l + 4].copy_from_slice(&crc.to_le_bytes());
        }
        out
    }

    /// Appends rows with one write and one fsync per file (a cold build appends
    /// thousands): `a.bin`, `b.bin` and `c.bin` first, then `rows.bin`, whose length alone
    /// decides how many rows count, so a crash in between leaves the rows before intact.
    pub fn append_many(&mut self, new: &[(Digest, &[u8], &[u8])]) -> io::Result<()> {
        if new.is_empty() {
            return Ok(());
        }
        let (ra, rb) = self.row_bytes();
        let rc = self.code_row_bytes();
        for (_, a, b) in new {
            assert_eq!((a.len(), b.len()), (ra, rb), "row width");
        }
        let [(rows_p, ..), (a_p, ..), (b_p, ..), (c_p, ..)] = self.files();
        let n = self.rows.len();
        for (p, part, width) in [(&a_p, 0, ra), (&b_p, 1, rb), (&c_p, 2, rc)] {
            if width == 0 {
                continue;
            }
            let mut f = OpenOptions::new().write(true).open(p)?;
            // Overwrite any tail a crash left past the counted rows.
            f.set_len((HEADER + width * n) as u64)?;
            io::Seek::seek(&mut f, io::SeekFrom::End(0))?;
            let mut bytes = Vec::with_capacity(width * new.len());
            for (_, a, b) in new {
                match part {
                    0 => bytes.extend_from_slice(a),
                    1 => bytes.extend_from_slice(b),
                    _ => bytes.extend_from_slice(&self.code_row(a)),
                }
            }
            failpoint!("segment::write");
            f.write_all(&bytes)?;
            failpoint!("segment::fsync");
            f.sync_all()?;
        }
        let row_len = self.row_record_bytes();
        let (wa, wb, _) = Self::widths(self.kind);
        let mut records = Vec::with_capacity(row_len * new.len());
        for (digest, a, b) in new {
            records.extend_from_slice(&digest.0);
            for l in 0..self.layers.len() {
                let bytes = &a[wa * self.starts[l]..wa * self.starts[l + 1]];
                records.extend_from_slice(&crc_a(&digest.0, bytes).to_le_bytes());
            }
            for l in 0..self.layers.len() {
                let bytes = &b[wb * self.starts[l]..wb * self.starts[l + 1]];
                records.extend_from_slice(&crc32fast::hash(bytes).to_le_bytes());
            }
        }
        let mut f = OpenOptions::new().write(true).open(&rows_p)?;
        f.set_len((HEADER + row_len * n) as u64)?;
        io::Seek::seek(&mut f, io::SeekFrom::End(0))?;
        failpoint!("segment::write_row");
        f.write_all(&records)?;
        failpoint!("segment::fsync_row");
        f.sync_all()?;
        // The rows written are the ones this segment now counts (no need to read the row
        // table back: O(new rows), not O(rows), so a push costs the same at any N).
        self.count_rows(&records);
        self.map_rows()?;
        self.map_files(self.rows.len())
    }

    /// Appends the digests of whole `rows.bin` records to those counted.
    fn count_rows(&mut self, records: &[u8]) {
        for row in records.chunks_exact(self.row_record_bytes()) {
            let mut d = [0u8; 32];
            d.copy_from_slice(&row[..32]);
            self.rows.push(Digest(d));
        }
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

    /// First neuron of each layer in a row, then the row's neuron count.
    pub fn layer_starts(&self) -> &[usize] {
        &self.starts
    }

    /// Mapped bytes of the summaries (what a full scan reads).
    pub fn mapped_bytes(&self) -> u64 {
        let (ra, rb) = self.row_bytes();
        ((ra + rb + self.code_row_bytes()) * self.rows.len()) as u64
    }

    /// Row `r`'s `a` bytes, checked against its checksum.
    /// Row `r`'s `a` bytes, with the layers `layers` (all when `None`) checked against
    /// their checksums: the caller reads only those.
    fn a_bytes(&self, r: usize, layers: Option<&[usize]>) -> Option<&[u8]> {
        let (ra, _) = self.row_bytes();
        let a = row_of(&self.a, r, ra);
        let (w, ..) = Self::widths(self.kind);
        let digest = &self.rows[r].0;
        let ok = |l: usize| {
            crc_a(digest, &a[w * self.starts[l]..w * self.starts[l + 1]])
                == self.stored_crc(r, 0, l)
        };
        match layers {
            None => (0..self.layers.len()).all(ok),
            Some(ls) => ls.iter().all(|&l| ok(l)),
        }
        .then_some(a)
    }

    /// Row `r`'s `b` bytes, checked as [`Segment::a_bytes`] checks `a`.
    fn b_bytes(&self, r: usize, layers: Option<&[usize]>) -> Option<&[u8]> {
        let (_, rb) = self.row_bytes();
        let b = row_of(&self.b, r, rb);
        let (_, w, _) = Self::widths(self.kind);
        let ok = |l: usize| {
            crc32fast::hash(&b[w * self.starts[l]..w * self.starts[l + 1]])
                == self.stored_crc(r, 1, l)
        };
        match layers {
            None => (0..self.layers.len()).all(ok),
            Some(ls) => ls.iter().all(|&l| ok(l)),
        }
        .then_some(b)
    }

    /// Histogram means of row `r`, one per neuron, checked against the row's checksums:
    /// `None` when they fail them (the caller must not bound with them).
    pub fn means(&self, r: usize) -> Option<&[f32]> {
        self.a_bytes(r, None).map(cast_f32)
    }

    /// [`Segment::means`] with only the layers `layers` checked: the caller must read
    /// no other layer's means.
    pub fn means_in(&self, r: usize, layers: &[usize]) -> Option<&[f32]> {
        self.a_bytes(r, Some(layers)).map(cast_f32)
    }

    /// Row `r` of `c.bin` (codes, padding, a CRC-32 per layer), unchecked.
    fn stored_code_row(&self, r: usize) -> Option<&[u8]> {
        let rc = self.code_row_bytes();
        let c = self.c.as_ref()?;
        Some(&c[HEADER + r * rc..HEADER + (r + 1) * rc])
    }

    /// Where layer `l`'s CRC-32 sits in a [`Segment::stored_code_row`]: after the codes,
    /// padded to 4 bytes.
    fn crc_at(&self, l: usize) -> usize {
        self.neurons.div_ceil(4) * 4 + 4 * l
    }

    /// The CRC-32 of layer `l`'s codes stored in a [`Segment::stored_code_row`].
    fn stored_code_crc(&self, row: &[u8], l: usize) -> u32 {
        let at = self.crc_at(l);
        u32::from_le_bytes([row[at], row[at + 1], row[at + 2], row[at + 3]])
    }

    /// The mean codes of layer `l` of row `r` ([`code_of`]), checked against their
    /// checksum: `None` when they fail it.
    pub fn codes(&self, r: usize, l: usize) -> Option<&[u8]> {
        let row = self.stored_code_row(r)?;
        let codes = &row[self.starts[l]..self.starts[l + 1]];
        (crc32fast::hash(codes) == self.stored_code_crc(row, l)).then_some(codes)
    }

    /// The mean codes of layers `l0..l1` of row `r`, side by side, checked by one CRC-32
    /// over them against the join of the layers' stored CRCs (`query/crc.rs`): damage to
    /// any one layer shows exactly as its own check would show it. `None` when the check
    /// fails; [`Segment::codes`] then tells the damaged layers from the others. One pass
    /// instead of a CRC per layer: 1.78x less time checking resnet50's 16 layers of codes
    /// (scale bench).
    pub fn codes_span(&self, r: usize, l0: usize, l1: usize) -> Option<&[u8]> {
        let row = self.stored_code_row(r)?;
        let want = (l0..l1).fold(0u32, |crc, l| {
            self.shifts[l].join(crc, self.stored_code_crc(row, l))
        });
        let codes = &row[self.starts[l0]..self.starts[l1]];
        (crc32fast::hash(codes) == want).then_some(codes)
    }

    /// Asks the CPU to start loading what [`Segment::layer_codes`] of layers `l0..l1` of
    /// row `r` reads: those codes' cache lines and their stored CRCs'. A hint only (it
    /// never faults and changes no result): a scan issues it a few rows ahead, so that
    /// rows thousands of bytes apart, each on its own page, arrive while earlier ones are
    /// bounded instead of one memory latency (and a page walk) per row.
    #[inline]
    pub fn prefetch_codes(&self, r: usize, l0: usize, l1: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            let Some(row) = self.stored_code_row(r) else {
                return;
            };
            prefetch_lines(&row[self.starts[l0]..self.starts[l1]]);
            prefetch_lines(&row[self.crc_at(l0)..self.crc_at(l1)]);
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (r, l0, l1);
    }

    /// The mean codes of each of the layers `l0..l1` of row `r`, each checked as
    /// [`Segment::codes`] checks it (`None` for a layer that fails), by one joined check
    /// ([`Segment::codes_span`]) when there are several and per layer only when it fails.
    pub fn layer_codes(
        &self,
        r: usize,
        l0: usize,
        l1: usize,
    ) -> impl Iterator<Item = Option<&[u8]>> + '_ {
        let span = if l1 - l0 > 1 {
            self.codes_span(r, l0, l1)
        } else {
            None
        };
        let base = self.starts[l0];
        (l0..l1).map(move |l| match span {
            Some(sp) => Some(&sp[self.starts[l] - base..self.starts[l + 1] - base]),
            None => self.codes(r, l),
        })
    }

    /// Every row's `c.bin` bytes (row `r` at `r * stride`), unchecked, and the stride: for
    /// graph navigation only, which steers by them and answers nothing from them (every
    /// candidate it finds is bounded with checked parts and re-ranked exactly). `None` for
    /// Gaussian segments.
    pub fn code_matrix(&self) -> Option<(&[u8], usize)> {
        let c = self.c.as_ref()?;
        let rc = self.code_row_bytes();
        Some((&c[HEADER..HEADER + self.rows.len() * rc], rc))
    }

    /// Every row's `a.bin` values (row `r` at `r * stride`, in f64), unchecked, and the
    /// stride, for Gaussian segments (`None` otherwise): graph navigation only, as for
    /// [`Segment::code_matrix`].
    pub fn pair_matrix(&self) -> Option<(&[f64], usize)> {
        if self.kind != SegKind::Gaussian {
            return None;
        }
        let (ra, _) = self.row_bytes();
        let a = self.a.as_ref()?;
        Some((cast_f64(&a[HEADER..HEADER + self.rows.len() * ra]), ra / 8))
    }

    /// Histogram sketches of row `r`, `q` per neuron, checked against the row's checksum:
    /// `None` when they fail it (the caller must not bound with them).
    pub fn sketches(&self, r: usize) -> Option<&[f32]> {
        self.b_bytes(r, None).map(cast_f32)
    }

    /// [`Segment::sketches`] with only the layers `layers` checked: the caller must read
    /// no other layer's sketches.
    pub fn sketches_in(&self, r: usize, layers: &[usize]) -> Option<&[f32]> {
        self.b_bytes(r, Some(layers)).map(cast_f32)
    }

    /// Rows whose sketches fail their checksum (for `verify`).
    pub fn damaged_sketches(&self) -> Vec<usize> {
        (0..self.rows.len())
            .filter(|&r| self.row_bytes().1 > 0 && self.sketches(r).is_none())
            .collect()
    }

    /// Gaussian (mean, sd) pairs of row `r`, checked against the row's checksum: `None`
    /// when they fail it.
    pub fn gauss(&self, r: usize) -> Option<&[f64]> {
        self.a_bytes(r, None).map(cast_f64)
    }

    /// [`Segment::gauss`] with only the layers `layers` checked: the caller must read no
    /// other layer's pairs.
    pub fn gauss_in(&self, r: usize, layers: &[usize]) -> Option<&[f64]> {
        self.a_bytes(r, Some(layers)).map(cast_f64)
    }
}

/// Asks the CPU to load every cache line of `bytes` (each 64 bytes from its start, and
/// its last byte).
#[cfg(target_arch = "x86_64")]
#[inline]
fn prefetch_lines(bytes: &[u8]) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    let p = bytes.as_ptr() as *const i8;
    let mut at = 0;
    while at < bytes.len() {
        // SAFETY: `at` is inside `bytes`; a prefetch reads nothing into the program and
        // cannot fault (SSE, baseline on x86-64).
        #[allow(unused_unsafe)]
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(p.add(at));
        }
        at += 64;
    }
    if let Some(last) = bytes.len().checked_sub(1) {
        #[allow(unused_unsafe)]
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(p.add(last));
        }
    }
}

/// Row `r` of a mapped file of rows `width` bytes wide; empty when the rows are (a
/// Gaussian segment has no `b.bin` rows, and its file is not mapped).
fn row_of(map: &Option<Mmap>, r: usize, width: usize) -> &[u8] {
    match map {
        Some(m) if width > 0 => &m[HEADER + r * width..HEADER + (r + 1) * width],
        _ => &[],
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

    /// Flips one byte of a segment file in place (the same file, as damage on disk would).
    fn flip(dir: &Path, file: &str, offset: usize) {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join(file))
            .unwrap();
        let mut b = [0u8];
        f.seek(SeekFrom::Start(offset as u64)).unwrap();
        f.read_exact(&mut b).unwrap();
        f.seek(SeekFrom::Start(offset as u64)).unwrap();
        f.write_all(&[b[0] ^ 0x40]).unwrap();
    }

    #[test]
    fn codes_place_each_mean_in_its_interval() {
        // 100 bins: a code is a step of 100/256 = 0.390625 bins.
        assert_eq!(code_of(0.0, 100), 0);
        assert_eq!(code_of(0.39, 100), 0);
        assert_eq!(code_of(0.390625, 100), 1);
        assert_eq!(code_of(50.0, 100), 128);
        assert_eq!(code_of(99.0, 100), 253);
        assert_eq!(code_of(1e9, 100), 255);
        assert_eq!(code_of(-1.0, 100), 0);
        for i in 0..1000 {
            let m = i as f64 * 0.0999;
            let c = code_of(m, 100) as f64;
            assert!(c * 0.390625 <= m && m < (c + 1.0) * 0.390625);
        }
    }

    #[test]
    fn every_part_is_checked_when_read_and_damage_stays_local() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("seg");
        let space = Digest([7; 32]);
        let kind = SegKind::Histogram { q: 2, bins: 10 };
        let layers = [2u32, 3];
        let means =
            |x: f32| -> Vec<u8> { (0..5).flat_map(|i| (x + i as f32).to_le_bytes()).collect() };
        let b = [1u8; 40]; // 5 neurons x 2 quantiles x 4 bytes
        let row = |i: u8| Digest([i; 32]);
        let mut s = Segment::open(&dir, space, kind, &layers).unwrap();
        s.append_many(&[
            (row(1), &means(0.5)[..], &b[..]),
            (row(2), &means(2.0)[..], &b[..]),
        ])
        .unwrap();
        let mut w = Segment::open_for_append(&dir, space, kind, &layers).unwrap();
        w.append(&row(3), &means(4.0), &b).unwrap();
        let s = Segment::open_verify(&dir, space, kind, &layers).unwrap();
        assert_eq!(s.rows(), &[row(1), row(2), row(3)]);
        assert_eq!(s.means(1).unwrap(), &[2.0, 3.0, 4.0, 5.0, 6.0]);
        // 10 bins: codes are steps of 10/256 bins; layer 1 of row 2 holds means 6, 7, 8.
        let want: Vec<u8> = [6.0f32, 7.0, 8.0]
            .iter()
            .map(|m| (m * 25.6) as u8)
            .collect();
        assert_eq!(s.codes(2, 1).unwrap(), &want[..]);
        // A flipped code fails its layer's check, and only that layer's.
        let rc = 8 + 4 * 2;
        flip(&dir, "c.bin", HEADER + rc + 3);
        let s = Segment::open(&dir, space, kind, &layers).unwrap();
        assert!(s.codes(1, 0).is_some() && s.codes(1, 1).is_none() && s.codes(0, 1).is_some());
        // The span of both layers fails with it; row 0's span holds both layers' codes.
        assert!(s.codes_span(1, 0, 2).is_none() && s.codes_span(1, 0, 1).is_some());
        let both = [s.codes(0, 0).unwrap(), s.codes(0, 1).unwrap()].concat();
        assert_eq!(s.codes_span(0, 0, 2).unwrap(), &both[..]);
        assert!(Segment::open_verify(&dir, space, kind, &layers).is_err());
        flip(&dir, "c.bin", HEADER + rc + 3);
        // A flipped mean fails its row's check, seen through a mapping opened before.
        let s = Segment::open(&dir, space, kind, &layers).unwrap();
        flip(&dir, "a.bin", HEADER + 20 * 2 + 1);
        assert!(s.means(2).is_none() && s.means(1).is_some());
        assert!(Segment::open_verify(&dir, space, kind, &layers).is_err());
        flip(&dir, "a.bin", HEADER + 20 * 2 + 1);
        // Sketches likewise.
        flip(&dir, "b.bin", HEADER + 40 + 7);
        assert!(s.sketches(1).is_none() && s.sketches(0).is_some());
        assert_eq!(s.damaged_sketches(), vec![1]);
        flip(&dir, "b.bin", HEADER + 40 + 7);
        assert!(Segment::open_verify(&dir, space, kind, &layers).is_ok());
        // Another space's files are refused, to be rebuilt.
        assert!(Segment::open(&dir, Digest([8; 32]), kind, &layers).is_err());
    }

    /// A histogram segment of layers of 2 and 3 neurons (2 quantiles each) holding three
    /// rows with distinct means and sketches.
    fn three_rows(dir: &Path) -> (Digest, SegKind, [u32; 2]) {
        let space = Digest([7; 32]);
        let kind = SegKind::Histogram { q: 2, bins: 10 };
        let layers = [2u32, 3];
        let mut s = Segment::open(dir, space, kind, &layers).unwrap();
        for i in 0..3u8 {
            let a: Vec<u8> = (0..5)
                .flat_map(|n| (i as f32 + n as f32 * 0.5).to_le_bytes())
                .collect();
            let b: Vec<u8> = (0..10)
                .flat_map(|k| (i as f32 * 10.0 + k as f32).to_le_bytes())
                .collect();
            s.append(&Digest([i + 1; 32]), &a, &b).unwrap();
        }
        (space, kind, layers)
    }

    #[test]
    fn each_layer_is_checked_alone_so_a_mask_reads_only_its_layers() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("seg");
        let (space, kind, layers) = three_rows(&dir);
        let s = Segment::open(&dir, space, kind, &layers).unwrap();
        // Row 1's means start at HEADER + 20; layer 1 (neurons 2..5) at byte 8 of the row.
        flip(&dir, "a.bin", HEADER + 20 + 8 + 2);
        assert!(s.means_in(1, &[0]).is_some());
        assert!(s.means_in(1, &[1]).is_none() && s.means_in(1, &[0, 1]).is_none());
        assert!(s.means(1).is_none() && s.means(0).is_some() && s.means_in(2, &[1]).is_some());
        // Row 2's sketches: 40 bytes a row, layer 0 holds the first 16.
        flip(&dir, "b.bin", HEADER + 80 + 5);
        assert!(s.sketches_in(2, &[0]).is_none() && s.sketches_in(2, &[1]).is_some());
        assert!(s.sketches(2).is_none() && s.sketches(1).is_some());
        assert_eq!(s.damaged_sketches(), vec![2]);
        assert!(Segment::open_verify(&dir, space, kind, &layers).is_err());
    }

    #[test]
    fn version_3_rows_are_upgraded_once_and_keep_their_damage() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("seg");
        let (space, kind, layers) = three_rows(&dir);
        // Rewrite rows.bin as version 3 wrote it: per row the digest, the CRC-32 of the
        // digest and the whole means row, the CRC-32 of the whole sketch row.
        let a = std::fs::read(dir.join("a.bin")).unwrap();
        let b = std::fs::read(dir.join("b.bin")).unwrap();
        let mut v3 = header_of(3, 0, 5, 0, &space).to_vec();
        for r in 0..3usize {
            let d = [r as u8 + 1; 32];
            let mut h = crc32fast::Hasher::new();
            h.update(&d);
            h.update(&a[HEADER + 20 * r..HEADER + 20 * (r + 1)]);
            v3.extend_from_slice(&d);
            v3.extend_from_slice(&h.finalize().to_le_bytes());
            let sk = crc32fast::hash(&b[HEADER + 40 * r..HEADER + 40 * (r + 1)]);
            v3.extend_from_slice(&sk.to_le_bytes());
        }
        std::fs::write(dir.join("rows.bin"), &v3).unwrap();
        // Damage row 2's sketches in layer 0 before the upgrade: its old checksum fails.
        flip(&dir, "b.bin", HEADER + 80 + 5);
        let s = Segment::open(&dir, space, kind, &layers).unwrap();
        assert_eq!(
            s.rows(),
            &[Digest([1; 32]), Digest([2; 32]), Digest([3; 32])]
        );
        let rows = std::fs::read(dir.join("rows.bin")).unwrap();
        assert_eq!(rows.len(), HEADER + 3 * (32 + 8 * 2));
        assert_eq!(&rows[..HEADER], &header(0, 5, 0, &space)[..]);
        for r in 0..3 {
            assert_eq!(s.means(r).unwrap()[4], r as f32 + 2.0);
        }
        assert_eq!(s.sketches(1).unwrap()[9], 19.0);
        // The damaged row fails in every layer, even the one whose bytes are intact.
        assert!(s.sketches_in(2, &[1]).is_none() && s.sketches_in(2, &[0]).is_none());
        assert!(s.means(2).is_some());
        // Opening again leaves the upgraded file as it is.
        drop(s);
        let s = Segment::open(&dir, space, kind, &layers).unwrap();
        assert_eq!(std::fs::read(dir.join("rows.bin")).unwrap(), rows);
        assert_eq!(s.damaged_sketches(), vec![2]);
    }

    #[test]
    fn version_3_gaussian_rows_are_upgraded_too() {
        // A Gaussian segment has no sketches: its b.bin holds a header only.
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("seg");
        let space = Digest([9; 32]);
        let (kind, layers) = (SegKind::Gaussian, [2u32, 3]);
        let pairs = |i: u8| -> Vec<u8> {
            (0..10)
                .flat_map(|k| (i as f64 * 100.0 + k as f64).to_le_bytes())
                .collect()
        };
        let mut s = Segment::open(&dir, space, kind, &layers).unwrap();
        for i in 0..2u8 {
            s.append(&Digest([i + 1; 32]), &pairs(i), &[]).unwrap();
        }
        drop(s);
        let mut v3 = header_of(3, 0, 5, 0, &space).to_vec();
        for i in 0..2u8 {
            let d = [i + 1; 32];
            let mut h = crc32fast::Hasher::new();
            h.update(&d);
            h.update(&pairs(i));
            v3.extend_from_slice(&d);
            v3.extend_from_slice(&h.finalize().to_le_bytes());
            v3.extend_from_slice(&crc32fast::hash(&[]).to_le_bytes());
        }
        std::fs::write(dir.join("rows.bin"), &v3).unwrap();
        let s = Segment::open(&dir, space, kind, &layers).unwrap();
        assert_eq!(s.rows().len(), 2);
        assert_eq!(s.gauss(1).unwrap()[9], 109.0);
        assert_eq!(s.gauss_in(0, &[1]).unwrap()[4], 4.0);
        assert!(Segment::open_verify(&dir, space, kind, &layers).is_ok());
    }
}
