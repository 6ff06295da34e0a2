//! The in-memory DNA model: a space, an image count and one array set per layer; merging
//! DNAs of one space; turning a DNA into its content-addressed objects.
//!
//! Pure computation over owned values; no I/O.

use rayon::prelude::*;

use crate::format::{
    encode_layer, encode_object, Codec, Digest, DistKind, LayerBlob, LayerRef, LayerView, Manifest,
    SpaceConfig, MANIFEST_SCHEMA,
};

/// Errors of the DNA model. They fold into the crate's `Error` as its `Invalid`, `SpaceMismatch`
/// and `Format` variants.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DnaError {
    /// A layer or a DNA that does not fit its space (the message names the layer).
    #[error("{0}")]
    Invalid(String),
    /// Two DNAs of different spaces (the message says what differs).
    #[error("{0}")]
    SpaceMismatch(String),
    /// A space config that does not validate.
    #[error(transparent)]
    Format(#[from] crate::format::FormatError),
}

/// One layer's arrays, owned.
#[derive(Clone, Debug, PartialEq)]
pub enum LayerData {
    /// `counts[n * bins + b]`.
    Histogram { bins: u32, counts: Vec<u32> },
    /// Mean and unbiased variance per neuron.
    Gaussian { mean: Vec<f64>, var: Vec<f64> },
    /// Mean vector and unbiased covariance (row-major, `n x n`).
    LayerGaussian { mean: Vec<f64>, cov: Vec<f64> },
    /// Minimum and maximum per neuron.
    Ranges { min: Vec<f64>, max: Vec<f64> },
}

impl LayerData {
    /// Borrows the arrays as a view, the same type the store's in-place reads give.
    pub fn view(&self) -> LayerView<'_> {
        match self {
            LayerData::Histogram { bins, counts } => LayerView::Histogram {
                neurons: counts.len() / (*bins).max(1) as usize,
                bins: *bins as usize,
                counts,
            },
            LayerData::Gaussian { mean, var } => LayerView::Gaussian { mean, var },
            LayerData::LayerGaussian { mean, cov } => LayerView::LayerGaussian {
                neurons: mean.len(),
                mean,
                cov,
            },
            LayerData::Ranges { min, max } => LayerView::Ranges { min, max },
        }
    }

    /// Copies a view into owned arrays.
    pub fn from_view(v: LayerView<'_>) -> LayerData {
        match v {
            LayerView::Histogram { bins, counts, .. } => LayerData::Histogram {
                bins: bins as u32,
                counts: counts.to_vec(),
            },
            LayerView::Gaussian { mean, var } => LayerData::Gaussian {
                mean: mean.to_vec(),
                var: var.to_vec(),
            },
            LayerView::LayerGaussian { mean, cov, .. } => LayerData::LayerGaussian {
                mean: mean.to_vec(),
                cov: cov.to_vec(),
            },
            LayerView::Ranges { min, max } => LayerData::Ranges {
                min: min.to_vec(),
                max: max.to_vec(),
            },
        }
    }

    fn to_blob(&self) -> LayerBlob {
        use crate::format::layer_kinds::*;
        let neurons = self.view().neurons() as u32;
        let (kind, bins, counts, f0, f1) = match self {
            LayerData::Histogram { bins, counts } => {
                (KIND_HISTOGRAM, *bins, counts.clone(), vec![], vec![])
            }
            LayerData::Gaussian { mean, var } => {
                (KIND_GAUSSIAN, 0, vec![], mean.clone(), var.clone())
            }
            LayerData::LayerGaussian { mean, cov } => {
                (KIND_LAYER_GAUSSIAN, 0, vec![], mean.clone(), cov.clone())
            }
            LayerData::Ranges { min, max } => (KIND_RANGES, 0, vec![], min.clone(), max.clone()),
        };
        LayerBlob {
            kind,
            neurons,
            bins,
            counts,
            f0,
            f1,
        }
    }

    /// The zstd level of this layer: floating-point layers up to 1 MiB (Gaussians: a few
    /// KB a layer) at level 19 at least, which costs a millisecond and takes them from
    /// 1.00x to 0.95x of the reference's npz; everything else at `level`.
    fn level(&self, raw_len: usize, level: i32) -> i32 {
        match self {
            LayerData::Histogram { .. } => level,
            _ if raw_len <= 1 << 20 => level.max(19),
            _ => level,
        }
    }

    /// The codec of this kind of array (measured in benches/report.rs).
    fn codec(&self, histogram_codec: Codec) -> Codec {
        match self {
            LayerData::Histogram { .. } => histogram_codec,
            _ => Codec::Shuffle64,
        }
    }
}

/// The codec of histogram layers in bundles (what is moved and archived): compact,
/// [`Codec::Hist`]. A store picks its own (`db::OpenOptions::histogram_codec`).
pub const HISTOGRAM_CODEC: Codec = Codec::Hist;

/// Checks that a layer view has the shape the space says, naming the layer when not.
pub fn check_layer_shape(
    space: &SpaceConfig,
    idx: usize,
    v: &LayerView<'_>,
) -> Result<(), DnaError> {
    let spec = &space.layers[idx];
    let n = spec.neurons as usize;
    let ok = match (space.dist, v) {
        (
            DistKind::Histogram { bins },
            LayerView::Histogram {
                neurons, bins: b, ..
            },
        ) => *neurons == n && *b == bins as usize,
        (DistKind::Gaussian, LayerView::Gaussian { mean, var }) => {
            mean.len() == n && var.len() == n
        }
        (DistKind::LayerGaussian, LayerView::LayerGaussian { neurons, .. }) => *neurons == n,
        (DistKind::ActivationRanges, LayerView::Ranges { min, .. }) => min.len() == n,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(DnaError::Invalid(format!(
            "layer {}: arrays of {} neurons ({:?}) do not match the space's {} neurons of {}",
            spec.name,
            v.neurons(),
            kind_of_view(v),
            n,
            space.dist.name()
        )))
    }
}

/// Checks a layer's shape and values: every histogram neuron has at least one count (an
/// empty one has no distance), every Gaussian value is finite.
pub fn check_layer(space: &SpaceConfig, idx: usize, v: &LayerView<'_>) -> Result<(), DnaError> {
    check_layer_shape(space, idx, v)?;
    let name = &space.layers[idx].name;
    match *v {
        LayerView::Histogram { bins, counts, .. } => {
            if let Some(n) = counts
                .chunks_exact(bins)
                .position(|h| h.iter().all(|c| *c == 0))
            {
                return Err(DnaError::Invalid(format!(
                    "layer {name} neuron {n}: empty histogram (no activation was counted)"
                )));
            }
        }
        LayerView::Gaussian { mean, var } => {
            if let Some(n) = mean
                .iter()
                .zip(var)
                .position(|(m, v)| !m.is_finite() || !v.is_finite() || *v < 0.0)
            {
                return Err(DnaError::Invalid(format!(
                    "layer {name} neuron {n}: mean or variance is not finite or the variance is negative"
                )));
            }
        }
        LayerView::LayerGaussian { mean, cov, .. } => {
            if mean.iter().chain(cov).any(|x| !x.is_finite()) {
                return Err(DnaError::Invalid(format!(
                    "layer {name}: non-finite mean or covariance"
                )));
            }
        }
        LayerView::Ranges { .. } => {}
    }
    Ok(())
}

fn kind_of_view(v: &LayerView<'_>) -> &'static str {
    match v {
        LayerView::Histogram { .. } => "histogram",
        LayerView::Gaussian { .. } => "gaussian",
        LayerView::LayerGaussian { .. } => "layer-gaussian",
        LayerView::Ranges { .. } => "activation-ranges",
    }
}

/// A whole DNA in memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Dna {
    pub space: SpaceConfig,
    pub images: u64,
    pub layers: Vec<LayerData>,
}

/// A DNA turned into content-addressed objects, ready to store or bundle.
pub struct EncodedDna {
    pub manifest: Manifest,
    pub manifest_digest: Digest,
    /// (digest, encoded object) for the manifest, the space config, then each layer.
    pub objects: Vec<(Digest, Vec<u8>)>,
    /// Sum of canonical (uncompressed) sizes of the layer blobs.
    pub raw_bytes: u64,
}

impl EncodedDna {
    /// Total encoded bytes at rest.
    pub fn stored_bytes(&self) -> u64 {
        self.objects.iter().map(|o| o.1.len() as u64).sum()
    }
}

impl Dna {
    /// Checks shapes and values against the space.
    pub fn validate(&self) -> Result<(), DnaError> {
        self.space.validate()?;
        if self.layers.len() != self.space.layers.len() {
            return Err(DnaError::Invalid(format!(
                "{} layers of arrays for a space of {} layers",
                self.layers.len(),
                self.space.layers.len()
            )));
        }
        for (i, l) in self.layers.iter().enumerate() {
            let v = l.view();
            check_layer_shape(&self.space, i, &v)?;
            if let LayerView::Histogram { bins, counts, .. } = v {
                if let Some(n) = counts
                    .chunks_exact(bins)
                    .position(|h| h.iter().all(|c| *c == 0))
                {
                    return Err(DnaError::Invalid(format!(
                        "layer {} neuron {n}: empty histogram (no activation was counted)",
                        self.space.layers[i].name
                    )));
                }
            }
        }
        Ok(())
    }

    /// Merges a DNA of the same space into this one: histograms add, Gaussians combine
    /// exactly from counts, means and variances, ranges take min and max.
    pub fn merge(&self, other: &Dna) -> Result<Dna, DnaError> {
        if self.space != other.space {
            return Err(DnaError::SpaceMismatch(format!(
                "cannot merge DNAs of different spaces: {} vs {}",
                self.space.describe(),
                other.space.describe()
            )));
        }
        let (na, nb) = (self.images, other.images);
        let layers = self
            .layers
            .iter()
            .zip(&other.layers)
            .enumerate()
            .map(|(i, (a, b))| {
                merge_layer(a, b, na, nb).map_err(|e| {
                    DnaError::Invalid(format!("layer {}: {e}", self.space.layers[i].name))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Dna {
            space: self.space.clone(),
            images: na + nb,
            layers,
        })
    }

    /// The DNA's digest (its manifest's), computed from canonical bytes without compressing.
    pub fn digest(&self) -> Digest {
        let layers: Vec<(Digest, u64)> = self
            .layers
            .par_iter()
            .map(|l| {
                let raw = encode_layer(&l.to_blob());
                (Digest::of(&raw), raw.len() as u64)
            })
            .collect();
        self.manifest_for(&layers).digest()
    }

    fn manifest_for(&self, layers: &[(Digest, u64)]) -> Manifest {
        Manifest {
            schema: MANIFEST_SCHEMA.into(),
            space: self.space.digest(),
            dist: self.space.dist.name(),
            images: self.images,
            layers: self
                .space
                .layers
                .iter()
                .zip(layers)
                .map(|(s, l)| LayerRef {
                    name: s.name.clone(),
                    digest: l.0,
                    size: l.1,
                })
                .collect(),
        }
    }

    /// Encodes every object at zstd `level`, histogram layers with
    /// [`HISTOGRAM_CODEC`]; the digests depend on neither.
    pub fn encode(&self, level: i32) -> EncodedDna {
        self.encode_with(level, HISTOGRAM_CODEC)
    }

    /// Encodes every object at zstd `level`, histogram layers with `histogram_codec`
    /// (floating-point layers always with [`Codec::Shuffle64`]).
    pub fn encode_with(&self, level: i32, histogram_codec: Codec) -> EncodedDna {
        let space_raw = self.space.to_canonical();
        let space_digest = Digest::of(&space_raw);
        let layers: Vec<(Digest, u64, Vec<u8>)> = self
            .layers
            .par_iter()
            .map(|l| {
                let raw = encode_layer(&l.to_blob());
                (
                    Digest::of(&raw),
                    raw.len() as u64,
                    encode_object(&raw, l.codec(histogram_codec), l.level(raw.len(), level)),
                )
            })
            .collect();
        let ids: Vec<(Digest, u64)> = layers.iter().map(|l| (l.0, l.1)).collect();
        let manifest = self.manifest_for(&ids);
        let manifest_raw = manifest.to_canonical();
        let manifest_digest = Digest::of(&manifest_raw);
        let raw_bytes = layers.iter().map(|l| l.1).sum();
        let mut objects = Vec::with_capacity(layers.len() + 2);
        objects.push((
            manifest_digest,
            encode_object(&manifest_raw, Codec::Raw, level),
        ));
        objects.push((space_digest, encode_object(&space_raw, Codec::Raw, level)));
        objects.extend(layers.into_iter().map(|l| (l.0, l.2)));
        EncodedDna {
            manifest,
            manifest_digest,
            objects,
            raw_bytes,
        }
    }
}

fn merge_layer(a: &LayerData, b: &LayerData, na: u64, nb: u64) -> Result<LayerData, String> {
    let n = (na + nb) as f64;
    let (fa, fb) = (na as f64, nb as f64);
    Ok(match (a, b) {
        (LayerData::Histogram { bins, counts: ca }, LayerData::Histogram { counts: cb, .. }) => {
            let counts = ca
                .iter()
                .zip(cb)
                .map(|(x, y)| x.checked_add(*y))
                .collect::<Option<Vec<u32>>>()
                .ok_or("a merged bin count exceeds 2^32-1")?;
            LayerData::Histogram {
                bins: *bins,
                counts,
            }
        }
        (LayerData::Gaussian { mean: ma, var: va }, LayerData::Gaussian { mean: mb, var: vb }) => {
            let mut mean = Vec::with_capacity(ma.len());
            let mut var = Vec::with_capacity(ma.len());
            for i in 0..ma.len() {
                let d = mb[i] - ma[i];
                mean.push(ma[i] + d * fb / n);
                let m2 =
                    va[i] * (fa - 1.0).max(0.0) + vb[i] * (fb - 1.0).max(0.0) + d * d * fa * fb / n;
                var.push(if n > 1.0 { m2 / (n - 1.0) } else { 0.0 });
            }
            LayerData::Gaussian { mean, var }
        }
        (
            LayerData::LayerGaussian { mean: ma, cov: ca },
            LayerData::LayerGaussian { mean: mb, cov: cb },
        ) => {
            let k = ma.len();
            let d: Vec<f64> = (0..k).map(|i| mb[i] - ma[i]).collect();
            let mean = (0..k).map(|i| ma[i] + d[i] * fb / n).collect();
            let w = fa * fb / n;
            let cov = (0..k * k)
                .map(|ij| {
                    let (i, j) = (ij / k, ij % k);
                    let m2 = ca[ij] * (fa - 1.0).max(0.0)
                        + cb[ij] * (fb - 1.0).max(0.0)
                        + d[i] * d[j] * w;
                    if n > 1.0 {
                        m2 / (n - 1.0)
                    } else {
                        0.0
                    }
                })
                .collect();
            LayerData::LayerGaussian { mean, cov }
        }
        (LayerData::Ranges { min: ia, max: xa }, LayerData::Ranges { min: ib, max: xb }) => {
            LayerData::Ranges {
                min: ia.iter().zip(ib).map(|(x, y)| x.min(*y)).collect(),
                max: xa.iter().zip(xb).map(|(x, y)| x.max(*y)).collect(),
            }
        }
        _ => return Err("layers of different kinds".into()),
    })
}

/// Decodes and validates a `.vdna` bundle into an owned DNA and its annotations.
pub fn dna_of_bundle_bytes(
    bytes: &[u8],
) -> Result<(Dna, std::collections::BTreeMap<String, String>), DnaError> {
    dna_of_bundle(crate::format::decode_bundle(bytes)?)
}

/// Decodes and validates the layers of a decoded bundle into an owned DNA.
pub fn dna_of_bundle(
    b: crate::format::Bundle,
) -> Result<(Dna, std::collections::BTreeMap<String, String>), DnaError> {
    let mut layers = Vec::with_capacity(b.manifest.layers.len());
    for (i, (_, enc)) in b.objects.iter().skip(2).enumerate() {
        let buf = crate::format::decode_layer(crate::format::decode_object(enc, "bundle entry")?)?;
        check_layer(&b.space, i, &buf.view())?;
        layers.push(LayerData::from_view(buf.view()));
    }
    Ok((
        Dna {
            space: b.space,
            images: b.manifest.images,
            layers,
        },
        b.annotations,
    ))
}
