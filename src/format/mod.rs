//! Byte formats of vdna-db: content addresses, space configs, manifests, layer blobs,
//! the at-rest object encoding and the `.vdna` bundle.
//!
//! This module owns every byte layout (documented in `schema/`) and does no I/O: it
//! turns values into bytes and validated bytes into values. It knows nothing of sled,
//! indexes, networks or HTTP.

mod bundle;
mod codec;
mod digest;
mod hist;
mod layer;
mod manifest;
mod pool;
mod space;

pub use bundle::{decode_bundle, encode_bundle, Bundle, BUNDLE_MAGIC};
#[cfg(any(test, feature = "testing"))]
pub use codec::object_of_payload;
#[doc(hidden)]
pub use codec::unshuffle32_for_bench;
pub use codec::{
    decode_object, decode_object_header, encode_object, is_compressed, Codec, ObjectHeader,
    OBJECT_MAGIC,
};
pub use digest::Digest;
/// Kind tags of layer blobs.
pub mod layer_kinds {
    pub use super::layer::{KIND_GAUSSIAN, KIND_HISTOGRAM, KIND_LAYER_GAUSSIAN, KIND_RANGES};
}
pub use layer::{decode_layer, encode_layer, LayerBlob, LayerBuf, LayerView, LAYER_MAGIC};
pub use manifest::{LayerRef, Manifest, MANIFEST_SCHEMA};
pub use space::{
    valid_layer_name, DistKind, Extractor, LayerSpec, Preprocessing, SpaceConfig, SPACE_SCHEMA,
};

/// Errors about bytes that do not decode into a valid object.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    #[error("{0:?} is not a digest (expected sha256:<64 lowercase hex digits>)")]
    BadDigest(String),
    #[error("{what}: bad magic bytes (not a vdna-db {what}, or the file is corrupt; run vdna-db verify)")]
    BadMagic { what: &'static str },
    #[error("{what}: format version {found} is not supported (this build reads version {supported}; upgrade vdna-db)")]
    UnknownVersion {
        what: &'static str,
        found: u32,
        supported: u32,
    },
    #[error("{what}: truncated ({detail})")]
    Truncated { what: &'static str, detail: String },
    #[error("{what}: {detail}")]
    Invalid { what: &'static str, detail: String },
    #[error("{what} {expected}: checksum mismatch, the bytes hash to {actual} (the object is corrupt; run vdna-db verify)")]
    DigestMismatch {
        what: &'static str,
        expected: Digest,
        actual: Digest,
    },
}

impl FormatError {
    pub(crate) fn invalid(what: &'static str, detail: impl Into<String>) -> Self {
        FormatError::Invalid {
            what,
            detail: detail.into(),
        }
    }

    pub(crate) fn truncated(what: &'static str, detail: impl Into<String>) -> Self {
        FormatError::Truncated {
            what,
            detail: detail.into(),
        }
    }
}

/// Reads a little-endian u32 at `at`; the caller has checked the bounds.
fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Reads a little-endian u64 at `at`; the caller has checked the bounds.
fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}
