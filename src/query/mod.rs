//! The query engine: rank the stored DNAs of one space closest to a query DNA under a
//! mask, exactly, by a cascade of provable lower bounds over per-space summary segments
//! (means, then quantile sketches) followed by exact distances for the survivors only.
//!
//! Owns the derived index under `<home>/index/`; never writes objects or the catalogue.
//! The answer of the exact path equals a brute-force scan (tested), ties broken by
//! (distance, name:tag).

pub mod columns;
mod crc;
pub mod hnsw;
mod nav;
pub mod segment;
pub mod sketch;
mod table;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::path::PathBuf;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::catalogue::Catalogue;
use crate::distance::{self, Comparison, LayerDistance, Metric};
use crate::dna::Dna;
use crate::format::{Digest, DistKind, LayerView, SpaceConfig};
use crate::mask::Mask;
use crate::store::ObjectStore;
use crate::stored::{AnyDna, HeldLayer, StoredDna};
use crate::Error;
use segment::{SegKind, Segment};
use sketch::{histogram_mean, histogram_sketch, SKETCH_Q};

/// Exact, approximate, or let the planner choose.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Auto,
    Exact,
    /// Approximate membership of the top k, exact distances of the answers.
    Approx,
    /// Approximate membership and distances: the answers are ranked by the summaries'
    /// sketch bound (a lower bound on the distance, docs/QUERY.md) and no DNA is decoded;
    /// each such hit is marked `estimated`. Histogram spaces only (a Gaussian space's
    /// summaries give its exact NFD, so there it answers as `Approx`).
    Estimate,
}

impl Mode {
    /// The name the CLI and the API use.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::Exact => "exact",
            Mode::Approx => "approx",
            Mode::Estimate => "estimate",
        }
    }
}

/// What to ask.
#[derive(Clone, Debug)]
pub struct QueryRequest {
    pub mask: String,
    pub k: usize,
    pub metric: Option<Metric>,
    pub mode: Mode,
    /// Annotation key = value filters, all of which must hold.
    pub filters: BTreeMap<String, String>,
    pub tag: Option<String>,
    pub exclude_self: bool,
    pub per_layer: bool,
}

impl Default for QueryRequest {
    fn default() -> Self {
        QueryRequest {
            mask: "all".into(),
            k: 5,
            metric: None,
            mode: Mode::Auto,
            filters: BTreeMap::new(),
            tag: None,
            exclude_self: false,
            per_layer: false,
        }
    }
}

/// One result.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Hit {
    #[serde(rename = "ref")]
    pub reference: String,
    pub digest: Digest,
    pub distance: f64,
    pub images: u64,
    /// True when `distance` is the summaries' estimate (a lower bound on the exact
    /// distance, `Mode::Estimate`), not the exact distance.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub estimated: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_layer: Vec<LayerDistance>,
}

/// One stage of a plan, for `--explain`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Stage {
    pub name: String,
    pub candidates_in: usize,
    pub candidates_out: usize,
    pub ms: f64,
}

/// How a query was answered.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Plan {
    pub strategy: String,
    /// The planner's rule for this query: why this strategy (see `choose`).
    pub rule: String,
    pub space: String,
    pub mask: String,
    pub neurons: u64,
    /// DNAs eligible after filters.
    pub candidates: usize,
    /// Exact distances computed from layer blobs.
    pub exact_computed: usize,
    /// Bytes of summaries scanned and of objects read.
    pub summary_bytes: u64,
    pub object_bytes_read: u64,
    /// Layers the exact stage found decoded in the process's cache, and those it read
    /// and decoded (counted across the process while the query ran).
    #[serde(default)]
    pub layer_cache_hits: u64,
    #[serde(default)]
    pub layer_cache_misses: u64,
    pub stages: Vec<Stage>,
    pub total_ms: f64,
}

impl Plan {
    /// The multi-line text `--explain` prints.
    pub fn explain(&self) -> String {
        let mut s = format!(
            "plan: {}\n  rule: {}\n  space {}\n  mask {} ({} neurons)\n  {} candidate DNAs, {} exact distances\n  read {} of summaries (mapped) and {} of objects\n",
            self.strategy,
            self.rule,
            self.space,
            self.mask,
            self.neurons,
            self.candidates,
            self.exact_computed,
            crate_bytes(self.summary_bytes),
            crate_bytes(self.object_bytes_read)
        );
        let looked = self.layer_cache_hits + self.layer_cache_misses;
        if looked > 0 {
            s.push_str(&format!(
                "  decoded-layer cache: {} of {looked} layers found ({:.0}% hits)\n",
                self.layer_cache_hits,
                100.0 * self.layer_cache_hits as f64 / looked as f64
            ));
        }
        for st in &self.stages {
            s.push_str(&format!(
                "  stage {:<28} {:>7} -> {:<7} {:>9.2} ms\n",
                st.name, st.candidates_in, st.candidates_out, st.ms
            ));
        }
        s.push_str(&format!("  total {:.2} ms", self.total_ms));
        s
    }
}

fn crate_bytes(b: u64) -> String {
    if b >= 1_000_000 {
        format!("{:.1} MB", b as f64 / 1e6)
    } else if b >= 1000 {
        format!("{:.1} kB", b as f64 / 1e3)
    } else {
        format!("{b} B")
    }
}

/// A query's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct QueryResult {
    pub results: Vec<Hit>,
    pub metric: Metric,
    pub mask: String,
    pub neurons: u64,
    pub plan: Plan,
}

/// What the index reads and where it keeps its files: the object store, the catalogue,
/// the index directory, and the gate that serialises index changes between the threads
/// of one process (other processes are kept out by the catalogue's lock). The store
/// facade (`Db`) provides it; the index never imports it.
pub trait Source: Sync {
    fn objects(&self) -> &ObjectStore;
    fn catalogue(&self) -> &Catalogue;
    /// The directory holding one subdirectory per space.
    fn index_root(&self) -> PathBuf;
    /// Held while the index is opened for change.
    fn index_gate(&self) -> std::sync::MutexGuard<'_, ()>;
    /// True when the store keeps summary rows for the processes sharing it (a store in
    /// a bucket). The embedded store keeps none: its index is on the same disk.
    fn shares_summaries(&self) -> bool {
        false
    }
    /// Summary rows that processes sharing the store kept there, by key, in the order
    /// asked; `None` where there is none.
    fn shared_summaries(&self, keys: &[String]) -> Vec<Option<Vec<u8>>> {
        vec![None; keys.len()]
    }
    /// Keeps a summary row computed here for the processes sharing the store (best
    /// effort: a row that is missing is computed again from its DNA).
    fn put_shared_summary(&self, key: &str, bytes: &[u8]) {
        let _ = (key, bytes);
    }
}

/// Where a DNA's summary row lives in a shared store: immutable, named by the DNA.
fn summary_key(space: &Digest, dna: &Digest) -> String {
    format!("index/{}/rows/{}.row", space.hex(), dna.hex())
}

const ROW_MAGIC: &[u8; 8] = b"VDNAROW1";

/// A summary row as stored for other processes: magic, the DNA's digest, the two part
/// lengths, the parts, and a CRC-32 of everything before it.
fn encode_summary(dna: &Digest, a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(52 + a.len() + b.len());
    out.extend_from_slice(ROW_MAGIC);
    out.extend_from_slice(&dna.0);
    out.extend_from_slice(&(a.len() as u32).to_le_bytes());
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(a);
    out.extend_from_slice(b);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Reads a stored summary row back, `None` unless it is whole, of this DNA and of the
/// widths the segment expects (such a row is then computed from the DNA instead).
fn decode_summary(
    dna: &Digest,
    bytes: &[u8],
    widths: (usize, usize),
) -> Option<(Vec<u8>, Vec<u8>)> {
    let (wa, wb) = widths;
    if bytes.len() != 8 + 32 + 8 + wa + wb + 4 || &bytes[..8] != ROW_MAGIC {
        return None;
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32fast::hash(body).to_le_bytes() != crc
        || body[8..40] != dna.0
        || u32::from_le_bytes(body[40..44].try_into().ok()?) as usize != wa
        || u32::from_le_bytes(body[44..48].try_into().ok()?) as usize != wb
    {
        return None;
    }
    Some((body[48..48 + wa].to_vec(), body[48 + wa..].to_vec()))
}

fn open_dna(src: &dyn Source, digest: &Digest) -> Result<StoredDna, Error> {
    StoredDna::open(src.objects(), digest)
}

fn space_config(src: &dyn Source, d: &Digest) -> Result<SpaceConfig, Error> {
    crate::stored::space_config(src.objects(), d)
}

fn index_dir(db: &dyn Source, space: &Digest) -> PathBuf {
    db.index_root().join(space.hex())
}

/// Neurons per layer of a space: what a segment needs to know of it.
fn layer_widths(space: &SpaceConfig) -> Vec<u32> {
    space.layers.iter().map(|l| l.neurons).collect()
}

fn seg_kind(dist: DistKind) -> Option<SegKind> {
    match dist {
        DistKind::Histogram { bins } => Some(SegKind::Histogram { q: SKETCH_Q, bins }),
        DistKind::Gaussian | DistKind::LayerGaussian => Some(SegKind::Gaussian),
        DistKind::ActivationRanges => None,
    }
}

/// Computes a DNA's summary row (`a`, `b` byte vectors).
fn summary_row(dna: &AnyDna) -> Result<(Vec<u8>, Vec<u8>), Error> {
    summary_row_of(dna.space(), |i| dna.layer(i))
}

/// A summary row from a DNA's space and a way to get each of its layers.
fn summary_row_of<'a>(
    space: &SpaceConfig,
    layer: impl Fn(usize) -> Result<HeldLayer<'a>, Error>,
) -> Result<(Vec<u8>, Vec<u8>), Error> {
    let mut a = Vec::new();
    let mut b = Vec::new();
    let mut sk = [0f64; SKETCH_Q];
    for i in 0..space.layers.len() {
        let held = layer(i)?;
        match held.view() {
            LayerView::Histogram { bins, counts, .. } => {
                for h in counts.chunks_exact(bins) {
                    let mean = histogram_sketch(h, &mut sk);
                    a.extend_from_slice(&(mean as f32).to_le_bytes());
                    for x in sk {
                        b.extend_from_slice(&(x as f32).to_le_bytes());
                    }
                }
            }
            v @ (LayerView::Gaussian { .. } | LayerView::LayerGaussian { .. }) => {
                let (mean, var) = gaussian_mean_var(&v);
                for (m, var) in mean.iter().zip(var) {
                    a.extend_from_slice(&m.to_le_bytes());
                    a.extend_from_slice(&var.max(0.0).sqrt().to_le_bytes());
                }
            }
            LayerView::Ranges { .. } => {}
        }
    }
    Ok((a, b))
}

/// The per-neuron means of a histogram DNA in bin units, in space order: the vectors the
/// mean bound compares and the graphs index (for tools that compare against them).
pub fn mean_vector(dna: &AnyDna) -> Result<Vec<f32>, Error> {
    if !matches!(dna.space().dist, DistKind::Histogram { .. }) {
        return Err(Error::Invalid(
            "mean vectors are kept for histogram DNAs only".into(),
        ));
    }
    let (a, _) = summary_row(dna)?;
    Ok(a.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

fn gaussian_mean_var(v: &LayerView<'_>) -> (Vec<f64>, Vec<f64>) {
    match *v {
        LayerView::Gaussian { mean, var } => (mean.to_vec(), var.to_vec()),
        LayerView::LayerGaussian { neurons, mean, cov } => (
            mean.to_vec(),
            (0..neurons).map(|i| cov[i * neurons + i]).collect(),
        ),
        _ => (vec![], vec![]),
    }
}

/// Opens a space's segment, rebuilding it when its files are damaged, and appends rows
/// for stored DNAs of that space it lacks.
fn synced_segment(
    db: &dyn Source,
    space_digest: &Digest,
    space: &SpaceConfig,
    stored: &[Digest],
) -> Result<Option<Segment>, Error> {
    synced_segment_with(db, space_digest, space, stored, &|_| {})
}

/// [`synced_segment`], calling `appended(rows)` after each batch of rows appended.
fn synced_segment_with(
    db: &dyn Source,
    space_digest: &Digest,
    space: &SpaceConfig,
    stored: &[Digest],
    appended: &dyn Fn(usize),
) -> Result<Option<Segment>, Error> {
    let Some(kind) = seg_kind(space.dist) else {
        return Ok(None);
    };
    let dir = index_dir(db, space_digest);
    let widths = layer_widths(space);
    let mut seg = match Segment::open(&dir, *space_digest, kind, &widths) {
        Ok(s) => s,
        Err(_) => {
            // Derived state that fails its checks is rebuilt, never trusted.
            let _ = std::fs::remove_dir_all(&dir);
            Segment::open(&dir, *space_digest, kind, &widths).map_err(|e| Error::io(&dir, e))?
        }
    };
    let have: std::collections::HashSet<Digest> = seg.rows().iter().copied().collect();
    let missing: Vec<Digest> = stored
        .iter()
        .filter(|d| !have.contains(d))
        .copied()
        .collect();
    // Summaries of missing DNAs in parallel batches, appended in order: the rows that
    // other processes kept in a shared store when they are there and whole, else
    // computed from the DNAs (and kept there for the next process).
    let widths = seg.row_bytes();
    // Batches of up to 32 MiB of rows (16 to 256 rows): one append and one fetch each.
    let per_batch = ((32 << 20) / (widths.0 + widths.1).max(1)).clamp(16, 256);
    for chunk in missing.chunks(per_batch) {
        use rayon::prelude::*;
        let keys: Vec<String> = if db.shares_summaries() {
            chunk.iter().map(|d| summary_key(space_digest, d)).collect()
        } else {
            Vec::new()
        };
        let mut shared = db.shared_summaries(&keys);
        shared.resize(chunk.len(), None);
        let rows = chunk
            .par_iter()
            .zip(shared)
            .map(|(d, kept)| {
                if let Some(row) = kept.and_then(|b| decode_summary(d, &b, widths)) {
                    return Ok((row, false));
                }
                Ok((summary_row(&AnyDna::Stored(open_dna(db, d)?))?, true))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let batch: Vec<(Digest, &[u8], &[u8])> = chunk
            .iter()
            .zip(&rows)
            .map(|(d, ((a, b), _))| (*d, a.as_slice(), b.as_slice()))
            .collect();
        seg.append_many(&batch).map_err(|e| Error::io(&dir, e))?;
        for ((d, ((a, b), computed)), key) in chunk.iter().zip(&rows).zip(&keys) {
            if *computed {
                db.put_shared_summary(key, &encode_summary(d, a, b));
            }
        }
        appended(seg.rows().len());
    }
    Ok(Some(seg))
}

/// Adds a just-pushed DNA to its space's index (one row; a no-op when present), reading
/// it back from the store.
pub fn index_pushed(db: &dyn Source, digest: &Digest) -> Result<(), Error> {
    let _gate = db.index_gate();
    let stored = open_dna(db, digest)?;
    let sd = stored.manifest.space;
    let dna = AnyDna::Stored(stored);
    index_row(db, digest, &sd, dna.space(), || summary_row(&dna))
}

/// As `index_pushed`, from the DNA as it was pushed: the store is lossless, so its row is
/// the one a read-back would give, and nothing is read or decoded again.
pub fn index_pushed_dna(db: &dyn Source, digest: &Digest, dna: &Dna) -> Result<(), Error> {
    let _gate = db.index_gate();
    let sd = dna.space.digest();
    index_row(db, digest, &sd, &dna.space, || {
        summary_row_of(&dna.space, |i| Ok(HeldLayer::Borrowed(&dna.layers[i])))
    })
}

/// Appends one DNA's row to the segment of space `sd` (held under the index gate). Nothing
/// is checked here: each part of a row is checked when a query reads it.
fn index_row(
    db: &dyn Source,
    digest: &Digest,
    sd: &Digest,
    space: &SpaceConfig,
    row: impl FnOnce() -> Result<(Vec<u8>, Vec<u8>), Error>,
) -> Result<(), Error> {
    let Some(kind) = seg_kind(space.dist) else {
        return Ok(());
    };
    let dir = index_dir(db, sd);
    match Segment::open_for_append(&dir, *sd, kind, &layer_widths(space)) {
        Ok(mut seg) => {
            if !seg.rows().contains(digest) {
                let (a, b) = row()?;
                seg.append(digest, &a, &b).map_err(|e| Error::io(&dir, e))?;
                if db.shares_summaries() {
                    db.put_shared_summary(
                        &summary_key(sd, digest),
                        &encode_summary(digest, &a, &b),
                    );
                }
                // Rows past the column file are bounded from their rows: once a whole
                // block of them has gathered, the file is rebuilt to cover them (a few
                // seconds at 100,000 rows, once every 4,096 pushes).
                if columns::covered_rows(&dir)
                    .is_some_and(|(rows, block)| seg.rows().len() >= rows + block)
                {
                    columns::build(&dir, &seg, 1)?;
                }
            }
            Ok(())
        }
        // A damaged segment is rebuilt from the catalogue, this DNA included.
        Err(_) => {
            let stored = stored_in_space(db, sd)?;
            synced_segment(db, sd, space, &stored).map(|_| ())
        }
    }
}

/// Builds the column file of codes (columns.rs) of every space with at least
/// `hnsw::min_rows()` DNAs from its current segment, as `reindex` does, without rebuilding
/// the rest: for benches over a store indexed before the file existed. Returns how many
/// were written.
#[doc(hidden)]
pub fn build_columns(db: &dyn Source) -> Result<usize, Error> {
    let mut built = 0;
    for_each_segment(db, &mut |dir, seg| {
        if columns::covered_rows(dir).is_none_or(|(rows, _)| rows != seg.rows().len()) {
            built += columns::build(dir, seg, hnsw::min_rows())? as usize;
        }
        Ok(())
    })?;
    Ok(built)
}

/// Calls `f` with each space's index directory and current segment, under the index gate:
/// for the benches' additions to an index built by an earlier version.
fn for_each_segment(
    db: &dyn Source,
    f: &mut dyn FnMut(&std::path::Path, &Segment) -> Result<(), Error>,
) -> Result<(), Error> {
    let _gate = db.index_gate();
    let mut spaces: BTreeSet<Digest> = BTreeSet::new();
    for (_, r) in db.catalogue().dnas()? {
        spaces.insert(r.space);
    }
    for sd in spaces {
        let space = space_config(db, &sd)?;
        let stored = stored_in_space(db, &sd)?;
        if let Some(seg) = synced_segment(db, &sd, &space, &stored)? {
            f(&index_dir(db, &sd), &seg)?;
        }
    }
    Ok(())
}

/// Adds compact vectors to wide graphs built without them ([`hnsw::add_compact_vectors`]),
/// leaving the rest of the index as it is: for benches over a store indexed before the
/// file existed. Returns how many were added.
#[doc(hidden)]
pub fn build_compact_vectors(db: &dyn Source) -> Result<usize, Error> {
    let mut added = 0;
    for_each_segment(db, &mut |dir, seg| {
        added += hnsw::add_compact_vectors(dir, seg)?;
        Ok(())
    })?;
    Ok(added)
}

fn stored_in_space(db: &dyn Source, sd: &Digest) -> Result<Vec<Digest>, Error> {
    Ok(db
        .catalogue()
        .dnas()?
        .into_iter()
        .filter(|(_, r)| r.space == *sd)
        .map(|(d, _)| d)
        .collect())
}

/// Checks the derived index against its checksums and the catalogue, without changing
/// it: (what, problem) pairs. `reindex` (or `verify --repair`) rebuilds what is damaged;
/// queries never trust a damaged part (they rebuild or scan instead).
pub fn verify_index(db: &dyn Source) -> Result<Vec<(String, String)>, Error> {
    let _gate = db.index_gate();
    let mut out = Vec::new();
    let root = db.index_root();
    let Ok(rd) = std::fs::read_dir(&root) else {
        return Ok(out);
    };
    let spaces: BTreeSet<Digest> = db
        .catalogue()
        .dnas()?
        .into_iter()
        .map(|(_, r)| r.space)
        .collect();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let dir = e.path();
        let what = format!("index {name}");
        let Some(sd) = spaces.iter().find(|d| d.hex() == name).copied() else {
            // A space whose DNAs are all gone: stale, harmless, removed by reindex.
            continue;
        };
        let space = space_config(db, &sd)?;
        let Some(kind) = seg_kind(space.dist) else {
            continue;
        };
        if !dir.join("rows.bin").exists() {
            out.push((what, "segment files are missing".into()));
            continue;
        }
        match Segment::open_verify(&dir, sd, kind, &layer_widths(&space)) {
            Err(e) => out.push((what.clone(), format!("summary segment: {e}"))),
            Ok(seg) => {
                if let Some(p) = columns::check(&dir, &seg) {
                    out.push((what.clone(), format!("column codes: {p}")));
                }
                let bad = seg.damaged_sketches();
                if !bad.is_empty() {
                    out.push((
                        what.clone(),
                        format!(
                            "{} rows' sketches fail their checksum (first: row {})",
                            bad.len(),
                            bad[0]
                        ),
                    ));
                }
            }
        }
        for (g, p) in hnsw::verify(&dir) {
            out.push((format!("graph {g}"), p));
        }
        if let Some(p) = table::check_file(&dir) {
            out.push((what.clone(), format!("space table: {p}")));
        }
    }
    Ok(out)
}

/// What `reindex` did.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ReindexReport {
    pub spaces: usize,
    pub dnas: usize,
    pub summary_bytes: u64,
    /// HNSW graphs built (spaces with at least `hnsw::min_rows()` DNAs).
    pub graphs: usize,
}

/// Rebuilds every space's segment from the catalogue and the objects, and the HNSW graphs
/// of spaces with at least `hnsw::min_rows()` DNAs.
pub fn reindex(db: &dyn Source) -> Result<ReindexReport, Error> {
    reindex_with(db, hnsw::min_rows())
}

/// [`reindex`] with an explicit graph threshold.
pub fn reindex_with(db: &dyn Source, graph_min_rows: usize) -> Result<ReindexReport, Error> {
    reindex_progress(db, graph_min_rows, &|_, _, _| {})
}

/// [`reindex_with`], calling `progress` as summary rows are computed and graphs built.
pub fn reindex_progress(
    db: &dyn Source,
    graph_min_rows: usize,
    progress: crate::WorkProgress<'_>,
) -> Result<ReindexReport, Error> {
    let _gate = db.index_gate();
    let root = db.index_root();
    if root.exists() {
        std::fs::remove_dir_all(&root).map_err(|e| Error::io(&root, e))?;
    }
    let mut report = ReindexReport::default();
    // One read of the catalogue: the DNAs to index, and each space's table (so that the
    // first query of a new process reads it in place).
    let stamp = db.catalogue().state_stamp()?;
    let records = db.catalogue().snapshot_records()?;
    let mut spaces: BTreeMap<Digest, Vec<Digest>> = BTreeMap::new();
    for (d, r) in records.dnas.iter() {
        spaces.entry(r.space).or_default().push(*d);
    }
    let total: u64 = spaces.values().map(|v| v.len() as u64).sum();
    let mut before = 0u64;
    progress("summaries", 0, total);
    for (sd, stored) in spaces {
        let space = space_config(db, &sd)?;
        let rows = |n: usize| progress("summaries", before + n as u64, total);
        if let Some(seg) = synced_segment_with(db, &sd, &space, &stored, &rows)? {
            report.spaces += 1;
            report.dnas += seg.rows().len();
            report.summary_bytes += seg.mapped_bytes();
            if seg.rows().len() >= graph_min_rows {
                progress("graphs", before + stored.len() as u64, total);
            }
            report.graphs += hnsw::build(&index_dir(db, &sd), &seg, &space, graph_min_rows)?;
            columns::build(&index_dir(db, &sd), &seg, graph_min_rows)?;
            table::SpaceTable::build(&records, &sd, stamp).save(&index_dir(db, &sd));
        }
        before += stored.len() as u64;
    }
    progress("done", total, total);
    Ok(report)
}

/// The query DNA's masked layers, loaded once.
struct QueryLayers<'a> {
    held: Vec<HeldLayer<'a>>,
}

fn exact_distance(
    space: &SpaceConfig,
    q: &QueryLayers<'_>,
    cand: &StoredDna,
    mask: &Mask,
    metric: Metric,
) -> Result<Comparison, Error> {
    // Layers already decoded come from the cache at once; the others are decoded in
    // parallel. (A parallel region per candidate only to read the cache cost more than
    // the reads: waking the pool is tens of microseconds.)
    let mut bufs = Vec::with_capacity(mask.layers.len());
    let mut missing = Vec::new();
    for (i, lm) in mask.layers.iter().enumerate() {
        match cand.cached_layer(lm.layer) {
            Some(b) => bufs.push(Some(b)),
            None => {
                bufs.push(None);
                missing.push(i);
            }
        }
    }
    if !missing.is_empty() {
        use rayon::prelude::*;
        let decoded = missing
            .par_iter()
            .map(|&i| cand.load_layer(mask.layers[i].layer))
            .collect::<Result<Vec<_>, _>>()?;
        for (i, b) in missing.into_iter().zip(decoded) {
            bufs[i] = Some(b);
        }
    }
    let bufs: Vec<_> = bufs.into_iter().flatten().collect();
    let views: Vec<(LayerView<'_>, LayerView<'_>)> = q
        .held
        .iter()
        .zip(&bufs)
        .map(|(a, b)| (a.view(), b.view()))
        .collect();
    Ok(distance::compare(space, mask, metric, &views, 0)?)
}

/// Forgets the tables and open segments this process keeps between queries, so the next
/// query opens everything as a fresh process would (benches measure both).
pub fn forget_kept() {
    table::forget();
}

/// Answers a query.
pub fn query(db: &dyn Source, q: &AnyDna, req: &QueryRequest) -> Result<QueryResult, Error> {
    let t0 = Instant::now();
    let bytes0 = db.objects().bytes_read();
    let cache0 = db.objects().layer_cache_stats();
    if req.k == 0 {
        return Err(Error::Invalid("--top must be at least 1".into()));
    }
    let space = q.space().clone();
    let space_digest = space.digest();
    let dir = index_dir(db, &space_digest);
    // The space's named DNAs, grouped once per catalogue state (table.rs).
    let table = table::table(&dir, db.catalogue(), &space_digest)?;
    if table.stored_len() == 0 {
        let shared = db.catalogue().snapshot_records()?;
        let records = &shared.dnas;
        let spaces: Vec<String> = db
            .catalogue()
            .spaces()?
            .into_iter()
            .filter(|(d, _)| records.iter().any(|(_, r)| r.space == *d))
            .map(|(d, s)| format!("{} {}", d.short(), s.description))
            .collect();
        return Err(Error::NotFound(format!(
            "no stored DNA is in the query's space ({} {}); stored spaces: {}",
            space_digest.short(),
            space.describe(),
            if spaces.is_empty() {
                "none (push some DNAs first)".into()
            } else {
                spaces.join("; ")
            }
        )));
    }
    let metric = match req.metric {
        Some(m) => m,
        None => Metric::default_for(space.dist).ok_or_else(|| {
            Error::Invalid(format!(
                "{} DNAs cannot be ranked (no distance applies)",
                space.dist.name()
            ))
        })?,
    };
    metric.check(space.dist)?;
    let mask = db.catalogue().resolve_mask(&req.mask, &space)?;

    // Eligible entries: all of them unless a tag, a filter or --exclude-self narrows
    // them, which costs one pass over the space's refs.
    for key in req.filters.keys() {
        if !table.keys.contains(key) {
            return Err(Error::Invalid(format!(
                "--filter {key}=...: no DNA of this space has the annotation {key:?} (keys in use: {})",
                if table.keys.is_empty() {
                    "none".into()
                } else {
                    table.keys.iter().cloned().collect::<Vec<_>>().join(", ")
                }
            )));
        }
    }
    let self_digest = if req.exclude_self {
        Some(q.digest())
    } else {
        None
    };
    let narrowed = req.tag.is_some() || !req.filters.is_empty() || self_digest.is_some();
    let eligible: Eligible = if narrowed {
        let mut names: Vec<Vec<u32>> = Vec::new();
        let mut cands = Vec::new();
        let mut of_entry = vec![u32::MAX; table.len()];
        for (e, slot) in of_entry.iter_mut().enumerate() {
            if self_digest == Some(table.digest(e)) {
                continue;
            }
            let kept: Vec<u32> = table
                .refs_of(e)
                .filter(|&i| {
                    req.tag.as_ref().is_none_or(|t| t == table.tag(i))
                        && req
                            .filters
                            .iter()
                            .all(|(k, v)| table.annotation(i, k) == Some(v.as_bytes()))
                })
                .collect();
            if !kept.is_empty() {
                *slot = names.len() as u32;
                names.push(kept);
                cands.push(e as u32);
            }
        }
        Eligible {
            cands,
            narrowed: Some((of_entry, names)),
        }
    } else {
        Eligible {
            cands: (0..table.len() as u32).collect(),
            narrowed: None,
        }
    };
    let mut plan = Plan {
        space: format!("{} {}", space_digest.short(), space.describe()),
        mask: mask.canonical_spec(&space),
        neurons: mask.neurons(),
        candidates: eligible.cands.len(),
        ..Plan::default()
    };
    let qheld = QueryLayers {
        held: mask
            .layers
            .iter()
            .map(|lm| q.layer(lm.layer))
            .collect::<Result<_, _>>()?,
    };

    let t = Instant::now();
    let seg = if metric == Metric::Fd {
        None
    } else {
        open_segment(db, &dir, &space_digest, &space, &table)?
    };
    table.persist(&dir);
    if seg.is_some() {
        plan.stages.push(Stage {
            name: "open summary segment".into(),
            candidates_in: eligible.cands.len(),
            candidates_out: eligible.cands.len(),
            ms: ms(t),
        });
    }
    let graph = graph_key(&mask, &space).filter(|key| {
        seg.as_ref()
            .is_some_and(|open| hnsw::exists(&dir, key, open.seg.kind()))
    });
    let (path, rule) = choose(
        req.mode,
        eligible.cands.len(),
        req.k,
        seg.is_some().then_some(metric),
        graph.as_deref(),
    );
    plan.rule = rule;
    let ctx = Ctx {
        db,
        space: &space,
        space_digest,
        mask: &mask,
        metric,
        qheld: &qheld,
        table: &table,
        eligible: &eligible,
        k: req.k,
    };
    let mut run = Run {
        top: TopK::new(req.k),
        comparisons: HashMap::new(),
        plan,
    };
    match (path, &seg) {
        (Path::Cascade { .. } | Path::Graph, Some(open)) => {
            let t = Instant::now();
            let summaries = QuerySummaries::of(&ctx)?;
            run.plan.stages.push(Stage {
                name: format!("query summaries ({} neurons)", mask.neurons()),
                candidates_in: eligible.cands.len(),
                candidates_out: eligible.cands.len(),
                ms: ms(t),
            });
            // The graph's candidates when it answers, else every eligible entry (borrowed:
            // no copy of N per query).
            let mut found_by_graph: Option<Vec<u32>> = None;
            let mut budget = match path {
                Path::Cascade { budget } => budget,
                _ => Some(rerank_budget(req.k)),
            };
            let mut via = None;
            if path == Path::Graph {
                let t = Instant::now();
                match graph_candidates(&ctx, open, &summaries.graph_vector())? {
                    Some((key, found, scanned)) => {
                        run.plan.stages.push(Stage {
                            name: format!("hnsw graph ({key}{})", how_found(scanned)),
                            candidates_in: eligible.cands.len(),
                            candidates_out: found.len(),
                            ms: ms(t),
                        });
                        found_by_graph = Some(found);
                        via = Some(key);
                    }
                    None => {
                        run.plan.rule.push_str(
                            "; the graph found fewer than k eligible DNAs, so the exact cascade ran instead",
                        );
                        budget = None;
                    }
                }
            }
            let cands = found_by_graph.as_deref().unwrap_or(&eligible.cands);
            match &summaries {
                QuerySummaries::Histogram { .. } => {
                    // An exact query over a mask with a graph takes its first k exact
                    // distances from the graph's nearest, so the code bound can stop
                    // reading a row once it passes their k-th best.
                    let seeds = if budget.is_none() && via.is_none() {
                        let t = Instant::now();
                        let seeds = match &graph {
                            Some(key) => graph_seeds(&ctx, open, key, &summaries.graph_vector())?,
                            None => match all_graph_codes(&ctx, q, open, &dir)? {
                                Some(codes) => {
                                    let codes = hnsw::GraphQuery::Codes(&codes);
                                    graph_seeds(&ctx, open, "all", &codes)?
                                }
                                None => None,
                            },
                        };
                        if let Some((key, found, scanned)) = &seeds {
                            run.plan.stages.push(Stage {
                                name: format!("hnsw graph seeds ({key}{})", how_found(*scanned)),
                                candidates_in: eligible.cands.len(),
                                candidates_out: found.len(),
                                ms: ms(t),
                            });
                        }
                        seeds.map(|(_, found, _)| found)
                    } else {
                        None
                    };
                    // Estimates replace the budget of exact distances, never the exact
                    // cascade (a graph that found too few falls back to it above).
                    let estimate = req.mode == Mode::Estimate && budget.is_some();
                    let how = CascadeWith {
                        budget,
                        via,
                        seeds,
                        estimate,
                    };
                    histogram_cascade(&ctx, open, &summaries, cands, how, &mut run)?
                }
                QuerySummaries::Gaussian { .. } => {
                    gaussian_cascade(&ctx, open, &summaries, cands, budget, via, &mut run)?
                }
            }
        }
        _ => scan(&ctx, &eligible.cands, &mut run)?,
    }
    let Run {
        top,
        comparisons,
        mut plan,
    } = run;

    let results = top
        .finish()
        .into_iter()
        .map(|(distance, reference, digest)| Hit {
            reference,
            digest,
            distance,
            images: table.entry(&digest).map_or(0, |e| table.images(e)),
            // Every exact distance offered has its comparison; an estimate has none.
            estimated: !comparisons.contains_key(&digest),
            per_layer: if req.per_layer {
                comparisons
                    .get(&digest)
                    .map(|c| c.per_layer.clone())
                    .unwrap_or_default()
            } else {
                vec![]
            },
        })
        .collect();
    plan.object_bytes_read = db.objects().bytes_read() - bytes0;
    let cache1 = db.objects().layer_cache_stats();
    plan.layer_cache_hits = cache1.hits - cache0.hits;
    plan.layer_cache_misses = cache1.misses - cache0.misses;
    plan.total_ms = ms(t0);
    Ok(QueryResult {
        results,
        metric,
        mask: plan.mask.clone(),
        neurons: mask.neurons(),
        plan,
    })
}

/// The planner's choice of strategy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    /// The exact distance of every candidate.
    Scan,
    /// Summary bounds, then exact distances in bound order: all survivors when `budget` is
    /// `None` (exact), else at most `budget` of them (approximate).
    Cascade { budget: Option<usize> },
    /// Candidates from the mask's HNSW graph, then the cascade over them with a budget.
    Graph,
}

/// Masks of at least this many neurons split a query's own summaries, and its seed of
/// exact distances, across threads; narrower ones stay on the calling thread, where they
/// take less time than waking the pool.
const PARALLEL_NEURONS: usize = 512;
/// Masks of at least this many neurons compute the query's summaries on the pool's
/// threads. Below it one thread is quicker than waking the others: for resnet50's
/// layer2_0 (512 neurons x 100 bins) the estimate took 0.27-0.28 ms split, 0.22 ms not
/// (scale bench store, N = 20,000).
const SUMMARY_PARALLEL_NEURONS: usize = 1024;

/// How many neighbours an approximate query asks a graph for.
fn graph_n(k: usize) -> usize {
    (k * 40).max(200)
}

/// How many neighbours a graph search returns, and its breadth (hnsw's `ef`): max(6 k,
/// 30) and max(that, 40), or `graph_n(k)` when a tag or filter narrows the candidates
/// (most neighbours may be filtered out); `VDNA_DB_GRAPH_FETCH` / `VDNA_DB_GRAPH_EF`
/// override them (tuning knobs: `benches/scale.rs` measures recall and time). Measured
/// at N = 100,000 for mask `all` (scale bench, same run, same queries): 50 / 64 searched
/// in 1.04 ms, 30 / 40 in 0.79-0.86 ms, both at recall@5 1.0 (approximate) and 0.98
/// (estimates); 20 / 32 in 0.67 ms at 0.80.
fn graph_search_params(k: usize, narrowed: bool) -> (usize, usize) {
    let env = |name: &str, d: usize| hnsw::knob(name, d, 1);
    let default = if narrowed {
        graph_n(k)
    } else {
        (6 * k).max(30)
    };
    let n = env("VDNA_DB_GRAPH_FETCH", default).max(k);
    (n, env("VDNA_DB_GRAPH_EF", n.max(40)).max(n))
}

/// Exact distances an approximate query computes after ranking by bounds.
fn rerank_budget(k: usize) -> usize {
    (k * 2).max(8)
}

/// The fewest candidates for which the default mode takes a graph: where the graph's
/// neighbour list is at most a tenth of the candidates, and never below the size at
/// which `reindex` starts building graphs.
fn auto_graph_min(k: usize) -> usize {
    hnsw::min_rows().max(10 * graph_n(k))
}

/// The planning rule: the strategy for `n` eligible candidates, `k` results, the metric
/// when a summary bound applies to it, and the key of a built graph whose mask is the
/// query's. Returns the path and the rule as `--explain` states it.
fn choose(
    mode: Mode,
    n: usize,
    k: usize,
    bounded: Option<Metric>,
    graph: Option<&str>,
) -> (Path, String) {
    let Some(_) = bounded else {
        return (
            Path::Scan,
            "no summary bound applies to this metric: exact distance of every candidate".into(),
        );
    };
    if n <= k {
        return (
            Path::Scan,
            format!("{n} candidates <= k = {k}: every candidate is in the answer, exact scan"),
        );
    }
    let small = n <= graph_n(k);
    match mode {
        Mode::Exact => (
            Path::Cascade { budget: None },
            "--exact: bound cascade, exact distances of every survivor".into(),
        ),
        _ if small => (
            Path::Cascade { budget: None },
            format!(
                "{n} candidates <= {}, the neighbours an approximate search would fetch: exact bound cascade, as cheap",
                graph_n(k)
            ),
        ),
        Mode::Estimate => match graph {
            Some(key) => (
                Path::Graph,
                format!(
                    "--estimate with a graph for this mask ({key}): its nearest by summary, ranked by the sketch bound; no exact distance (histograms; a Gaussian space re-ranks its best {} exactly)",
                    rerank_budget(k)
                ),
            ),
            None => (
                Path::Cascade {
                    budget: Some(rerank_budget(k)),
                },
                format!(
                    "--estimate, no graph for this mask: every candidate ranked by the sketch bound, lazily (code, mean, sketch); no exact distance (histograms; a Gaussian space computes the best {} exactly)",
                    rerank_budget(k)
                ),
            ),
        },
        Mode::Approx => match graph {
            Some(key) => (
                Path::Graph,
                format!(
                    "--approx with a graph for this mask ({key}): its nearest by summary, exact re-rank of the best {}",
                    rerank_budget(k)
                ),
            ),
            None => (
                Path::Cascade {
                    budget: Some(rerank_budget(k)),
                },
                format!(
                    "--approx, no graph for this mask (graphs cover `all` and whole layers once reindex builds them): bound ranking, exact distances of the best {}",
                    rerank_budget(k)
                ),
            ),
        },
        Mode::Auto => match graph {
            Some(key) if n >= auto_graph_min(k) => (
                Path::Graph,
                format!(
                    "auto: {n} candidates >= {} and a graph for this mask ({key}): approximate, exact re-rank of the best {} (--exact forces the cascade)",
                    auto_graph_min(k),
                    rerank_budget(k)
                ),
            ),
            Some(_) => (
                Path::Cascade { budget: None },
                format!(
                    "auto: {n} candidates < {}: exact bound cascade",
                    auto_graph_min(k)
                ),
            ),
            None => (
                Path::Cascade { budget: None },
                "auto: no graph for this mask: exact bound cascade".into(),
            ),
        },
    }
}

/// The entries of a space's table a query may answer with.
struct Eligible {
    /// Entries, in entry (digest) order.
    cands: Vec<u32>,
    /// When a tag, a filter or `--exclude-self` narrowed them: per entry, its place in
    /// the list that follows (`u32::MAX` when not eligible), and per eligible entry the
    /// refs that passed (indices into the records' refs).
    narrowed: Option<(Vec<u32>, Vec<Vec<u32>>)>,
}

impl Eligible {
    fn contains(&self, e: u32) -> bool {
        self.narrowed
            .as_ref()
            .is_none_or(|(of, _)| of[e as usize] != u32::MAX)
    }

    /// The refs of entry `e` that may be answers.
    fn names(&self, table: &table::SpaceTable, e: u32) -> Vec<u32> {
        match &self.narrowed {
            None => table.refs_of(e as usize).collect(),
            Some((of, names)) => match of[e as usize] {
                u32::MAX => Vec::new(),
                i => names[i as usize].clone(),
            },
        }
    }
}

/// The space's segment, open, checked and holding a row of every entry of `table`: the
/// one this process kept when its files are unchanged (table.rs), else opened, synced
/// with the catalogue (rows appended for stored DNAs it lacks) and kept.
fn open_segment(
    db: &dyn Source,
    dir: &std::path::Path,
    space_digest: &Digest,
    space: &SpaceConfig,
    table: &std::sync::Arc<table::SpaceTable>,
) -> Result<Option<table::OpenSegment>, Error> {
    if seg_kind(space.dist).is_none() {
        return Ok(None);
    }
    if let Some(open) = table::kept_segment(dir, table) {
        return Ok(Some(open));
    }
    // Taken before opening: a write in between makes the next query open it again.
    let stamp = table::SegStamp::of(dir);
    // Appends past the mapped rows never disturb a segment another thread reads.
    let _gate = db.index_gate();
    let Some(seg) = synced_segment(db, space_digest, space, &table.stored())? else {
        return Ok(None);
    };
    let open = table::OpenSegment::new(seg, table, stamp);
    table::keep_segment(dir, open.clone());
    Ok(Some(open))
}

/// What every strategy reads, fixed by plan assembly.
struct Ctx<'a> {
    db: &'a dyn Source,
    space: &'a SpaceConfig,
    space_digest: Digest,
    mask: &'a Mask,
    metric: Metric,
    qheld: &'a QueryLayers<'a>,
    table: &'a table::SpaceTable,
    eligible: &'a Eligible,
    k: usize,
}

/// A query's running state: the k best, the comparisons behind them and the plan.
struct Run {
    top: TopK,
    comparisons: HashMap<Digest, Comparison>,
    plan: Plan,
}

impl Ctx<'_> {
    /// Computes one candidate's exact distance and offers each of its names to the top k
    /// (names are formatted only here, for the few candidates that get this far).
    fn exact(&self, e: u32, run: &mut Run) -> Result<(), Error> {
        let c = self.distance(e)?;
        self.offer(e, c, run);
        Ok(())
    }

    /// [`Ctx::exact`] of several candidates, computed concurrently (one candidate per
    /// thread: cheaper than splitting each distance across threads) and offered in order,
    /// so the answer is the same as one at a time.
    fn exact_many(&self, es: &[u32], run: &mut Run) -> Result<(), Error> {
        use rayon::prelude::*;
        // A narrow mask's distance takes less than waking the other threads.
        let got = if self.mask.neurons() >= PARALLEL_NEURONS as u64 {
            es.par_iter()
                .map(|&e| self.distance(e))
                .collect::<Result<Vec<_>, Error>>()?
        } else {
            es.iter()
                .map(|&e| self.distance(e))
                .collect::<Result<Vec<_>, Error>>()?
        };
        for (&e, c) in es.iter().zip(got) {
            self.offer(e, c, run);
        }
        Ok(())
    }

    /// Candidate `e`'s exact distance.
    fn distance(&self, e: u32) -> Result<Comparison, Error> {
        let d = self.table.digest(e as usize);
        // Candidates are opened on every query: their manifests and space are kept.
        let stored = StoredDna::open_kept(self.db.objects(), &d)?;
        exact_distance(self.space, self.qheld, &stored, self.mask, self.metric)
    }

    /// Offers candidate `e`'s names at an estimated distance (no exact distance, so no
    /// comparison: that marks its hits estimated).
    fn offer_estimate(&self, e: u32, distance: f64, run: &mut Run) {
        let d = self.table.digest(e as usize);
        for i in self.eligible.names(self.table, e) {
            run.top.push(distance, self.table.name(i).to_string(), d);
        }
    }

    /// Offers candidate `e`'s names at distance `c` to the top k.
    fn offer(&self, e: u32, c: Comparison, run: &mut Run) {
        let d = self.table.digest(e as usize);
        run.plan.exact_computed += 1;
        for i in self.eligible.names(self.table, e) {
            run.top.push(c.distance, self.table.name(i).to_string(), d);
        }
        run.comparisons.insert(d, c);
    }

    fn n_masked(&self) -> f64 {
        self.mask.neurons() as f64
    }

    /// (first neuron in a summary row, run length) of every masked run, in mask order.
    /// The layers the mask reads (those whose summaries a bound checks).
    fn layer_ids(&self) -> Vec<usize> {
        self.mask.layers.iter().map(|lm| lm.layer).collect()
    }

    fn offsets(&self) -> Vec<(usize, usize)> {
        let mut bases = Vec::with_capacity(self.space.layers.len());
        let mut base = 0usize;
        for l in &self.space.layers {
            bases.push(base);
            base += l.neurons as usize;
        }
        let mut out = Vec::new();
        for lm in &self.mask.layers {
            for &(s, e) in &lm.runs {
                out.push((bases[lm.layer] + s as usize, (e - s) as usize));
            }
        }
        out
    }
}

/// Strategy: the exact distance of every candidate.
fn scan(ctx: &Ctx<'_>, cands: &[u32], run: &mut Run) -> Result<(), Error> {
    run.plan.strategy = format!("exact scan: {} of every candidate", ctx.metric.name());
    let t = Instant::now();
    for &e in cands {
        ctx.exact(e, run)?;
    }
    run.plan.stages.push(Stage {
        name: "exact scan".into(),
        candidates_in: cands.len(),
        candidates_out: cands.len(),
        ms: ms(t),
    });
    Ok(())
}

/// The query's summaries over the masked neurons, in mask order, as the segment holds
/// them for stored DNAs.
enum QuerySummaries {
    /// Per neuron: the mean and `SKETCH_Q` quantiles (bin units), and the mean's code
    /// ([`segment::code_of`]: the code bound's and the graphs' one byte).
    Histogram {
        mean: Vec<f64>,
        sketch: Vec<f64>,
        codes: Vec<u8>,
    },
    /// Per neuron: (mean, sd).
    Gaussian { ms: Vec<(f64, f64)> },
}

impl QuerySummaries {
    fn of(ctx: &Ctx<'_>) -> Result<QuerySummaries, Error> {
        match ctx.space.dist {
            DistKind::Histogram { bins: space_bins } => {
                // Every masked neuron's histogram, in mask order.
                let mut hists: Vec<&[u32]> = Vec::with_capacity(ctx.mask.neurons() as usize);
                for (lm, held) in ctx.mask.layers.iter().zip(&ctx.qheld.held) {
                    let LayerView::Histogram { bins, counts, .. } = held.view() else {
                        return Err(Error::Invalid("query layer is not a histogram".into()));
                    };
                    for &(s, e) in &lm.runs {
                        for i in s as usize..e as usize {
                            hists.push(&counts[i * bins..(i + 1) * bins]);
                        }
                    }
                }
                // About 0.3 us a neuron: split across threads for large masks (3,088
                // neurons took 0.9 ms on one), kept on this thread for small ones (waking
                // the pool costs more than they do).
                let one = |h: &&[u32]| {
                    let mut sk = [0f64; SKETCH_Q];
                    (histogram_sketch(h, &mut sk), sk)
                };
                let parts: Vec<(f64, [f64; SKETCH_Q])> = if hists.len() >= SUMMARY_PARALLEL_NEURONS
                {
                    use rayon::prelude::*;
                    hists.par_iter().with_min_len(128).map(one).collect()
                } else {
                    hists.iter().map(one).collect()
                };
                let mean: Vec<f64> = parts.iter().map(|p| p.0).collect();
                let sketch = parts.iter().flat_map(|p| p.1).collect();
                let codes = mean
                    .iter()
                    .map(|m| segment::code_of(*m, space_bins))
                    .collect();
                Ok(QuerySummaries::Histogram {
                    mean,
                    sketch,
                    codes,
                })
            }
            _ => {
                let mut ms = Vec::new();
                for (lm, held) in ctx.mask.layers.iter().zip(&ctx.qheld.held) {
                    let (mean, var) = gaussian_mean_var(&held.view());
                    for &(s, e) in &lm.runs {
                        for i in s as usize..e as usize {
                            ms.push((mean[i], var[i].max(0.0).sqrt()));
                        }
                    }
                }
                Ok(QuerySummaries::Gaussian { ms })
            }
        }
    }

    /// The vector a graph of this kind indexes: mean codes, or (mean, sd) pairs.
    fn graph_vector(&self) -> hnsw::GraphQuery<'_> {
        match self {
            QuerySummaries::Histogram { codes, .. } => hnsw::GraphQuery::Codes(codes),
            QuerySummaries::Gaussian { ms } => {
                hnsw::GraphQuery::Pairs(ms.iter().flat_map(|(m, sd)| [*m, *sd]).collect())
            }
        }
    }
}

/// How a histogram cascade runs, besides its candidates.
struct CascadeWith {
    /// At most this many exact distances (approximate), or all survivors (exact).
    budget: Option<usize>,
    /// The graph key when the candidates came from a graph.
    via: Option<String>,
    /// Entries whose exact distances come first, before any bound (from the mask's
    /// graph); else the k best by the code bound are.
    seeds: Option<Vec<u32>>,
    /// With a budget: rank by the sketch bound and offer it as the distance, computing
    /// no exact distance (`Mode::Estimate`).
    estimate: bool,
}

/// Code bytes of a mask's layers checked and bounded at once when the code bound may
/// stop early: after each such chunk a row whose bound already passes the k-th best is
/// left unread (a CRC joined over fewer bytes costs more per byte), and the chunks are
/// read in the order that a sample of rows says leaves rows soonest. Scale bench, mask
/// `all`, efficientnet_lite0's layout at N = 100,000: 1 KB chunks in the space's order
/// read 35% of the codes, 512-byte chunks ordered 16% (256 and 128 bytes: 16-19%, with
/// more CRC calls); in rand_resnet50's layout 1 KB chunks read 15%, 4 KB ones 32%.
/// `VDNA_DB_CODE_CHUNK` sets another size.
const ABANDON_CHUNK: usize = 512;

/// The code bound asks for a row's codes this many rows before it reads them
/// ([`segment::Segment::prefetch_codes`]), over blocks of `PREFETCH_BLOCK` candidates
/// per task. Scale bench at N = 100,000 (code bound p50, without -> 8 / 16 / 32 rows
/// ahead): mask `all` 35-42 -> 20.7 / 20.7 / 20.9 ms, one layer 8.8-9.4 -> 3.2 / 3.6 /
/// 3.2 ms, 100 random neurons 47-53 -> 41 / 43 / 47 ms.
const PREFETCH_ROWS: usize = 8;
const PREFETCH_BLOCK: usize = 2048;

/// Strategy: EMD by the code bound over every candidate (after the graph's seeds, when
/// given, leaving each row once its bound passes their k-th best), then lazily the mean
/// bound, the sketch bound and exact distances, always taking the candidate with the
/// smallest bound known, while a bound can still reach the k-th best (docs/QUERY.md); with
/// a budget, at most that many exact distances (approximate).
fn histogram_cascade(
    ctx: &Ctx<'_>,
    open: &table::OpenSegment,
    summaries: &QuerySummaries,
    cands: &[u32],
    how: CascadeWith,
    run: &mut Run,
) -> Result<(), Error> {
    let CascadeWith {
        budget,
        via,
        seeds,
        estimate,
    } = how;
    let QuerySummaries::Histogram {
        mean: qmean,
        sketch: qsk,
        codes: qcodes,
    } = summaries
    else {
        return Err(Error::Invalid("query summaries are not histograms".into()));
    };
    let DistKind::Histogram { bins } = ctx.space.dist else {
        return Err(Error::Invalid("space is not a histogram space".into()));
    };
    run.plan.strategy = match (&via, budget) {
        (Some(key), Some(_)) if estimate => {
            format!("estimate: HNSW graph over mean codes ({key}) -> bounds -> rank by the sketch bound")
        }
        (None, Some(_)) if estimate => {
            "estimate: code bound -> mean bound -> rank by the sketch bound".into()
        }
        (Some(key), _) => {
            format!(
                "approx: HNSW graph over mean codes ({key}) -> bounds -> exact re-rank of the best"
            )
        }
        (None, Some(b)) => {
            format!(
                "approx: code, mean and sketch bounds, exact re-rank of the best {b} candidates"
            )
        }
        (None, None) => {
            "exact: code bound -> mean bound -> sketch bound -> exact EMD of survivors".into()
        }
    };
    let budget = budget.unwrap_or(usize::MAX);
    let (seg, row_of) = (&*open.seg, &open.map.row_of);
    let row = |e: u32| row_of[e as usize] as usize;
    let offsets = ctx.offsets();
    let layer_ids = ctx.layer_ids();
    let n_masked = ctx.n_masked();
    // Neurons of the layers the mask reads: a bound reads and checks these of a row.
    let starts = seg.layer_starts();
    let n_row: usize = layer_ids.iter().map(|&l| starts[l + 1] - starts[l]).sum();
    // Rounding of stored f32 summaries: each value is within 2^-24 * bins of its f64
    // value, so a neuron's bound is within that too (docs/QUERY.md).
    let slack = n_masked * bins as f64 * 2f64.powi(-23) + 1e-9;

    // Seeds from the graph first: their k-th best is a limit the code bound can stop at.
    let mut seeded: Vec<u32> = Vec::new();
    if let Some(seeds) = seeds {
        let t = Instant::now();
        ctx.exact_many(&seeds, run)?;
        run.plan.stages.push(Stage {
            name: "exact seed (graph's k nearest)".into(),
            candidates_in: seeds.len(),
            candidates_out: seeds.len(),
            ms: ms(t),
        });
        seeded = seeds;
        seeded.sort_unstable();
    }
    let limit0 = run.top.threshold() * n_masked + slack;

    // Level 0: the code bound of every candidate, one byte per masked neuron, each masked
    // layer's codes checked as they are read (a layer that fails bounds nothing). With a
    // finite limit, a row is left as soon as its bound passes it (a part of a bound is a
    // bound: every term is at least 0).
    let t = Instant::now();
    let step = bins as f64 / 256.0;
    // Masked layers that follow each other in the space are checked together: one CRC
    // over their codes (segment.rs, `layer_codes`), per layer only when that fails; cut
    // into chunks of at least ABANDON_CHUNK bytes when a row may be left early.
    let chunk = if limit0.is_finite() {
        hnsw::knob("VDNA_DB_CODE_CHUNK", ABANDON_CHUNK, 64)
    } else {
        usize::MAX
    };
    let widths = |l0: usize, l1: usize| -> usize {
        (l0..l1).map(|l| ctx.space.layers[l].neurons as usize).sum()
    };
    let mut groups: Vec<(usize, usize, std::ops::Range<usize>)> = Vec::new();
    for (i, lm) in ctx.mask.layers.iter().enumerate() {
        match groups.last_mut() {
            Some((l0, l1, idx)) if *l1 == lm.layer && widths(*l0, *l1) < chunk => {
                *l1 += 1;
                idx.end = i + 1;
            }
            _ => groups.push((lm.layer, lm.layer + 1, i..i + 1)),
        }
    }
    let group_bytes: Vec<usize> = groups.iter().map(|(l0, l1, _)| widths(*l0, *l1)).collect();
    // What a row's first chunk reads, asked for PREFETCH_ROWS rows ahead (segment.rs,
    // `prefetch_codes`): the code bound of one layer at N = 100,000 is otherwise a memory
    // latency per row.
    // Where each group's query codes start (groups are in mask order).
    let group_q: Vec<usize> = {
        let mut at = 0;
        groups
            .iter()
            .map(|(_, _, idx)| {
                let start = at;
                at += ctx.mask.layers[idx.clone()]
                    .iter()
                    .flat_map(|lm| lm.runs.iter().map(|&(s, t)| (t - s) as usize))
                    .sum::<usize>();
                start
            })
            .collect()
    };
    // One group's code steps for row `r` (a layer whose codes fail their check adds 0).
    let group_steps = |r: usize, g: usize| -> u64 {
        let (l0, l1, idx) = &groups[g];
        let mut qi = group_q[g];
        let mut steps = 0u64;
        let layers = ctx.mask.layers[idx.clone()].iter();
        for (lm, codes) in layers.zip(seg.layer_codes(r, *l0, *l1)) {
            for &(s, t) in &lm.runs {
                let (s, t) = (s as usize, t as usize);
                if let Some(c) = codes {
                    steps += sketch::code_l1(&qcodes[qi..qi + t - s], &c[s..t]) as u64;
                }
                qi += t - s;
            }
        }
        steps
    };
    // When a row may be left early, the order of the groups decides how many bytes a row
    // reads before its partial sum passes the limit (the sum, and so the bound, is the
    // same in any order). Three orders are tried on a sample of up to 64 candidates spread
    // over the list: the space's, the densest first (code steps per byte), the smallest
    // first; the one that reads the sample's rows in the fewest bytes is taken.
    let mut order: Vec<usize> = (0..groups.len()).collect();
    if limit0.is_finite() && groups.len() > 1 && !cands.is_empty() {
        let n = 64.min(cands.len());
        let sample: Vec<Vec<u64>> = (0..n)
            .map(|i| {
                let r = row(cands[i * cands.len() / n]);
                (0..groups.len()).map(|g| group_steps(r, g)).collect()
            })
            .collect();
        let density: Vec<f64> = (0..groups.len())
            .map(|g| {
                sample.iter().map(|st| st[g]).sum::<u64>() as f64 / group_bytes[g].max(1) as f64
            })
            .collect();
        let cost = |o: &[usize]| -> usize {
            sample
                .iter()
                .map(|st| {
                    let (mut steps, mut read) = (0u64, 0usize);
                    for &g in o {
                        steps += st[g];
                        read += group_bytes[g];
                        if steps as f64 * step > limit0 {
                            break;
                        }
                    }
                    read
                })
                .sum()
        };
        let mut dense = order.clone();
        dense.sort_by(|&a, &b| density[b].total_cmp(&density[a]).then(a.cmp(&b)));
        let mut small = order.clone();
        small.sort_by_key(|&g| (group_bytes[g], g));
        for o in [dense, small] {
            if cost(&o) < cost(&order) {
                order = o;
            }
        }
    }
    // What a row's first chunk reads, asked for PREFETCH_ROWS rows ahead (segment.rs,
    // `prefetch_codes`): the code bound of one layer at N = 100,000 is otherwise a memory
    // latency per row.
    let first = order.first().map(|&g| (groups[g].0, groups[g].1));
    // One row's code bound from `c.bin`, left early past `limit0`: (bound, candidate,
    // bytes read).
    let row_bound = |e: u32| -> (f64, u32, usize) {
        let r = row(e);
        let mut steps = 0u64;
        let mut read = 0usize;
        for &g in &order {
            steps += group_steps(r, g);
            read += group_bytes[g];
            if steps as f64 * step > limit0 {
                break;
            }
        }
        (steps as f64 * step, e, read)
    };
    // A narrow mask reads the codes by neuron (`cols.bin`, columns.rs) where that reads
    // fewer cache lines than the rows would: `masked / 64` a row, streamed, against the
    // lines of each masked group of `c.bin` plus its CRC's (half of those after the first
    // group when a row may be left early).
    let masked: usize = offsets.iter().map(|o| o.1).sum();
    let lines = |b: usize| (b.div_ceil(64) + 1) as f64;
    let per_row = order.first().map_or(0.0, |&g| lines(group_bytes[g]))
        + order
            .iter()
            .skip(1)
            .map(|&g| lines(group_bytes[g]))
            .sum::<f64>()
            * if limit0.is_finite() { 0.5 } else { 1.0 };
    let cols = open
        .cols
        .get(&index_dir(ctx.db, &ctx.space_digest), seg)
        .filter(|c| (masked * c.rows()) as f64 / 64.0 <= cands.len() as f64 * per_row);
    // (bound, candidate) of every candidate but the seeds, and the code bytes read.
    let (bounded, read): (Vec<(f64, u32)>, u64) = if let Some(cols) = &cols {
        let (sums, mut read) = cols.code_bounds(&offsets, qcodes);
        // One pass, in place: no per-row allocation, no parallel collect.
        let mut v = Vec::with_capacity(cands.len());
        for &e in cands {
            if seeded.binary_search(&e).is_ok() {
                continue;
            }
            match sums.get(row(e)) {
                Some(&steps) => v.push((steps as f64 * step, e)),
                // Appended after the file was built: bounded from its row.
                None => {
                    let (b, e, bytes) = row_bound(e);
                    read += bytes as u64;
                    v.push((b, e));
                }
            }
        }
        (v, read)
    } else {
        use rayon::prelude::*;
        let rows: Vec<(f64, u32, usize)> = cands
            .par_chunks(PREFETCH_BLOCK)
            .flat_map_iter(|block| {
                block.iter().enumerate().map(move |(i, &e)| {
                    if let (Some(&ahead), Some((l0, l1))) = (block.get(i + PREFETCH_ROWS), first) {
                        seg.prefetch_codes(row(ahead), l0, l1);
                    }
                    e
                })
            })
            .filter(|e| seeded.binary_search(e).is_err())
            .map(row_bound)
            .collect();
        let read = rows.iter().map(|b| b.2 as u64).sum();
        (rows.into_iter().map(|(b, e, _)| (b, e)).collect(), read)
    };
    run.plan.summary_bytes += read;
    let kept = bounded.iter().filter(|b| b.0 <= limit0).count();
    let whole = (bounded.len() * group_bytes.iter().sum::<usize>()).max(1) as u64;
    let mut order = ByBound::new(bounded);
    run.plan.stages.push(Stage {
        name: if let Some(cols) = &cols {
            format!(
                "code bound (by neuron, cols.bin: {} rows x {masked} neurons)",
                cols.rows()
            )
        } else if limit0.is_finite() {
            // Floored, so only a scan that read everything says 100%.
            format!(
                "code bound (past the seeds' k-th best, {}% of codes read)",
                read * 100 / whole
            )
        } else {
            "code bound (all candidates)".into()
        },
        candidates_in: cands.len() - seeded.len(),
        candidates_out: kept,
        ms: ms(t),
    });

    // Without seeds, seed the threshold with the k best by the code bound (estimates
    // need none: the sketch bounds come out in order).
    let seed = if seeded.is_empty() && !estimate {
        let t = Instant::now();
        let seed = order.len().min(ctx.k);
        let firsts: Vec<u32> = (0..seed).map(|i| order.get(i).1).collect();
        ctx.exact_many(&firsts, run)?;
        run.plan.stages.push(Stage {
            name: "exact seed (k best by code)".into(),
            candidates_in: seed,
            candidates_out: seed,
            ms: ms(t),
        });
        seed
    } else {
        0
    };

    // The rest, lazily: candidates leave the code-bound order for a heap keyed by the
    // tightest bound computed so far (level 1: mean bound, level 2: sketch bound), and the
    // heap's smallest is refined one level, or its exact distance computed at level 2,
    // while it can still reach the k-th best. Each bound is at least the one before
    // (docs/QUERY.md), and a part that fails its checksum keeps the bound it had.
    let t = Instant::now();
    let mean_bound = |e: u32, prev: f64| -> f64 {
        let Some(m) = seg.means_in(row(e), &layer_ids) else {
            return prev;
        };
        let mut s = 0f64;
        let mut qi = 0;
        for &(off, len) in &offsets {
            s += sketch::l1(&qmean[qi..qi + len], &m[off..off + len]);
            qi += len;
        }
        s.max(prev)
    };
    let sketch_bound = |e: u32, prev: f64| -> f64 {
        let Some(sk) = seg.sketches_in(row(e), &layer_ids) else {
            return prev;
        };
        let mut sum = 0f64;
        let mut qi = 0;
        // A run of neurons has contiguous sketches in both the query and the row.
        for &(off, len) in &offsets {
            let q = &qsk[qi * SKETCH_Q..(qi + len) * SKETCH_Q];
            let c = &sk[off * SKETCH_Q..(off + len) * SKETCH_Q];
            sum += sketch::l1(q, c);
            qi += len;
        }
        (sum / SKETCH_Q as f64).max(prev)
    };
    let mut heap: BinaryHeap<Reverse<(TotalF64, u8, u32)>> = BinaryHeap::new();
    let (mut next, mut meaned, mut sketched, mut done) = (seed, 0usize, 0usize, 0usize);
    // Exact distances are computed a batch at a time, one candidate per thread, for
    // masks wide enough to split: a batch holds candidates that the limit let through
    // before any of them was computed, so each was due then; one of them can turn out
    // unneeded once another lowers the limit (at most a thread's worth of work more,
    // and the same answer, since the top k keeps the k smallest exact distances). One
    // distance at a time left a thread idle through each candidate's serial parts.
    let batch_max = if ctx.mask.neurons() >= PARALLEL_NEURONS as u64 {
        rayon::current_num_threads().max(1)
    } else {
        1
    };
    let mut batch: Vec<u32> = Vec::with_capacity(batch_max);
    // Estimates are ranked by the bounds themselves, with no rounding slack: an entry
    // leaves the heap at level 2 only when no candidate left can have a smaller sketch
    // bound (the heap's keys and the frontier are at least its own), so the answers are
    // the k smallest sketch bounds among the candidates.
    let slack = if estimate { 0.0 } else { slack };
    let (mut mean_ms, mut sketch_ms) = (0.0, 0.0);
    loop {
        let frontier = if next < order.len() {
            order.get(next).0
        } else {
            f64::INFINITY
        };
        let limit = run.top.threshold() * n_masked + slack;
        match heap.peek().copied() {
            Some(Reverse((b, level, e))) if b.0 <= frontier => {
                if b.0 > limit {
                    break;
                }
                heap.pop();
                if level == 1 {
                    let ts = Instant::now();
                    heap.push(Reverse((TotalF64(sketch_bound(e, b.0)), 2, e)));
                    sketched += 1;
                    sketch_ms += ms(ts);
                } else if estimate {
                    ctx.offer_estimate(e, b.0 / n_masked, run);
                    done += 1;
                } else {
                    if done + batch.len() >= budget {
                        break;
                    }
                    batch.push(e);
                    if batch.len() >= batch_max {
                        ctx.exact_many(&batch, run)?;
                        done += batch.len();
                        batch.clear();
                    }
                }
            }
            // Everything left is at least the frontier (heap entries exceed it).
            _ if next >= order.len() || frontier > limit => break,
            _ => {
                let ts = Instant::now();
                let (b, e) = order.get(next);
                next += 1;
                heap.push(Reverse((TotalF64(mean_bound(e, b)), 1, e)));
                meaned += 1;
                mean_ms += ms(ts);
            }
        }
    }
    // What the batch holds was due when it joined (the limit only falls).
    if !batch.is_empty() {
        ctx.exact_many(&batch, run)?;
        done += batch.len();
    }
    run.plan.summary_bytes += (meaned * n_row * 4 + sketched * n_row * 4 * SKETCH_Q) as u64;
    run.plan.stages.push(Stage {
        name: "mean bound (lazy, code order)".into(),
        candidates_in: order.len() - seed,
        candidates_out: meaned,
        ms: mean_ms,
    });
    run.plan.stages.push(Stage {
        name: "sketch bound (lazy)".into(),
        candidates_in: meaned,
        candidates_out: sketched,
        ms: sketch_ms,
    });
    run.plan.stages.push(Stage {
        name: if estimate {
            "estimates (by sketch bound)".into()
        } else {
            "exact EMD (bound order)".into()
        },
        candidates_in: sketched,
        candidates_out: done,
        ms: ms(t) - mean_ms - sketch_ms,
    });
    Ok(())
}

/// Strategy: NFD from the (mean, sd) summaries, which is the exact NFD up to rounding, then
/// exact distances in that order while one can still reach the k-th best; with a budget,
/// at most that many (approximate).
#[allow(clippy::too_many_arguments)]
fn gaussian_cascade(
    ctx: &Ctx<'_>,
    open: &table::OpenSegment,
    summaries: &QuerySummaries,
    cands: &[u32],
    budget: Option<usize>,
    via: Option<String>,
    run: &mut Run,
) -> Result<(), Error> {
    let QuerySummaries::Gaussian { ms: qms } = summaries else {
        return Err(Error::Invalid("query summaries are not Gaussian".into()));
    };
    run.plan.strategy = match (&via, budget) {
        (Some(key), _) => format!("approx: HNSW graph over (mean, sd) ({key}) -> exact re-rank"),
        (None, Some(b)) => {
            format!("approx: NFD from (mean, sd) summaries, exact NFD of the best {b}")
        }
        (None, None) => "exact: NFD from (mean, sd) summaries -> exact NFD of survivors".into(),
    };
    let budget = budget.unwrap_or(usize::MAX);
    let (seg, row_of) = (&*open.seg, &open.map.row_of);
    let offsets = ctx.offsets();
    let layer_ids = ctx.layer_ids();
    let t = Instant::now();
    let mut est: Vec<(f64, f64, u32)> = cands
        .iter()
        .map(|&e| {
            // A row that fails its checksum bounds nothing: its exact distance decides.
            let Some(g) = seg.gauss_in(row_of[e as usize] as usize, &layer_ids) else {
                return (0.0, 0.0, e);
            };
            let (mut s, mut mag) = (0f64, 0f64);
            let mut qi = 0;
            for &(off, len) in &offsets {
                for j in 0..len {
                    let (qm, qs) = qms[qi + j];
                    let (m, sd) = (g[2 * (off + j)], g[2 * (off + j) + 1]);
                    s += (qm - m).powi(2) + (qs - sd).powi(2);
                    mag += qm * qm + m * m + qs * qs + sd * sd;
                }
                qi += len;
            }
            // (m1-m2)^2 + (s1-s2)^2 equals the reference's expression up to rounding of
            // order 1e-15 of the magnitudes involved.
            (s, mag * 1e-12 + 1e-12, e)
        })
        .collect();
    est.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.2.cmp(&b.2)));
    run.plan.summary_bytes += (cands.len() * 16 * ctx.space.total_neurons() as usize) as u64;
    run.plan.stages.push(Stage {
        name: "summary NFD (all candidates)".into(),
        candidates_in: cands.len(),
        candidates_out: cands.len(),
        ms: ms(t),
    });
    let t = Instant::now();
    let n_masked = ctx.n_masked();
    let mut done = 0;
    for &(s, slack, e) in &est {
        if run.top.full() && s - slack > run.top.threshold() * n_masked || done >= budget {
            break;
        }
        ctx.exact(e, run)?;
        done += 1;
    }
    run.plan.stages.push(Stage {
        name: "exact NFD (summary order)".into(),
        candidates_in: est.len(),
        candidates_out: done,
        ms: ms(t),
    });
    Ok(())
}

/// How a graph stage found its rows, for `--explain`: by a walk (nothing added), or by a
/// scan of the graph's compact vectors.
fn how_found(scanned: bool) -> &'static str {
    if scanned {
        ", compact-vector scan"
    } else {
        ""
    }
}

/// The graph key of a mask that is exactly a graph's mask: `all`, or one whole layer.
fn graph_key(mask: &Mask, space: &SpaceConfig) -> Option<String> {
    if mask.is_all(space) {
        return Some("all".into());
    }
    match mask.layers.as_slice() {
        [l] if l.full => Some(space.layers[l.layer].name.clone()),
        _ => None,
    }
}

/// Candidates from the mask's HNSW graph (eligible DNAs only), plus every eligible row
/// appended after the graph was built; `None` when no graph applies or too few eligible
/// DNAs were found (the caller then runs the exact cascade).
fn graph_candidates(
    ctx: &Ctx<'_>,
    open: &table::OpenSegment,
    query: &hnsw::GraphQuery<'_>,
) -> Result<Option<(String, Vec<u32>, bool)>, Error> {
    let Some(key) = graph_key(ctx.mask, ctx.space) else {
        return Ok(None);
    };
    let (n, ef) = graph_search_params(ctx.k, ctx.eligible.narrowed.is_some());
    let Some((rows, covered, scanned)) = hnsw::search(
        &index_dir(ctx.db, &ctx.space_digest),
        &open.seg,
        &key,
        query,
        n,
        ef,
    ) else {
        return Ok(None);
    };
    let entry_of = &open.map.entry_of;
    let eligible = |e: &u32| *e != table::NONE && ctx.eligible.contains(*e);
    let mut found: Vec<u32> = rows
        .iter()
        .filter_map(|r| entry_of.get(*r).copied())
        .filter(eligible)
        .collect();
    found.extend(
        entry_of[covered.min(entry_of.len())..]
            .iter()
            .copied()
            .filter(eligible),
    );
    found.sort_unstable();
    found.dedup();
    Ok((found.len() >= ctx.k).then_some((key, found, scanned)))
}

/// The query's mean codes over every neuron of the space, for a search of the `all`
/// graph that seeds an exact query whose mask has no graph of its own (a partial layer,
/// several layers, random neurons): `None` when the mask has its own graph, the space has
/// no `all` graph, or the seeds would cost more than they save. The query's layers
/// outside the mask are read only when the code bound has enough rows to repay it (a
/// stored query decodes them); a mask that touches every layer reads nothing more.
fn all_graph_codes(
    ctx: &Ctx<'_>,
    q: &AnyDna,
    open: &table::OpenSegment,
    dir: &std::path::Path,
) -> Result<Option<Vec<u8>>, Error> {
    let DistKind::Histogram { bins } = ctx.space.dist else {
        return Ok(None);
    };
    let every_layer = ctx.mask.layers.len() == ctx.space.layers.len();
    if graph_key(ctx.mask, ctx.space).is_some()
        || (!every_layer && ctx.eligible.cands.len() < hnsw::min_rows())
        || !hnsw::exists(dir, "all", open.seg.kind())
    {
        return Ok(None);
    }
    // A neuron with no count has mean 0, as its stored summary does.
    let mean_code = |h: &[u32]| segment::code_of(histogram_mean(h), bins);
    let mut codes = Vec::with_capacity(open.seg.layer_starts().last().copied().unwrap_or(0));
    for l in 0..ctx.space.layers.len() {
        let held;
        let layer = match ctx.mask.layers.iter().position(|lm| lm.layer == l) {
            Some(i) => &ctx.qheld.held[i],
            None => {
                held = q.layer(l)?;
                &held
            }
        };
        let LayerView::Histogram {
            bins: b, counts, ..
        } = layer.view()
        else {
            return Err(Error::Invalid("query layer is not a histogram".into()));
        };
        codes.extend(counts.chunks_exact(b.max(1)).map(mean_code));
    }
    Ok(Some(codes))
}

/// The first `k` eligible entries graph `key` finds, nearest first (`None` without the
/// graph, or when it finds fewer). Any k candidates' exact distances bound the answer's
/// k-th best from above; near ones bound it tightly.
fn graph_seeds(
    ctx: &Ctx<'_>,
    open: &table::OpenSegment,
    key: &str,
    query: &hnsw::GraphQuery<'_>,
) -> Result<Option<(String, Vec<u32>, bool)>, Error> {
    let (n, ef) = graph_search_params(ctx.k, ctx.eligible.narrowed.is_some());
    let Some((rows, _, scanned)) = hnsw::search(
        &index_dir(ctx.db, &ctx.space_digest),
        &open.seg,
        key,
        query,
        n,
        ef,
    ) else {
        return Ok(None);
    };
    let mut seeds = Vec::with_capacity(ctx.k);
    for r in rows {
        match open.map.entry_of.get(r).copied() {
            Some(e) if e != table::NONE && ctx.eligible.contains(e) && !seeds.contains(&e) => {
                seeds.push(e);
                if seeds.len() == ctx.k {
                    break;
                }
            }
            _ => {}
        }
    }
    Ok((seeds.len() == ctx.k).then_some((key.to_string(), seeds, scanned)))
}

/// Candidates in increasing bound order (ties by entry, which is digest order), sorted
/// only as far as they are visited: an exact query visits a few hundred of N, so a full
/// sort (O(N log N), milliseconds at 100,000) would cost more than the visit.
struct ByBound {
    v: Vec<(f64, u32)>,
    sorted: usize,
}

impl ByBound {
    fn new(v: Vec<(f64, u32)>) -> ByBound {
        ByBound { v, sorted: 0 }
    }

    fn len(&self) -> usize {
        self.v.len()
    }

    /// The `i`-th in order (`i < len()`); sorts the next block (twice the sorted prefix,
    /// at least 64) when `i` is past the sorted prefix.
    fn get(&mut self, i: usize) -> (f64, u32) {
        let cmp = |a: &(f64, u32), b: &(f64, u32)| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1));
        while i >= self.sorted {
            let rest = &mut self.v[self.sorted..];
            let take = self.sorted.max(64).min(rest.len());
            if take < rest.len() {
                rest.select_nth_unstable_by(take - 1, cmp);
            }
            rest[..take].sort_unstable_by(cmp);
            self.sorted += take;
        }
        self.v[i]
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// An f64 ordered by `total_cmp`, for heaps of bounds.
#[derive(Clone, Copy, Debug, PartialEq)]
struct TotalF64(f64);

impl Eq for TotalF64 {}

impl PartialOrd for TotalF64 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for TotalF64 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// The k best (distance, ref) pairs, ties broken by ref name.
struct TopK {
    k: usize,
    items: Vec<(f64, String, Digest)>,
}

impl TopK {
    fn new(k: usize) -> TopK {
        TopK {
            k,
            items: Vec::new(),
        }
    }

    fn push(&mut self, d: f64, name: String, digest: Digest) {
        self.items.push((d, name, digest));
        self.items
            .sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        self.items.truncate(self.k);
    }

    fn full(&self) -> bool {
        self.items.len() >= self.k
    }

    /// The k-th best distance, or infinity while fewer than k are known.
    fn threshold(&self) -> f64 {
        if self.full() {
            self.items[self.k - 1].0
        } else {
            f64::INFINITY
        }
    }

    fn finish(self) -> Vec<(f64, String, Digest)> {
        self.items
    }
}

/// Brute force: the exact distance to every eligible ref, sorted. The oracle of tests
/// (feature `testing`).
#[cfg(feature = "testing")]
pub fn brute_force(
    db: &dyn Source,
    q: &AnyDna,
    req: &QueryRequest,
) -> Result<Vec<(f64, String)>, Error> {
    let space = q.space().clone();
    let sd = space.digest();
    let mask = db.catalogue().resolve_mask(&req.mask, &space)?;
    let metric = req
        .metric
        .or(Metric::default_for(space.dist))
        .ok_or_else(|| Error::Invalid("no metric".into()))?;
    let mut out = Vec::new();
    for (name, r) in db.catalogue().refs()? {
        let Some(rec) = db.catalogue().dna(&r.digest)? else {
            continue;
        };
        if rec.space != sd {
            continue;
        }
        let other = AnyDna::Stored(open_dna(db, &r.digest)?);
        let c = crate::stored::compare_dnas(q, &other, &mask, Some(metric), 0)?;
        out.push((c.distance, name.to_string()));
    }
    out.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    out.truncate(req.k);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rule of docs/QUERY.md's planner table, row by row (graphs-min at its default
    /// of 2,000, so the default mode takes a graph from 2,000 candidates at k <= 5).
    #[test]
    fn the_planner_follows_its_table() {
        let emd = Some(Metric::Emd);
        let exact = Path::Cascade { budget: None };
        // No bound for the metric: scan, whatever the mode.
        for mode in [Mode::Auto, Mode::Exact, Mode::Approx, Mode::Estimate] {
            assert_eq!(choose(mode, 50_000, 5, None, Some("all")).0, Path::Scan);
        }
        // N <= k: scan.
        assert_eq!(choose(Mode::Approx, 5, 5, emd, Some("all")).0, Path::Scan);
        // --exact: the cascade even where a graph exists.
        assert_eq!(choose(Mode::Exact, 50_000, 5, emd, Some("all")).0, exact);
        // Small catalogues are exact in every mode: 200 is the graph's neighbour count.
        for mode in [Mode::Auto, Mode::Approx, Mode::Estimate] {
            assert_eq!(choose(mode, 200, 5, emd, Some("all")).0, exact);
            assert_eq!(choose(mode, 4, 3, emd, Some("all")).0, exact, "issue 19");
        }
        // k = 10 fetches 400 neighbours: 400 candidates are still small.
        assert_eq!(choose(Mode::Approx, 400, 10, emd, Some("all")).0, exact);
        // --approx past that: the graph, or a budgeted cascade without one.
        assert_eq!(
            choose(Mode::Approx, 201, 5, emd, Some("all")).0,
            Path::Graph
        );
        assert_eq!(
            choose(Mode::Approx, 201, 5, emd, None).0,
            Path::Cascade { budget: Some(10) }
        );
        assert_eq!(
            choose(Mode::Approx, 5000, 3, emd, None).0,
            Path::Cascade { budget: Some(8) }
        );
        // --estimate: the same paths as --approx (query() turns their budget into
        // estimates for histograms).
        assert_eq!(
            choose(Mode::Estimate, 201, 5, emd, Some("all")).0,
            Path::Graph
        );
        assert_eq!(
            choose(Mode::Estimate, 201, 5, emd, None).0,
            Path::Cascade { budget: Some(10) }
        );
        // Default mode: a graph from max(graphs-min, 10 x neighbours) candidates.
        assert_eq!(choose(Mode::Auto, 1999, 5, emd, Some("all")).0, exact);
        assert_eq!(choose(Mode::Auto, 2000, 5, emd, Some("all")).0, Path::Graph);
        assert_eq!(choose(Mode::Auto, 3999, 10, emd, Some("all")).0, exact);
        assert_eq!(
            choose(Mode::Auto, 4000, 10, emd, Some("all")).0,
            Path::Graph
        );
        assert_eq!(choose(Mode::Auto, 1_000_000, 5, emd, None).0, exact);
        // Every rule is stated.
        let (_, rule) = choose(Mode::Approx, 12, 3, emd, Some("all"));
        assert!(rule.contains("12 candidates <= 200"), "{rule}");
    }
}
