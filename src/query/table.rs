//! What a query works from besides the summaries, kept per process: each space's table of
//! named DNAs (digest, images, the refs naming it) and the open summary segment with the
//! map from the table's entries to its rows.
//!
//! Both are built once per catalogue state and segment state, not per query: at 100,000
//! DNAs, grouping every ref by DNA and hashing every segment row costs tens of
//! milliseconds, which every query used to pay before computing a single bound. A query
//! now pays four `stat` calls and one catalogue read to learn that nothing changed
//! (docs/QUERY.md, cost model). The table is also kept on disk, stamped with the
//! catalogue state it was built from, so a new process maps it instead of decoding the
//! catalogue's records (hundreds of milliseconds at 100,000 names).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use crate::catalogue::SharedRecords;
use crate::format::Digest;

/// A catalogue state ([`crate::catalogue::Catalogue::state_stamp`]): its instance and its
/// count of commits.
pub type CatStamp = (u64, u64);

/// A space's table on disk, `index/<space>/table.bin`, little-endian:
/// - a 96-byte header: `b"VDNATBL\0"`, version u32, entries, refs, stored DNAs and heap
///   bytes (u32 each), keys bytes u32, the catalogue stamp (instance u64, commits u64),
///   zeros to byte 64, then the space digest;
/// - entries, in digest order, 48 bytes each: digest, images u64, first ref and one past
///   its last (u32 each; a DNA's refs are consecutive, in name order);
/// - refs, 16 bytes each: the name's offset and length in the heap (`name:tag`), then its
///   annotations' offset and length (pairs of u32-length-prefixed key and value);
/// - every stored DNA of the space, named or not (32-byte digests): what its segment holds;
/// - the heap: the annotation keys in use (a JSON array), then names and annotations;
/// - the CRC-32 of everything before it.
const FILE: &str = "table.bin";
const MAGIC: &[u8; 8] = b"VDNATBL\0";
const VERSION: u32 = 1;
const HEAD: usize = 96;
const ENTRY: usize = 48;
const REF: usize = 16;

/// A table's bytes: built in memory, or mapped from its file.
enum Bytes {
    Owned(Vec<u8>),
    Mapped(memmap2::Mmap),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Owned(v) => v,
            Bytes::Mapped(m) => m,
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// The named DNAs of one space in one catalogue state, in digest order, with their refs'
/// names and annotations: one compact byte image (`table.bin`'s layout), built from the
/// catalogue's records once per catalogue state and kept on disk, so that a new process
/// reads it in place (a mapping and one checksum) instead of decoding every record. Names
/// are read only for the answers; annotations only when a filter asks.
pub struct SpaceTable {
    bytes: Bytes,
    pub stamp: CatStamp,
    entries: usize,
    stored: usize,
    at_refs: usize,
    at_stored: usize,
    at_heap: usize,
    /// Annotation keys that some ref of the space carries (for `--filter` errors).
    pub keys: BTreeSet<String>,
    /// Whether its file holds it (it was read from there, or written).
    saved: std::sync::atomic::AtomicBool,
}

impl SpaceTable {
    /// Groups the refs of `space` by DNA: O(refs + DNAs), once per catalogue state.
    pub fn build(records: &SharedRecords, space: &Digest, stamp: CatStamp) -> SpaceTable {
        let mut stored = Vec::new();
        let mut images: HashMap<Digest, u64> = HashMap::new();
        for (d, r) in records.dnas.iter() {
            if r.space == *space {
                stored.push(*d);
                images.insert(*d, r.images);
            }
        }
        let mut grouped: Vec<(Digest, u32)> = Vec::new();
        let mut keys = BTreeSet::new();
        for (i, (_, r)) in records.refs.iter().enumerate() {
            if images.contains_key(&r.digest) {
                grouped.push((r.digest, i as u32));
                keys.extend(r.annotations.keys().cloned());
            }
        }
        // Stable: a DNA's refs stay in name order (the catalogue lists refs by name).
        grouped.sort_by_key(|(d, _)| *d);
        let mut heap = serde_json::to_vec(&keys).expect("a set of strings serialises");
        let keys_len = heap.len();
        let mut entries: Vec<u8> = Vec::new();
        let mut refs: Vec<u8> = Vec::with_capacity(grouped.len() * REF);
        let mut count = 0usize;
        let mut i = 0;
        while i < grouped.len() {
            let d = grouped[i].0;
            let first = i;
            while i < grouped.len() && grouped[i].0 == d {
                let (name, r) = &records.refs[grouped[i].1 as usize];
                let name = name.to_string();
                refs.extend((heap.len() as u32).to_le_bytes());
                refs.extend((name.len() as u32).to_le_bytes());
                heap.extend(name.as_bytes());
                let ann = heap.len();
                for (k, v) in &r.annotations {
                    for part in [k, v] {
                        heap.extend((part.len() as u32).to_le_bytes());
                        heap.extend(part.as_bytes());
                    }
                }
                refs.extend((ann as u32).to_le_bytes());
                refs.extend(((heap.len() - ann) as u32).to_le_bytes());
                i += 1;
            }
            entries.extend(d.0);
            entries.extend(images[&d].to_le_bytes());
            entries.extend((first as u32).to_le_bytes());
            entries.extend((i as u32).to_le_bytes());
            count += 1;
        }
        let mut b = Vec::with_capacity(
            HEAD + entries.len() + refs.len() + 32 * stored.len() + heap.len() + 4,
        );
        b.extend(MAGIC);
        for w in [
            VERSION,
            count as u32,
            grouped.len() as u32,
            stored.len() as u32,
            heap.len() as u32,
            keys_len as u32,
        ] {
            b.extend(w.to_le_bytes());
        }
        b.extend(stamp.0.to_le_bytes());
        b.extend(stamp.1.to_le_bytes());
        b.resize(64, 0);
        b.extend(space.0);
        b.extend(entries);
        b.extend(refs);
        for d in &stored {
            b.extend(d.0);
        }
        b.extend(heap);
        b.extend(crc32fast::hash(&b).to_le_bytes());
        SpaceTable::parse(Bytes::Owned(b), space, stamp).expect("a table just built reads back")
    }

    /// Writes the table into `dir` once (when no file holds it yet).
    pub fn persist(&self, dir: &Path) {
        if !self.saved.swap(true, std::sync::atomic::Ordering::Relaxed) {
            self.save(dir);
        }
    }

    /// The table in `bytes` when it is whole (its checksum), of `space` and of catalogue
    /// state `stamp`.
    fn parse(bytes: Bytes, space: &Digest, stamp: CatStamp) -> Option<SpaceTable> {
        let t = SpaceTable::parse_any(bytes).ok()?;
        (t.stamp == stamp && t.bytes[64..96] == space.0).then_some(t)
    }

    /// The table in `bytes`, of whichever space and catalogue state, when it is whole;
    /// what is wrong with it otherwise.
    fn parse_any(bytes: Bytes) -> Result<SpaceTable, String> {
        let b = &bytes[..];
        if b.len() < HEAD + 4 || &b[..8] != MAGIC || u32_at(b, 8) != VERSION {
            return Err("not a version-1 table".into());
        }
        let (entries, refs, stored, heap, keys_len) = (
            u32_at(b, 12) as usize,
            u32_at(b, 16) as usize,
            u32_at(b, 20) as usize,
            u32_at(b, 24) as usize,
            u32_at(b, 28) as usize,
        );
        let stamp = (u64_at(b, 32), u64_at(b, 40));
        let at_refs = HEAD + entries * ENTRY;
        let at_stored = at_refs + refs * REF;
        let at_heap = at_stored + 32 * stored;
        if at_heap + heap + 4 != b.len() || keys_len > heap {
            return Err("lengths do not add up".into());
        }
        let body = b.len() - 4;
        if crc32fast::hash(&b[..body]) != u32_at(b, body) {
            return Err("fails its checksum".into());
        }
        let keys = serde_json::from_slice(&b[at_heap..at_heap + keys_len])
            .map_err(|e| format!("annotation keys: {e}"))?;
        let saved = matches!(bytes, Bytes::Mapped(_)).into();
        let t = SpaceTable {
            bytes,
            stamp,
            entries,
            stored,
            at_refs,
            at_stored,
            at_heap,
            keys,
            saved,
        };
        // Every range within its array: then no accessor can read out of bounds.
        let refs_ok = (0..entries).all(|e| {
            let r = t.refs_of(e);
            r.start < r.end && r.end as usize <= refs
        });
        let heap_ok = (0..refs as u32).all(|i| {
            let (a, n, c, m) = t.ref_fields(i);
            a + n <= heap && c + m <= heap && std::str::from_utf8(&t.heap()[a..a + n]).is_ok()
        });
        if refs_ok && heap_ok {
            Ok(t)
        } else {
            Err("a ref or name out of range".into())
        }
    }

    fn heap(&self) -> &[u8] {
        &self.bytes[self.at_heap..self.bytes.len() - 4]
    }

    fn ref_fields(&self, i: u32) -> (usize, usize, usize, usize) {
        let at = self.at_refs + i as usize * REF;
        let w = |k: usize| u32_at(&self.bytes, at + 4 * k) as usize;
        (w(0), w(1), w(2), w(3))
    }

    /// Named DNAs (entries).
    pub fn len(&self) -> usize {
        self.entries
    }

    pub fn digest(&self, e: usize) -> Digest {
        let at = HEAD + e * ENTRY;
        Digest(self.bytes[at..at + 32].try_into().unwrap())
    }

    fn digest_bytes(&self, e: usize) -> &[u8] {
        &self.bytes[HEAD + e * ENTRY..HEAD + e * ENTRY + 32]
    }

    pub fn images(&self, e: usize) -> u64 {
        u64_at(&self.bytes, HEAD + e * ENTRY + 32)
    }

    /// The refs naming entry `e` (ids for [`SpaceTable::name`], in name order).
    pub fn refs_of(&self, e: usize) -> std::ops::Range<u32> {
        let at = HEAD + e * ENTRY + 40;
        u32_at(&self.bytes, at)..u32_at(&self.bytes, at + 4)
    }

    /// Ref `i`'s name, `name:tag`.
    pub fn name(&self, i: u32) -> &str {
        let (a, n, _, _) = self.ref_fields(i);
        // Checked to be UTF-8 when the table was read.
        std::str::from_utf8(&self.heap()[a..a + n]).unwrap_or_default()
    }

    /// Ref `i`'s tag.
    pub fn tag(&self, i: u32) -> &str {
        let n = self.name(i);
        n.rsplit_once(':').map_or(n, |(_, t)| t)
    }

    /// Ref `i`'s annotation `key`, if it has one.
    pub fn annotation(&self, i: u32, key: &str) -> Option<&[u8]> {
        let (_, _, a, m) = self.ref_fields(i);
        fn take<'a>(p: &mut &'a [u8]) -> Option<&'a [u8]> {
            let n = u32::from_le_bytes(p.get(..4)?.try_into().ok()?) as usize;
            let s = p.get(4..4 + n)?;
            *p = &p[4 + n..];
            Some(s)
        }
        let mut p = &self.heap()[a..a + m];
        while !p.is_empty() {
            let k = take(&mut p)?;
            let v = take(&mut p)?;
            if k == key.as_bytes() {
                return Some(v);
            }
        }
        None
    }

    /// Stored DNAs of the space, named or not: what its segment must hold.
    pub fn stored_len(&self) -> usize {
        self.stored
    }

    pub fn stored(&self) -> Vec<Digest> {
        self.bytes[self.at_stored..self.at_stored + 32 * self.stored]
            .chunks_exact(32)
            .map(|c| Digest(c.try_into().unwrap()))
            .collect()
    }

    /// The entry of a digest (binary search: entries are in digest order).
    pub fn entry(&self, d: &Digest) -> Option<usize> {
        let (mut lo, mut hi) = (0, self.entries);
        while lo < hi {
            let mid = (lo + hi) / 2;
            match self.digest_bytes(mid).cmp(&d.0[..]) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(mid),
            }
        }
        None
    }

    /// Writes the table into `dir` (a temporary file renamed over the old one); a failure
    /// only means the next process builds it again.
    pub fn save(&self, dir: &Path) {
        let Bytes::Owned(b) = &self.bytes else {
            return;
        };
        let tmp = dir.join(format!(
            ".{FILE}.{}.{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let ok = std::fs::create_dir_all(dir).is_ok()
            && std::fs::write(&tmp, b).is_ok()
            && std::fs::rename(&tmp, dir.join(FILE)).is_ok();
        if !ok {
            let _ = std::fs::remove_file(&tmp);
        }
    }

    /// The table kept in `dir` for `space` at catalogue state `stamp`, if it is whole.
    fn load(dir: &Path, space: &Digest, stamp: CatStamp) -> Option<SpaceTable> {
        SpaceTable::parse(Bytes::Mapped(map_file(dir)?.ok()?), space, stamp)
    }
}

/// The table file of `dir`, mapped; `None` when there is none.
fn map_file(dir: &Path) -> Option<std::io::Result<memmap2::Mmap>> {
    let f = std::fs::File::open(dir.join(FILE)).ok()?;
    // SAFETY: table files are written whole under another name and renamed into place,
    // never modified in place; the checksum is verified before any use.
    Some(unsafe { memmap2::Mmap::map(&f) })
}

/// Row number of each entry in a segment, and entry of each row, for one table and one
/// segment. `NONE` where there is none.
pub struct RowMap {
    pub row_of: Vec<u32>,
    pub entry_of: Vec<u32>,
}

pub const NONE: u32 = u32::MAX;

impl RowMap {
    pub fn build(table: &SpaceTable, rows: &[Digest]) -> RowMap {
        let mut row_of = vec![NONE; table.len()];
        let mut entry_of = vec![NONE; rows.len()];
        // Rows are in digest order after a reindex, as entries are: walk both, and search
        // only for rows out of that order (appended since).
        let mut next = 0usize;
        for (r, d) in rows.iter().enumerate() {
            let found = if next < table.len() && table.digest_bytes(next) == &d.0[..] {
                next += 1;
                Some(next - 1)
            } else {
                let e = table.entry(d);
                if let Some(e) = e {
                    next = e + 1;
                }
                e
            };
            if let Some(e) = found {
                // The first row of a digest counts (a segment holds each DNA once).
                if row_of[e] == NONE {
                    row_of[e] = r as u32;
                    entry_of[r] = e as u32;
                }
            }
        }
        RowMap { row_of, entry_of }
    }
}

/// What identifies a segment's state on disk: its files' identities and the length of
/// `rows.bin`, which every append grows. Bytes rewritten in place need no stamp: a kept
/// segment maps the files, sees such bytes, and checks each part of a row as it reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegStamp {
    ids: [(u64, u64); 4],
    rows_len: u64,
}

impl SegStamp {
    pub fn of(dir: &Path) -> Option<SegStamp> {
        let one = |name: &str| std::fs::metadata(dir.join(name)).ok();
        let rows = one("rows.bin")?;
        Some(SegStamp {
            ids: [
                file_id(&rows),
                file_id(&one("a.bin")?),
                file_id(&one("b.bin")?),
                file_id(&one("c.bin")?),
            ],
            rows_len: rows.len(),
        })
    }
}

#[cfg(unix)]
fn file_id(m: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

#[cfg(not(unix))]
fn file_id(_: &std::fs::Metadata) -> (u64, u64) {
    // No stable identity here: a fresh value every time, so nothing is ever reused.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    (
        u64::MAX,
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
    )
}

/// An open segment as a query uses it: checked, holding a row of every entry of `table`,
/// with the state its files were in.
#[derive(Clone)]
pub struct OpenSegment {
    pub seg: Arc<super::Segment>,
    pub map: Arc<RowMap>,
    /// The segment's column file of codes, looked up on first use (`columns.rs`).
    pub cols: Arc<super::columns::Slot>,
    stamp: Option<SegStamp>,
    table: Arc<SpaceTable>,
}

impl OpenSegment {
    /// `seg` as opened and synced for `table`; `stamp` taken before it was opened.
    pub fn new(seg: super::Segment, table: &Arc<SpaceTable>, stamp: Option<SegStamp>) -> Self {
        let map = RowMap::build(table, seg.rows());
        OpenSegment {
            seg: Arc::new(seg),
            map: Arc::new(map),
            cols: Arc::default(),
            stamp,
            table: table.clone(),
        }
    }
}

/// What this process keeps for one index directory (one space of one store).
struct Kept {
    table: Arc<SpaceTable>,
    /// The segment last opened and synced, reused while its files are unchanged.
    seg: Option<OpenSegment>,
    used: u64,
}

/// Index directories kept at most (each holds its table and an open segment; a server
/// has one per space, tests open many stores).
const KEPT: usize = 32;

fn kept() -> &'static Mutex<(u64, HashMap<PathBuf, Kept>)> {
    static K: OnceLock<Mutex<(u64, HashMap<PathBuf, Kept>)>> = OnceLock::new();
    K.get_or_init(Default::default)
}

/// The table of `space` for the catalogue's current state: kept by this process, else
/// read from `dir` (written by whichever process built it for this state), else built
/// from the catalogue's records.
pub fn table(
    dir: &Path,
    catalogue: &crate::catalogue::Catalogue,
    space: &Digest,
) -> Result<Arc<SpaceTable>, crate::Error> {
    let stamp = catalogue.state_stamp()?;
    {
        let mut k = kept().lock().unwrap_or_else(|p| p.into_inner());
        let (clock, map) = &mut *k;
        *clock += 1;
        if let Some(e) = map.get_mut(dir) {
            if e.table.stamp == stamp {
                e.used = *clock;
                return Ok(e.table.clone());
            }
        }
    }
    // A table built here is written by the caller once its segment opened
    // ([`SpaceTable::persist`]), so an index directory never holds a table alone.
    let t = Arc::new(match SpaceTable::load(dir, space, stamp) {
        Some(t) => t,
        None => SpaceTable::build(&catalogue.snapshot_records()?, space, stamp),
    });
    let mut k = kept().lock().unwrap_or_else(|p| p.into_inner());
    let (clock, map) = &mut *k;
    if map.len() >= KEPT && !map.contains_key(dir) {
        if let Some(old) = map
            .iter()
            .min_by_key(|(_, e)| e.used)
            .map(|(p, _)| p.clone())
        {
            map.remove(&old);
        }
    }
    let used = *clock;
    let e = map.entry(dir.to_path_buf()).or_insert_with(|| Kept {
        table: t.clone(),
        seg: None,
        used,
    });
    e.table = t.clone();
    e.used = used;
    Ok(t)
}

/// The kept segment, for `table`, when its files are the ones it mapped and no row was
/// appended since, and it holds a row of every entry of `table`. A segment kept for an older table is mapped again (O(N)
/// hash lookups, once per catalogue change).
pub fn kept_segment(dir: &Path, table: &Arc<SpaceTable>) -> Option<OpenSegment> {
    let kept_one = {
        let k = kept().lock().unwrap_or_else(|p| p.into_inner());
        k.1.get(dir)?.seg.clone()?
    };
    let now = SegStamp::of(dir)?;
    if kept_one.stamp.as_ref() != Some(&now) {
        return None;
    }
    if Arc::ptr_eq(&kept_one.table, table) {
        return Some(kept_one);
    }
    let map = RowMap::build(table, kept_one.seg.rows());
    if map.row_of.contains(&NONE) {
        return None;
    }
    let fresh = OpenSegment {
        seg: kept_one.seg,
        map: Arc::new(map),
        cols: kept_one.cols,
        stamp: kept_one.stamp,
        table: table.clone(),
    };
    keep_segment(dir, fresh.clone());
    Some(fresh)
}

/// Keeps a segment opened and synced (for the table it names).
pub fn keep_segment(dir: &Path, seg: OpenSegment) {
    let mut k = kept().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(e) = k.1.get_mut(dir) {
        e.seg = Some(seg);
    }
}

/// Forgets every kept table and segment (benches measure a cold process).
pub fn forget() {
    kept().lock().unwrap_or_else(|p| p.into_inner()).1.clear();
}

/// What is wrong with the table file in `dir`, if there is one and it is damaged (for
/// `verify`; a table of an older catalogue state is not damage: it is rebuilt when read).
pub fn check_file(dir: &Path) -> Option<String> {
    let map = match map_file(dir)? {
        Ok(m) => m,
        Err(e) => return Some(e.to_string()),
    };
    SpaceTable::parse_any(Bytes::Mapped(map))
        .err()
        .map(|e| format!("{FILE}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::{DnaRecord, RefRecord};
    use crate::refname::RefName;

    fn records() -> SharedRecords {
        let d = |i: u8| Digest([i; 32]);
        let dna = |space: u8, images: u64| DnaRecord {
            space: Digest([space; 32]),
            dist: "histogram-8".into(),
            images,
            stored_bytes: 0,
            raw_bytes: 0,
            created: 0,
        };
        let r = |name: &str, digest: u8, ann: &[(&str, &str)]| {
            (
                RefName::parse(name).unwrap(),
                RefRecord {
                    digest: d(digest),
                    created: 0,
                    annotations: ann
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                },
            )
        };
        SharedRecords {
            // Refs sorted by name, as the catalogue lists them.
            refs: Arc::new(vec![
                r("a/one:v1", 9, &[("split", "train"), ("zz", "")]),
                r("a/one:v2", 3, &[]),
                r("b/two:latest", 9, &[("split", "te\u{0}st")]),
                r("c/other-space:x", 5, &[("only", "here")]),
            ]),
            // DNA 7 is stored but unnamed; DNA 5 is of another space.
            dnas: Arc::new(vec![
                (d(3), dna(1, 30)),
                (d(5), dna(2, 50)),
                (d(7), dna(1, 70)),
                (d(9), dna(1, 90)),
            ]),
        }
    }

    #[test]
    fn a_table_holds_each_named_dna_with_its_names_and_annotations_and_reads_back() {
        let space = Digest([1; 32]);
        let stamp = (42, 7);
        let t = SpaceTable::build(&records(), &space, stamp);
        assert_eq!(t.len(), 2, "DNAs 3 and 9 are named in this space");
        assert_eq!((t.digest(0), t.images(0)), (Digest([3; 32]), 30));
        assert_eq!((t.digest(1), t.images(1)), (Digest([9; 32]), 90));
        let names = |e: usize| -> Vec<&str> { t.refs_of(e).map(|i| t.name(i)).collect() };
        assert_eq!(names(0), vec!["a/one:v2"]);
        assert_eq!(names(1), vec!["a/one:v1", "b/two:latest"]);
        let r9: Vec<u32> = t.refs_of(1).collect();
        assert_eq!(t.tag(r9[0]), "v1");
        assert_eq!(t.annotation(r9[0], "split"), Some(&b"train"[..]));
        assert_eq!(t.annotation(r9[0], "zz"), Some(&b""[..]));
        assert_eq!(t.annotation(r9[1], "split"), Some("te\u{0}st".as_bytes()));
        assert_eq!(t.annotation(r9[1], "zz"), None);
        assert_eq!(
            t.keys,
            BTreeSet::from(["split".to_string(), "zz".to_string()])
        );
        let mut stored = t.stored();
        stored.sort();
        assert_eq!(
            stored,
            vec![Digest([3; 32]), Digest([7; 32]), Digest([9; 32])]
        );
        assert_eq!(t.entry(&Digest([9; 32])), Some(1));
        assert_eq!(t.entry(&Digest([7; 32])), None);
        // Written and read back in place: the same table; another state or space is not
        // read; a flipped byte is refused and reported.
        let dir = tempfile::tempdir().unwrap();
        t.save(dir.path());
        let back = SpaceTable::load(dir.path(), &space, stamp).unwrap();
        assert_eq!(&back.bytes[..], &t.bytes[..]);
        assert_eq!(
            back.refs_of(1).map(|i| back.name(i)).collect::<Vec<_>>(),
            names(1)
        );
        assert!(SpaceTable::load(dir.path(), &space, (42, 8)).is_none());
        assert!(SpaceTable::load(dir.path(), &space, (41, 7)).is_none());
        assert!(SpaceTable::load(dir.path(), &Digest([2; 32]), stamp).is_none());
        assert_eq!(check_file(dir.path()), None);
        let p = dir.path().join(FILE);
        let good = std::fs::read(&p).unwrap();
        for at in [0, 40, 70, HEAD + 5, good.len() / 2, good.len() - 1] {
            let mut b = good.clone();
            b[at] ^= 0x21;
            std::fs::write(&p, &b).unwrap();
            assert!(
                SpaceTable::load(dir.path(), &space, stamp).is_none(),
                "byte {at}"
            );
            assert!(check_file(dir.path()).is_some(), "byte {at}");
        }
        std::fs::write(&p, &good[..good.len() - 3]).unwrap();
        assert!(check_file(dir.path()).is_some());
    }
}
