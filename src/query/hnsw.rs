//! Prebuilt HNSW graphs (hnsw_rs) over the per-neuron means of a summary segment, for the
//! fixed masks that matter: every neuron, and each whole layer. The only file that imports
//! hnsw_rs.
//!
//! A graph's distance is fixed when it is built, so a per-query mask cannot search one:
//! only a query whose mask is exactly a graph's mask uses it, and only on the approximate
//! path. Histogram graphs use L1 over means (the mean bound of docs/QUERY.md), Gaussian
//! graphs L2 over (mean, sd) pairs (NFD is its square). Candidates are re-ranked exactly by
//! the caller. Graphs are derived state, built by `reindex` once a space holds
//! `min_rows()` DNAs; rows appended after a build are not in the graph and are scanned by
//! the caller instead.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hnsw_rs::prelude::*;

use super::segment::{SegKind, Segment};
use crate::format::SpaceConfig;
use crate::Error;

/// L1 between mean vectors, vectorised ([`super::sketch::l1_f32`]): the histogram graphs'
/// distance.
#[derive(Default, Clone, Copy)]
pub struct MeanL1;

impl Distance<f32> for MeanL1 {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        super::sketch::l1_f32(a, b)
    }
}

/// Neighbours kept per node (measured: 24 gives recall@50 > 0.99 on clustered summaries).
const MAX_CONNECTIONS: usize = 24;
const EF_CONSTRUCTION: usize = 200;
const BASENAME: &str = "graph";

/// Spaces with fewer DNAs get no graph: the bound scan is as fast there.
pub fn min_rows() -> usize {
    std::env::var("VDNA_DB_HNSW_MIN_ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000)
}

/// The fixed masks a space gets graphs for: `all` and each layer, as
/// (key, [(first neuron, count)] runs in row order).
pub fn graph_masks(space: &SpaceConfig) -> Vec<(String, Vec<(usize, usize)>)> {
    let mut out = vec![(
        "all".to_string(),
        vec![(0usize, space.total_neurons() as usize)],
    )];
    let mut base = 0usize;
    for l in &space.layers {
        out.push((l.name.clone(), vec![(base, l.neurons as usize)]));
        base += l.neurons as usize;
    }
    out
}

/// A row's vector for a graph over `runs`; an error when the row fails its checksum (a
/// graph is built right after its segment, so that is damage on disk: reindex again).
fn row_vector(seg: &Segment, row: usize, runs: &[(usize, usize)]) -> Result<Vec<f32>, Error> {
    let damaged = || {
        Error::Invalid(format!(
            "summary row {row} fails its checksum while building a graph (run vdna-db reindex)"
        ))
    };
    let mut v = Vec::new();
    match seg.kind() {
        SegKind::Histogram { .. } => {
            let m = seg.means(row).ok_or_else(damaged)?;
            for &(off, len) in runs {
                v.extend_from_slice(&m[off..off + len]);
            }
        }
        SegKind::Gaussian => {
            let g = seg.gauss(row).ok_or_else(damaged)?;
            for &(off, len) in runs {
                v.extend(g[2 * off..2 * (off + len)].iter().map(|x| *x as f32));
            }
        }
    }
    Ok(v)
}

fn graph_dir(index_dir: &Path, key: &str) -> PathBuf {
    index_dir.join("hnsw").join(key)
}

/// Builds (replacing) every graph of a segment when it has at least `min_rows` rows;
/// returns how many were built.
pub fn build(
    index_dir: &Path,
    seg: &Segment,
    space: &SpaceConfig,
    min_rows: usize,
) -> Result<usize, Error> {
    let n = seg.rows().len();
    let root = index_dir.join("hnsw");
    if root.exists() {
        std::fs::remove_dir_all(&root).map_err(|e| Error::io(&root, e))?;
    }
    if n < min_rows.max(1) {
        return Ok(0);
    }
    let mut built = 0;
    for (key, runs) in graph_masks(space) {
        let data: Vec<Vec<f32>> = (0..n)
            .map(|r| row_vector(seg, r, &runs))
            .collect::<Result<_, _>>()?;
        let refs: Vec<(&Vec<f32>, usize)> = data.iter().zip(0..n).collect();
        // hnsw_rs dumps only graphs built with its maximum of 16 layers.
        let tmp = root.join(format!(".{key}.tmp"));
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let dumped = match seg.kind() {
            SegKind::Histogram { .. } => build_one(MeanL1, n, &refs, &tmp),
            SegKind::Gaussian => build_one(DistL2 {}, n, &refs, &tmp),
        };
        let name = dumped.map_err(|e| Error::Invalid(format!("writing the {key} graph: {e}")))?;
        let files = checksums(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut meta = serde_json::json!({ "rows": n, "basename": name, "crc32": files });
        meta["check"] = meta_crc(&meta).into();
        failpoint!("graph::write", |e| Error::io(&tmp, e));
        std::fs::write(tmp.join("meta.json"), meta.to_string()).map_err(|e| Error::io(&tmp, e))?;
        let dest = graph_dir(index_dir, &key);
        failpoint!("graph::rename", |e| Error::io(&dest, e));
        std::fs::rename(&tmp, &dest).map_err(|e| Error::io(&dest, e))?;
        built += 1;
    }
    Ok(built)
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
    let Ok(rd) = std::fs::read_dir(index_dir.join("hnsw")) else {
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

/// Builds one graph with distance `dist` and dumps it into `dir`; returns the basename.
fn build_one<D: Distance<f32> + Send + Sync>(
    dist: D,
    n: usize,
    refs: &[(&Vec<f32>, usize)],
    dir: &Path,
) -> Result<String, String> {
    // hnsw_rs dumps only graphs built with its maximum of 16 layers.
    let h = Hnsw::<f32, D>::new(MAX_CONNECTIONS, n, 16, EF_CONSTRUCTION, dist);
    // One insertion at a time, in row order: hnsw_rs draws each node's level from a
    // generator with a fixed seed, so a serial build is a pure function of the rows and the
    // same catalogue always gives byte-identical graph files. A parallel insert draws the
    // levels in whatever order the threads arrive and links nodes that race differently,
    // so two rebuilds answered approximate queries differently (issue 19).
    for (v, id) in refs {
        h.insert((v.as_slice(), *id));
    }
    h.file_dump(dir, BASENAME).map_err(|e| e.to_string())
}

/// A loaded graph of either distance.
enum Graph {
    L1(Hnsw<'static, f32, MeanL1>),
    L2(Hnsw<'static, f32, DistL2>),
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
        SegKind::Histogram { .. } => Graph::L1(
            io.load_hnsw::<f32, MeanL1>()
                .map_err(|e| bad(e.to_string()))?,
        ),
        SegKind::Gaussian => Graph::L2(
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
    query: &[f32],
    n: usize,
    ef: usize,
) -> Result<Option<(Vec<usize>, usize)>, Error> {
    let Some(g) = load(&graph_dir(index_dir, key), seg.kind())? else {
        return Ok(None);
    };
    let (graph, rows) = &*g;
    let hits = match graph {
        Graph::L1(h) => h.search(query, n, ef),
        Graph::L2(h) => h.search(query, n, ef),
    };
    Ok(Some((hits.into_iter().map(|h| h.d_id).collect(), *rows)))
}
