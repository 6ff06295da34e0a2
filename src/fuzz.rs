//! Fuzz targets: every decoder of bytes that come from disk or the network, each a plain
//! function of arbitrary input that must return (refusing bad input with an error) without
//! panicking and without allocating beyond what the input can justify (lengths are
//! checked against limits and against the bytes present before anything is allocated).
//! The property tests drive them with structure-aware mutations of valid inputs; a
//! coverage-guided fuzzer can call them as they are. They own no logic of their own.

use std::io::Cursor;
use std::path::Path;

use crate::format::{
    decode_bundle, decode_layer, decode_object, DistKind, LayerSpec, Manifest, SpaceConfig,
};

/// A codec-4 (histogram rANS) payload behind a valid header, so every byte reaches the
/// rANS decoder: the first 4 bytes claim the raw length (below 1 MiB), the rest is the
/// payload.
pub fn histogram_payload(data: &[u8]) {
    let Some((len, payload)) = data.split_first_chunk::<4>() else {
        return;
    };
    let raw_len = (u32::from_le_bytes(*len) % (1 << 20)) as u64;
    let obj = crate::format::object_of_payload(crate::format::Codec::Hist, raw_len, payload);
    if let Ok(raw) = decode_object(&obj, "fuzz histogram object") {
        let _ = decode_layer(raw);
    }
}

/// An object (blob) as stored or uploaded: header, payload, then the layer archive.
pub fn object(data: &[u8]) {
    if let Ok(raw) = decode_object(data, "fuzz object") {
        if let Ok(l) = decode_layer(raw) {
            let _ = l.view();
        }
    }
}

/// A manifest's canonical JSON.
pub fn manifest(data: &[u8]) {
    if let Ok(m) = Manifest::from_bytes(data) {
        let _ = m.digest();
        let _ = m.check_against(&small_space());
    }
}

/// A space config's canonical JSON.
pub fn space(data: &[u8]) {
    if let Ok(s) = SpaceConfig::from_bytes(data) {
        let _ = s.validate();
        let _ = s.describe();
        let _ = s.total_neurons();
    }
}

/// A `.vdna` bundle, as pushed to a server or imported: decoded, then each layer checked.
pub fn bundle(data: &[u8]) {
    let _ = decode_bundle(data);
    let _ = crate::db::dna_of_bundle_bytes(data);
}

/// A reference library `.json` + `.npz` pair.
pub fn reference_pair(json: &[u8], npz: &[u8]) {
    let _ = crate::reference::import_pair_from(
        json,
        Path::new("fuzz.json"),
        Cursor::new(npz),
        Path::new("fuzz.npz"),
    );
}

/// One `.npy` member.
pub fn npy(data: &[u8]) {
    if let Ok(a) = crate::reference::parse_npy(data) {
        let _ = a.to_u32();
        let _ = a.to_f64();
    }
}

/// A mask expression over a small two-layer space (named masks resolve to `all`).
pub fn mask(spec: &str) {
    let space = small_space();
    let named = |n: &str| (n == "saved").then(|| "block_0".to_string());
    if let Ok(m) = crate::mask::Mask::parse(spec, &space, &named) {
        let _ = m.canonical_spec(&space);
        let _ = m.neurons();
    }
}

/// A `name:tag` reference and a digest as typed or sent in a URL.
pub fn names(s: &str) {
    let _ = crate::refname::RefName::parse(s);
    let _ = s.parse::<crate::format::Digest>();
}

/// A neuron ranges file (`--ranges`).
#[cfg(feature = "extract")]
pub fn ranges(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::extract::ranges::Ranges::from_json(text, "fuzz");
    }
}

/// A safetensors weights file.
#[cfg(feature = "extract")]
pub fn safetensors(data: &[u8]) {
    let _ = crate::extract::weights::Params::from_safetensors_bytes(data, "fuzz");
}

/// The space the mask and manifest targets use: two histogram layers of 5 neurons.
pub fn small_space() -> SpaceConfig {
    SpaceConfig::unpinned(
        "fuzz",
        vec![
            LayerSpec {
                name: "block_0".into(),
                neurons: 5,
            },
            LayerSpec {
                name: "block_1".into(),
                neurons: 5,
            },
        ],
        DistKind::Histogram { bins: 8 },
    )
}
