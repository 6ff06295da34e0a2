//! Network weights: loading a state dict from safetensors or PyTorch `.pth` (zip) files
//! or embedded bytes, reading named tensors with shape checks, the format-independent
//! weights digest that pins a space, and the portable seeded initialisation.
//!
//! Owns: turning bytes into named f32 arrays. Must not: know any architecture.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use sha2::{Digest as _, Sha256};

use super::ExtractError;
use crate::format::Digest;

/// A loaded state dict plus the running digest of what the model read from it.
pub struct Params {
    map: HashMap<String, Tensor>,
    prefix: String,
    origin: String,
    hasher: Sha256,
}

impl Params {
    /// Reads a safetensors or PyTorch `.pth` (zip) state dict.
    pub fn from_file(path: &Path) -> Result<Params, ExtractError> {
        let origin = path.display().to_string();
        let bad = |msg: String| ExtractError::Weights {
            origin: origin.clone(),
            msg,
        };
        let head = {
            use std::io::Read;
            let mut f = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
            let mut b = [0u8; 8];
            let n = f.read(&mut b).map_err(|e| bad(e.to_string()))?;
            b[..n].to_vec()
        };
        let map: HashMap<String, Tensor> = if head.starts_with(b"PK") {
            // A plain state dict, or one nested in a training checkpoint.
            let mut found = None;
            let mut last_err = None;
            for key in [
                None,
                Some("model_state_dict"),
                Some("state_dict"),
                Some("model"),
            ] {
                match candle_core::pickle::read_all_with_key(path, key) {
                    Ok(v) if !v.is_empty() => {
                        found = Some(v);
                        break;
                    }
                    Ok(_) => {}
                    Err(e) => last_err = Some(e),
                }
            }
            match found {
                Some(v) => v.into_iter().collect(),
                None => {
                    return Err(bad(format!(
                        "no tensors found in this PyTorch zip checkpoint{} (a TorchScript \
                         archive, such as OpenAI's CLIP file, needs converting: \
                         tools/convert_clip.py)",
                        last_err.map(|e| format!(" ({e})")).unwrap_or_default()
                    )))
                }
            }
        } else {
            // A safetensors file starts with its header length, whose first byte may be
            // 0x80 like a pickle's protocol marker: try safetensors first.
            match candle_core::safetensors::load(path, &Device::Cpu) {
                Ok(m) => m,
                Err(_) if head.len() >= 2 && head[0] == 0x80 && (2..=5).contains(&head[1]) => {
                    return Err(bad(
                        "legacy (non-zip) PyTorch serialisation; convert it with \
                         tools/convert_efficientnet_lite0.py or re-save it with torch.save"
                            .into(),
                    ))
                }
                Err(e) => return Err(bad(format!("not a readable safetensors file: {e}"))),
            }
        };
        Ok(Params::new(map, origin))
    }

    /// Reads safetensors bytes (the embedded default weights).
    pub fn from_safetensors_bytes(bytes: &[u8], origin: &str) -> Result<Params, ExtractError> {
        let map = candle_core::safetensors::load_buffer(bytes, &Device::Cpu).map_err(|e| {
            ExtractError::Weights {
                origin: origin.into(),
                msg: e.to_string(),
            }
        })?;
        Ok(Params::new(map, origin.into()))
    }

    /// Wraps tensors made in memory (the seeded initialisation).
    pub fn from_map(map: HashMap<String, Tensor>, origin: &str) -> Params {
        Params::new(map, origin.into())
    }

    fn new(map: HashMap<String, Tensor>, origin: String) -> Params {
        Params {
            map,
            prefix: String::new(),
            origin,
            hasher: Sha256::new(),
        }
    }

    /// Accepts state dicts saved from a wrapper module (`model.conv1.weight`,
    /// `module.backbone.conv1.weight`): finds the prefix in front of `probe`.
    pub fn detect_prefix(&mut self, probe: &str) {
        if self.map.contains_key(probe) {
            return;
        }
        let mut found: Vec<&String> = self
            .map
            .keys()
            .filter(|k| k.ends_with(&format!(".{probe}")))
            .collect();
        found.sort_by_key(|k| k.len());
        if let Some(k) = found.first() {
            self.prefix = k[..k.len() - probe.len()].to_string();
        }
    }

    /// The f32 values of tensor `name`, checked against `dims`; the read is folded into
    /// the weights digest (name, dims, little-endian f32 values), so the digest depends on
    /// what the model uses, not on the file format or on unused entries.
    pub fn get(&mut self, name: &str, dims: &[usize]) -> Result<Vec<f32>, ExtractError> {
        let key = format!("{}{name}", self.prefix);
        let t = self.map.get(&key).ok_or_else(|| ExtractError::Weights {
            origin: self.origin.clone(),
            msg: format!("missing tensor {key} (is this the right architecture?)"),
        })?;
        if t.dims() != dims {
            return Err(ExtractError::Weights {
                origin: self.origin.clone(),
                msg: format!("tensor {key} has shape {:?}, expected {dims:?}", t.dims()),
            });
        }
        let v = t
            .to_dtype(DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| ExtractError::Weights {
                origin: self.origin.clone(),
                msg: format!("tensor {key}: {e}"),
            })?;
        self.hasher.update((name.len() as u32).to_le_bytes());
        self.hasher.update(name.as_bytes());
        self.hasher.update((dims.len() as u32).to_le_bytes());
        for d in dims {
            self.hasher.update((*d as u64).to_le_bytes());
        }
        for x in &v {
            self.hasher.update(x.to_le_bytes());
        }
        Ok(v)
    }

    /// The shape of tensor `name`, if present.
    pub fn dims(&self, name: &str) -> Option<Vec<usize>> {
        self.map
            .get(&format!("{}{name}", self.prefix))
            .map(|t| t.dims().to_vec())
    }

    /// Where the weights came from, for messages.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The digest of everything read so far.
    pub fn digest(&self) -> Digest {
        Digest(self.hasher.clone().finalize().into())
    }
}

/// 64-bit FNV-1a, used to give each tensor of a seeded initialisation its own stream.
fn fnv1a64(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Natural logarithm from IEEE basic operations only (no platform libm), so that the
/// seeded initialisation is bit-identical on every machine. `x` must be finite and > 0.
fn portable_ln(x: f64) -> f64 {
    // x = m * 2^e with m in [sqrt(1/2), sqrt(2)).
    let bits = x.to_bits();
    let mut e = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mut m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000);
    if m > std::f64::consts::SQRT_2 {
        m /= 2.0;
        e += 1;
    }
    // ln m = 2 atanh(z), z = (m-1)/(m+1), |z| < 0.172: the series converges fast.
    let z = (m - 1.0) / (m + 1.0);
    let z2 = z * z;
    let mut term = z;
    let mut sum = 0.0;
    let mut k = 1.0;
    for _ in 0..30 {
        sum += term / k;
        term *= z2;
        k += 2.0;
    }
    2.0 * sum + e as f64 * std::f64::consts::LN_2
}

/// A standard normal stream from SplitMix64 by Marsaglia's polar method, using only
/// correctly rounded IEEE operations and [`portable_ln`].
pub struct PortableNormal {
    rng: crate::rng::Rng,
    spare: Option<f64>,
}

impl PortableNormal {
    pub fn new(seed: u64) -> PortableNormal {
        PortableNormal {
            rng: crate::rng::Rng::new(seed),
            spare: None,
        }
    }

    pub fn sample(&mut self) -> f64 {
        if let Some(s) = self.spare.take() {
            return s;
        }
        loop {
            let u = self.rng.f64() * 2.0 - 1.0;
            let v = self.rng.f64() * 2.0 - 1.0;
            let s = u * u + v * v;
            if s > 0.0 && s < 1.0 {
                let f = (-2.0 * portable_ln(s) / s).sqrt();
                self.spare = Some(v * f);
                return u * f;
            }
        }
    }
}

/// Kaiming-normal (fan_out, ReLU gain) values for a conv weight of PyTorch shape
/// `(Cout, Cin, k, k)`: `N(0, 2 / (Cout k k))`, stream seeded by `seed ^ fnv1a64(name)`,
/// each value computed in f64 and rounded once to f32.
pub fn kaiming_normal_fan_out(seed: u64, name: &str, dims: [usize; 4]) -> Vec<f32> {
    let fan_out = (dims[0] * dims[2] * dims[3]) as f64;
    let std = (2.0 / fan_out).sqrt();
    let mut g = PortableNormal::new(seed ^ fnv1a64(name));
    (0..dims.iter().product::<usize>())
        .map(|_| (g.sample() * std) as f32)
        .collect()
}

/// Builds a tensor map entry.
pub fn tensor(v: Vec<f32>, dims: &[usize]) -> Tensor {
    // Shapes are built by the caller from constants; a mismatch is a programming error
    // caught by every test that builds a seeded model.
    Tensor::from_vec(v, dims, &Device::Cpu).expect("seeded tensor shape")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/extract")
            .join(name)
    }

    #[test]
    fn pth_checkpoints_load_nested_or_prefixed() {
        for f in ["tiny-checkpoint.pth", "tiny-state-dict.pth"] {
            let mut p = Params::from_file(&fixture(f)).unwrap();
            p.detect_prefix("conv1.weight");
            let w = p.get("conv1.weight", &[2, 3]).unwrap();
            assert_eq!(w, vec![0.0, 0.25, 0.5, 0.75, 1.0, 1.25], "{f}");
            assert_eq!(p.get("bn1.bias", &[2]).unwrap(), vec![0.5, -1.5], "{f}");
            let e = p.get("bn1.bias", &[3]).unwrap_err().to_string();
            assert!(e.contains("bn1.bias") && e.contains("[2]"), "{e}");
        }
        let e = Params::from_file(&fixture("README.md"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("README.md"), "{e}");
    }

    /// Regression: a safetensors header length whose low byte is 0x80 (the embedded
    /// efficientnet_lite0 file's) was taken for a legacy pickle.
    #[test]
    fn safetensors_whose_first_byte_is_0x80_load() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.safetensors");
        std::fs::write(&p, crate::extract::efficientnet::EMBEDDED_WEIGHTS).unwrap();
        assert_eq!(crate::extract::efficientnet::EMBEDDED_WEIGHTS[0], 0x80);
        let mut a = Params::from_file(&p).unwrap();
        let mut b = Params::from_safetensors_bytes(
            crate::extract::efficientnet::EMBEDDED_WEIGHTS,
            "embedded",
        )
        .unwrap();
        let d = a.dims("_conv_stem.weight").unwrap();
        assert_eq!(
            a.get("_conv_stem.weight", &d).unwrap(),
            b.get("_conv_stem.weight", &d).unwrap()
        );
        std::fs::write(&p, [0x80, 0x02, b'}', b'q', 0, 0, 0, 0, 0, 0]).unwrap();
        let e = Params::from_file(&p).err().unwrap().to_string();
        assert!(e.contains("legacy"), "{e}");
    }

    #[test]
    fn portable_ln_agrees_with_libm() {
        let mut r = crate::rng::Rng::new(7);
        for _ in 0..10_000 {
            let x = r.f64().max(1e-300);
            let (a, b) = (portable_ln(x), x.ln());
            assert!(
                (a - b).abs() <= 4.0 * f64::EPSILON * b.abs().max(1.0),
                "{x}: {a} vs {b}"
            );
        }
        assert_eq!(portable_ln(1.0), 0.0);
    }

    #[test]
    fn portable_normal_has_unit_moments() {
        let mut g = PortableNormal::new(1);
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| g.sample()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        // Standard errors: 1/sqrt(n) = 0.0022 for the mean, sqrt(2/n) = 0.0032 for the variance.
        assert!(mean.abs() < 0.011, "{mean}");
        assert!((var - 1.0).abs() < 0.016, "{var}");
    }

    #[test]
    fn kaiming_streams_depend_on_the_name_and_seed_only() {
        let a = kaiming_normal_fan_out(0, "conv1.weight", [4, 3, 3, 3]);
        let b = kaiming_normal_fan_out(0, "conv1.weight", [4, 3, 3, 3]);
        let c = kaiming_normal_fan_out(0, "layer1.0.conv1.weight", [4, 3, 3, 3]);
        let d = kaiming_normal_fan_out(1, "conv1.weight", [4, 3, 3, 3]);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }
}
