//! CLI glue for extraction: the shared extraction flags, the progress bar, and the
//! `extract`, `ranges` and `weights` commands. Image sources given to `push`, `compare`
//! and `query` come through [`extract_source`].

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::output::{human_bytes, Out};
use crate::dna::Dna;
use crate::extract::{
    self, Crop, ExtractOptions, ExtractSettings, Extractor, ExtractorKind, Ranges, Report,
    Selection,
};
use crate::format::DistKind;

pub const EXTRACT_HELP: &str = "Image sources, read where they live:
  photos/                          a directory (recursive; png, jpeg, webp, bmp, gif, tiff, pgm/ppm)
  list.txt                         paths (relative to the list's folder) or URLs, one a line
  data.zip, data.tar, img.png      a local archive, or one image
  s3://bucket/prefix/              a bucket's images (sorted keys), or its .tar / .parquet shards;
                                   credentials and endpoint from AWS_* as for --store s3://
  https://host/data.tar            an archive, a .txt list of URLs or an image over HTTP(S)
  shards/train-{0000..0146}.tar    webdataset shards (local, s3:// or http(s)://): samples are
                                   members sharing a key; the image member is picked by extension
  train-{00000..00003}.parquet     Parquet files with a column of encoded images (Hugging Face
                                   datasets' struct of bytes/path, or binary): --column NAME
Listed sources are taken in sorted order; shards and Parquet files are streamed in their
order (bounded memory), so --shuffle needs a listed source. Unreadable images are skipped
and reported (--strict fails).

Long runs: --checkpoint FILE saves the partial DNA after every shard file or every
--checkpoint-every images; the same command run again resumes there (extract -o OUT
checkpoints to OUT.partial by default). Spread a run over machines with --shard i/n (or
auto/n under a Kubernetes Indexed Job or a Slurm array); `push --shard` names each part
NAME:TAG-shard-i-of-n and `vdna-db merge --shards NAME:TAG` joins them (docs/DISTRIBUTED.md).

Preprocessing is the reference's \"clean\" mode: bicubic resize of float channels (Pillow
semantics) to the extractor's input size, clipped, not re-quantised, then mean/std.

Extractors:
  efficientnet_lite0   ImageNet weights embedded in the binary (default), 17 layers, 2,472 neurons
  rand_resnet50        the reference's random ResNet-50: 16 layers, 15,104 neurons; weights from
                       --weights (torch state-dict layout) or the portable seeded init (--init-seed)
  dino_resnet50        the same backbone and layers with DINO weights (--weights, --ranges)
  mugs_vit_base        Mugs ViT-B/16 (the reference's default): block_0..block_11 + last_norm,
                       13 x 768 neurons over 197 tokens; --weights FILE and --ranges FILE
  dino_vit_base        DINO ViT-B/16, same layers as mugs_vit_base; --weights and --ranges
  clip_im_vit_b16      CLIP ViT-B/16 image encoder (OpenAI layout, CLIP's mean / std): block_0..
                       block_11 over 197 tokens + last_norm (class token); --weights, --ranges
  vgg16                torchvision's VGG16 (relu_1_1..relu_5_3, 4,224 neurons); --weights, --ranges
  inception            the FID Inception-v3 at 299x299: block_0..block_3 (64, 192, 768, 2048);
                       --weights (pt_inception-2015-12-05); layer-gaussian on block_3 is FID's

Examples:
  vdna-db extract photos/ -o photos.vdna
  vdna-db extract data.zip -o d.vdna --dist gaussian --max-images 500 --shuffle --seed 1
  vdna-db extract big/ -o part0.vdna --shard 0/4      # merge the 4 parts with `vdna-db merge`
  vdna-db push photos/ --name photos:v1 --meta source=phone
  vdna-db query photos/ --top 5";

/// Flags that say how to turn images into a DNA (used by extract, push, compare, query).
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Extraction (when an input is an image source)")]
pub struct ExtractFlags {
    /// Network: efficientnet_lite0 (embedded ImageNet weights), rand_resnet50, dino_resnet50,
    /// mugs_vit_base, dino_vit_base, clip_im_vit_b16, vgg16 or inception
    #[arg(long, default_value = "efficientnet_lite0", value_name = "NAME")]
    pub extractor: String,
    /// Weights file (safetensors or PyTorch .pth zip, torch state-dict names); importing
    /// reference files, pins their DNA's space to these weights
    #[arg(long, value_name = "FILE")]
    pub weights: Option<PathBuf>,
    /// Seed of rand_resnet50's portable initialisation when no --weights is given
    #[arg(long, value_name = "N", default_value_t = extract::DEFAULT_SEED)]
    pub init_seed: u64,
    /// Activation ranges JSON (reference layout) [default: the ones shipped for the default
    /// weights]; importing reference histogram files, pins their space to these ranges
    #[arg(long, value_name = "FILE")]
    pub ranges: Option<PathBuf>,
    /// Distribution: histogram-B (e.g. histogram-1000), gaussian, layer-gaussian
    #[arg(long, default_value = "histogram-1000", value_name = "KIND")]
    pub dist: String,
    /// Images per network batch
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub batch: usize,
    /// Worker threads [default: all cores]
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Crop to a centred square before resizing
    #[arg(long, value_parser = ["none", "center"], default_value = "none")]
    pub crop: String,
    /// Use at most N images (after --shuffle)
    #[arg(long, value_name = "N")]
    pub max_images: Option<usize>,
    /// Shuffle the image list before --max-images (deterministic with --seed)
    #[arg(long)]
    pub shuffle: bool,
    /// Seed for --shuffle
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub seed: u64,
    /// Process only shard i of n: images at positions p with p % n == i, or whole files
    /// of a sharded source (files i, i+n, ...); `auto/n` takes i from JOB_COMPLETION_INDEX
    /// or SLURM_ARRAY_TASK_ID. Merging the n shard DNAs gives the whole source's DNA
    #[arg(long, value_name = "i/n", value_parser = parse_shard_arg)]
    pub shard: Option<(usize, usize)>,
    /// Parquet sources: the column of encoded images [default: the only one]
    #[arg(long, value_name = "NAME")]
    pub column: Option<String>,
    /// Save the partial DNA here after every shard file or --checkpoint-every images, and
    /// resume from it when the same extraction runs again [extract: OUTPUT.partial]
    #[arg(long, value_name = "FILE")]
    pub checkpoint: Option<PathBuf>,
    /// Images of a listed source between checkpoints
    #[arg(long, value_name = "N", default_value_t = extract::settings::CHECKPOINT_EVERY)]
    pub checkpoint_every: usize,
    /// Fail on the first unreadable image instead of skipping it
    #[arg(long)]
    pub strict: bool,
}

impl Default for ExtractFlags {
    /// The same defaults as the command line's.
    fn default() -> Self {
        ExtractFlags {
            extractor: "efficientnet_lite0".into(),
            weights: None,
            init_seed: extract::DEFAULT_SEED,
            ranges: None,
            dist: "histogram-1000".into(),
            batch: 16,
            threads: None,
            crop: "none".into(),
            max_images: None,
            shuffle: false,
            seed: 0,
            shard: None,
            column: None,
            checkpoint: None,
            checkpoint_every: extract::settings::CHECKPOINT_EVERY,
            strict: false,
        }
    }
}

fn parse_shard_arg(s: &str) -> std::result::Result<(usize, usize), String> {
    extract::parse_shard(s)
}

impl ExtractFlags {
    pub fn kind(&self) -> Result<ExtractorKind> {
        Ok(ExtractorKind::parse(&self.extractor)?)
    }

    pub fn dist(&self) -> Result<DistKind> {
        match DistKind::parse(&self.dist) {
            Some(d) => Ok(d),
            None => bail!(
                "--dist {:?}: use histogram-B (1 <= B <= 65536), gaussian, layer-gaussian or activation-ranges",
                self.dist
            ),
        }
    }

    /// The flags as the library's plain settings (the rules that apply them live there).
    pub fn settings(&self) -> Result<ExtractSettings> {
        Ok(ExtractSettings {
            extractor: self.kind()?,
            weights: self.weights.clone(),
            init_seed: self.init_seed,
            ranges: self.ranges.clone(),
            options: ExtractOptions {
                dist: self.dist()?,
                batch: self.batch,
                crop: if self.crop == "center" {
                    Crop::Center
                } else {
                    Crop::None
                },
                strict: self.strict,
            },
            selection: Selection {
                shuffle: self.shuffle.then_some(self.seed),
                max_images: self.max_images,
                shard: self.shard,
                column: self.column.clone(),
            },
            threads: self.threads,
            checkpoint: self.checkpoint.clone(),
            checkpoint_every: self.checkpoint_every.max(1),
        })
    }
}

/// A progress bar on stderr with images/s, ETA and skipped images; hidden when stderr is
/// not a terminal, with --quiet or with --json.
fn progress_bar(out: &Out, total: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if !out.shows_progress() {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix} {bar:30} {pos}/{len} images  {per_sec}  eta {eta}  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_prefix(what.to_string());
    pb
}

/// Runs `f` with a progress callback drawn as a bar on stderr ([`progress_bar`]), then
/// warns about the images it skipped and the non-finite activations it left out.
pub fn with_progress<T>(
    out: &mut Out,
    settings: &ExtractSettings,
    f: impl FnOnce(extract::Progress<'_>) -> Result<T>,
    report: impl Fn(&T) -> Option<&Report>,
) -> Result<T> {
    let pb = progress_bar(
        out,
        0,
        &format!(
            "{} {}",
            settings.extractor.name(),
            settings.options.dist.name()
        ),
    );
    // The bar's rate and ETA count this run's images only: a resumed run starts its
    // clock at the checkpoint.
    let started = std::sync::Once::new();
    let cb = |t: &extract::Tick| {
        pb.set_length(t.total.max(t.done));
        pb.set_position(t.done);
        started.call_once(|| {
            pb.reset_eta();
            pb.reset_elapsed();
        });
        let mut msg = String::new();
        if t.estimated {
            msg.push_str("(total estimated) ");
        }
        if t.skipped > 0 {
            msg.push_str(&format!("{} skipped", t.skipped));
        }
        pb.set_message(msg);
    };
    let res = f(&cb);
    pb.finish_and_clear();
    let v = res?;
    if let Some(r) = report(&v) {
        warn_report(out, r);
    }
    Ok(v)
}

fn warn_report(out: &mut Out, report: &Report) {
    for n in &report.notes {
        out.warn(n);
    }
    if !report.skipped.is_empty() {
        let first: Vec<String> = report
            .skipped
            .iter()
            .take(3)
            .map(|(n, e)| format!("{n} ({e})"))
            .collect();
        out.warn(&format!(
            "skipped {} unreadable image(s): {}{}",
            report.skipped.len(),
            first.join("; "),
            if report.skipped.len() > 3 {
                "; ..."
            } else {
                ""
            }
        ));
    }
    if report.nonfinite > 0 {
        out.warn(&format!(
            "{} NaN or infinite activations were left out of the distributions",
            report.nonfinite
        ));
    }
}

/// Extracts a DNA from an image source with the given flags ([`extract::extract_source`])
/// with a progress bar and warnings.
pub fn extract_source(out: &mut Out, source: &Path, flags: &ExtractFlags) -> Result<(Dna, Report)> {
    let settings = flags.settings()?;
    with_progress(
        out,
        &settings,
        |cb| Ok(extract::extract_source(source, &settings, cb)?),
        |(_, r)| Some(r),
    )
}

/// Removes the checkpoint of a finished extraction (its DNA is safe now); a failure is
/// only a warning, as the result is.
pub fn remove_checkpoint(out: &mut Out, flags: &ExtractFlags) {
    if let Some(p) = &flags.checkpoint {
        if let Err(e) = std::fs::remove_file(p) {
            if e.kind() != std::io::ErrorKind::NotFound {
                out.warn(&format!("could not remove checkpoint {}: {e}", p.display()));
            }
        }
    }
}

fn timing_line(r: &Report) -> String {
    let t = &r.timings;
    let run = r.images - r.resumed;
    format!(
        "{run} images in {:.1} s{} ({:.1} images/s; network {:.1} s, accumulate {:.1} s, decode {:.1} s and resize {:.1} s of CPU time)",
        t.wall_s,
        if r.resumed > 0 {
            format!(", {} more from the checkpoint", r.resumed)
        } else {
            String::new()
        },
        run as f64 / t.wall_s.max(1e-9),
        t.network_s,
        t.accumulate_s,
        t.decode_s,
        t.resize_s
    )
}

#[derive(Args, Debug)]
#[command(after_help = EXTRACT_HELP)]
pub struct ExtractArgs {
    /// Image source: directory, image, .txt list, .zip, .tar, .parquet, a brace pattern of
    /// shards, or an s3:// / http(s):// URL (see below)
    pub source: PathBuf,
    /// Output: a .vdna bundle, or with --format reference the stem of a .json/.npz pair
    #[arg(long, short)]
    pub output: PathBuf,
    /// Output format
    #[arg(long, value_parser = ["vdna", "reference"], default_value = "vdna")]
    pub format: String,
    #[command(flatten)]
    pub flags: ExtractFlags,
}

pub fn run_extract(out: &mut Out, mut a: ExtractArgs) -> Result<()> {
    // A long extraction to a file checkpoints next to it unless told otherwise.
    if a.flags.checkpoint.is_none() {
        let mut p = a.output.clone().into_os_string();
        p.push(".partial");
        a.flags.checkpoint = Some(PathBuf::from(p));
    }
    let (dna, report) = extract_source(out, &a.source, &a.flags)?;
    let mut ann = std::collections::BTreeMap::new();
    ann.insert("source".to_string(), a.source.display().to_string());
    let written: Vec<PathBuf> = if a.format == "vdna" {
        let bytes = crate::engine::bundle_of(&dna, &ann, 3);
        crate::fsio::write_file_atomic(&a.output, &bytes)
            .with_context(|| format!("writing {}", a.output.display()))?;
        vec![a.output.clone()]
    } else {
        let (j, n) = crate::engine::export_reference(&dna, &ann, &a.output)?;
        vec![j, n]
    };
    remove_checkpoint(out, &a.flags);
    out.json(&serde_json::json!({
        "written": written,
        "digest": dna.digest(),
        "space": dna.space.digest(),
        "extractor": dna.space.extractor,
        "dist": dna.space.dist.name(),
        "report": report,
    }))?;
    out.line(&timing_line(&report))?;
    for w in &written {
        let size = std::fs::metadata(w).map(|m| m.len()).unwrap_or(0);
        out.line(&format!("wrote {} ({})", w.display(), human_bytes(size)))?;
    }
    Ok(())
}

#[derive(Args, Debug)]
#[command(
    after_help = "Computes per-neuron min / max activations over a calibration source (the reference's
`activation-ranges`), written in the reference's JSON layout (mins_per_neuron / maxs_per_neuron).
Histograms normalise activations with these ranges scaled by 1.2.

Example:
  vdna-db ranges calibration/ --extractor rand_resnet50 --weights w.safetensors -o ranges.json"
)]
pub struct RangesArgs {
    /// Calibration image source
    pub source: PathBuf,
    /// Output JSON
    #[arg(long, short)]
    pub output: PathBuf,
    #[command(flatten)]
    pub flags: ExtractFlags,
}

pub fn run_ranges(out: &mut Out, mut a: RangesArgs) -> Result<()> {
    a.flags.dist = "activation-ranges".into();
    let t0 = Instant::now();
    let (dna, report) = extract_source(out, &a.source, &a.flags)?;
    let ranges = Ranges::from_dna(&dna).context("ranges extraction produced no ranges")?;
    crate::fsio::write_file_atomic(&a.output, ranges.to_json().as_bytes())
        .with_context(|| format!("writing {}", a.output.display()))?;
    out.json(&serde_json::json!({
        "written": a.output,
        "ranges_digest": ranges.digest(),
        "weights": dna.space.extractor.weights,
        "report": report,
    }))?;
    out.line(&timing_line(&report))?;
    out.line(&format!(
        "wrote {} ({} layers, digest {}) in {:.1} s",
        a.output.display(),
        ranges.layers.len(),
        ranges.digest().short(),
        t0.elapsed().as_secs_f64()
    ))?;
    Ok(())
}

#[derive(Args, Debug)]
#[command(
    after_help = "Writes an extractor's default weights as safetensors with torch state-dict names, so
the same network can be loaded elsewhere (e.g. into PyTorch) and checked against vdna-db.

Example:
  vdna-db weights rand_resnet50 --init-seed 0 -o rand_resnet50-seed0.safetensors"
)]
pub struct WeightsArgs {
    /// Extractor: rand_resnet50 (seeded init) or efficientnet_lite0 (embedded weights)
    pub extractor: String,
    /// Seed of rand_resnet50's portable initialisation
    #[arg(long, default_value_t = extract::DEFAULT_SEED)]
    pub init_seed: u64,
    /// Output safetensors file
    #[arg(long, short)]
    pub output: PathBuf,
}

pub fn run_weights(out: &mut Out, a: WeightsArgs) -> Result<()> {
    let kind = ExtractorKind::parse(&a.extractor)?;
    match kind {
        ExtractorKind::RandResNet50 => {
            let bytes = extract::resnet::seeded_safetensors(a.init_seed)?;
            crate::fsio::write_file_atomic(&a.output, &bytes)
                .with_context(|| format!("writing {}", a.output.display()))?;
        }
        ExtractorKind::EfficientNetLite0 => {
            crate::fsio::write_file_atomic(&a.output, extract::efficientnet::EMBEDDED_WEIGHTS)
                .with_context(|| format!("writing {}", a.output.display()))?;
        }
        k => bail!(
            "extractor {} has no built-in weights to write: use the reference's weight file",
            k.name()
        ),
    }
    let ext = Extractor::load(kind, Some(&a.output), a.init_seed)?;
    out.json(&serde_json::json!({ "written": a.output, "weights_digest": ext.weights_digest() }))?;
    out.line(&format!(
        "wrote {} (weights digest {})",
        a.output.display(),
        ext.weights_digest()
    ))?;
    Ok(())
}
