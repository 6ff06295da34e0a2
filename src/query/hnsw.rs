//! Prebuilt HNSW graphs over the summaries of a segment, for the fixed masks that matter:
//! every neuron, and each whole layer. hnsw_rs builds them (the only file that imports
//! it); the engine searches its own flat, read-only copy.
//!
//! A graph's distance is fixed when it is built, so a per-query mask cannot search one:
//! only a query whose mask is exactly a graph's mask uses it, and only on the approximate
//! path. Histogram graphs link rows by L1 between their one-byte mean codes (`c.bin`: the
//! mean bound of docs/QUERY.md at a resolution of bins / 256); Gaussian graphs by L2
//! between (mean, sd) pairs (NFD is its square). Candidates are re-ranked exactly by the
//! caller. Graphs are derived state, built by `reindex` once a space holds `min_rows()`
//! DNAs; rows appended after a build are not in the graph and are scanned by the caller.
//!
//! ## The flat graph (`graphs/<mask>/graph.bin`)
//! A graph file holds links only: a node is a segment row, and its vector is read in place
//! from the mapped segment (the mask's neurons are one contiguous range of every row), so
//! a graph costs 4 bytes a link and no copy of the vectors. Little-endian u32 words:
//! - a 64-byte header: `b"VDNAGRF\0"`, version, nodes, levels, entry node, 10 zero words;
//! - level 0, where every node is: `nodes + 1` offsets, then the links they delimit;
//! - each level above: its member count, the members (ascending), `count + 1` offsets,
//!   then the links.
//!
//! The search walks plain arrays (no locks, no per-node allocations): greedy descent
//! through the upper levels, then a best-first search of breadth `ef` on level 0 with a
//! per-thread visited list. Navigation reads the segment's vectors unchecked: a damaged
//! byte can only steer the search (which is approximate by definition), never an answer,
//! since every candidate is bounded with checked parts and its exact distance decides.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hnsw_rs::prelude::*;
use memmap2::Mmap;

use super::columns::rows_crc;
use super::nav;
use super::segment::{SegKind, Segment};
use crate::format::SpaceConfig;
use crate::Error;

/// L1 between mean-code vectors, vectorised ([`super::sketch::code_sad`]): the histogram
/// graphs' distance.
#[derive(Default, Clone, Copy)]
pub struct CodeL1;

impl Distance<u8> for CodeL1 {
    fn eval(&self, a: &[u8], b: &[u8]) -> f32 {
        super::sketch::code_sad(a, b) as f32
    }
}

/// A graph query's vector over the mask's neurons: mean codes for histogram graphs,
/// (mean, sd) pairs for Gaussian ones.
pub enum GraphQuery<'a> {
    Codes(&'a [u8]),
    Pairs(Vec<f64>),
}

/// What a graph's links were built over, as `meta.json` records it: a graph of another
/// kind or layout (an older build, such as hnsw_rs dumps) is not read.
fn vectors_of(kind: SegKind) -> &'static str {
    match kind {
        SegKind::Histogram { .. } => "flat graph v1 over c.bin mean codes, L1",
        SegKind::Gaussian => "flat graph v1 over a.bin (mean, sd), L2",
    }
}

/// Neighbours kept per node (hnsw_rs keeps twice as many on the bottom layer) and the
/// breadth of the search that links a new node, for a graph of `dims` dimensions: a build
/// costs about N x EF x 2M distances. Wide graphs (`all`, and any layer of 1,024 neurons
/// or more) get 24 and 200, the others 16 and 100: measured in the scale bench at
/// N = 100,000, the narrow layers answer at recall@5 1.0 either way, while `all` lost
/// recall with the smaller graph. `VDNA_DB_HNSW_M` and `VDNA_DB_HNSW_EF_CONSTRUCTION`
/// override both.
fn build_params(dims: usize) -> (usize, usize) {
    let (m, ef) = if dims >= 1024 { (24, 200) } else { (16, 100) };
    (
        knob("VDNA_DB_HNSW_M", m, 2),
        knob("VDNA_DB_HNSW_EF_CONSTRUCTION", ef, 2),
    )
}

/// A tuning knob: the environment variable `name` when it holds a number of at least
/// `min`, else `default`.
pub(super) fn knob(name: &str, default: usize, min: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|v| *v >= min)
        .unwrap_or(default)
}

/// Spaces with fewer DNAs get no graph: the bound scan is as fast there.
pub fn min_rows() -> usize {
    knob("VDNA_DB_HNSW_MIN_ROWS", 2000, 0)
}

/// The fixed masks a space gets graphs for: `all` and each layer, as (key, layers).
pub fn graph_masks(space: &SpaceConfig) -> Vec<(String, Vec<usize>)> {
    let mut out = vec![("all".to_string(), (0..space.layers.len()).collect())];
    for (i, l) in space.layers.iter().enumerate() {
        out.push((l.name.clone(), vec![i]));
    }
    out
}

/// A row's vector for a graph over `layers`, each layer's part appended by `part`; an
/// error when the row fails its checksum (a graph is built right after its segment, so
/// that is damage on disk: reindex again).
fn row_vector<T>(
    seg: &Segment,
    row: usize,
    layers: &[usize],
    part: impl Fn(&Segment, usize, usize, &mut Vec<T>) -> Option<()>,
) -> Result<Vec<T>, Error> {
    let mut v = Vec::new();
    for &l in layers {
        part(seg, row, l, &mut v).ok_or_else(|| {
            Error::Invalid(format!(
                "summary row {row} fails its checksum while building a graph (run vdna-db reindex)"
            ))
        })?;
    }
    Ok(v)
}

/// Appends layer `l`'s mean codes of row `r`.
fn codes_part(seg: &Segment, r: usize, l: usize, v: &mut Vec<u8>) -> Option<()> {
    v.extend_from_slice(seg.codes(r, l)?);
    Some(())
}

/// Appends layer `l`'s (mean, sd) pairs of row `r`, as f32.
fn pairs_part(seg: &Segment, r: usize, l: usize, v: &mut Vec<f32>) -> Option<()> {
    let (s, e) = (seg.layer_starts()[l], seg.layer_starts()[l + 1]);
    v.extend(
        seg.gauss_in(r, &[l])?[2 * s..2 * e]
            .iter()
            .map(|x| *x as f32),
    );
    Some(())
}

/// Where a space's graphs live. (Graphs of means as f32 lived in `hnsw/`; a build
/// removes that directory.)
const ROOT: &str = "graphs";

fn graph_dir(index_dir: &Path, key: &str) -> PathBuf {
    index_dir.join(ROOT).join(key)
}

/// The first neuron of `layers` (contiguous, ascending) and the one past their last.
fn span(seg: &Segment, layers: &[usize]) -> (usize, usize) {
    let starts = seg.layer_starts();
    match (layers.first(), layers.last()) {
        (Some(&a), Some(&b)) => (starts[a], starts[b + 1]),
        _ => (0, 0),
    }
}

/// Builds (replacing) every graph of a segment when it has at least `min_rows` rows;
/// returns how many were built. Graphs are built concurrently, each by one thread (see
/// [`build_one`]), so the result does not depend on the threads.
pub fn build(
    index_dir: &Path,
    seg: &Segment,
    space: &SpaceConfig,
    min_rows: usize,
) -> Result<usize, Error> {
    use rayon::prelude::*;
    let n = seg.rows().len();
    for root in [index_dir.join(ROOT), index_dir.join("hnsw")] {
        if root.exists() {
            std::fs::remove_dir_all(&root).map_err(|e| Error::io(&root, e))?;
        }
    }
    if n < min_rows.max(1) {
        return Ok(0);
    }
    let root = index_dir.join(ROOT);
    let masks = graph_masks(space);
    // Widest first, so the long `all` build starts at once and the layers fill the
    // other threads.
    let width = |layers: &[usize]| -> u32 { layers.iter().map(|&l| space.layers[l].neurons).sum() };
    let mut order: Vec<usize> = (0..masks.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(width(&masks[i].1)));
    let rows_check = rows_crc(seg, n);
    order
        .par_iter()
        .with_max_len(1)
        .map(|&i| {
            let (key, layers) = &masks[i];
            let tmp = root.join(format!(".{key}.tmp"));
            std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
            let mut nav_bytes = None;
            let words = match seg.kind() {
                SegKind::Histogram { .. } => {
                    let data = (0..n)
                        .map(|r| row_vector(seg, r, layers, codes_part))
                        .collect::<Result<Vec<_>, _>>()?;
                    nav_bytes = compact_vectors(&data);
                    build_one(CodeL1, &data)
                }
                SegKind::Gaussian => {
                    let data = (0..n)
                        .map(|r| row_vector(seg, r, layers, pairs_part))
                        .collect::<Result<Vec<_>, _>>()?;
                    build_one(DistL2 {}, &data)
                }
            };
            let bytes = le_bytes(&words);
            let file = tmp.join(FILE);
            failpoint!("graph::write", |e| Error::io(&file, e));
            std::fs::write(&file, &bytes).map_err(|e| Error::io(&file, e))?;
            let (s, e) = span(seg, layers);
            let mut meta = serde_json::json!({
                "rows": n,
                "rows_crc32": rows_check,
                "neurons": [s, e],
                "vectors": vectors_of(seg.kind()),
                "crc32": { FILE: crc32fast::hash(&bytes) },
            });
            if let Some(nb) = nav_bytes {
                let file = tmp.join(nav::FILE);
                std::fs::write(&file, &nb).map_err(|e| Error::io(&file, e))?;
                meta["crc32"][nav::FILE] = crc32fast::hash(&nb).into();
            }
            meta["check"] = meta_crc(&meta).into();
            std::fs::write(tmp.join("meta.json"), meta.to_string())
                .map_err(|e| Error::io(&tmp, e))?;
            let dest = graph_dir(index_dir, key);
            failpoint!("graph::rename", |e| Error::io(&dest, e));
            std::fs::rename(&tmp, &dest).map_err(|e| Error::io(&dest, e))?;
            Ok(())
        })
        .collect::<Result<Vec<()>, Error>>()?;
    Ok(masks.len())
}

/// The compact-vector file's bytes for a histogram graph over `data` (row `i` is node
/// `i`), when it is wide enough to have one.
fn compact_vectors(data: &[Vec<u8>]) -> Option<Vec<u8>> {
    let dims = data.first().map_or(0, Vec::len);
    (dims >= nav::MIN_DIMS).then(|| {
        let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
        let basis = nav::fit(&refs, dims, nav::dims_for(dims));
        nav::file_bytes(&basis, dims, &refs)
    })
}

/// Adds compact vectors to the wide histogram graphs of `seg`'s space built without them
/// (by an earlier version), leaving the graphs as they are: for a store indexed before
/// the file existed, where a reindex would recompute every summary. Returns how many were
/// added. The file is renamed into place before the metadata that records it, so a crash
/// between the two leaves a graph without it (and a stray file that `verify` reports and
/// the next call replaces).
pub fn add_compact_vectors(index_dir: &Path, seg: &Segment) -> Result<usize, Error> {
    let Ok(rd) = std::fs::read_dir(index_dir.join(ROOT)) else {
        return Ok(0);
    };
    let mut added = 0;
    for e in rd.flatten() {
        let dir = e.path();
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let Some(mut meta) = current_meta(&dir, seg.kind()) else {
            continue;
        };
        let rows = meta["rows"].as_u64().unwrap_or(u64::MAX) as usize;
        let starts = seg.layer_starts();
        let span = meta_neurons(&meta);
        let layers: Vec<usize> = match span {
            Some((s, e)) => (0..starts.len().saturating_sub(1))
                .filter(|&l| starts[l] >= s && starts[l + 1] <= e)
                .collect(),
            None => continue,
        };
        if !matches!(seg.kind(), SegKind::Histogram { .. })
            || !meta_whole(&meta)
            || meta["crc32"].get(nav::FILE).is_some()
            || rows > seg.rows().len()
            || meta["rows_crc32"].as_u64() != Some(rows_crc(seg, rows).into())
            || span != Some(self::span(seg, &layers))
        {
            continue;
        }
        let data = (0..rows)
            .map(|r| row_vector(seg, r, &layers, codes_part))
            .collect::<Result<Vec<_>, _>>()?;
        let Some(bytes) = compact_vectors(&data) else {
            continue;
        };
        let tmp = dir.join(format!(".{}.tmp", nav::FILE));
        std::fs::write(&tmp, &bytes).map_err(|e| Error::io(&tmp, e))?;
        let file = dir.join(nav::FILE);
        std::fs::rename(&tmp, &file).map_err(|e| Error::io(&file, e))?;
        meta["crc32"][nav::FILE] = crc32fast::hash(&bytes).into();
        if let Some(o) = meta.as_object_mut() {
            o.remove("check");
        }
        meta["check"] = meta_crc(&meta).into();
        let tmp = dir.join(".meta.json.tmp");
        std::fs::write(&tmp, meta.to_string()).map_err(|e| Error::io(&tmp, e))?;
        let file = dir.join("meta.json");
        std::fs::rename(&tmp, &file).map_err(|e| Error::io(&file, e))?;
        added += 1;
    }
    Ok(added)
}

/// The CRC-32 of every file of a graph directory but `meta.json`, by name.
fn checksums(dir: &Path) -> std::io::Result<std::collections::BTreeMap<String, u32>> {
    let mut out = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name != "meta.json" && e.file_type()?.is_file() {
            out.insert(name, crc32fast::hash(&std::fs::read(e.path())?));
        }
    }
    Ok(out)
}

/// The CRC-32 of a graph's metadata without its `check` field.
fn meta_crc(meta: &serde_json::Value) -> u32 {
    let mut m = meta.clone();
    if let Some(o) = m.as_object_mut() {
        o.remove("check");
    }
    crc32fast::hash(m.to_string().as_bytes())
}

/// The neuron range a graph's metadata records: its mask's first neuron and the one past
/// its last.
fn meta_neurons(meta: &serde_json::Value) -> Option<(usize, usize)> {
    let n = meta["neurons"].as_array()?;
    Some((n.first()?.as_u64()? as usize, n.get(1)?.as_u64()? as usize))
}

/// Whether a graph's metadata passes its own checksum.
fn meta_whole(meta: &serde_json::Value) -> bool {
    meta["check"].as_u64() == Some(u64::from(meta_crc(meta)))
}

/// Checks a graph directory against the checksums its `meta.json` records (and the
/// metadata against its own); the problem found, if any (for `verify`, which checks the
/// file's structure after).
fn check_graph(dir: &Path, meta: &serde_json::Value) -> Option<String> {
    if !meta_whole(meta) {
        return Some("meta.json fails its checksum".into());
    }
    let Some(want) = meta["crc32"].as_object() else {
        return Some("no checksums recorded".into());
    };
    let got = match checksums(dir) {
        Ok(g) => g,
        Err(e) => return Some(e.to_string()),
    };
    if got.len() != want.len() {
        return Some(format!("{} files, {} recorded", got.len(), want.len()));
    }
    for (name, crc) in &got {
        if want.get(name).and_then(|v| v.as_u64()) != Some(u64::from(*crc)) {
            return Some(format!("{name} fails its checksum"));
        }
    }
    None
}

/// Problems of the graphs under a space's index directory (for `verify`): checksums, the
/// file's structure, and the format.
pub fn verify(index_dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(index_dir.join(ROOT)) else {
        return out;
    };
    for e in rd.flatten() {
        let dir = e.path();
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let meta = std::fs::read(dir.join("meta.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
        let problem = match &meta {
            None => Some("meta.json is missing or unreadable".to_string()),
            Some(m) => check_graph(&dir, m).or_else(|| {
                let known = [SegKind::Histogram { q: 0, bins: 0 }, SegKind::Gaussian]
                    .iter()
                    .any(|k| m["vectors"].as_str() == Some(vectors_of(*k)));
                if !known {
                    return Some("an older graph format, not read (run vdna-db reindex)".into());
                }
                let flat = match map_file(&dir.join(FILE)).and_then(Flat::parse) {
                    Ok(f) => f,
                    Err(e) => return Some(e),
                };
                load_nav(&dir, m, flat.nodes).err()
            }),
        };
        if let Some(p) = problem {
            out.push((dir.display().to_string(), p));
        }
    }
    out
}

/// Builds one graph of `data` (row `i` is node `i`) with distance `dist`; returns the
/// graph file's words.
fn build_one<T, D>(dist: D, data: &[Vec<T>]) -> Vec<u32>
where
    T: Clone + Send + Sync + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
    D: Distance<T> + Send + Sync,
{
    let (m, ef) = build_params(data.first().map_or(0, Vec::len));
    let h = Hnsw::<T, D>::new(m, data.len(), 16, ef, dist);
    // One insertion at a time, in row order: hnsw_rs draws each node's level from a
    // generator with a fixed seed, so a serial build is a pure function of the rows and the
    // same catalogue always gives byte-identical graph files. A parallel insert draws the
    // levels in whatever order the threads arrive and links nodes that race differently,
    // so two rebuilds answered approximate queries differently (issue 19). Graphs of
    // different masks are built concurrently instead.
    for (id, v) in data.iter().enumerate() {
        h.insert((v.as_slice(), id));
    }
    flatten(&h, data.len())
}

/// The graph file's words for a built hnsw_rs graph of `n` nodes (ids `0..n`).
fn flatten<T, D>(h: &Hnsw<T, D>, n: usize) -> Vec<u32>
where
    T: Clone + Send + Sync,
    D: Distance<T> + Send + Sync,
{
    let pi = h.get_point_indexation();
    let top = if n == 0 {
        0
    } else {
        pi.get_max_level_observed() as usize
    };
    // links[node][level], for levels 0..=the node's level.
    let mut links: Vec<Vec<Vec<u32>>> = vec![Vec::new(); n];
    for level in 0..=top {
        for p in pi.get_layer_iterator(level) {
            let id = p.get_origin_id();
            links[id] = p
                .get_neighborhood_id()
                .into_iter()
                .take(level + 1)
                .map(|l| l.iter().map(|nb| nb.get_origin_id() as u32).collect())
                .collect();
        }
    }
    // hnsw_rs's entry point is the first node inserted at the top level.
    let entry = pi
        .get_layer_iterator(top)
        .next()
        .map_or(0, |p| p.get_origin_id() as u32);
    let mut w = vec![0u32; HEADER_WORDS];
    w[..2].copy_from_slice(&magic_words());
    w[2] = VERSION;
    w[3] = n as u32;
    w[4] = (top + 1) as u32;
    w[5] = entry;
    let level_words = |w: &mut Vec<u32>, members: &[u32], level: usize| {
        let mut off = 0u32;
        w.push(0);
        for &m in members {
            off += links[m as usize].get(level).map_or(0, |l| l.len() as u32);
            w.push(off);
        }
        for &m in members {
            w.extend(links[m as usize].get(level).into_iter().flatten());
        }
    };
    let all: Vec<u32> = (0..n as u32).collect();
    level_words(&mut w, &all, 0);
    for level in 1..=top {
        let members: Vec<u32> = (0..n as u32)
            .filter(|&i| links[i as usize].len() > level)
            .collect();
        w.push(members.len() as u32);
        w.extend(&members);
        level_words(&mut w, &members, level);
    }
    w
}

/// The graph file of a graph directory.
const FILE: &str = "graph.bin";
const MAGIC: &[u8; 8] = b"VDNAGRF\0";
const VERSION: u32 = 1;
const HEADER_WORDS: usize = 16;

/// The magic as the file's first two words.
fn magic_words() -> [u32; 2] {
    [
        u32::from_le_bytes(MAGIC[..4].try_into().unwrap()),
        u32::from_le_bytes(MAGIC[4..].try_into().unwrap()),
    ]
}

/// A graph file's bytes.
fn le_bytes(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn map_file(p: &Path) -> Result<Mmap, String> {
    let f = std::fs::File::open(p).map_err(|e| format!("{}: {e}", p.display()))?;
    // SAFETY: graph files are written once into a temporary directory and renamed into
    // place, never modified in place; a rebuild replaces the directory.
    unsafe { Mmap::map(&f) }.map_err(|e| format!("{}: {e}", p.display()))
}

/// One level above 0: its members (ascending) and their links, as word ranges.
struct Upper {
    members: std::ops::Range<usize>,
    offsets: usize,
    links: usize,
}

/// A graph file, mapped and checked: every offset in order and every link a node.
struct Flat {
    map: Mmap,
    nodes: usize,
    entry: u32,
    /// Word index of level 0's offsets, then of its links.
    l0: (usize, usize),
    upper: Vec<Upper>,
}

impl Flat {
    fn words(&self) -> &[u32] {
        words_of(&self.map)
    }

    fn parse(map: Mmap) -> Result<Flat, String> {
        let w = words_of(&map);
        let bad = |what: &str| Err(format!("graph.bin: {what}"));
        if !map.len().is_multiple_of(4) || w.len() < HEADER_WORDS {
            return bad("truncated");
        }
        if w[..2] != magic_words() || w[2] != VERSION {
            return bad("not a version-1 graph file");
        }
        let (nodes, levels, entry) = (w[3] as usize, w[4] as usize, w[5]);
        if levels == 0 || levels > 64 || (nodes > 0 && entry as usize >= nodes) {
            return bad("bad header");
        }
        // One level's offsets (count + 1, from 0, ascending) and links (all nodes) from
        // word `at`; the word after them.
        let level = |at: usize, count: usize| -> Result<usize, String> {
            let offs = w.get(at..at + count + 1).ok_or("truncated offsets")?;
            if offs[0] != 0 || offs.windows(2).any(|p| p[0] > p[1]) {
                return Err("offsets out of order".into());
            }
            let end = at + count + 1 + offs[count] as usize;
            let links = w.get(at + count + 1..end).ok_or("truncated links")?;
            if links.iter().any(|&l| l as usize >= nodes) {
                return Err("a link to no node".into());
            }
            Ok(end)
        };
        let l0 = (HEADER_WORDS, HEADER_WORDS + nodes + 1);
        let mut at = level(HEADER_WORDS, nodes).map_err(|e| format!("graph.bin: {e}"))?;
        let mut upper = Vec::new();
        for _ in 1..levels {
            let count = *w.get(at).ok_or("graph.bin: truncated level")? as usize;
            let members = at + 1..at + 1 + count;
            let m = w
                .get(members.clone())
                .ok_or("graph.bin: truncated members")?;
            if m.windows(2).any(|p| p[0] >= p[1]) || m.iter().any(|&x| x as usize >= nodes) {
                return bad("level members out of order");
            }
            let offsets = members.end;
            at = level(offsets, count).map_err(|e| format!("graph.bin: {e}"))?;
            upper.push(Upper {
                members,
                offsets,
                links: offsets + count + 1,
            });
        }
        if at != w.len() {
            return bad("trailing bytes");
        }
        Ok(Flat {
            map,
            nodes,
            entry,
            l0,
            upper,
        })
    }

    /// The links of `node` on `level` (none when it is not on that level).
    fn links(&self, level: usize, node: u32) -> &[u32] {
        let w = self.words();
        let (offsets, links, i) = if level == 0 {
            (self.l0.0, self.l0.1, node as usize)
        } else {
            let u = &self.upper[level - 1];
            match w[u.members.clone()].binary_search(&node) {
                Ok(i) => (u.offsets, u.links, i),
                Err(_) => return &[],
            }
        };
        let (a, b) = (w[offsets + i] as usize, w[offsets + i + 1] as usize);
        &w[links + a..links + b]
    }

    /// The `n` nodes nearest by `dist` that a search of breadth `ef` finds, nearest
    /// first. Distances must not be negative (their bits then order as the numbers do).
    fn search(&self, n: usize, ef: usize, dist: impl Fn(u32) -> f32) -> Vec<u32> {
        if self.nodes == 0 {
            return Vec::new();
        }
        let key = |x: f32| x.to_bits();
        let mut cur = self.entry;
        let mut d = key(dist(cur));
        for level in (1..=self.upper.len()).rev() {
            loop {
                let mut moved = false;
                for &nb in self.links(level, cur) {
                    let dn = key(dist(nb));
                    if (dn, nb) < (d, cur) {
                        (d, cur, moved) = (dn, nb, true);
                    }
                }
                if !moved {
                    break;
                }
            }
        }
        let ef = ef.max(n).max(1);
        VISITED.with(|v| {
            let mut v = v.borrow_mut();
            let mut seen = v.start(self.nodes);
            seen.mark(cur);
            // Nodes to expand, nearest first; the best `ef` found, farthest on top.
            let mut todo = BinaryHeap::from([Reverse((d, cur))]);
            let mut best = BinaryHeap::from([(d, cur)]);
            while let Some(Reverse((dc, c))) = todo.pop() {
                if best.len() >= ef && dc > best.peek().map_or(u32::MAX, |b| b.0) {
                    break;
                }
                for &nb in self.links(0, c) {
                    if !seen.mark(nb) {
                        continue;
                    }
                    let dn = key(dist(nb));
                    if best.len() < ef || dn < best.peek().map_or(u32::MAX, |b| b.0) {
                        todo.push(Reverse((dn, nb)));
                        best.push((dn, nb));
                        if best.len() > ef {
                            best.pop();
                        }
                    }
                }
            }
            let mut out = best.into_vec();
            out.sort_unstable();
            out.into_iter().take(n).map(|(_, id)| id).collect()
        })
    }
}

fn words_of(map: &Mmap) -> &[u32] {
    // SAFETY: a mapping is page-aligned; every bit pattern is a valid u32; graph files are
    // little-endian, as is every target this crate builds for (see format::layer).
    let (head, w, _) = unsafe { map.align_to::<u32>() };
    assert!(head.is_empty(), "mappings are page-aligned");
    w
}

/// A visited list reused across searches: a node is visited when its mark equals the
/// current epoch, so starting a search costs nothing but a counter (and a clear every
/// 2^32 searches).
#[derive(Default)]
struct Visited {
    marks: Vec<u32>,
    epoch: u32,
}

impl Visited {
    fn start(&mut self, nodes: usize) -> Seen<'_> {
        if self.marks.len() < nodes {
            self.marks.resize(nodes, 0);
        }
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.marks.fill(0);
            self.epoch = 1;
        }
        Seen {
            marks: &mut self.marks,
            epoch: self.epoch,
        }
    }
}

struct Seen<'a> {
    marks: &'a mut [u32],
    epoch: u32,
}

impl Seen<'_> {
    /// Marks `node` visited; false when it already was.
    fn mark(&mut self, node: u32) -> bool {
        let m = &mut self.marks[node as usize];
        let fresh = *m != self.epoch;
        *m = self.epoch;
        fresh
    }
}

thread_local! {
    static VISITED: std::cell::RefCell<Visited> = std::cell::RefCell::default();
}

/// A loaded graph and the rows it covers.
struct Loaded {
    flat: Flat,
    rows: usize,
    neurons: (usize, usize),
    /// The rows' compact vectors ([`nav`]), when the graph was built with them.
    nav: Option<nav::Nav>,
}

/// The compact vectors of the graph in `dir` (`nodes` nodes), when its metadata
/// records a file of them: mapped and checked against the graph's shape. (Checksums are
/// checked by the callers.)
fn load_nav(
    dir: &Path,
    meta: &serde_json::Value,
    nodes: usize,
) -> Result<Option<nav::Nav>, String> {
    if meta["crc32"].get(nav::FILE).is_none() {
        return Ok(None);
    }
    let map = map_file(&dir.join(nav::FILE))?;
    let dims = match meta_neurons(meta) {
        Some((s, e)) if e >= s => e - s,
        _ => return Err("meta.json: no neuron range".into()),
    };
    nav::Nav::parse(map, dims, nodes).map(Some)
}

/// Loaded graphs by directory, with the self-checksum of the `meta.json` they were loaded
/// under: a rebuilt graph has new file checksums, so a new `check`, even when the rebuild
/// lands within the file system's timestamp granularity (an mtime key served a stale graph
/// after a quick rebuild).
type Cache = Mutex<HashMap<PathBuf, (u64, Arc<Loaded>)>>;

fn cache() -> &'static Cache {
    static CACHE: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The graph's `meta.json` when it is of the current format for `kind`.
fn current_meta(dir: &Path, kind: SegKind) -> Option<serde_json::Value> {
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("meta.json")).ok()?).ok()?;
    (meta["vectors"].as_str() == Some(vectors_of(kind))).then_some(meta)
}

/// The graph in `dir` for the segment `seg`, loaded and checked once per build; `None`
/// when there is none of the current format, or it fails its checks (the caller then
/// scans, which is always correct, and `verify` reports it).
fn load(dir: &Path, seg: &Segment) -> Option<Arc<Loaded>> {
    let meta = current_meta(dir, seg.kind())?;
    let check = meta["check"].as_u64()?;
    let mut c = cache().lock().unwrap_or_else(|p| p.into_inner());
    if let Some((t, g)) = c.get(dir) {
        // The files were checked when this copy was loaded, and they are never modified
        // in place (a rebuild replaces the directory, and the check with it).
        if *t == check {
            return Some(g.clone());
        }
    }
    // The file is mapped once and checked in place against the checksum its metadata
    // records (`verify` also reports stray files in the directory).
    let map = map_file(&dir.join(FILE)).ok()?;
    if !meta_whole(&meta) || meta["crc32"][FILE].as_u64() != Some(crc32fast::hash(&map).into()) {
        return None;
    }
    let rows = meta["rows"].as_u64()? as usize;
    // The rows must be the ones the graph was built over (a rebuilt segment removes its
    // graphs, so this holds unless files were moved by hand).
    if rows > seg.rows().len() || meta["rows_crc32"].as_u64() != Some(rows_crc(seg, rows).into()) {
        return None;
    }
    let neurons = meta_neurons(&meta)?;
    let flat = Flat::parse(map).ok()?;
    if flat.nodes != rows {
        return None;
    }
    let nav = load_nav(dir, &meta, rows).ok()?;
    if let Some(nv) = &nav {
        if meta["crc32"][nav::FILE].as_u64() != Some(crc32fast::hash(&nv.map).into()) {
            return None;
        }
    }
    let g = Arc::new(Loaded {
        flat,
        rows,
        neurons,
        nav,
    });
    c.insert(dir.to_path_buf(), (check, g.clone()));
    Some(g)
}

/// True when a graph of mask `key`, of the current format, has been built for this
/// segment's space (it may still fail its checks when loaded; `search` then answers
/// `None`).
pub fn exists(index_dir: &Path, key: &str, kind: SegKind) -> bool {
    current_meta(&graph_dir(index_dir, key), kind).is_some()
}

/// Searches the graph of mask `key`: returns the candidate rows, nearest first, how many
/// rows the graph covers, and whether they came from a scan of its compact vectors rather
/// than a walk; `None` when the space has no usable graph for it.
pub fn search(
    index_dir: &Path,
    seg: &Segment,
    key: &str,
    query: &GraphQuery<'_>,
    n: usize,
    ef: usize,
) -> Option<(Vec<usize>, usize, bool)> {
    let g = load(&graph_dir(index_dir, key), seg)?;
    let mut scanned = false;
    let (s, e) = g.neurons;
    let hits = match query {
        GraphQuery::Codes(q) => {
            let (m, stride) = seg.code_matrix()?;
            if q.len() != e - s || e > stride {
                return None;
            }
            let sad = |r: u32| {
                let at = r as usize * stride;
                // At most 255 a neuron: exact in f32 below 65,793 neurons.
                super::sketch::code_sad(q, &m[at + s..at + e]) as f32
            };
            match g
                .nav
                .as_ref()
                .filter(|nv| nv.scan_bytes() <= nav::scan_max_bytes())
            {
                None => g.flat.search(n, ef, sad),
                Some(nv) => {
                    scanned = true;
                    // Scan the compact vectors for the nearest few; hand on the `n`
                    // nearest of those by the graph's own distance.
                    let kept = nv.nearest(&nv.query(q), nav::scan_keep().max(ef));
                    let mut by_sad: Vec<(u32, u32)> =
                        kept.into_iter().map(|r| (sad(r) as u32, r)).collect();
                    by_sad.sort_unstable();
                    by_sad.into_iter().take(n).map(|(_, r)| r).collect()
                }
            }
        }
        GraphQuery::Pairs(q) => {
            let (m, stride) = seg.pair_matrix()?;
            if q.len() != 2 * (e - s) || 2 * e > stride {
                return None;
            }
            g.flat.search(n, ef, |r| {
                let at = r as usize * stride;
                let d: f64 = q
                    .iter()
                    .zip(&m[at + 2 * s..at + 2 * e])
                    .map(|(a, b)| (a - b) * (a - b))
                    .sum();
                d as f32
            })
        }
    };
    Some((
        hits.into_iter().map(|r| r as usize).collect(),
        g.rows,
        scanned,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// `rows` clustered code vectors of `dims` bytes (clusters of 8 around random
    /// centres), from a fixed seed.
    fn codes(rows: usize, dims: usize) -> Vec<Vec<u8>> {
        super::nav::tests::families(rows, dims, 5)
    }

    /// An hnsw_rs graph of `data` (row `i` is node `i`), built as `build_one` builds.
    fn built(data: &[Vec<u8>], m: usize, ef: usize) -> Hnsw<'_, u8, CodeL1> {
        let h = Hnsw::<u8, CodeL1>::new(m, data.len(), 16, ef, CodeL1);
        for (id, v) in data.iter().enumerate() {
            h.insert((v.as_slice(), id));
        }
        h
    }

    fn flat(words: &[u32], dir: &Path) -> Result<Flat, String> {
        let p = dir.join(FILE);
        std::fs::write(&p, le_bytes(words)).unwrap();
        Flat::parse(map_file(&p)?)
    }

    #[test]
    fn the_flat_graph_keeps_every_link_and_finds_what_brute_force_finds() {
        let t = tempfile::tempdir().unwrap();
        let data = codes(1200, 40);
        let h = built(&data, 12, 64);
        let g = flat(&flatten(&h, data.len()), t.path()).unwrap();
        assert_eq!(g.nodes, data.len());
        // Every node's links on every level, as hnsw_rs holds them.
        let pi = h.get_point_indexation();
        let mut seen = 0;
        for level in 0..=pi.get_max_level_observed() as usize {
            for p in pi.get_layer_iterator(level) {
                let id = p.get_origin_id() as u32;
                for (l, want) in p.get_neighborhood_id().iter().take(level + 1).enumerate() {
                    let want: Vec<u32> = want.iter().map(|n| n.get_origin_id() as u32).collect();
                    assert_eq!(g.links(l, id), &want[..], "node {id} level {l}");
                }
                seen += 1;
            }
        }
        assert_eq!(seen, data.len());
        assert_eq!(g.upper.len(), pi.get_max_level_observed() as usize);
        // Searches against brute force: the node itself first, and the 10 nearest.
        let (mut found, mut asked) = (0, 0);
        for r in (0..data.len()).step_by(7) {
            let q = &data[r];
            let hits = g.search(10, 48, |x| {
                crate::query::sketch::code_sad(q, &data[x as usize]) as f32
            });
            let mut all: Vec<(u32, u32)> = (0..data.len() as u32)
                .map(|x| (crate::query::sketch::code_sad(q, &data[x as usize]), x))
                .collect();
            all.sort_unstable();
            assert_eq!(hits[0], r as u32, "row {r} finds itself");
            let want: BTreeSet<u32> = all[..10].iter().map(|p| p.1).collect();
            found += hits.iter().filter(|h| want.contains(h)).count();
            asked += 10;
            // Nearest first.
            let d: Vec<u32> = hits
                .iter()
                .map(|&x| crate::query::sketch::code_sad(q, &data[x as usize]))
                .collect();
            assert!(d.windows(2).all(|p| p[0] <= p[1]));
        }
        let recall = found as f64 / asked as f64;
        assert!(recall >= 0.95, "recall@10 {recall}");
    }

    #[test]
    fn a_damaged_graph_file_is_refused_not_walked() {
        let t = tempfile::tempdir().unwrap();
        let data = codes(300, 16);
        let words = flatten(&built(&data, 8, 32), data.len());
        assert!(flat(&words, t.path()).is_ok());
        let refused = |w: &[u32], what: &str| {
            let e = flat(w, t.path())
                .err()
                .unwrap_or_else(|| panic!("{what} accepted"));
            assert!(e.contains("graph.bin"), "{what}: {e}");
        };
        refused(&words[..words.len() - 1], "a truncated file");
        refused(&[&words[..], &[0]].concat(), "a trailing word");
        let mut w = words.clone();
        w[0] ^= 1;
        refused(&w, "another magic");
        let mut w = words.clone();
        w[5] = 300;
        refused(&w, "an entry past the nodes");
        // A link to no node.
        let mut w = words.clone();
        w[HEADER_WORDS + data.len() + 1] = 1_000;
        refused(&w, "a link past the nodes");
        // Offsets out of order.
        let mut w = words.clone();
        w[HEADER_WORDS + 1] = w[HEADER_WORDS + 2] + 1;
        refused(&w, "offsets out of order");
    }
}
