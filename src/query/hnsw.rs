//! Prebuilt HNSW graphs (hnsw_rs) over the summaries of a segment, for the fixed masks
//! that matter: every neuron, and each whole layer. The only file that imports hnsw_rs.
//!
//! A graph's distance is fixed when it is built, so a per-query mask cannot search one:
//! only a query whose mask is exactly a graph's mask uses it, and only on the approximate
//! path. Histogram graphs index the one-byte mean codes of `c.bin` under L1 (the mean
//! bound of docs/QUERY.md at a resolution of bins / 256: a quarter of the bytes of f32
//! means, so a quarter of the memory and a distance several times cheaper); Gaussian
//! graphs index (mean, sd) pairs under L2 (NFD is its square). Candidates are re-ranked
//! exactly by the caller. Graphs are derived state, built by `reindex` once a space holds
//! `min_rows()` DNAs; rows appended after a build are not in the graph and are scanned by
//! the caller instead.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hnsw_rs::prelude::*;

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

/// A graph query's vector: mean codes for histogram graphs, (mean, sd) pairs for
/// Gaussian ones.
pub enum GraphQuery {
    Codes(Vec<u8>),
    Pairs(Vec<f32>),
}

/// What a graph's vectors are, as `meta.json` records it: a graph of another kind (an
/// older build) is not read.
fn vectors_of(kind: SegKind) -> &'static str {
    match kind {
        SegKind::Histogram { .. } => "mean codes u8, L1",
        SegKind::Gaussian => "mean and sd f32, L2",
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
const BASENAME: &str = "graph";

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
    v.extend(seg.gauss(r)?[2 * s..2 * e].iter().map(|x| *x as f32));
    Some(())
}

/// Where a space's graphs live. (Graphs of means as f32 lived in `hnsw/`; a build
/// removes that directory.)
const ROOT: &str = "graphs";

fn graph_dir(index_dir: &Path, key: &str) -> PathBuf {
    index_dir.join(ROOT).join(key)
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
    order
        .par_iter()
        .with_max_len(1)
        .map(|&i| {
            let (key, layers) = &masks[i];
            let tmp = root.join(format!(".{key}.tmp"));
            std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
            let dumped = match seg.kind() {
                SegKind::Histogram { .. } => {
                    let data = (0..n)
                        .map(|r| row_vector(seg, r, layers, codes_part))
                        .collect::<Result<Vec<_>, _>>()?;
                    build_one(CodeL1, &data, &tmp)
                }
                SegKind::Gaussian => {
                    let data = (0..n)
                        .map(|r| row_vector(seg, r, layers, pairs_part))
                        .collect::<Result<Vec<_>, _>>()?;
                    build_one(DistL2 {}, &data, &tmp)
                }
            };
            let name =
                dumped.map_err(|e| Error::Invalid(format!("writing the {key} graph: {e}")))?;
            let files = checksums(&tmp).map_err(|e| Error::io(&tmp, e))?;
            let mut meta = serde_json::json!({
                "rows": n,
                "basename": name,
                "vectors": vectors_of(seg.kind()),
                "crc32": files,
            });
            meta["check"] = meta_crc(&meta).into();
            failpoint!("graph::write", |e| Error::io(&tmp, e));
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

/// Checks a graph directory against the checksums its `meta.json` records (and the
/// metadata against its own); the problem found, if any. Run before hnsw_rs reads a byte.
fn check_graph(dir: &Path, meta: &serde_json::Value) -> Option<String> {
    if meta["check"].as_u64() != Some(u64::from(meta_crc(meta))) {
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

/// Problems of the graphs under a space's index directory (for `verify`).
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
            Some(m) => check_graph(&dir, m),
        };
        if let Some(p) = problem {
            out.push((dir.display().to_string(), p));
        }
    }
    out
}

/// Builds one graph of `data` (row `i` is id `i`) with distance `dist` and dumps it into
/// `dir`; returns the basename.
fn build_one<T, D>(dist: D, data: &[Vec<T>], dir: &Path) -> Result<String, String>
where
    T: Clone + Send + Sync + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
    D: Distance<T> + Send + Sync,
{
    // hnsw_rs dumps only graphs built with its maximum of 16 layers.
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
    h.file_dump(dir, BASENAME).map_err(|e| e.to_string())
}

/// A loaded graph of either kind.
enum Graph {
    Codes(Hnsw<'static, u8, CodeL1>),
    Pairs(Hnsw<'static, f32, DistL2>),
}

/// Loaded graphs by directory, with the self-checksum of the `meta.json` they were loaded
/// under: a rebuilt graph has new file checksums, so a new `check`, even when the rebuild
/// lands within the file system's timestamp granularity (an mtime key served a stale graph
/// after a quick rebuild).
type Cache = Mutex<HashMap<PathBuf, (u64, Arc<(Graph, usize)>)>>;

fn cache() -> &'static Cache {
    static CACHE: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

fn load(dir: &Path, kind: SegKind) -> Result<Option<Arc<(Graph, usize)>>, Error> {
    let meta_p = dir.join("meta.json");
    let Ok(meta_bytes) = std::fs::read(&meta_p) else {
        return Ok(None);
    };
    let meta: serde_json::Value = serde_json::from_slice(&meta_bytes)
        .map_err(|e| Error::Invalid(format!("{}: {e} (run vdna-db reindex)", meta_p.display())))?;
    let Some(check) = meta["check"].as_u64() else {
        return Ok(None);
    };
    if meta["vectors"].as_str() != Some(vectors_of(kind)) {
        return Ok(None);
    }
    let mut c = cache().lock().unwrap_or_else(|p| p.into_inner());
    if let Some((t, g)) = c.get(dir) {
        // The files were checked when this copy was loaded; the copy in memory is what
        // was checked, whatever happened to the files since.
        if *t == check {
            return Ok(Some(g.clone()));
        }
    }
    // A graph that fails its checksums is not read: the caller scans instead, which is
    // always correct, and `verify` reports it.
    if check_graph(dir, &meta).is_some() {
        return Ok(None);
    }
    let rows = meta["rows"].as_u64().unwrap_or(0) as usize;
    let base = meta["basename"].as_str().unwrap_or(BASENAME).to_string();
    // The loaded graph borrows its loader, so the loader lives for the process; one is
    // leaked per graph build seen by this process (the cache keys on the build's checksum).
    let io: &'static mut HnswIo = Box::leak(Box::new(HnswIo::new(dir, &base)));
    let bad = |e: String| {
        Error::Invalid(format!(
            "graph {}: {e} (run vdna-db reindex)",
            dir.display()
        ))
    };
    let g = match kind {
        SegKind::Histogram { .. } => Graph::Codes(
            io.load_hnsw::<u8, CodeL1>()
                .map_err(|e| bad(e.to_string()))?,
        ),
        SegKind::Gaussian => Graph::Pairs(
            io.load_hnsw::<f32, DistL2>()
                .map_err(|e| bad(e.to_string()))?,
        ),
    };
    let g = Arc::new((g, rows));
    c.insert(dir.to_path_buf(), (check, g.clone()));
    Ok(Some(g))
}

/// True when a graph of mask `key` has been built for this space (it may still fail its
/// checksums when loaded; `search` then answers `None`).
pub fn exists(index_dir: &Path, key: &str) -> bool {
    graph_dir(index_dir, key).join("meta.json").is_file()
}

/// Searches the graph of mask `key`: returns the candidate rows and how many rows the
/// graph covers, or `None` when the space has no such graph.
pub fn search(
    index_dir: &Path,
    seg: &Segment,
    key: &str,
    query: &GraphQuery,
    n: usize,
    ef: usize,
) -> Result<Option<(Vec<usize>, usize)>, Error> {
    let Some(g) = load(&graph_dir(index_dir, key), seg.kind())? else {
        return Ok(None);
    };
    let (graph, rows) = &*g;
    let hits = match (graph, query) {
        (Graph::Codes(h), GraphQuery::Codes(q)) => h.search(q, n, ef),
        (Graph::Pairs(h), GraphQuery::Pairs(q)) => h.search(q, n, ef),
        _ => return Ok(None),
    };
    Ok(Some((hits.into_iter().map(|h| h.d_id).collect(), *rows)))
}
