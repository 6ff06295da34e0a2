//! The `.vdna` bundle: one DNA (manifest, space config, layer blobs) in one file.
//!
//! Layout: `b"VDNABDL\0"`, version (u32 LE), entry count (u32 LE), annotations length
//! (u64 LE); then per entry its digest (32 raw bytes) and encoded length (u64 LE); then
//! the annotations as JSON; then each entry's object encoding (see `codec`), in order.
//! Entry 0 is the manifest, entry 1 its space config, then the layers in manifest order.

use std::collections::BTreeMap;

use super::{decode_object, le_u32, le_u64, Digest, FormatError, Manifest, SpaceConfig};

/// Magic bytes that open a bundle.
pub const BUNDLE_MAGIC: &[u8; 8] = b"VDNABDL\0";
const BUNDLE_VERSION: u32 = 1;
const HEADER: usize = 24;
const ENTRY: usize = 40;
const MAX_ANNOTATIONS: u64 = 1 << 20;

/// A decoded and fully verified bundle.
#[derive(Debug)]
pub struct Bundle {
    pub manifest: Manifest,
    pub manifest_digest: Digest,
    pub space: SpaceConfig,
    /// Every object (manifest, space, layers) as (canonical digest, encoded object bytes).
    /// Each was decoded and its digest checked.
    pub objects: Vec<(Digest, Vec<u8>)>,
    pub annotations: BTreeMap<String, String>,
}

/// Writes a bundle from already encoded objects: `objects[0]` the manifest, `[1]` the
/// space config, then the layers in manifest order.
pub fn encode_bundle(
    objects: &[(Digest, &[u8])],
    annotations: &BTreeMap<String, String>,
) -> Vec<u8> {
    let ann = serde_json::to_vec(annotations).unwrap_or_default();
    let total: usize = objects.iter().map(|o| o.1.len()).sum();
    let mut out = Vec::with_capacity(HEADER + ENTRY * objects.len() + ann.len() + total);
    out.extend_from_slice(BUNDLE_MAGIC);
    out.extend_from_slice(&BUNDLE_VERSION.to_le_bytes());
    out.extend_from_slice(&(objects.len() as u32).to_le_bytes());
    out.extend_from_slice(&(ann.len() as u64).to_le_bytes());
    for (d, b) in objects {
        out.extend_from_slice(&d.0);
        out.extend_from_slice(&(b.len() as u64).to_le_bytes());
    }
    out.extend_from_slice(&ann);
    for (_, b) in objects {
        out.extend_from_slice(b);
    }
    out
}

/// Parses a bundle and verifies every object's digest and the manifest's consistency.
pub fn decode_bundle(bytes: &[u8]) -> Result<Bundle, FormatError> {
    const WHAT: &str = "bundle";
    if bytes.len() < HEADER {
        return Err(FormatError::truncated(
            WHAT,
            format!("{} bytes", bytes.len()),
        ));
    }
    if &bytes[..8] != BUNDLE_MAGIC {
        return Err(FormatError::BadMagic { what: WHAT });
    }
    let version = le_u32(bytes, 8);
    if version != BUNDLE_VERSION {
        return Err(FormatError::UnknownVersion {
            what: WHAT,
            found: version,
            supported: BUNDLE_VERSION,
        });
    }
    let n = le_u32(bytes, 12) as usize;
    let ann_len = le_u64(bytes, 16);
    if !(3..=super::space::MAX_LAYERS + 2).contains(&n) {
        return Err(FormatError::invalid(WHAT, format!("{n} entries")));
    }
    if ann_len > MAX_ANNOTATIONS {
        return Err(FormatError::invalid(
            WHAT,
            format!("annotations of {ann_len} bytes"),
        ));
    }
    let table_end = HEADER + ENTRY * n;
    let ann_end = table_end as u64 + ann_len;
    if (bytes.len() as u64) < ann_end {
        return Err(FormatError::truncated(
            WHAT,
            "entry table or annotations cut short",
        ));
    }
    let mut entries = Vec::with_capacity(n);
    let mut at = ann_end;
    for i in 0..n {
        let e = HEADER + ENTRY * i;
        let mut d = [0u8; 32];
        d.copy_from_slice(&bytes[e..e + 32]);
        let len = le_u64(bytes, e + 32);
        let end = at
            .checked_add(len)
            .filter(|end| *end <= bytes.len() as u64)
            .ok_or_else(|| {
                FormatError::truncated(WHAT, format!("entry {i} of {len} bytes runs past the end"))
            })?;
        entries.push((Digest(d), at as usize, end as usize));
        at = end;
    }
    if at != bytes.len() as u64 {
        return Err(FormatError::invalid(
            WHAT,
            format!("{} trailing bytes", bytes.len() as u64 - at),
        ));
    }
    let annotations: BTreeMap<String, String> =
        serde_json::from_slice(&bytes[table_end..ann_end as usize])
            .map_err(|e| FormatError::invalid(WHAT, format!("annotations: {e}")))?;

    let mut raws = Vec::with_capacity(2);
    let mut objects = Vec::with_capacity(n);
    for (i, (digest, start, end)) in entries.into_iter().enumerate() {
        let enc = &bytes[start..end];
        let raw = decode_object(enc, "bundle entry")?;
        let actual = Digest::of(&raw);
        if actual != digest {
            return Err(FormatError::DigestMismatch {
                what: "bundle entry",
                expected: digest,
                actual,
            });
        }
        if i < 2 {
            raws.push(raw);
        }
        objects.push((digest, enc.to_vec()));
    }
    let manifest = Manifest::from_bytes(&raws[0])?;
    let space = SpaceConfig::from_bytes(&raws[1])?;
    if manifest.space != objects[1].0 {
        return Err(FormatError::invalid(
            WHAT,
            "entry 1 is not the manifest's space config",
        ));
    }
    manifest.check_against(&space)?;
    if manifest.layers.len() + 2 != objects.len()
        || manifest
            .layers
            .iter()
            .zip(&objects[2..])
            .any(|(l, o)| l.digest != o.0)
    {
        return Err(FormatError::invalid(
            WHAT,
            "entries do not match the manifest's layers",
        ));
    }
    Ok(Bundle {
        manifest_digest: objects[0].0,
        manifest,
        space,
        objects,
        annotations,
    })
}
