//! What a query works from besides the summaries, kept per process: each space's table of
//! named DNAs (digest, images, the refs naming it) and the open summary segment with the
//! map from the table's entries to its rows.
//!
//! Both are built once per catalogue state and segment state, not per query: at 100,000
//! DNAs, grouping every ref by DNA and hashing every segment row costs tens of
//! milliseconds, which every query used to pay before computing a single bound. A query
//! now pays four `stat` calls to learn that nothing changed (docs/QUERY.md, cost model).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use crate::catalogue::SharedRecords;
use crate::format::Digest;

/// One DNA of the space that at least one ref names.
pub struct Entry {
    pub digest: Digest,
    pub images: u64,
    /// Its refs: a range of [`SpaceTable::ref_ids`].
    refs: (u32, u32),
}

/// The named DNAs of one space in one catalogue state, in digest order.
pub struct SpaceTable {
    /// The catalogue state it was built from, held so that its identity is not reused.
    pub records: SharedRecords,
    pub entries: Vec<Entry>,
    /// Indices into `records.refs`, grouped by entry (each group in name order).
    ref_ids: Vec<u32>,
    /// Every stored DNA of the space, named or not: what its segment must hold.
    pub stored: Vec<Digest>,
    /// Annotation keys that some ref of the space carries (for `--filter` errors).
    pub keys: BTreeSet<String>,
    pos: HashMap<Digest, u32>,
}

impl SpaceTable {
    /// Groups the refs of `space` by DNA: O(refs + DNAs), once per catalogue state.
    pub fn build(records: &SharedRecords, space: &Digest) -> SpaceTable {
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
        let mut entries: Vec<Entry> = Vec::new();
        let mut ref_ids = Vec::with_capacity(grouped.len());
        for (d, i) in grouped {
            match entries.last_mut() {
                Some(e) if e.digest == d => e.refs.1 += 1,
                _ => {
                    let at = ref_ids.len() as u32;
                    entries.push(Entry {
                        digest: d,
                        images: images[&d],
                        refs: (at, at + 1),
                    });
                }
            }
            ref_ids.push(i);
        }
        let pos = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.digest, i as u32))
            .collect();
        SpaceTable {
            records: records.clone(),
            entries,
            ref_ids,
            stored,
            keys,
            pos,
        }
    }

    /// Indices into `records.refs` of the refs naming entry `e`.
    pub fn refs_of(&self, e: usize) -> &[u32] {
        let (s, t) = self.entries[e].refs;
        &self.ref_ids[s as usize..t as usize]
    }

    /// The entry of a digest.
    pub fn entry(&self, d: &Digest) -> Option<usize> {
        self.pos.get(d).map(|&i| i as usize)
    }

    fn built_from(&self, records: &SharedRecords) -> bool {
        Arc::ptr_eq(&self.records.refs, &records.refs)
            && Arc::ptr_eq(&self.records.dnas, &records.dnas)
    }
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
        let mut row_of = vec![NONE; table.entries.len()];
        let mut entry_of = vec![NONE; rows.len()];
        for (r, d) in rows.iter().enumerate() {
            if let Some(e) = table.entry(d) {
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

/// The table of `space` for this catalogue state, from the cache or built (and kept).
pub fn table(dir: &Path, records: &SharedRecords, space: &Digest) -> Arc<SpaceTable> {
    {
        let mut k = kept().lock().unwrap_or_else(|p| p.into_inner());
        let (clock, map) = &mut *k;
        *clock += 1;
        if let Some(e) = map.get_mut(dir) {
            if e.table.built_from(records) {
                e.used = *clock;
                return e.table.clone();
            }
        }
    }
    let t = Arc::new(SpaceTable::build(records, space));
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
    t
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
