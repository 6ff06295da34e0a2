//! Every setting of an extraction as plain values, and the two operations that take them:
//! extracting a DNA from an image source, and pinning a DNA imported from reference files
//! to the weights and activation ranges given. The CLI's flags map onto
//! [`ExtractSettings`]; the rules (which ranges apply to which weights, what an import can
//! be pinned to) live here, so every front end applies the same ones.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::checkpoint::Checkpoint;
use super::{
    extract_work, list_source, pin_imported, Crop, ExtractError, ExtractOptions, Extractor,
    ExtractorKind, Listing, Progress, Ranges, Report, Selection, DEFAULT_SEED,
};
use crate::dna::Dna;
use crate::format::DistKind;

/// How images become a DNA: the network and its weights, the ranges of histograms, the
/// distribution and batching, which images, and how many threads.
#[derive(Clone, Debug)]
pub struct ExtractSettings {
    pub extractor: ExtractorKind,
    /// Weights file; `None` takes the embedded weights (or rand_resnet50's seeded init).
    pub weights: Option<PathBuf>,
    /// Seed of rand_resnet50's portable initialisation when no weights file is given.
    pub init_seed: u64,
    /// Activation ranges file; `None` takes the shipped ranges of the default weights.
    pub ranges: Option<PathBuf>,
    pub options: ExtractOptions,
    pub selection: Selection,
    /// Worker threads; `None` uses every core.
    pub threads: Option<usize>,
    /// Where to keep the partial DNA of a long extraction, to resume it after an
    /// interruption ([`super::checkpoint`]); `None`: no checkpoints.
    pub checkpoint: Option<PathBuf>,
    /// Images of a listed source per checkpoint segment (streamed sources: one file).
    pub checkpoint_every: usize,
}

/// Images per checkpoint segment of a listed source, by default.
pub const CHECKPOINT_EVERY: usize = 4096;

impl Default for ExtractSettings {
    fn default() -> Self {
        ExtractSettings {
            extractor: ExtractorKind::EfficientNetLite0,
            weights: None,
            init_seed: DEFAULT_SEED,
            ranges: None,
            options: ExtractOptions::default(),
            selection: Selection::default(),
            threads: None,
            checkpoint: None,
            checkpoint_every: CHECKPOINT_EVERY,
        }
    }
}

impl ExtractSettings {
    /// Loads the network with these weights.
    pub fn load_extractor(&self) -> Result<Extractor, ExtractError> {
        Extractor::load(self.extractor, self.weights.as_deref(), self.init_seed)
    }

    /// The ranges for histograms: the given file, else the shipped ones when the weights
    /// are the defaults they were computed for; `None` when neither applies.
    pub fn ranges_for(&self, ext: &Extractor) -> Result<Option<Ranges>, ExtractError> {
        if let Some(p) = &self.ranges {
            return Ok(Some(Ranges::from_file(p)?));
        }
        let default_weights = self.weights.is_none()
            && ext.kind.has_default_weights()
            && (ext.kind != ExtractorKind::RandResNet50 || self.init_seed == DEFAULT_SEED);
        if default_weights {
            return Ok(Some(Ranges::embedded(ext.kind)?));
        }
        Ok(None)
    }
}

/// Extracts the DNA of an image source (a directory, list, image, archive, Parquet file,
/// brace pattern of shards or URL: [`super::source`]) with `settings`; `progress` is
/// called as images are folded in. With `settings.checkpoint`, the run resumes from the
/// checkpoint of the same job when there is one, and leaves it for the caller to remove
/// once the DNA is safe ([`super::checkpoint::Checkpoint::remove`]).
pub fn extract_source(
    source: &Path,
    settings: &ExtractSettings,
    progress: Progress<'_>,
) -> Result<(Dna, Report), ExtractError> {
    let dist = settings.options.dist;
    let spec = source.to_string_lossy();
    let listing = list_source(&spec)?;
    let found = match &listing {
        Listing::Items(v) => v.len(),
        Listing::Streams(v) => v.len(),
    };
    let work = settings
        .selection
        .plan(listing, settings.checkpoint_every)
        .map_err(|msg| ExtractError::Source {
            source_path: spec.to_string(),
            msg,
        })?;
    if work.segments.is_empty() || work.listed == Some(0) {
        return Err(ExtractError::Source {
            source_path: spec.to_string(),
            msg: format!(
                "no images{} (looked for {})",
                if found > 0 {
                    format!(" left after selection ({found} found)")
                } else {
                    String::new()
                },
                super::source::IMAGE_EXTENSIONS.join(", ")
            ),
        });
    }
    let ext = settings.load_extractor()?;
    let ranges = if matches!(dist, DistKind::Histogram { .. }) {
        match settings.ranges_for(&ext)? {
            Some(r) => Some(r),
            None => {
                return Err(ExtractError::Invalid(format!(
                    "histograms need activation ranges for these weights: compute them with \
                     `vdna-db ranges SOURCE --extractor {} --weights ... -o ranges.json` and pass --ranges",
                    ext.kind.name()
                )))
            }
        }
    } else {
        None
    };
    let checkpoint = settings.checkpoint.as_deref().map(|p| {
        let opts = &settings.options;
        Checkpoint::new(
            p,
            &[
                &work.identity(),
                &ext.weights_digest().to_string(),
                &ranges
                    .as_ref()
                    .map(|r| r.digest().to_string())
                    .unwrap_or_default(),
                &opts.dist.name(),
                &format!("{:?}", opts.crop),
                &settings.checkpoint_every.to_string(),
            ],
        )
    });
    let run = || {
        extract_work(
            &ext,
            ranges.as_ref(),
            &work,
            &settings.options,
            progress,
            checkpoint.as_ref(),
        )
    };
    match settings.threads {
        Some(0) => Err(ExtractError::Invalid("--threads must be at least 1".into())),
        Some(n) => rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .map_err(|e| ExtractError::Invalid(format!("starting {n} worker threads: {e}")))?
            .install(run),
        None => run(),
    }
}

/// Pins the space of a DNA imported from reference files to `settings.weights` /
/// `settings.ranges` (the network is the one the files name; the crop and resize mode come
/// from their metadata), so it compares with DNAs extracted here from the same files.
/// Returns false, leaving the DNA unpinned, when neither is given.
pub fn pin_import(
    dna: &mut Dna,
    annotations: &BTreeMap<String, String>,
    settings: &ExtractSettings,
) -> Result<bool, ExtractError> {
    if settings.weights.is_none() && settings.ranges.is_none() {
        return Ok(false);
    }
    let name = dna.space.extractor.name.clone();
    let kind = ExtractorKind::parse(&name).map_err(|_| {
        ExtractError::Invalid(format!(
            "the reference DNA was made with {name:?}, which vdna-db does not run: import it \
             without --weights / --ranges to keep it unpinned"
        ))
    })?;
    let meta: serde_json::Value = annotations
        .get("reference.metadata")
        .and_then(|m| serde_json::from_str(m).ok())
        .unwrap_or_default();
    let setting = |k: &str| {
        meta.pointer(&format!("/data_settings/{k}"))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let crop = match setting("crop_to_square_pre_resize").as_deref() {
        None | Some("none") => Crop::None,
        Some("center") => Crop::Center,
        Some(other) => {
            return Err(ExtractError::Invalid(format!(
                "the reference DNA was made with crop_to_square_pre_resize {other:?}, which \
                 vdna-db does not reproduce (none or center): it cannot be pinned"
            )))
        }
    };
    if let Some(mode) = setting("resize_mode").filter(|m| m != "clean") {
        return Err(ExtractError::Invalid(format!(
            "the reference DNA was made with resize_mode {mode:?}; vdna-db resizes the \
             \"clean\" way only, so it cannot be pinned to a space of DNAs extracted here"
        )));
    }
    let ext = Extractor::load(kind, settings.weights.as_deref(), settings.init_seed)?;
    let ranges = settings
        .ranges
        .as_deref()
        .map(Ranges::from_file)
        .transpose()?;
    dna.space = pin_imported(&dna.space, &ext, ranges.as_ref(), crop)?;
    Ok(true)
}

/// The settings that extract images into exactly `space` with what this build carries
/// (the extractor's embedded weights and shipped ranges), checked by building that space
/// and comparing digests. Refused, saying why, for a network vdna-db does not run or a
/// space pinned to other weights or ranges (or an unpinned one).
pub fn settings_for_space(
    space: &crate::format::SpaceConfig,
) -> Result<ExtractSettings, ExtractError> {
    let kind = ExtractorKind::parse(&space.extractor.name).map_err(|_| {
        ExtractError::Invalid(format!(
            "this space's network {:?} is not one vdna-db runs",
            space.extractor.name
        ))
    })?;
    if space.extractor.weights.is_none() {
        return Err(ExtractError::Invalid(
            "this space is unpinned (imported without its weights): images cannot be extracted into it".into(),
        ));
    }
    let crop = match space.preprocessing.as_ref().map(|p| p.crop.as_str()) {
        Some("center") => Crop::Center,
        _ => Crop::None,
    };
    let settings = ExtractSettings {
        extractor: kind,
        options: ExtractOptions {
            dist: space.dist,
            crop,
            ..Default::default()
        },
        ..Default::default()
    };
    let ext = settings.load_extractor()?;
    let ranges = match space.dist {
        DistKind::Histogram { .. } => settings.ranges_for(&ext)?,
        _ => None,
    };
    let made = super::space_for(&ext, ranges.as_ref(), space.dist, crop);
    if made.digest() != space.digest() {
        return Err(ExtractError::Invalid(format!(
            "this space's {} weights or ranges are not the ones this build carries (weights {} here)",
            kind.name(),
            ext.weights_digest().short()
        )));
    }
    Ok(settings)
}
