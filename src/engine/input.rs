//! The one input resolver. What a front end was given (a `.vdna` bundle, a reference
//! `.json` + `.npz` pair, an image source, or the name of a stored DNA) becomes a DNA to
//! push, query or compare in exactly one way, for local and remote commands alike:
//! images are extracted with every setting, a reference pair is pinned to the weights and
//! ranges given, a bundle keeps its encoded objects, a stored DNA is read back as a bundle
//! (so `push NAME:TAG --remote URL` sends it as `docker push` sends a local image).

use std::collections::BTreeMap;
use std::path::Path;

use super::Engine;
use crate::db::{dna_of_bundle, is_bundle};
use crate::dna::Dna;
use crate::extract::{self, ExtractSettings, Progress, Report};
use crate::format::{decode_bundle, Bundle, Digest};
use crate::refname::RefName;
use crate::Error;

/// A DNA as given: in memory (extracted or imported), or already encoded (a bundle file or
/// a stored DNA, whose objects are sent or stored as they are).
pub enum Input {
    Dna(Dna),
    Bundle(Bundle),
}

impl Input {
    /// The DNA's objects, manifest first (a DNA is encoded at zstd `level`).
    pub fn into_objects(self, level: i32) -> Vec<(Digest, Vec<u8>)> {
        match self {
            Input::Dna(d) => d.encode(level).objects,
            Input::Bundle(b) => b.objects,
        }
    }

    /// The DNA in memory (a bundle is decoded, checked and validated).
    pub fn into_dna(self) -> Result<Dna, Error> {
        match self {
            Input::Dna(d) => Ok(d),
            Input::Bundle(b) => Ok(dna_of_bundle(b)?.0),
        }
    }
}

/// What a path or name resolved to.
pub struct Resolved {
    pub input: Input,
    /// The input's own annotations: a bundle's or a stored ref's, the reference files'
    /// metadata, or `source` and `extractor` for extracted images.
    pub annotations: BTreeMap<String, String>,
    /// The name it is stored under when none is given: the file's stem, or the stored name.
    pub default_name: Option<RefName>,
    /// The extraction report, for images.
    pub report: Option<Report>,
    /// True when a reference pair was pinned to the given weights / ranges.
    pub pinned: bool,
}

/// What is at a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathKind {
    /// A `.vdna` bundle (told by its magic, whatever its name).
    Bundle,
    /// A reference `.json` + `.npz` pair (either file, or the stem).
    ReferencePair,
    /// Images: a directory, a list, an image, an archive, Parquet, shards or a URL.
    Images,
    /// A file that is none of these.
    Unknown,
    /// Nothing: the spec names a stored DNA instead.
    Missing,
}

/// Tells what is at `path`.
pub fn path_kind(path: &Path) -> PathKind {
    if is_bundle(path) {
        PathKind::Bundle
    } else if crate::reference::looks_like_pair(path) {
        PathKind::ReferencePair
    } else if extract::is_source_spec(&path.to_string_lossy()) {
        PathKind::Images
    } else if !path.exists() {
        PathKind::Missing
    } else if extract::looks_like_image_source(path) {
        PathKind::Images
    } else {
        PathKind::Unknown
    }
}

/// Resolves a path on disk with `settings` (images are extracted with them, reference
/// pairs pinned to their weights / ranges when given); `Ok(None)` when nothing is there.
/// `progress(done, total)` follows an extraction.
pub fn resolve_path(
    path: &Path,
    settings: &ExtractSettings,
    progress: Progress<'_>,
) -> Result<Option<Resolved>, Error> {
    let default_name = default_name(path);
    let shown = path.display().to_string();
    match path_kind(path) {
        PathKind::Missing => Ok(None),
        PathKind::Images => {
            let (dna, report) = extract::extract_source(path, settings, progress)?;
            let annotations = BTreeMap::from([
                ("source".to_string(), shown),
                ("extractor".to_string(), dna.space.extractor.name.clone()),
            ]);
            Ok(Some(Resolved {
                input: Input::Dna(dna),
                annotations,
                default_name,
                report: Some(report),
                pinned: false,
            }))
        }
        PathKind::Bundle => {
            let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            let bundle =
                decode_bundle(&bytes).map_err(|e| Error::Invalid(format!("{shown}: {e}")))?;
            let annotations = bundle.annotations.clone();
            Ok(Some(Resolved {
                input: Input::Bundle(bundle),
                annotations,
                default_name,
                report: None,
                pinned: false,
            }))
        }
        PathKind::ReferencePair => {
            let mut imported = crate::reference::import_pair(path)?;
            let pinned = extract::pin_import(&mut imported.dna, &imported.annotations, settings)
                .map_err(|e| Error::Invalid(format!("pinning the space of {shown}: {e}")))?;
            Ok(Some(Resolved {
                input: Input::Dna(imported.dna),
                annotations: imported.annotations,
                default_name,
                report: None,
                pinned,
            }))
        }
        PathKind::Unknown => Err(Error::Invalid(format!(
            "{shown}: not a .vdna bundle, a reference .json/.npz pair or an image source \
             (images: {})",
            extract::source::IMAGE_EXTENSIONS.join(", ")
        ))),
    }
}

impl Engine {
    /// A stored DNA (name or digest) as a bundle of its objects, with its annotations and
    /// name: what `push NAME --remote URL` sends.
    pub fn resolve_stored(&self, spec: &str) -> Result<Resolved, Error> {
        let (digest, name) = self.resolve(spec).map_err(|e| match e {
            Error::NotFound(m) => {
                Error::NotFound(format!("{spec} is neither a file nor a stored DNA ({m})"))
            }
            other => other,
        })?;
        Ok(Resolved {
            input: Input::Bundle(self.bundle_from_store(&digest)?),
            annotations: self.annotations(name.as_ref())?,
            default_name: name,
            report: None,
            pinned: false,
        })
    }
}

/// The name a file is stored under without `--name`: its stem, lower-cased, with the
/// characters a name can't hold turned into '-'; `None` when nothing usable is left.
pub fn default_name(path: &Path) -> Option<RefName> {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let stem = stem
        .strip_suffix(".json")
        .or_else(|| stem.strip_suffix(".npz"))
        .unwrap_or(&stem)
        .to_string();
    let cleaned: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    RefName::parse(cleaned.trim_matches(|c: char| !c.is_ascii_alphanumeric())).ok()
}

impl Engine {
    /// How images are extracted into the stored space `space` with what this build carries
    /// ([`extract::settings_for_space`]), or why they cannot be. Answers are kept per space.
    pub fn extraction_for_space(&self, space: &Digest) -> Result<ExtractSettings, Error> {
        let config = self.space_config(space)?;
        let mut known = self.extractable.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(Err(why)) = known.get(space) {
            return Err(Error::Invalid(why.clone()));
        }
        let r = extract::settings_for_space(&config).map_err(|e| e.to_string());
        known.insert(*space, r.as_ref().map(|_| ()).map_err(Clone::clone));
        r.map_err(Error::Invalid)
    }

    /// Whether images can be extracted into `space` here.
    pub fn can_extract_into(&self, space: &Digest) -> bool {
        let cached = self
            .extractable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(space)
            .map(|r| r.is_ok());
        cached.unwrap_or_else(|| self.extraction_for_space(space).is_ok())
    }

    /// The DNA of the images at `source` (a directory, an image or a zip) in the stored
    /// space `space`, refused before any image is decoded when the source holds more
    /// than `max_images`; extracted on `threads` threads.
    pub fn extract_into_space(
        &self,
        source: &Path,
        space: &Digest,
        max_images: usize,
        threads: usize,
    ) -> Result<(Dna, Report), Error> {
        let mut settings = self.extraction_for_space(space)?;
        let found = extract::list_images(source)?.len();
        if found > max_images {
            return Err(Error::Invalid(format!(
                "{found} images sent; this server extracts at most {max_images} per query (extract locally with `vdna-db extract` and upload the .vdna bundle)"
            )));
        }
        settings.threads = Some(threads.max(1));
        let (dna, report) = extract::extract_source(source, &settings, &|_| {})?;
        if dna.space.digest() != *space {
            return Err(Error::Invalid(
                "the extracted DNA's space differs from the one asked (a bug: please report it)"
                    .into(),
            ));
        }
        Ok((dna, report))
    }
}
