//! Space configs: what makes two DNAs comparable. Serialised as canonical JSON and
//! content-addressed; the digest of a space config is the space's identity.

use serde::{Deserialize, Serialize};

use super::{Digest, FormatError};

/// Schema tag that opens every space config (it doubles as magic and version).
pub const SPACE_SCHEMA: &str = "vdna-db/space/v1";

/// The distribution fitted per neuron (or per layer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum DistKind {
    /// `bins` integer counts per neuron over the normalised range [-1, 1].
    Histogram { bins: u32 },
    /// Mean and (unbiased) variance per neuron.
    Gaussian,
    /// Mean vector and (unbiased) covariance matrix per layer.
    LayerGaussian,
    /// Minimum and maximum activation per neuron.
    ActivationRanges,
}

impl DistKind {
    /// The reference library's name: `histogram-1000`, `gaussian`, `layer-gaussian`, `activation-ranges`.
    pub fn name(&self) -> String {
        match self {
            DistKind::Histogram { bins } => format!("histogram-{bins}"),
            DistKind::Gaussian => "gaussian".into(),
            DistKind::LayerGaussian => "layer-gaussian".into(),
            DistKind::ActivationRanges => "activation-ranges".into(),
        }
    }

    /// Parses a reference-style name (`histogram-B`, `gaussian`, `layer-gaussian`, `activation-ranges`).
    pub fn parse(s: &str) -> Option<DistKind> {
        match s {
            "gaussian" => Some(DistKind::Gaussian),
            "layer-gaussian" => Some(DistKind::LayerGaussian),
            "activation-ranges" => Some(DistKind::ActivationRanges),
            _ => {
                let b: u32 = s.strip_prefix("histogram-")?.parse().ok()?;
                (1..=MAX_BINS)
                    .contains(&b)
                    .then_some(DistKind::Histogram { bins: b })
            }
        }
    }

    /// The reference's `type` field.
    pub fn type_name(&self) -> &'static str {
        match self {
            DistKind::Histogram { .. } => "histogram",
            DistKind::Gaussian => "gaussian",
            DistKind::LayerGaussian => "layer-gaussian",
            DistKind::ActivationRanges => "activation-ranges",
        }
    }
}

/// Upper bound on histogram bins accepted from any input.
pub const MAX_BINS: u32 = 1 << 16;
/// Upper bound on neurons in one layer accepted from any input.
pub const MAX_LAYER_NEURONS: u32 = 1 << 16;
/// Upper bound on layers in one space.
pub const MAX_LAYERS: usize = 4096;

/// The network that produced the activations, pinned by digests where known.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Extractor {
    /// Architecture id, e.g. `rand_resnet50`, `mugs_vit_base`.
    pub name: String,
    /// Digest of the exact weights, or `None` when unpinned (imported from reference files).
    pub weights: Option<Digest>,
    /// Digest of the activation ranges used for normalisation, or `None` when unpinned.
    pub ranges: Option<Digest>,
}

/// One recorded layer and its neuron (channel) count.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerSpec {
    pub name: String,
    pub neurons: u32,
}

/// Image preprocessing before the network (pinned spaces only).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocessing {
    pub resize: String,
    pub crop: String,
    pub input_size: [u32; 2],
    pub mean: [f64; 3],
    pub std: [f64; 3],
}

/// A space: DNAs compare only inside one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpaceConfig {
    pub schema: String,
    pub extractor: Extractor,
    pub layers: Vec<LayerSpec>,
    pub dist: DistKind,
    /// Normalisation of activations before histogramming: the reference's `hist_range`
    /// and `range_scale_for_norm_params`. `None` for Gaussian kinds.
    pub hist_range: Option<[f64; 2]>,
    pub range_scale: Option<f64>,
    pub preprocessing: Option<Preprocessing>,
}

impl SpaceConfig {
    /// A space as the reference library describes it, with unpinned weights and ranges.
    pub fn unpinned(extractor: &str, layers: Vec<LayerSpec>, dist: DistKind) -> SpaceConfig {
        let hist = matches!(dist, DistKind::Histogram { .. });
        SpaceConfig {
            schema: SPACE_SCHEMA.into(),
            extractor: Extractor {
                name: extractor.into(),
                weights: None,
                ranges: None,
            },
            layers,
            dist,
            hist_range: hist.then_some([-1.0, 1.0]),
            range_scale: hist.then_some(1.2),
            preprocessing: None,
        }
    }

    /// Canonical bytes: compact JSON with fields in declaration order.
    pub fn to_canonical(&self) -> Vec<u8> {
        // Serialising plain structs of strings, integers and finite floats cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The space's identity.
    pub fn digest(&self) -> Digest {
        Digest::of(&self.to_canonical())
    }

    /// Parses and validates canonical bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<SpaceConfig, FormatError> {
        check_schema(bytes, SPACE_SCHEMA, "space config")?;
        let s: SpaceConfig = serde_json::from_slice(bytes)
            .map_err(|e| FormatError::invalid("space config", e.to_string()))?;
        s.validate()?;
        Ok(s)
    }

    /// Checks the invariants every space must satisfy.
    pub fn validate(&self) -> Result<(), FormatError> {
        let bad = |d: String| Err(FormatError::invalid("space config", d));
        if self.schema != SPACE_SCHEMA {
            return bad(format!("schema {:?} is not {SPACE_SCHEMA:?}", self.schema));
        }
        if self.layers.is_empty() || self.layers.len() > MAX_LAYERS {
            return bad(format!(
                "{} layers (expected 1..={MAX_LAYERS})",
                self.layers.len()
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for l in &self.layers {
            if l.neurons == 0 || l.neurons > MAX_LAYER_NEURONS {
                return bad(format!("layer {:?} has {} neurons", l.name, l.neurons));
            }
            if !valid_layer_name(&l.name) {
                return bad(format!("layer name {:?} is not [A-Za-z0-9_.-]+", l.name));
            }
            if !seen.insert(&l.name) {
                return bad(format!("layer {:?} appears twice", l.name));
            }
        }
        if let DistKind::Histogram { bins } = self.dist {
            if bins == 0 || bins > MAX_BINS {
                return bad(format!("{bins} bins"));
            }
        }
        if self.extractor.name.is_empty() || self.extractor.name.len() > 128 {
            return bad("empty or overlong extractor name".into());
        }
        Ok(())
    }

    /// Total neurons over all layers.
    pub fn total_neurons(&self) -> u64 {
        self.layers.iter().map(|l| l.neurons as u64).sum()
    }

    /// Index of a layer by name.
    pub fn layer_index(&self, name: &str) -> Option<usize> {
        self.layers.iter().position(|l| l.name == name)
    }

    /// True when weights and ranges are pinned by digest.
    pub fn is_pinned(&self) -> bool {
        // Ranges only matter where activations are normalised: histograms.
        self.extractor.weights.is_some()
            && (self.extractor.ranges.is_some() || !matches!(self.dist, DistKind::Histogram { .. }))
    }

    /// A one-line description for people: `rand_resnet50 histogram-1000 (16 layers, 15104 neurons)`.
    pub fn describe(&self) -> String {
        format!(
            "{} {} ({} layers, {} neurons{})",
            self.extractor.name,
            self.dist.name(),
            self.layers.len(),
            self.total_neurons(),
            if self.is_pinned() { "" } else { ", unpinned" }
        )
    }
}

/// Layer names are used in mask specs and file names: keep them to a safe alphabet.
pub fn valid_layer_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

/// Checks that JSON bytes open with `{"schema":"<tag>"`, the canonical form's fixed prefix.
pub(crate) fn check_schema(bytes: &[u8], tag: &str, what: &'static str) -> Result<(), FormatError> {
    let prefix = format!("{{\"schema\":\"{tag}\"");
    if bytes.starts_with(prefix.as_bytes()) {
        return Ok(());
    }
    let other = format!(
        "{{\"schema\":\"{}",
        tag.rsplit_once('/').map_or(tag, |t| t.0)
    );
    if bytes.starts_with(other.as_bytes()) {
        let found = bytes[other.len()..]
            .iter()
            .skip_while(|b| **b == b'/' || **b == b'v')
            .take_while(|b| b.is_ascii_digit())
            .fold(0u32, |a, b| {
                a.saturating_mul(10).saturating_add((b - b'0') as u32)
            });
        return Err(FormatError::UnknownVersion {
            what,
            found,
            supported: 1,
        });
    }
    Err(FormatError::BadMagic { what })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space() -> SpaceConfig {
        SpaceConfig::unpinned(
            "rand_resnet50",
            vec![LayerSpec {
                name: "layer1_0".into(),
                neurons: 256,
            }],
            DistKind::Histogram { bins: 1000 },
        )
    }

    #[test]
    fn canonical_bytes_round_trip_and_open_with_the_schema_tag() {
        let s = space();
        let b = s.to_canonical();
        assert!(b.starts_with(b"{\"schema\":\"vdna-db/space/v1\""));
        assert_eq!(SpaceConfig::from_bytes(&b).unwrap(), s);
        assert_eq!(SpaceConfig::from_bytes(&b).unwrap().digest(), s.digest());
    }

    #[test]
    fn a_future_schema_version_is_refused_by_number() {
        let b = String::from_utf8(space().to_canonical())
            .unwrap()
            .replace("space/v1", "space/v7");
        match SpaceConfig::from_bytes(b.as_bytes()) {
            Err(FormatError::UnknownVersion { found: 7, .. }) => {}
            other => panic!("expected unknown version 7, got {other:?}"),
        }
    }

    #[test]
    fn dist_kind_names_round_trip() {
        for k in [
            DistKind::Histogram { bins: 1000 },
            DistKind::Gaussian,
            DistKind::LayerGaussian,
            DistKind::ActivationRanges,
        ] {
            assert_eq!(DistKind::parse(&k.name()), Some(k));
        }
        assert_eq!(DistKind::parse("histogram-0"), None);
        assert_eq!(DistKind::parse("histogram-x"), None);
    }
}
