//! A DNA read from the object store (manifest and space in memory, layers verified and
//! read on demand), a DNA held either way, and the comparison of two under a mask. Both
//! the catalogue facade (`db`) and the index (`query`) build on it.

use rayon::prelude::*;

use crate::distance::{self, Comparison, Metric};
use crate::dna::{check_layer_shape, Dna, LayerData};
use crate::format::{Digest, LayerBuf, LayerView, Manifest, SpaceConfig};
use crate::mask::Mask;
use crate::store::ObjectStore;
use crate::Error;

/// Reads a space config object.
pub fn space_config(objects: &ObjectStore, d: &Digest) -> Result<SpaceConfig, Error> {
    Ok(SpaceConfig::from_bytes(&objects.get_raw(d)?)?)
}

/// [`space_config`], from this process's copy when it decoded it before (the query path).
fn space_config_kept(objects: &ObjectStore, d: &Digest) -> Result<SpaceConfig, Error> {
    if let Some(s) = decoded()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .spaces
        .get(d)
    {
        return Ok(s.clone());
    }
    let s = space_config(objects, d)?;
    remember(|c| &mut c.spaces, *d, s.clone());
    Ok(s)
}

/// Manifests and space configs decoded by the query path of this process, by digest.
/// Objects are immutable and named by the hash of their bytes, and these were checked
/// against it when read, so a copy serves every later query (a query opens a handful of
/// DNAs, each of which read and hashed two objects before: a fifth of a one-layer
/// approximate query). Every other reader reads and checks the objects each time.
/// Bounded: emptied when full.
#[derive(Default)]
struct Decoded {
    manifests: std::collections::HashMap<Digest, Manifest>,
    spaces: std::collections::HashMap<Digest, SpaceConfig>,
}

const DECODED_MAX: usize = 4096;

fn decoded() -> &'static std::sync::Mutex<Decoded> {
    static D: std::sync::OnceLock<std::sync::Mutex<Decoded>> = std::sync::OnceLock::new();
    D.get_or_init(Default::default)
}

fn remember<T>(
    map: impl FnOnce(&mut Decoded) -> &mut std::collections::HashMap<Digest, T>,
    d: Digest,
    v: T,
) {
    let mut c = decoded().lock().unwrap_or_else(|p| p.into_inner());
    let m = map(&mut c);
    if m.len() >= DECODED_MAX {
        m.clear();
    }
    m.insert(d, v);
}

/// A stored DNA opened for reading: manifest and space in memory, layers read on demand.
pub struct StoredDna {
    pub digest: Digest,
    pub manifest: Manifest,
    pub space: SpaceConfig,
    objects: ObjectStore,
}

impl StoredDna {
    /// Opens a stored DNA by digest: reads and checks its manifest and space.
    pub fn open(objects: &ObjectStore, digest: &Digest) -> Result<StoredDna, Error> {
        let manifest = Manifest::from_bytes(&objects.get_raw(digest)?)?;
        let space = space_config(objects, &manifest.space)?;
        StoredDna::of(objects, digest, manifest, space)
    }

    /// A stored DNA of this manifest and space, once they agree.
    fn of(
        objects: &ObjectStore,
        digest: &Digest,
        manifest: Manifest,
        space: SpaceConfig,
    ) -> Result<StoredDna, Error> {
        manifest.check_against(&space)?;
        Ok(StoredDna {
            digest: *digest,
            manifest,
            space,
            objects: objects.clone(),
        })
    }

    /// [`StoredDna::open`] for the query path: the manifest and space from this process's
    /// copies when it decoded them before ([`Decoded`]).
    pub fn open_kept(objects: &ObjectStore, digest: &Digest) -> Result<StoredDna, Error> {
        let kept = decoded()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .manifests
            .get(digest)
            .cloned();
        let manifest = match kept {
            Some(m) => m,
            None => {
                let m = Manifest::from_bytes(&objects.get_raw(digest)?)?;
                remember(|c| &mut c.manifests, *digest, m.clone());
                m
            }
        };
        let space = space_config_kept(objects, &manifest.space)?;
        StoredDna::of(objects, digest, manifest, space)
    }

    /// Layer `i` when the decoded-layer cache holds it (checked against the space).
    pub fn cached_layer(&self, i: usize) -> Option<LayerBuf> {
        let buf = self.objects.cached_layer(&self.manifest.layers[i].digest)?;
        check_layer_shape(&self.space, i, &buf.view()).ok()?;
        Some(buf)
    }

    /// Layer `i` read, verified and decoded, skipping the cache lookup (after a miss of
    /// [`StoredDna::cached_layer`]); kept in the cache.
    pub fn load_layer(&self, i: usize) -> Result<LayerBuf, Error> {
        let buf = self.objects.load_layer(&self.manifest.layers[i].digest)?;
        check_layer_shape(&self.space, i, &buf.view())?;
        Ok(buf)
    }

    /// Reads, verifies and validates one layer (nothing else is read).
    pub fn layer(&self, i: usize) -> Result<LayerBuf, Error> {
        let r = &self.manifest.layers[i];
        let buf = self.objects.get_layer(&r.digest)?;
        check_layer_shape(&self.space, i, &buf.view())?;
        Ok(buf)
    }

    /// Reads every layer into an owned DNA.
    pub fn load(&self) -> Result<Dna, Error> {
        let layers = (0..self.manifest.layers.len())
            .into_par_iter()
            .map(|i| self.layer(i).map(|b| LayerData::from_view(b.view())))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Dna {
            space: self.space.clone(),
            images: self.manifest.images,
            layers,
        })
    }
}

/// A DNA to compare or query with: in memory, or in the store.
pub enum AnyDna {
    Owned(Dna),
    Stored(StoredDna),
}

/// A loaded layer: a validated buffer from the store, or borrowed owned arrays.
pub enum HeldLayer<'a> {
    Buf(LayerBuf),
    Borrowed(&'a LayerData),
}

impl HeldLayer<'_> {
    pub fn view(&self) -> LayerView<'_> {
        match self {
            HeldLayer::Buf(b) => b.view(),
            HeldLayer::Borrowed(d) => d.view(),
        }
    }
}

impl AnyDna {
    pub fn space(&self) -> &SpaceConfig {
        match self {
            AnyDna::Owned(d) => &d.space,
            AnyDna::Stored(s) => &s.space,
        }
    }

    pub fn images(&self) -> u64 {
        match self {
            AnyDna::Owned(d) => d.images,
            AnyDna::Stored(s) => s.manifest.images,
        }
    }

    /// One layer, read from the store only when stored.
    pub fn layer(&self, i: usize) -> Result<HeldLayer<'_>, Error> {
        match self {
            AnyDna::Owned(d) => Ok(HeldLayer::Borrowed(&d.layers[i])),
            AnyDna::Stored(s) => s.layer(i).map(HeldLayer::Buf),
        }
    }

    /// The DNA's digest (computed for in-memory DNAs).
    pub fn digest(&self) -> Digest {
        match self {
            AnyDna::Owned(d) => d.digest(),
            AnyDna::Stored(s) => s.digest,
        }
    }
}

/// Explains why two spaces differ, for the error that refuses to compare across them.
pub fn space_difference(a: &SpaceConfig, b: &SpaceConfig) -> String {
    let mut why = Vec::new();
    if a.extractor.name != b.extractor.name {
        why.push(format!(
            "extractor {} vs {}",
            a.extractor.name, b.extractor.name
        ));
    }
    if a.dist != b.dist {
        why.push(format!(
            "distribution {} vs {}",
            a.dist.name(),
            b.dist.name()
        ));
    }
    if a.layers != b.layers {
        why.push(format!(
            "layers differ ({} vs {} layers)",
            a.layers.len(),
            b.layers.len()
        ));
    }
    if a.is_pinned() != b.is_pinned() {
        why.push("one DNA pins its weights and activation ranges by digest, the other (imported from reference files) does not; import the reference files with the same --weights and --ranges to pin them".into());
    } else if a.extractor != b.extractor {
        why.push("weights or activation ranges differ".into());
    }
    if a.hist_range != b.hist_range || a.range_scale != b.range_scale {
        why.push("histogram range or range scale differ".into());
    }
    if a.preprocessing != b.preprocessing {
        why.push("preprocessing differs".into());
    }
    if why.is_empty() {
        why.push("configs differ".into());
    }
    why.join("; ")
}

/// Compares two DNAs under a resolved mask (the spaces must be equal).
pub fn compare_dnas(
    a: &AnyDna,
    b: &AnyDna,
    mask: &Mask,
    metric: Option<Metric>,
    top_n: usize,
) -> Result<Comparison, Error> {
    let (sa, sb) = (a.space(), b.space());
    if sa != sb {
        return Err(Error::SpaceMismatch(format!(
            "cannot compare DNAs of different spaces ({} vs {}): {}",
            sa.describe(),
            sb.describe(),
            space_difference(sa, sb)
        )));
    }
    let metric = match metric {
        Some(m) => m,
        None => Metric::default_for(sa.dist).ok_or_else(|| {
            Error::Invalid(format!(
                "{} DNAs have no distance; compare histogram or gaussian DNAs",
                sa.dist.name()
            ))
        })?,
    };
    metric.check(sa.dist)?;
    let held = mask
        .layers
        .par_iter()
        .map(|lm| Ok((a.layer(lm.layer)?, b.layer(lm.layer)?)))
        .collect::<Result<Vec<_>, Error>>()?;
    let views: Vec<_> = held.iter().map(|(x, y)| (x.view(), y.view())).collect();
    Ok(distance::compare(sa, mask, metric, &views, top_n)?)
}
