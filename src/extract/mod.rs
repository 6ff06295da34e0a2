//! Extraction: a source of images to a DNA, on CPU, with candle.
//!
//! The pipeline is streaming: a producer thread lists, reads, decodes and resizes one
//! batch of images in parallel (rayon) while the network runs the previous one; each
//! batch's activations are folded into the accumulators ([`accum`]) and dropped, so memory
//! is bounded by the batch. The result is a [`Dna`] whose space pins the extractor, the
//! digest of its exact weights, the digest of the activation ranges and the
//! preprocessing, so DNAs from different weights or ranges never compare.
//!
//! Semantics follow the reference library (`vdna` 0.1.1): `histogram-B` counts every
//! spatial position of every image after normalising with the scaled ranges;
//! `gaussian` and `layer-gaussian` are fitted to the per-image spatial means of the raw
//! activations (unbiased variance / covariance over images); `activation-ranges` keeps
//! the raw per-neuron min / max over all positions.
//!
//! Owns: everything candle, image decoding and resizing. Must not: touch the store.

pub mod accum;
pub mod checkpoint;
pub mod clip;
pub mod efficientnet;
pub mod inception;
pub mod ops;
pub mod preprocess;
pub mod ranges;
pub mod resnet;
pub mod scenes;
pub mod settings;
pub mod source;
pub mod stream;
pub mod transformer;
pub mod vgg;
pub mod vit;
pub mod weights;

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use crate::dna::Dna;
use crate::format::{
    Digest, DistKind, Extractor as ExtractorSpec, LayerSpec, Preprocessing, SpaceConfig,
    SPACE_SCHEMA,
};
pub use preprocess::Crop;
pub use ranges::Ranges;
pub use settings::{extract_source, pin_import, settings_for_space, ExtractSettings};
pub use source::{
    is_source_spec, is_url, list as list_images, list_source, looks_like_image_source, parse_shard,
    ImageItem, Listing, Segment, Selection, Work,
};

/// Errors of extraction; each names its object and the next step.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("weights {origin}: {msg}")]
    Weights { origin: String, msg: String },
    #[error("image source {source_path}: {msg}")]
    Source { source_path: String, msg: String },
    #[error("activation ranges {origin}: {msg}")]
    Ranges { origin: String, msg: String },
    #[error("image {name}: {msg} (drop --strict to skip unreadable images)")]
    Image { name: String, msg: String },
    #[error("extraction: {0}")]
    Network(String),
    #[error("{0}")]
    Invalid(String),
}

impl From<candle_core::Error> for ExtractError {
    fn from(e: candle_core::Error) -> Self {
        ExtractError::Network(e.to_string())
    }
}

/// The architectures vdna-db can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtractorKind {
    EfficientNetLite0,
    RandResNet50,
    DinoResNet50,
    MugsVitBase,
    DinoVitBase,
    ClipVitB16,
    Vgg16,
    Inception,
}

impl ExtractorKind {
    pub const ALL: [ExtractorKind; 8] = [
        ExtractorKind::EfficientNetLite0,
        ExtractorKind::RandResNet50,
        ExtractorKind::DinoResNet50,
        ExtractorKind::MugsVitBase,
        ExtractorKind::DinoVitBase,
        ExtractorKind::ClipVitB16,
        ExtractorKind::Vgg16,
        ExtractorKind::Inception,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ExtractorKind::EfficientNetLite0 => "efficientnet_lite0",
            ExtractorKind::RandResNet50 => "rand_resnet50",
            ExtractorKind::DinoResNet50 => "dino_resnet50",
            ExtractorKind::MugsVitBase => "mugs_vit_base",
            ExtractorKind::DinoVitBase => "dino_vit_base",
            ExtractorKind::ClipVitB16 => "clip_im_vit_b16",
            ExtractorKind::Vgg16 => "vgg16",
            ExtractorKind::Inception => "inception",
        }
    }

    pub fn parse(s: &str) -> Result<ExtractorKind, ExtractError> {
        ExtractorKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                ExtractError::Invalid(format!(
                    "unknown extractor {s:?}: choose one of {}",
                    ExtractorKind::ALL.map(|k| k.name()).join(", ")
                ))
            })
    }

    pub fn input_size(self) -> usize {
        match self {
            ExtractorKind::EfficientNetLite0 => efficientnet::INPUT_SIZE,
            ExtractorKind::RandResNet50 | ExtractorKind::DinoResNet50 => resnet::INPUT_SIZE,
            ExtractorKind::MugsVitBase | ExtractorKind::DinoVitBase => vit::INPUT_SIZE,
            ExtractorKind::ClipVitB16 => clip::INPUT_SIZE,
            ExtractorKind::Vgg16 => vgg::INPUT_SIZE,
            ExtractorKind::Inception => inception::INPUT_SIZE,
        }
    }

    pub fn mean_std(self) -> ([f64; 3], [f64; 3]) {
        match self {
            ExtractorKind::EfficientNetLite0 => (efficientnet::MEAN, efficientnet::STD),
            ExtractorKind::RandResNet50 | ExtractorKind::DinoResNet50 => {
                (resnet::MEAN, resnet::STD)
            }
            ExtractorKind::MugsVitBase | ExtractorKind::DinoVitBase => (vit::MEAN, vit::STD),
            ExtractorKind::ClipVitB16 => (clip::MEAN, clip::STD),
            ExtractorKind::Vgg16 => (vgg::MEAN, vgg::STD),
            ExtractorKind::Inception => (inception::MEAN, inception::STD),
        }
    }

    /// Whether the network ships with default weights (embedded or seeded); the others
    /// need `--weights FILE` (the reference's own weight files, never downloaded).
    pub fn has_default_weights(self) -> bool {
        matches!(
            self,
            ExtractorKind::EfficientNetLite0 | ExtractorKind::RandResNet50
        )
    }
}

enum Net {
    Eff(efficientnet::EfficientNetLite0),
    Res(resnet::ResNet50),
    Vit(vit::Vit),
    Clip(clip::ClipVit),
    Vgg(vgg::Vgg16),
    Inception(Box<inception::InceptionV3>),
}

/// A loaded network with the digest of its weights.
pub struct Extractor {
    pub kind: ExtractorKind,
    net: Net,
    weights: Digest,
    /// Where the weights came from, for messages.
    pub origin: String,
}

/// The seed of the default `rand_resnet50` initialisation.
pub const DEFAULT_SEED: u64 = 0;

impl Extractor {
    /// Loads `kind` from a weights file, or its default: the embedded ImageNet weights for
    /// `efficientnet_lite0`, the seeded initialisation (seed `seed`) for `rand_resnet50`.
    pub fn load(
        kind: ExtractorKind,
        weights: Option<&Path>,
        seed: u64,
    ) -> Result<Extractor, ExtractError> {
        let mut p = match (weights, kind) {
            (Some(path), _) => weights::Params::from_file(path)?,
            (None, ExtractorKind::EfficientNetLite0) => weights::Params::from_safetensors_bytes(
                efficientnet::EMBEDDED_WEIGHTS,
                "embedded efficientnet_lite0",
            )?,
            (None, ExtractorKind::RandResNet50) => weights::Params::from_map(
                resnet::seeded(seed),
                &format!("rand_resnet50 seed {seed}"),
            ),
            (None, k) => {
                return Err(ExtractError::Invalid(format!(
                    "extractor {} has no built-in weights: pass --weights FILE with the \
                     reference's weights for it (PyTorch .pth or safetensors)",
                    k.name()
                )))
            }
        };
        let net = match kind {
            ExtractorKind::EfficientNetLite0 => {
                Net::Eff(efficientnet::EfficientNetLite0::load(&mut p)?)
            }
            ExtractorKind::RandResNet50 | ExtractorKind::DinoResNet50 => {
                Net::Res(resnet::ResNet50::load(&mut p)?)
            }
            ExtractorKind::MugsVitBase | ExtractorKind::DinoVitBase => {
                Net::Vit(vit::Vit::load(&mut p)?)
            }
            ExtractorKind::ClipVitB16 => Net::Clip(clip::ClipVit::load(&mut p)?),
            ExtractorKind::Vgg16 => Net::Vgg(vgg::Vgg16::load(&mut p)?),
            ExtractorKind::Inception => {
                Net::Inception(Box::new(inception::InceptionV3::load(&mut p)?))
            }
        };
        let origin = match weights {
            Some(w) => w.display().to_string(),
            None => match kind {
                ExtractorKind::EfficientNetLite0 => "embedded".into(),
                ExtractorKind::RandResNet50 => format!("seeded init (seed {seed})"),
                k => k.name().into(),
            },
        };
        Ok(Extractor {
            kind,
            net,
            weights: p.digest(),
            origin,
        })
    }

    pub fn layers(&self) -> &[LayerSpec] {
        match &self.net {
            Net::Eff(n) => n.layers(),
            Net::Res(n) => n.layers(),
            Net::Vit(n) => n.layers(),
            Net::Clip(n) => n.layers(),
            Net::Vgg(n) => n.layers(),
            Net::Inception(n) => n.layers(),
        }
    }

    /// The side of the square input: the kind's, except for a ViT whose weights were
    /// made for another grid (the position embeddings fix it).
    pub fn input_size(&self) -> usize {
        match &self.net {
            Net::Vit(n) => n.input_size(),
            Net::Clip(n) => n.input_size(),
            _ => self.kind.input_size(),
        }
    }

    pub fn weights_digest(&self) -> Digest {
        self.weights
    }

    /// Runs a normalised NHWC batch; returns the recorded layers, NHWC.
    pub fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>, ExtractError> {
        Ok(match &self.net {
            Net::Eff(n) => n.forward(x)?,
            Net::Res(n) => n.forward(x)?,
            Net::Vit(n) => n.forward(x)?,
            Net::Clip(n) => n.forward(x)?,
            Net::Vgg(n) => n.forward(x)?,
            Net::Inception(n) => n.forward(x)?,
        })
    }

    /// ImageNet logits, for extractors with a classifier (efficientnet_lite0).
    pub fn classify(&self, x: &Tensor) -> Result<Option<Tensor>, ExtractError> {
        match &self.net {
            Net::Eff(n) => {
                let layers = n.forward(x)?;
                let head = layers
                    .last()
                    .ok_or_else(|| ExtractError::Network("no head".into()))?;
                Ok(Some(n.classify(head)?))
            }
            _ => Ok(None),
        }
    }
}

/// What to extract and how.
#[derive(Clone, Debug)]
pub struct ExtractOptions {
    pub dist: DistKind,
    pub batch: usize,
    pub crop: Crop,
    /// Fail on the first unreadable image instead of skipping it.
    pub strict: bool,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        ExtractOptions {
            dist: DistKind::Histogram { bins: 1000 },
            batch: 16,
            crop: Crop::None,
            strict: false,
        }
    }
}

/// Where the time went, summed over batches (decode / resize is CPU time across workers).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Timings {
    pub decode_s: f64,
    pub resize_s: f64,
    pub network_s: f64,
    pub accumulate_s: f64,
    pub wall_s: f64,
}

/// What an extraction did besides its DNA.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Report {
    pub images: u64,
    /// Unreadable images: `(name, reason)`.
    pub skipped: Vec<(String, String)>,
    /// NaN / infinite activations left out of the distributions.
    pub nonfinite: u64,
    pub timings: Timings,
    /// Images taken from a checkpoint instead of extracted again.
    pub resumed: u64,
    /// Things to tell the user (e.g. a checkpoint of another job was set aside).
    pub notes: Vec<String>,
}

/// Where an extraction is, after each batch.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tick {
    /// Images folded in or skipped, those of a resumed checkpoint included.
    pub done: u64,
    /// Images in all; for streamed sources an estimate from the files read so far (0
    /// before the first is done).
    pub total: u64,
    /// True when `total` is an estimate.
    pub estimated: bool,
    /// Unreadable images so far.
    pub skipped: u64,
}

/// Progress after each batch.
pub type Progress<'a> = &'a (dyn Fn(&Tick) + Sync);

/// The space an extraction produces.
pub fn space_for(
    ext: &Extractor,
    ranges: Option<&Ranges>,
    dist: DistKind,
    crop: Crop,
) -> SpaceConfig {
    let hist = matches!(dist, DistKind::Histogram { .. });
    let (mean, std) = ext.kind.mean_std();
    let size = ext.input_size() as u32;
    SpaceConfig {
        schema: SPACE_SCHEMA.into(),
        extractor: ExtractorSpec {
            name: ext.kind.name().into(),
            weights: Some(ext.weights_digest()),
            ranges: if hist {
                ranges.map(|r| r.digest())
            } else {
                None
            },
        },
        layers: ext.layers().to_vec(),
        dist,
        hist_range: hist.then_some([-1.0, 1.0]),
        range_scale: hist.then_some(ranges::RANGE_SCALE),
        preprocessing: Some(Preprocessing {
            resize: "clean".into(),
            crop: crop.name().into(),
            input_size: [size, size],
            mean,
            std,
        }),
    }
}

/// Pins the space of a DNA imported from the reference library's files to the weights and
/// activation ranges it was made with, so that it compares with DNAs extracted here from
/// the same files: the result is exactly the space [`extract`] gives for `ext`, `ranges`,
/// the DNA's distribution and `crop`. Refused when the extractor's name, the layers (names,
/// neuron counts, order), the histogram range or range scale, or the ranges' layers do not
/// match; histogram DNAs need their ranges.
pub fn pin_imported(
    space: &SpaceConfig,
    ext: &Extractor,
    ranges: Option<&Ranges>,
    crop: Crop,
) -> Result<SpaceConfig, ExtractError> {
    let name = ext.kind.name();
    if space.extractor.name != name {
        return Err(ExtractError::Invalid(format!(
            "the reference DNA was made with extractor {:?}, not {name}: pass \
             --extractor {:?} with its weights",
            space.extractor.name, space.extractor.name
        )));
    }
    let ours = ext.layers();
    if space.layers != ours {
        let first = space
            .layers
            .iter()
            .zip(ours)
            .find(|(a, b)| a != b)
            .map(|(a, b)| {
                format!(
                    "; first difference: {} ({} neurons) vs {} ({} neurons)",
                    a.name, a.neurons, b.name, b.neurons
                )
            })
            .unwrap_or_default();
        return Err(ExtractError::Invalid(format!(
            "the reference DNA's layers ({} layers, {} neurons) are not those of {name} with \
             weights {} ({} layers, {} neurons){first}: are these the weights it was made with?",
            space.layers.len(),
            space.layers.iter().map(|l| l.neurons as u64).sum::<u64>(),
            ext.origin,
            ours.len(),
            ours.iter().map(|l| l.neurons as u64).sum::<u64>(),
        )));
    }
    let hist = matches!(space.dist, DistKind::Histogram { .. });
    let ranges = if hist {
        let r = ranges.ok_or_else(|| {
            ExtractError::Invalid(
                "a histogram DNA is pinned to its activation ranges too: pass --ranges FILE \
                 (the activation_ranges.json it was made with)"
                    .into(),
            )
        })?;
        r.norms_for(ours, ranges::RANGE_SCALE)?;
        Some(r)
    } else {
        None
    };
    let pinned = space_for(ext, ranges, space.dist, crop);
    if space.hist_range != pinned.hist_range || space.range_scale != pinned.range_scale {
        return Err(ExtractError::Invalid(format!(
            "the reference DNA's histogram range {:?} and range scale {:?} differ from \
             vdna-db's {:?} and {:?}: its histograms are not comparable",
            space.hist_range, space.range_scale, pinned.hist_range, pinned.range_scale
        )));
    }
    Ok(pinned)
}

struct Batch {
    /// `(n, size, size, 3)` normalised values.
    pixels: Vec<f32>,
    n: usize,
    skipped: Vec<(String, String)>,
    decode: Duration,
    resize: Duration,
}

/// Reads, decodes and resizes `items` in parallel into one batch.
fn load_batch(items: &[ImageItem], kind: ExtractorKind, size: usize, crop: Crop) -> Batch {
    let size = size as u32;
    let (mean, std) = kind.mean_std();
    let per = (size * size * 3) as usize;
    let fetched = source::prefetch(items);
    let results: Vec<(Result<Vec<f32>, String>, Duration, Duration)> = items
        .par_iter()
        .zip(fetched)
        .map(|(it, fetched)| {
            let t0 = Instant::now();
            let img = fetched
                .unwrap_or_else(|| it.read())
                .map_err(|e| e.to_string())
                .and_then(|b| preprocess::decode_rgb(&b))
                .map(|img| preprocess::crop(img, crop));
            let t1 = Instant::now();
            let out = img.and_then(|img| {
                let planes = preprocess::clean_resize(&img, size)?;
                let mut v = vec![0f32; per];
                preprocess::normalise_hwc(&planes, mean, std, &mut v);
                Ok(v)
            });
            (out, t1 - t0, t1.elapsed())
        })
        .collect();
    let mut b = Batch {
        pixels: Vec::with_capacity(per * items.len()),
        n: 0,
        skipped: Vec::new(),
        decode: Duration::ZERO,
        resize: Duration::ZERO,
    };
    for (it, (r, d, z)) in items.iter().zip(results) {
        b.decode += d;
        b.resize += z;
        match r {
            Ok(v) => {
                b.pixels.extend_from_slice(&v);
                b.n += 1;
            }
            Err(e) => b.skipped.push((it.name.clone(), e)),
        }
    }
    b
}

/// Extracts the DNA of `items` (a listing, already selected).
///
/// `ranges` is required for histograms (the normalisation); ignored otherwise.
pub fn extract(
    ext: &Extractor,
    ranges: Option<&Ranges>,
    items: &[ImageItem],
    opts: &ExtractOptions,
    progress: Progress<'_>,
) -> Result<(Dna, Report), ExtractError> {
    let work = Work {
        segments: vec![Segment::Items(items.to_vec())],
        filter: Default::default(),
        column: None,
        listed: Some(items.len() as u64),
    };
    extract_work(ext, ranges, &work, opts, progress, None)
}

/// What the producer sends the network.
enum Msg {
    Batch(Batch),
    /// Segment `index` is read to its end; `seen` samples of streams were met so far.
    SegmentDone {
        index: usize,
        seen: u64,
    },
    Failed(ExtractError),
}

/// Reads the segments of `work` from `start`, in batches, onto `tx`.
fn produce(
    work: &Work,
    start: usize,
    mut seen: u64,
    (kind, size, crop, batch): (ExtractorKind, usize, Crop, usize),
    tx: mpsc::SyncSender<Msg>,
) {
    let filter = work.filter;
    for (index, seg) in work.segments.iter().enumerate().skip(start) {
        match seg {
            Segment::Items(items) => {
                for chunk in items.chunks(batch) {
                    if tx
                        .send(Msg::Batch(load_batch(chunk, kind, size, crop)))
                        .is_err()
                    {
                        return; // the consumer stopped on an error
                    }
                }
            }
            Segment::Stream(s) => {
                let mut chunk = Vec::with_capacity(batch);
                let mut gone = false;
                let r = stream::for_each_sample(s, work.column.as_deref(), batch, &mut |item| {
                    if filter.done(seen) {
                        return std::ops::ControlFlow::Break(());
                    }
                    let pos = seen;
                    seen += 1;
                    if filter.keeps(pos) {
                        chunk.push(item);
                        if chunk.len() == batch {
                            let b = load_batch(&std::mem::take(&mut chunk), kind, size, crop);
                            if tx.send(Msg::Batch(b)).is_err() {
                                gone = true;
                                return std::ops::ControlFlow::Break(());
                            }
                        }
                    }
                    std::ops::ControlFlow::Continue(())
                });
                if gone {
                    return;
                }
                if let Err(e) = r {
                    let _ = tx.send(Msg::Failed(e));
                    return;
                }
                if !chunk.is_empty()
                    && tx
                        .send(Msg::Batch(load_batch(&chunk, kind, size, crop)))
                        .is_err()
                {
                    return;
                }
            }
        }
        if tx.send(Msg::SegmentDone { index, seen }).is_err() {
            return;
        }
    }
}

/// Extracts the DNA of `work`, segment by segment. With a checkpoint, the partial DNA of
/// the segments done is written there after each one (atomically), and a run of the same
/// job (same images, settings and network) resumes after the last segment written: for
/// histograms the result is identical to an uninterrupted run's (counts add exactly);
/// Gaussians combine exactly in the math, to rounding in floating point. The caller
/// removes the checkpoint once the result is safe.
pub fn extract_work(
    ext: &Extractor,
    ranges: Option<&Ranges>,
    work: &Work,
    opts: &ExtractOptions,
    progress: Progress<'_>,
    checkpoint: Option<&checkpoint::Checkpoint>,
) -> Result<(Dna, Report), ExtractError> {
    let started = Instant::now();
    ops::tune_allocator();
    if work.segments.is_empty() {
        return Err(ExtractError::Invalid(
            "the image source holds no images".into(),
        ));
    }
    if opts.batch == 0 {
        return Err(ExtractError::Invalid(
            "batch size must be at least 1".into(),
        ));
    }
    let layers = ext.layers().to_vec();
    let hist = matches!(opts.dist, DistKind::Histogram { .. });
    let norms = if hist {
        let r = ranges.ok_or_else(|| {
            ExtractError::Invalid("histograms need activation ranges (--ranges FILE)".into())
        })?;
        Some(r.norms_for(&layers, ranges::RANGE_SCALE)?)
    } else {
        None
    };
    let space = space_for(ext, ranges, opts.dist, opts.crop);
    let mut report = Report::default();
    let resume = match checkpoint {
        Some(c) => c.load(&space, &mut report.notes),
        None => None,
    };
    let (start, seen0, base) = match resume {
        Some(r) => {
            report.resumed = r.images;
            report.skipped = r.skipped;
            report.nonfinite = r.nonfinite;
            (r.segments, r.seen, Some(r.dna))
        }
        None => (0, 0, None),
    };
    let pooled = matches!(opts.dist, DistKind::Gaussian | DistKind::LayerGaussian);
    let mut accs: Vec<accum::LayerAcc> = layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            accum::LayerAcc::new(
                opts.dist,
                l.neurons as usize,
                norms.as_ref().map(|n| n[i].clone()),
            )
        })
        .collect();

    // Progress: a listing's total is known; streams' is estimated from the files done.
    let prior = report.resumed + report.skipped.len() as u64;
    let mut tick = Tick {
        done: prior,
        total: work.listed.unwrap_or(0),
        estimated: work.listed.is_none(),
        skipped: report.skipped.len() as u64,
    };
    progress(&tick);
    let size = ext.input_size();
    let (tx, rx) = mpsc::sync_channel::<Msg>(1);
    let segments = work.segments.len();
    let mut images = 0u64; // extracted in this run
    std::thread::scope(|s| -> Result<(), ExtractError> {
        s.spawn(move || {
            produce(
                work,
                start,
                seen0,
                (ext.kind, size, opts.crop, opts.batch),
                tx,
            )
        });
        for msg in rx {
            let b = match msg {
                Msg::Failed(e) => return Err(e),
                Msg::SegmentDone { index, seen } => {
                    if work.listed.is_none() {
                        let done_here = (index + 1 - start) as u64;
                        let left = (segments - index - 1) as u64;
                        tick.total = tick.done + (tick.done - prior) * left / done_here.max(1);
                    }
                    progress(&tick);
                    if let (Some(c), true) = (checkpoint, index + 1 < segments) {
                        let partial = partial_dna(&accs, &space, images, base.as_ref())?;
                        c.save(&partial, index + 1, seen, &report)?;
                    }
                    continue;
                }
                Msg::Batch(b) => b,
            };
            report.timings.decode_s += b.decode.as_secs_f64();
            report.timings.resize_s += b.resize.as_secs_f64();
            tick.done += (b.n + b.skipped.len()) as u64;
            tick.skipped += b.skipped.len() as u64;
            if let (true, Some((name, msg))) = (opts.strict, b.skipped.first()) {
                return Err(ExtractError::Image {
                    name: name.clone(),
                    msg: msg.clone(),
                });
            }
            report.skipped.extend(b.skipped);
            if b.n > 0 {
                let t0 = Instant::now();
                let x = Tensor::from_vec(b.pixels, (b.n, size, size, 3), &Device::Cpu)?;
                let outs = ext.forward(&x)?;
                let t1 = Instant::now();
                report.timings.network_s += (t1 - t0).as_secs_f64();
                for ((acc, out), l) in accs.iter_mut().zip(&outs).zip(&layers) {
                    let c = l.neurons as usize;
                    let bad = if pooled {
                        let p = ops::global_avg_pool(out)?;
                        let v = p.flatten_all()?.to_vec1::<f32>()?;
                        acc.add(&v, c)
                    } else {
                        ops::with_values(out, |v| acc.add(v, c))?
                    };
                    report.nonfinite += bad;
                }
                report.timings.accumulate_s += t1.elapsed().as_secs_f64();
                images += b.n as u64;
            }
            if tick.estimated && tick.total < tick.done {
                tick.total = tick.done;
            }
            progress(&tick);
        }
        Ok(())
    })?;
    report.images = images + report.resumed;
    if report.images == 0 {
        return Err(ExtractError::Invalid(if report.skipped.is_empty() {
            "the source holds no images (or none are left after the selection)".to_string()
        } else {
            format!(
                "none of the {} images could be read (first: {})",
                report.skipped.len(),
                report
                    .skipped
                    .first()
                    .map(|(n, m)| format!("{n}: {m}"))
                    .unwrap_or_default()
            )
        }));
    }
    let dna = if images == 0 {
        base.ok_or_else(|| ExtractError::Invalid("nothing was extracted".into()))?
    } else {
        let mut out = Vec::with_capacity(accs.len());
        for a in accs {
            out.push(a.finish().map_err(ExtractError::Invalid)?);
        }
        let run = Dna {
            space,
            images,
            layers: out,
        };
        match base {
            Some(b) => b
                .merge(&run)
                .map_err(|e| ExtractError::Invalid(format!("merging with the checkpoint: {e}")))?,
            None => run,
        }
    };
    report.timings.wall_s = started.elapsed().as_secs_f64();
    Ok((dna, report))
}

/// The DNA of what the accumulators hold so far, merged with a resumed checkpoint's.
fn partial_dna(
    accs: &[accum::LayerAcc],
    space: &SpaceConfig,
    images: u64,
    base: Option<&Dna>,
) -> Result<Dna, ExtractError> {
    if images == 0 {
        if let Some(b) = base {
            return Ok(b.clone());
        }
    }
    let layers = accs
        .iter()
        .map(|a| a.clone().finish().map_err(ExtractError::Invalid))
        .collect::<Result<Vec<_>, _>>()?;
    let run = Dna {
        space: space.clone(),
        images,
        layers,
    };
    match base {
        Some(b) => b
            .merge(&run)
            .map_err(|e| ExtractError::Invalid(format!("merging with the checkpoint: {e}"))),
        None => Ok(run),
    }
}
