//! Activation ranges: per-neuron min / max of an extractor's raw activations over a
//! calibration set, used to normalise activations before histogramming. Read and written
//! in the reference's JSON layout (`{"mins_per_neuron": {layer: {"0": v, ...}},
//! "maxs_per_neuron": {...}}`; plain lists per layer are accepted too). The digest is
//! taken over the values, not the text, so reformatting a file keeps its identity.
//!
//! Owns: the ranges file format and its digest. Must not: run networks.

use std::path::Path;

use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use super::accum::Norm;
use super::{ExtractError, ExtractorKind};
use crate::dna::{Dna, LayerData};
use crate::format::{Digest, LayerSpec};

/// The reference's `range_scale_for_norm_params`.
pub const RANGE_SCALE: f64 = 1.2;

/// Ranges shipped with the default extractors (see assets/ranges/README.md).
static EMBEDDED_EFFICIENTNET_LITE0: &str =
    include_str!("../../assets/ranges/efficientnet_lite0.json");
static EMBEDDED_RAND_RESNET50: &str = include_str!("../../assets/ranges/rand_resnet50-seed0.json");

/// One layer's name, minima and maxima.
pub type LayerRanges = (String, Vec<f64>, Vec<f64>);

/// Per-layer min / max, in layer order.
#[derive(Clone, Debug, PartialEq)]
pub struct Ranges {
    pub layers: Vec<LayerRanges>,
}

fn values(v: &Value, what: &str) -> Result<Vec<f64>, String> {
    let num = |x: &Value| {
        x.as_f64()
            .ok_or_else(|| format!("{what}: {x} is not a number"))
    };
    match v {
        Value::Array(a) => a.iter().map(num).collect(),
        Value::Object(m) => {
            // Neuron indices as keys "0", "1", ...: order by the index, require all of them.
            let mut out = vec![None; m.len()];
            for (k, x) in m {
                let i: usize = k
                    .parse()
                    .map_err(|_| format!("{what}: key {k:?} is not a neuron index"))?;
                let slot = out.get_mut(i).ok_or_else(|| {
                    format!("{what}: neuron {i} out of range ({} entries)", m.len())
                })?;
                *slot = Some(num(x)?);
            }
            Ok(out.into_iter().map(|x| x.unwrap_or(f64::NAN)).collect())
        }
        _ => Err(format!(
            "{what}: expected a list or an object of neuron values"
        )),
    }
}

impl Ranges {
    /// Parses the reference's JSON layout.
    pub fn from_json(text: &str, origin: &str) -> Result<Ranges, ExtractError> {
        let bad = |msg: String| ExtractError::Ranges {
            origin: origin.into(),
            msg,
        };
        let v: Value = serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let (Some(Value::Object(mins)), Some(Value::Object(maxs))) =
            (v.get("mins_per_neuron"), v.get("maxs_per_neuron"))
        else {
            return Err(bad(
                "expected mins_per_neuron and maxs_per_neuron objects".into()
            ));
        };
        let mut layers = Vec::with_capacity(mins.len());
        for (name, mn) in mins {
            let mx = maxs
                .get(name)
                .ok_or_else(|| bad(format!("layer {name} has mins but no maxs")))?;
            let mn = values(mn, name).map_err(&bad)?;
            let mx = values(mx, name).map_err(&bad)?;
            if mn.len() != mx.len() {
                return Err(bad(format!(
                    "layer {name}: {} mins but {} maxs",
                    mn.len(),
                    mx.len()
                )));
            }
            if mn.iter().chain(&mx).any(|x| !x.is_finite()) {
                return Err(bad(format!("layer {name}: missing or non-finite values")));
            }
            if mn.iter().zip(&mx).any(|(a, b)| a > b) {
                return Err(bad(format!("layer {name}: a min is above its max")));
            }
            layers.push((name.clone(), mn, mx));
        }
        Ok(Ranges { layers })
    }

    pub fn from_file(path: &Path) -> Result<Ranges, ExtractError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ExtractError::Ranges {
            origin: origin.clone(),
            msg: e.to_string(),
        })?;
        Ranges::from_json(&text, &origin)
    }

    /// The reference's layout, neuron indices as string keys.
    pub fn to_json(&self) -> String {
        let side = |pick: fn(&LayerRanges) -> &Vec<f64>| {
            let mut m = Map::new();
            for l in &self.layers {
                let inner: Map<String, Value> = pick(l)
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (i.to_string(), Value::from(*v)))
                    .collect();
                m.insert(l.0.clone(), Value::Object(inner));
            }
            Value::Object(m)
        };
        let mut root = Map::new();
        root.insert("mins_per_neuron".into(), side(|l| &l.1));
        root.insert("maxs_per_neuron".into(), side(|l| &l.2));
        let mut s = serde_json::to_string_pretty(&Value::Object(root)).unwrap_or_default();
        s.push('\n');
        s
    }

    /// From an `activation-ranges` DNA.
    pub fn from_dna(d: &Dna) -> Option<Ranges> {
        let mut layers = Vec::new();
        for (spec, l) in d.space.layers.iter().zip(&d.layers) {
            let LayerData::Ranges { min, max } = l else {
                return None;
            };
            layers.push((spec.name.clone(), min.clone(), max.clone()));
        }
        Some(Ranges { layers })
    }

    /// sha256 over layer names, counts and the f64 values (little-endian).
    pub fn digest(&self) -> Digest {
        let mut h = Sha256::new();
        h.update(b"vdna-db/ranges/v1");
        for (name, mn, mx) in &self.layers {
            h.update((name.len() as u32).to_le_bytes());
            h.update(name.as_bytes());
            h.update((mn.len() as u64).to_le_bytes());
            for v in mn.iter().chain(mx) {
                h.update(v.to_le_bytes());
            }
        }
        Digest(h.finalize().into())
    }

    /// Normalisation parameters for `layers`, checking that every layer is covered with
    /// the right neuron count.
    pub fn norms_for(&self, layers: &[LayerSpec], scale: f64) -> Result<Vec<Norm>, ExtractError> {
        layers
            .iter()
            .map(|l| {
                let (_, mn, mx) = self.layers.iter().find(|r| r.0 == l.name).ok_or_else(|| {
                    ExtractError::Ranges {
                        origin: "ranges".into(),
                        msg: format!(
                            "no ranges for layer {} (compute them with `vdna-db ranges SOURCE --extractor ...`)",
                            l.name
                        ),
                    }
                })?;
                if mn.len() != l.neurons as usize {
                    return Err(ExtractError::Ranges {
                        origin: "ranges".into(),
                        msg: format!("layer {} has {} neurons, the ranges {}", l.name, l.neurons, mn.len()),
                    });
                }
                Ok(Norm::from_ranges(mn, mx, scale))
            })
            .collect()
    }

    /// The ranges shipped for an extractor's default weights.
    pub fn embedded(kind: ExtractorKind) -> Result<Ranges, ExtractError> {
        match kind {
            ExtractorKind::EfficientNetLite0 => Ranges::from_json(
                EMBEDDED_EFFICIENTNET_LITE0,
                "embedded efficientnet_lite0 ranges",
            ),
            ExtractorKind::RandResNet50 => {
                Ranges::from_json(EMBEDDED_RAND_RESNET50, "embedded rand_resnet50 ranges")
            }
            k => Err(ExtractError::Invalid(format!(
                "no activation ranges ship with {}: pass the reference's \
                 activation_ranges.json for its weights with --ranges FILE, or compute them \
                 with `vdna-db ranges SOURCE --extractor {} --weights FILE -o ranges.json`",
                k.name(),
                k.name()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_layout_round_trips_and_digest_ignores_formatting() {
        let r = Ranges {
            layers: vec![
                ("a".into(), vec![-1.5, 0.0], vec![2.0, 0.0]),
                ("b".into(), vec![0.25], vec![7.0]),
            ],
        };
        let j = r.to_json();
        let back = Ranges::from_json(&j, "t").unwrap();
        assert_eq!(back, r);
        let compact: String = j.split_whitespace().collect();
        assert_eq!(
            Ranges::from_json(&compact, "t").unwrap().digest(),
            r.digest()
        );
        let lists = r#"{"mins_per_neuron":{"a":[-1.5,0],"b":[0.25]},"maxs_per_neuron":{"a":[2,0],"b":[7]}}"#;
        assert_eq!(Ranges::from_json(lists, "t").unwrap().digest(), r.digest());
    }

    #[test]
    fn malformed_ranges_are_refused_with_the_layer_named() {
        let e = Ranges::from_json(
            r#"{"mins_per_neuron":{"a":[1]},"maxs_per_neuron":{"a":[0]}}"#,
            "f",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("layer a"), "{e}");
        let e = Ranges::from_json(
            r#"{"mins_per_neuron":{"a":{"1":0}},"maxs_per_neuron":{"a":{"1":0}}}"#,
            "f",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("a"), "{e}");
        assert!(Ranges::from_json("[]", "f").is_err());
    }
}
