//! Layer blobs: one layer's arrays as a flat rkyv archive behind a 16-byte header.
//!
//! Canonical bytes (what the digest covers):
//! `b"VDNALYR\0"`, format version (u32 LE), 4 reserved zero bytes, then the rkyv archive
//! of [`LayerBlob`]. The header is 16 bytes so the archive sits 16-aligned inside a
//! 16-aligned buffer, and is read in place.

use rkyv::rancor;
use rkyv::util::AlignedVec;

use super::{le_u32, FormatError};

/// Magic bytes that open every layer blob.
pub const LAYER_MAGIC: &[u8; 8] = b"VDNALYR\0";
const LAYER_VERSION: u32 = 1;
const HEADER: usize = 16;

/// Kind tags stored in [`LayerBlob::kind`].
pub const KIND_HISTOGRAM: u8 = 0;
pub const KIND_GAUSSIAN: u8 = 1;
pub const KIND_LAYER_GAUSSIAN: u8 = 2;
pub const KIND_RANGES: u8 = 3;

/// The archived shape of one layer. Flat and neuron-major:
/// - histogram: `counts[n * bins + b]`, `f0` and `f1` empty;
/// - gaussian: `f0` = mean per neuron, `f1` = unbiased variance per neuron;
/// - layer-gaussian: `f0` = mean vector, `f1` = covariance, row-major `neurons x neurons`;
/// - activation-ranges: `f0` = minimum, `f1` = maximum per neuron.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq)]
pub struct LayerBlob {
    pub kind: u8,
    pub neurons: u32,
    pub bins: u32,
    pub counts: Vec<u32>,
    pub f0: Vec<f64>,
    pub f1: Vec<f64>,
}

/// A borrowed, shape-checked view of one layer's arrays.
#[derive(Clone, Copy, Debug)]
pub enum LayerView<'a> {
    Histogram {
        neurons: usize,
        bins: usize,
        counts: &'a [u32],
    },
    Gaussian {
        mean: &'a [f64],
        var: &'a [f64],
    },
    LayerGaussian {
        neurons: usize,
        mean: &'a [f64],
        cov: &'a [f64],
    },
    Ranges {
        min: &'a [f64],
        max: &'a [f64],
    },
}

impl LayerView<'_> {
    /// Number of neurons in the layer.
    pub fn neurons(&self) -> usize {
        match self {
            LayerView::Histogram { neurons, .. } | LayerView::LayerGaussian { neurons, .. } => {
                *neurons
            }
            LayerView::Gaussian { mean, .. } => mean.len(),
            LayerView::Ranges { min, .. } => min.len(),
        }
    }
}

/// Serialises a layer to canonical bytes.
pub fn encode_layer(blob: &LayerBlob) -> Vec<u8> {
    // Serialising plain vectors into a growable buffer cannot fail.
    let archive = rkyv::to_bytes::<rancor::Error>(blob)
        .map(|a| a.into_vec())
        .unwrap_or_default();
    let mut out = Vec::with_capacity(HEADER + archive.len());
    out.extend_from_slice(LAYER_MAGIC);
    out.extend_from_slice(&LAYER_VERSION.to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&archive);
    out
}

/// Canonical layer bytes in a 16-aligned buffer, validated once at construction; clones
/// share the bytes (a decoded-layer cache hands out clones).
#[derive(Clone)]
pub struct LayerBuf {
    bytes: std::sync::Arc<AlignedVec<16>>,
}

impl Drop for LayerBuf {
    /// The last holder of a layer hands its buffer to the next decode (pool.rs).
    fn drop(&mut self) {
        if let Some(b) = std::sync::Arc::get_mut(&mut self.bytes) {
            super::pool::give(std::mem::take(b));
        }
    }
}

impl std::fmt::Debug for LayerBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LayerBuf({} bytes)", self.bytes.len())
    }
}

/// Validates canonical layer bytes (header, rkyv structure, array shapes) and keeps them.
pub fn decode_layer(bytes: AlignedVec<16>) -> Result<LayerBuf, FormatError> {
    const WHAT: &str = "layer blob";
    if bytes.len() < HEADER {
        return Err(FormatError::truncated(
            WHAT,
            format!("{} bytes", bytes.len()),
        ));
    }
    if &bytes[..8] != LAYER_MAGIC {
        return Err(FormatError::BadMagic { what: WHAT });
    }
    let version = le_u32(&bytes, 8);
    if version != LAYER_VERSION {
        return Err(FormatError::UnknownVersion {
            what: WHAT,
            found: version,
            supported: LAYER_VERSION,
        });
    }
    let archived = rkyv::access::<ArchivedLayerBlob, rancor::BoxedError>(&bytes[HEADER..])
        .map_err(|e| FormatError::invalid(WHAT, format!("archive fails validation: {e}")))?;
    check_shape(archived)?;
    Ok(LayerBuf {
        bytes: std::sync::Arc::new(bytes),
    })
}

/// Where a histogram layer's counts lie in its canonical bytes: (byte offset, neurons,
/// bins). `None` for other kinds or bytes that are not a valid layer blob.
pub(crate) fn histogram_span(raw: &[u8]) -> Option<(usize, usize, usize)> {
    let mut bytes = AlignedVec::<16>::with_capacity(raw.len());
    bytes.extend_from_slice(raw);
    let buf = decode_layer(bytes).ok()?;
    match buf.view() {
        LayerView::Histogram {
            neurons,
            bins,
            counts,
        } => {
            let offset = counts.as_ptr() as usize - buf.bytes.as_ptr() as usize;
            Some((offset, neurons, bins))
        }
        _ => None,
    }
}

fn check_shape(a: &ArchivedLayerBlob) -> Result<(), FormatError> {
    let n = a.neurons.to_native() as usize;
    let bins = a.bins.to_native() as usize;
    let (counts, f0, f1) = (a.counts.len(), a.f0.len(), a.f1.len());
    let ok = n > 0
        && match a.kind {
            KIND_HISTOGRAM => bins > 0 && counts == n * bins && f0 == 0 && f1 == 0,
            KIND_GAUSSIAN | KIND_RANGES => counts == 0 && f0 == n && f1 == n,
            KIND_LAYER_GAUSSIAN => counts == 0 && f0 == n && f1 == n * n,
            _ => false,
        };
    if ok {
        Ok(())
    } else {
        Err(FormatError::invalid(
            "layer blob",
            format!(
                "kind {} with {n} neurons, {bins} bins has arrays of {counts}, {f0}, {f1} values",
                a.kind
            ),
        ))
    }
}

// The archived integer and float types are `#[repr(C)]` wrappers of the native type with
// the native size and alignment (rkyv's `aligned` + `little_endian` features); on a
// little-endian target their bytes are the native value, so a slice of them is a slice of
// natives. These asserts and the cfg keep that true at compile time.
type ArchU32 = rkyv::Archived<u32>;
type ArchF64 = rkyv::Archived<f64>;
const _: () = assert!(std::mem::size_of::<ArchU32>() == 4 && std::mem::align_of::<ArchU32>() == 4);
const _: () = assert!(std::mem::size_of::<ArchF64>() == 8 && std::mem::align_of::<ArchF64>() == 8);
#[cfg(not(target_endian = "little"))]
compile_error!("vdna-db reads archives in place and supports little-endian targets only");

fn native_u32(s: &[ArchU32]) -> &[u32] {
    // SAFETY: same size, alignment and bit pattern on little-endian targets (see above).
    unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<u32>(), s.len()) }
}

fn native_f64(s: &[ArchF64]) -> &[f64] {
    // SAFETY: same size, alignment and bit pattern on little-endian targets (see above).
    unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<f64>(), s.len()) }
}

impl LayerBuf {
    fn archived(&self) -> &ArchivedLayerBlob {
        // SAFETY: `decode_layer` validated exactly these bytes with `rkyv::access` (bytecheck)
        // and `LayerBuf` never mutates or exposes them mutably.
        unsafe { rkyv::access_unchecked::<ArchivedLayerBlob>(&self.bytes[HEADER..]) }
    }

    /// The layer's arrays, read in place.
    pub fn view(&self) -> LayerView<'_> {
        let a = self.archived();
        let neurons = a.neurons.to_native() as usize;
        match a.kind {
            KIND_HISTOGRAM => LayerView::Histogram {
                neurons,
                bins: a.bins.to_native() as usize,
                counts: native_u32(a.counts.as_slice()),
            },
            KIND_GAUSSIAN => LayerView::Gaussian {
                mean: native_f64(a.f0.as_slice()),
                var: native_f64(a.f1.as_slice()),
            },
            KIND_LAYER_GAUSSIAN => LayerView::LayerGaussian {
                neurons,
                mean: native_f64(a.f0.as_slice()),
                cov: native_f64(a.f1.as_slice()),
            },
            // `check_shape` admitted only the four kinds.
            _ => LayerView::Ranges {
                min: native_f64(a.f0.as_slice()),
                max: native_f64(a.f1.as_slice()),
            },
        }
    }

    /// The canonical bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aligned(b: &[u8]) -> AlignedVec<16> {
        let mut v = AlignedVec::<16>::with_capacity(b.len());
        v.extend_from_slice(b);
        v
    }

    #[test]
    fn histogram_blob_round_trips_in_place() {
        let blob = LayerBlob {
            kind: KIND_HISTOGRAM,
            neurons: 2,
            bins: 3,
            counts: vec![1, 2, 3, 4, 5, 6],
            f0: vec![],
            f1: vec![],
        };
        let bytes = encode_layer(&blob);
        assert_eq!(&bytes[..8], LAYER_MAGIC);
        let buf = decode_layer(aligned(&bytes)).unwrap();
        match buf.view() {
            LayerView::Histogram {
                neurons,
                bins,
                counts,
            } => {
                assert_eq!((neurons, bins), (2, 3));
                assert_eq!(counts, &[1, 2, 3, 4, 5, 6]);
            }
            v => panic!("wrong view {v:?}"),
        }
    }

    #[test]
    fn shape_mismatch_is_refused() {
        let blob = LayerBlob {
            kind: KIND_GAUSSIAN,
            neurons: 3,
            bins: 0,
            counts: vec![],
            f0: vec![0.0; 3],
            f1: vec![0.0; 2],
        };
        let err = decode_layer(aligned(&encode_layer(&blob))).unwrap_err();
        assert!(err.to_string().contains("arrays"), "{err}");
    }

    #[test]
    fn unknown_version_is_refused() {
        let blob = LayerBlob {
            kind: KIND_RANGES,
            neurons: 1,
            bins: 0,
            counts: vec![],
            f0: vec![0.0],
            f1: vec![1.0],
        };
        let mut b = encode_layer(&blob);
        b[8] = 9;
        assert!(matches!(
            decode_layer(aligned(&b)),
            Err(FormatError::UnknownVersion { found: 9, .. })
        ));
    }
}
