//! DNA manifests: the small canonical JSON document whose digest is a DNA's identity.

use serde::{Deserialize, Serialize};

use super::space::check_schema;
use super::{Digest, FormatError, SpaceConfig};

/// Schema tag that opens every manifest (it doubles as magic and version).
pub const MANIFEST_SCHEMA: &str = "vdna-db/manifest/v1";

/// One layer blob named by a manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerRef {
    pub name: String,
    pub digest: Digest,
    /// Length of the canonical (uncompressed) blob bytes.
    pub size: u64,
}

/// A DNA: its space, the number of images it summarises and one blob per layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub schema: String,
    pub space: Digest,
    /// The distribution kind's name, repeated from the space for people reading the JSON.
    pub dist: String,
    pub images: u64,
    pub layers: Vec<LayerRef>,
}

impl Manifest {
    /// Canonical bytes: compact JSON with fields in declaration order.
    pub fn to_canonical(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The DNA's identity.
    pub fn digest(&self) -> Digest {
        Digest::of(&self.to_canonical())
    }

    /// Parses canonical bytes; checks only what needs no space config.
    pub fn from_bytes(bytes: &[u8]) -> Result<Manifest, FormatError> {
        check_schema(bytes, MANIFEST_SCHEMA, "manifest")?;
        let m: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| FormatError::invalid("manifest", e.to_string()))?;
        if m.layers.is_empty() || m.layers.len() > super::space::MAX_LAYERS {
            return Err(FormatError::invalid(
                "manifest",
                format!("{} layers", m.layers.len()),
            ));
        }
        Ok(m)
    }

    /// Checks that the manifest's layers are exactly the space's layers, in order.
    pub fn check_against(&self, space: &SpaceConfig) -> Result<(), FormatError> {
        if self.dist != space.dist.name() {
            return Err(FormatError::invalid(
                "manifest",
                format!(
                    "kind {} but its space says {}",
                    self.dist,
                    space.dist.name()
                ),
            ));
        }
        let names: Vec<&str> = self.layers.iter().map(|l| l.name.as_str()).collect();
        let expected: Vec<&str> = space.layers.iter().map(|l| l.name.as_str()).collect();
        if names != expected {
            return Err(FormatError::invalid(
                "manifest",
                format!("layers {names:?} do not match its space's layers {expected:?}"),
            ));
        }
        Ok(())
    }
}
