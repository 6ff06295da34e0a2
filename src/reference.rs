//! Interop with the reference library (`vdna` 0.1.1): its `.json` + `.npz` pair, read and
//! written for all four DNA kinds.
//!
//! Reading never unpickles: object-dtype members (the reference writes a pickled empty
//! dict per layer in Gaussian files) are skipped by name. Every member is checked for
//! dtype and shape against `neurons_list` before use, and sizes are bounded before
//! allocating.

use std::collections::BTreeMap;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::dna::{Dna, LayerData};
use crate::format::{DistKind, LayerSpec, SpaceConfig};

/// Largest npz member accepted (a 2048x2048 f64 covariance is 32 MiB).
const MAX_MEMBER: u64 = 1 << 30;

/// Errors reading or writing reference files; each names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReferenceError {
    #[error("{path}: {source} (give the path of a reference .json/.npz pair, with or without extension)")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {detail}")]
    Bad { path: String, detail: String },
}

fn bad(path: &Path, detail: impl Into<String>) -> ReferenceError {
    ReferenceError::Bad {
        path: path.display().to_string(),
        detail: detail.into(),
    }
}

fn io(path: &Path, source: std::io::Error) -> ReferenceError {
    ReferenceError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The `.json` and `.npz` paths of a reference pair given either file or the stem.
pub fn pair_paths(path: &Path) -> (PathBuf, PathBuf) {
    let stem = match path.extension().and_then(|e| e.to_str()) {
        Some("json") | Some("npz") => path.with_extension(""),
        _ => path.to_path_buf(),
    };
    let with = |ext: &str| {
        let mut s = stem.clone().into_os_string();
        s.push(ext);
        PathBuf::from(s)
    };
    (with(".json"), with(".npz"))
}

/// True when `path` names a reference pair whose json exists.
pub fn looks_like_pair(path: &Path) -> bool {
    pair_paths(path).0.is_file()
}

/// A DNA read from reference files, with the metadata kept as annotations.
pub struct Imported {
    pub dna: Dna,
    /// `reference.metadata`: the json as written (volatile fields included), and
    /// `reference.source`, `reference.time_of_compute` for display and filters.
    pub annotations: BTreeMap<String, String>,
}

/// Reads a reference `.json` + `.npz` pair.
pub fn import_pair(path: &Path) -> Result<Imported, ReferenceError> {
    let (json_path, npz_path) = pair_paths(path);
    let text = std::fs::read(&json_path).map_err(|e| io(&json_path, e))?;
    let file = std::fs::File::open(&npz_path).map_err(|e| io(&npz_path, e))?;
    import_pair_from(&text, &json_path, file, &npz_path)
}

/// Decodes a reference pair from the `.json` bytes and a reader of the `.npz`; the paths
/// only name them in errors.
pub fn import_pair_from<R: Read + Seek>(
    text: &[u8],
    json_path: &Path,
    npz_file: R,
    npz_path: &Path,
) -> Result<Imported, ReferenceError> {
    let (json_path, npz_path) = (json_path.to_path_buf(), npz_path.to_path_buf());
    let meta: Value = serde_json::from_slice(text)
        .map_err(|e| bad(&json_path, format!("not valid JSON: {e}")))?;
    let (space, images) = space_from_metadata(&meta, &json_path)?;
    let mut npz = Npz::open(npz_file, &npz_path)?;
    let mut layers = Vec::with_capacity(space.layers.len());
    for l in &space.layers {
        let n = l.neurons as usize;
        let data = match space.dist {
            DistKind::Histogram { bins } => {
                let a = npz.array(&l.name, &[n, bins as usize])?;
                let counts = a
                    .to_u32()
                    .map_err(|d| bad(&npz_path, format!("member {}.npy: {d}", l.name)))?;
                LayerData::Histogram { bins, counts }
            }
            DistKind::Gaussian => LayerData::Gaussian {
                mean: npz.array(&format!("mu-{}", l.name), &[n])?.to_f64(),
                var: npz.array(&format!("var-{}", l.name), &[n])?.to_f64(),
            },
            DistKind::LayerGaussian => LayerData::LayerGaussian {
                mean: npz.array(&format!("mu-{}", l.name), &[n])?.to_f64(),
                cov: npz.array(&format!("sigma-{}", l.name), &[n, n])?.to_f64(),
            },
            DistKind::ActivationRanges => LayerData::Ranges {
                min: npz.array(&format!("min-{}", l.name), &[n])?.to_f64(),
                max: npz.array(&format!("max-{}", l.name), &[n])?.to_f64(),
            },
        };
        layers.push(data);
    }
    let dna = Dna {
        space,
        images,
        layers,
    };
    dna.validate().map_err(|e| bad(&npz_path, e.to_string()))?;
    let mut annotations = BTreeMap::new();
    annotations.insert(
        "reference.metadata".into(),
        serde_json::to_string(&meta).unwrap_or_default(),
    );
    if let Some(s) = meta
        .pointer("/data_settings/source")
        .and_then(Value::as_str)
    {
        annotations.insert("reference.source".into(), s.into());
    }
    if let Some(s) = meta.get("time_of_compute").and_then(Value::as_str) {
        annotations.insert("reference.time_of_compute".into(), s.into());
    }
    Ok(Imported { dna, annotations })
}

fn space_from_metadata(meta: &Value, path: &Path) -> Result<(SpaceConfig, u64), ReferenceError> {
    let field = |k: &str| {
        meta.get(k)
            .ok_or_else(|| bad(path, format!("missing field {k:?}")))
    };
    let ty = field("type")?
        .as_str()
        .ok_or_else(|| bad(path, "\"type\" is not a string"))?;
    let dist = match ty {
        "histogram" => {
            let bins = meta
                .pointer("/distribution/hist_nb_bins")
                .and_then(Value::as_u64)
                .ok_or_else(|| bad(path, "histogram without distribution.hist_nb_bins"))?;
            DistKind::parse(&format!("histogram-{bins}"))
                .ok_or_else(|| bad(path, format!("{bins} bins is out of range")))?
        }
        other => DistKind::parse(other).ok_or_else(|| {
            bad(path, format!("type {other:?} is not histogram, gaussian, layer-gaussian or activation-ranges"))
        })?,
    };
    let extractor = field("feature_extractor_name")?
        .as_str()
        .ok_or_else(|| bad(path, "\"feature_extractor_name\" is not a string"))?;
    let images = field("num_images")?
        .as_u64()
        .ok_or_else(|| bad(path, "\"num_images\" is not a non-negative integer"))?;
    let list = field("neurons_list")?
        .as_object()
        .ok_or_else(|| bad(path, "\"neurons_list\" is not an object"))?;
    let mut layers = Vec::with_capacity(list.len());
    for (name, n) in list {
        let neurons = n
            .as_u64()
            .filter(|n| *n > 0 && *n <= u32::MAX as u64)
            .ok_or_else(|| {
                bad(
                    path,
                    format!("neurons_list.{name} is not a positive integer"),
                )
            })?;
        layers.push(LayerSpec {
            name: name.clone(),
            neurons: neurons as u32,
        });
    }
    let mut space = SpaceConfig::unpinned(extractor, layers, dist);
    if matches!(dist, DistKind::Histogram { .. }) {
        if let Some(r) = meta
            .pointer("/extraction_settings/hist_range")
            .and_then(Value::as_array)
        {
            if let (Some(lo), Some(hi)) = (
                r.first().and_then(Value::as_f64),
                r.get(1).and_then(Value::as_f64),
            ) {
                space.hist_range = Some([lo, hi]);
            }
        }
        if let Some(s) = meta
            .pointer("/extraction_settings/range_scale_for_norm_params")
            .and_then(Value::as_f64)
        {
            space.range_scale = Some(s);
        }
    }
    space.validate().map_err(|e| bad(path, e.to_string()))?;
    Ok((space, images))
}

/// A reference pair encoded in memory: the `.json` and `.npz` bytes.
pub struct EncodedPair {
    pub json: Vec<u8>,
    pub npz: Vec<u8>,
}

/// Encodes `dna` as a reference pair; `annotations["reference.metadata"]`, when present,
/// supplies the json's other fields. `path` only names the files in errors; nothing is
/// written (the engine writes the pair, `engine::export_reference`).
pub fn encode_pair(
    dna: &Dna,
    annotations: &BTreeMap<String, String>,
    path: &Path,
) -> Result<EncodedPair, ReferenceError> {
    let (_, npz_path) = pair_paths(path);
    let mut meta: Map<String, Value> = annotations
        .get("reference.metadata")
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default();
    let s = &dna.space;
    meta.entry("time_of_compute").or_insert(json!(""));
    meta.entry("vdna_version").or_insert(json!("0.1.1"));
    let dist_meta = match s.dist {
        DistKind::Histogram { bins } => json!({ "hist_nb_bins": bins }),
        _ => json!({}),
    };
    meta.insert("distribution".into(), dist_meta);
    meta.insert("type".into(), json!(s.dist.type_name()));
    meta.insert("name".into(), json!(s.dist.name()));
    meta.entry("data_settings").or_insert_with(|| json!({}));
    let es = meta
        .entry("extraction_settings")
        .or_insert_with(|| json!({}));
    if let (Some(obj), DistKind::Histogram { bins }) = (es.as_object_mut(), s.dist) {
        obj.insert("hist_nb_bins".into(), json!(bins));
        obj.insert(
            "hist_range".into(),
            json!(s.hist_range.unwrap_or([-1.0, 1.0])),
        );
        obj.insert(
            "range_scale_for_norm_params".into(),
            json!(s.range_scale.unwrap_or(1.2)),
        );
    }
    meta.insert("num_images".into(), json!(dna.images));
    meta.insert("feature_extractor_name".into(), json!(s.extractor.name));
    let list: Map<String, Value> = s
        .layers
        .iter()
        .map(|l| (l.name.clone(), json!(l.neurons)))
        .collect();
    meta.insert("neurons_list".into(), Value::Object(list));

    let mut members: Vec<(String, Vec<u8>)> = Vec::new();
    for (spec, layer) in s.layers.iter().zip(&dna.layers) {
        let n = spec.neurons as usize;
        match layer {
            LayerData::Histogram { bins, counts } => {
                let mut body = Vec::with_capacity(counts.len() * 4);
                for c in counts {
                    let v = i32::try_from(*c).map_err(|_| {
                        bad(
                            &npz_path,
                            format!(
                                "layer {}: a count of {c} does not fit the reference's int32",
                                spec.name
                            ),
                        )
                    })?;
                    body.extend_from_slice(&v.to_le_bytes());
                }
                members.push((spec.name.clone(), npy("<i4", &[n, *bins as usize], &body)));
            }
            LayerData::Gaussian { mean, var } => {
                members.push((
                    format!("mu-{}", spec.name),
                    npy("<f4", &[n], &f32_bytes(mean)),
                ));
                members.push((
                    format!("var-{}", spec.name),
                    npy("<f4", &[n], &f32_bytes(var)),
                ));
            }
            LayerData::LayerGaussian { mean, cov } => {
                members.push((
                    format!("mu-{}", spec.name),
                    npy("<f8", &[n], &f64_bytes(mean)),
                ));
                members.push((
                    format!("sigma-{}", spec.name),
                    npy("<f8", &[n, n], &f64_bytes(cov)),
                ));
            }
            LayerData::Ranges { min, max } => {
                members.push((
                    format!("min-{}", spec.name),
                    npy("<f4", &[n], &f32_bytes(min)),
                ));
                members.push((
                    format!("max-{}", spec.name),
                    npy("<f4", &[n], &f32_bytes(max)),
                ));
            }
        }
    }
    let json = serde_json::to_vec_pretty(&Value::Object(meta)).unwrap_or_default();
    let mut zip_bytes = std::io::Cursor::new(Vec::new());
    {
        let mut w = zip::ZipWriter::new(&mut zip_bytes);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .large_file(false);
        for (name, body) in &members {
            w.start_file(format!("{name}.npy"), opts)
                .and_then(|_| w.write_all(body).map_err(zip::result::ZipError::Io))
                .map_err(|e| bad(&npz_path, format!("writing member {name}: {e}")))?;
        }
        w.finish()
            .map_err(|e| bad(&npz_path, format!("finishing the archive: {e}")))?;
    }
    Ok(EncodedPair {
        json,
        npz: zip_bytes.into_inner(),
    })
}

fn f32_bytes(v: &[f64]) -> Vec<u8> {
    v.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect()
}

fn f64_bytes(v: &[f64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// An `.npy` v1.0 file: magic, version, header dict padded to a 64-byte boundary, data.
fn npy(descr: &str, shape: &[usize], body: &[u8]) -> Vec<u8> {
    let shape_s = match shape {
        [n] => format!("({n},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_s}, }}");
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + body.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(body);
    out
}

/// A parsed numeric npy array.
pub struct NpyArray {
    pub dtype: NpyDtype,
    pub shape: Vec<usize>,
    /// Little-endian element bytes in C order.
    pub data: Vec<u8>,
}

/// Numeric dtypes accepted from npz members.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NpyDtype {
    I4,
    I8,
    U4,
    U8,
    F4,
    F8,
}

impl NpyDtype {
    fn parse(descr: &str) -> Option<NpyDtype> {
        Some(match descr {
            "<i4" => NpyDtype::I4,
            "<i8" => NpyDtype::I8,
            "<u4" => NpyDtype::U4,
            "<u8" => NpyDtype::U8,
            "<f4" => NpyDtype::F4,
            "<f8" => NpyDtype::F8,
            _ => return None,
        })
    }

    fn size(self) -> usize {
        match self {
            NpyDtype::I4 | NpyDtype::U4 | NpyDtype::F4 => 4,
            _ => 8,
        }
    }
}

impl NpyArray {
    fn words(&self) -> impl Iterator<Item = &[u8]> {
        self.data.chunks_exact(self.dtype.size())
    }

    /// Integer counts as u32; refuses floats, negatives and values over 2^32-1.
    pub fn to_u32(&self) -> Result<Vec<u32>, String> {
        let conv = |x: i128| u32::try_from(x).map_err(|_| format!("count {x} is not in 0..2^32"));
        self.words()
            .map(|w| match self.dtype {
                NpyDtype::I4 => conv(i32::from_le_bytes([w[0], w[1], w[2], w[3]]) as i128),
                NpyDtype::U4 => Ok(u32::from_le_bytes([w[0], w[1], w[2], w[3]])),
                NpyDtype::I8 => conv(i64::from_le_bytes(w.try_into().unwrap_or_default()) as i128),
                NpyDtype::U8 => conv(u64::from_le_bytes(w.try_into().unwrap_or_default()) as i128),
                NpyDtype::F4 | NpyDtype::F8 => Err(format!(
                    "dtype {:?} where integer counts are expected",
                    self.dtype
                )),
            })
            .collect()
    }

    /// Values as f64 (exact for every accepted dtype but 64-bit integers past 2^53).
    pub fn to_f64(&self) -> Vec<f64> {
        self.words()
            .map(|w| match self.dtype {
                NpyDtype::F4 => f32::from_le_bytes([w[0], w[1], w[2], w[3]]) as f64,
                NpyDtype::F8 => f64::from_le_bytes(w.try_into().unwrap_or_default()),
                NpyDtype::I4 => i32::from_le_bytes([w[0], w[1], w[2], w[3]]) as f64,
                NpyDtype::U4 => u32::from_le_bytes([w[0], w[1], w[2], w[3]]) as f64,
                NpyDtype::I8 => i64::from_le_bytes(w.try_into().unwrap_or_default()) as f64,
                NpyDtype::U8 => u64::from_le_bytes(w.try_into().unwrap_or_default()) as f64,
            })
            .collect()
    }
}

/// Parses one `.npy` member. Object arrays and other dtypes are refused.
pub fn parse_npy(bytes: &[u8]) -> Result<NpyArray, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not an .npy array (bad magic)".into());
    }
    let (hlen, start): (usize, usize) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!(".npy format version {v} is not supported")),
    };
    let header = bytes
        .get(start..start.saturating_add(hlen))
        .ok_or("truncated .npy header")?;
    let header = std::str::from_utf8(header).map_err(|_| "non-UTF-8 .npy header")?;
    let descr = dict_value(header, "descr").ok_or("header without descr")?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    let dtype = NpyDtype::parse(descr)
        .ok_or_else(|| format!("dtype {descr:?} is not one of <i4 <i8 <u4 <u8 <f4 <f8"))?;
    let fortran = dict_value(header, "fortran_order").ok_or("header without fortran_order")?;
    let shape_s = dict_value(header, "shape").ok_or("header without shape")?;
    let shape: Vec<usize> = shape_s
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| format!("bad shape {shape_s}"))
        })
        .collect::<Result<_, _>>()?;
    let count = shape
        .iter()
        .try_fold(1usize, |a, b| a.checked_mul(*b))
        .ok_or("shape overflows")?;
    let body = &bytes[start + hlen..];
    if Some(body.len()) != count.checked_mul(dtype.size()) {
        return Err(format!(
            "shape {shape:?} needs {count} values, the data holds {} bytes",
            body.len()
        ));
    }
    let mut data = body.to_vec();
    if fortran.trim() == "True" && shape.len() == 2 {
        let (r, c, s) = (shape[0], shape[1], dtype.size());
        let mut t = vec![0u8; data.len()];
        for i in 0..r {
            for j in 0..c {
                t[(i * c + j) * s..(i * c + j + 1) * s]
                    .copy_from_slice(&data[(j * r + i) * s..(j * r + i + 1) * s]);
            }
        }
        data = t;
    } else if fortran.trim() != "False" && shape.len() > 1 {
        return Err("fortran_order arrays of more than 2 dimensions are not supported".into());
    }
    Ok(NpyArray { dtype, shape, data })
}

/// Extracts the raw value of `key` from a Python dict literal such as npy headers hold.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let pos = header
        .find(&format!("'{key}'"))
        .or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = header[pos + key.len() + 2..]
        .trim_start()
        .strip_prefix(':')?
        .trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')')? + 1
    } else {
        rest.find([',', '}'])?
    };
    Some(rest[..end].trim())
}

/// An open npz archive.
struct Npz<R: Read + Seek> {
    zip: zip::ZipArchive<R>,
    path: PathBuf,
}

impl<R: Read + Seek> Npz<R> {
    fn open(r: R, path: &Path) -> Result<Self, ReferenceError> {
        let zip = zip::ZipArchive::new(r)
            .map_err(|e| bad(path, format!("not a valid .npz (zip) archive: {e}")))?;
        Ok(Npz {
            zip,
            path: path.to_path_buf(),
        })
    }

    /// Reads member `<name>.npy` and checks its shape.
    fn array(&mut self, name: &str, shape: &[usize]) -> Result<NpyArray, ReferenceError> {
        let member = format!("{name}.npy");
        let mut f = self.zip.by_name(&member).map_err(|_| {
            bad(
                &self.path,
                format!("missing member {member} (does the .json's neurons_list match the .npz?)"),
            )
        })?;
        if f.size() > MAX_MEMBER {
            return Err(bad(
                &self.path,
                format!("member {member} declares {} bytes", f.size()),
            ));
        }
        let mut bytes = Vec::with_capacity(f.size() as usize);
        (&mut f)
            .take(MAX_MEMBER + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| {
                bad(
                    &self.path,
                    format!("member {member} does not decompress: {e}"),
                )
            })?;
        let a = parse_npy(&bytes).map_err(|d| bad(&self.path, format!("member {member}: {d}")))?;
        if a.shape != shape {
            return Err(bad(
                &self.path,
                format!(
                    "member {member} has shape {:?}, neurons_list says {:?}",
                    a.shape, shape
                ),
            ));
        }
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_headers_are_64_byte_aligned_and_parse_back() {
        let body: Vec<u8> = (0..6i32).flat_map(|x| x.to_le_bytes()).collect();
        let b = npy("<i4", &[2, 3], &body);
        let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0);
        let a = parse_npy(&b).unwrap();
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.to_u32().unwrap(), vec![0, 1, 2, 3, 4, 5]);
        let b1 = npy("<f4", &[3], &f32_bytes(&[1.5, -2.0, 0.25]));
        assert_eq!(parse_npy(&b1).unwrap().to_f64(), vec![1.5, -2.0, 0.25]);
    }

    #[test]
    fn object_arrays_and_negative_counts_are_refused() {
        let mut h = npy("<i4", &[1], &(-3i32).to_le_bytes());
        assert!(parse_npy(&h).unwrap().to_u32().is_err());
        let pos = h.windows(3).position(|w| w == b"<i4").unwrap();
        h[pos..pos + 3].copy_from_slice(b"|O ");
        assert!(parse_npy(&h).is_err());
    }

    #[test]
    fn fortran_order_is_transposed() {
        // Column-major [[1,2,3],[4,5,6]] is stored 1,4,2,5,3,6.
        let body: Vec<u8> = [1i32, 4, 2, 5, 3, 6]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let mut b = npy("<i4", &[2, 3], &body);
        let at = b.windows(5).position(|w| w == b"False").unwrap();
        b[at..at + 5].copy_from_slice(b"True ");
        let a = parse_npy(&b).unwrap();
        assert_eq!(a.to_u32().unwrap(), vec![1, 2, 3, 4, 5, 6]);
    }
}
