//! ResNet-50 backbone as the reference's `rand_resnet50`: Bottleneck blocks [3, 4, 6, 3]
//! (stride on the 3x3 conv), a zero pad of 1 in front of a 7x7 stride-2 conv with padding
//! 2 (3 in all on each side), batch-norm eps 1e-5, 3x3 stride-2 max-pool, ImageNet
//! mean / std at 224x224. Records the 16 bottleneck outputs `layer1_0` .. `layer4_2`.
//!
//! Weights come from a file in the torch state-dict layout (`conv1.weight`, `bn1.*`,
//! `layer1.0.conv1.weight`, `layer1.0.downsample.0.weight`, ...) or from the portable
//! seeded initialisation [`seeded`]: Kaiming normal (fan_out, ReLU gain) for every conv,
//! batch-norm weight 1 and bias 0, running mean 0 and variance 1.
//!
//! Owns: the architecture and its weight names. Must not: read files or images.

use std::collections::HashMap;

use candle_core::{Result, Tensor};

use super::ops::{max_pool, Act, BatchNorm, Conv, Pad};
use super::weights::{kaiming_normal_fan_out, tensor, Params};
use super::ExtractError;
use crate::format::LayerSpec;

const BN_EPS: f64 = 1e-5;
pub const INPUT_SIZE: usize = 224;
pub const MEAN: [f64; 3] = [0.485, 0.456, 0.406];
pub const STD: [f64; 3] = [0.229, 0.224, 0.225];
/// Blocks per stage and the stages' bottleneck widths.
const STAGES: [(usize, usize); 4] = [(3, 64), (4, 128), (6, 256), (3, 512)];
const EXPANSION: usize = 4;

struct Bottleneck {
    conv1: Conv,
    conv2: Conv,
    conv3: Conv,
    downsample: Option<Conv>,
}

pub struct ResNet50 {
    stem: Conv,
    blocks: Vec<Bottleneck>,
    layers: Vec<LayerSpec>,
}

/// Every conv of the backbone as `(state-dict name, [Cout, Cin, k, k])`, with the name of
/// its batch-norm, in forward order.
fn conv_list() -> Vec<(String, [usize; 4], String)> {
    let mut v = vec![("conv1".to_string(), [64, 3, 7, 7], "bn1".to_string())];
    let mut cin = 64;
    for (s, &(n, width)) in STAGES.iter().enumerate() {
        for b in 0..n {
            let pre = format!("layer{}.{b}", s + 1);
            let cout = width * EXPANSION;
            v.push((
                format!("{pre}.conv1"),
                [width, cin, 1, 1],
                format!("{pre}.bn1"),
            ));
            v.push((
                format!("{pre}.conv2"),
                [width, width, 3, 3],
                format!("{pre}.bn2"),
            ));
            v.push((
                format!("{pre}.conv3"),
                [cout, width, 1, 1],
                format!("{pre}.bn3"),
            ));
            if b == 0 {
                v.push((
                    format!("{pre}.downsample.0"),
                    [cout, cin, 1, 1],
                    format!("{pre}.downsample.1"),
                ));
            }
            cin = cout;
        }
    }
    v
}

/// The portable seeded initialisation as a state dict (see the module docs). Each conv
/// weight has its own stream `seed ^ fnv1a64(name)`, so the values do not depend on the
/// order tensors are made in.
pub fn seeded(seed: u64) -> HashMap<String, Tensor> {
    let mut m = HashMap::new();
    for (conv, dims, bn) in conv_list() {
        let name = format!("{conv}.weight");
        let w = kaiming_normal_fan_out(seed, &name, dims);
        m.insert(name, tensor(w, &dims));
        let c = dims[0];
        for (suffix, v) in [
            ("weight", 1.0),
            ("bias", 0.0),
            ("running_mean", 0.0),
            ("running_var", 1.0),
        ] {
            m.insert(format!("{bn}.{suffix}"), tensor(vec![v; c], &[c]));
        }
    }
    m
}

/// The seeded initialisation as safetensors bytes (torch state-dict names), so that the
/// same network can be loaded elsewhere.
pub fn seeded_safetensors(seed: u64) -> std::result::Result<Vec<u8>, ExtractError> {
    let map = seeded(seed);
    let mut names: Vec<&String> = map.keys().collect();
    names.sort();
    let pairs: Vec<(&str, &Tensor)> = names.iter().map(|n| (n.as_str(), &map[*n])).collect();
    safetensors::serialize(pairs, None).map_err(|e| ExtractError::Weights {
        origin: format!("rand_resnet50 seed {seed}"),
        msg: e.to_string(),
    })
}

fn fold(
    p: &mut Params,
    conv: &str,
    dims: [usize; 4],
    bn: &str,
    stride: usize,
) -> std::result::Result<Conv, ExtractError> {
    let w = p.get(&format!("{conv}.weight"), &dims)?;
    let c = dims[0];
    let bn = BatchNorm {
        gamma: p.get(&format!("{bn}.weight"), &[c])?,
        beta: p.get(&format!("{bn}.bias"), &[c])?,
        mean: p.get(&format!("{bn}.running_mean"), &[c])?,
        var: p.get(&format!("{bn}.running_var"), &[c])?,
        eps: BN_EPS,
    };
    Conv::fold(&w, dims, &bn, stride).map_err(|e| ExtractError::Weights {
        origin: "rand_resnet50".into(),
        msg: e.to_string(),
    })
}

impl ResNet50 {
    pub fn load(p: &mut Params) -> std::result::Result<ResNet50, ExtractError> {
        p.detect_prefix("layer1.0.conv1.weight");
        let convs = conv_list();
        let mut it = convs.iter();
        let mut next = |p: &mut Params, stride: usize| {
            let (c, d, b) = it.next().expect("conv list covers the architecture");
            fold(p, c, *d, b, stride)
        };
        let stem = next(p, 2)?;
        let mut blocks = Vec::new();
        let mut layers = Vec::new();
        for (s, &(n, width)) in STAGES.iter().enumerate() {
            for b in 0..n {
                let stride = if s > 0 && b == 0 { 2 } else { 1 };
                let conv1 = next(p, 1)?;
                let conv2 = next(p, stride)?;
                let conv3 = next(p, 1)?;
                let downsample = if b == 0 { Some(next(p, stride)?) } else { None };
                blocks.push(Bottleneck {
                    conv1,
                    conv2,
                    conv3,
                    downsample,
                });
                layers.push(LayerSpec {
                    name: format!("layer{}_{b}", s + 1),
                    neurons: (width * EXPANSION) as u32,
                });
            }
        }
        Ok(ResNet50 {
            stem,
            blocks,
            layers,
        })
    }

    pub fn layers(&self) -> &[LayerSpec] {
        &self.layers
    }

    /// Runs the backbone on a normalised NHWC batch and returns the 16 block outputs.
    pub fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let x = self.stem.forward(x, Pad::same(3), Act::Relu)?;
        let mut x = max_pool(&x, 3, 2, 1)?;
        let mut out = Vec::with_capacity(self.blocks.len());
        for b in &self.blocks {
            let h = b.conv1.forward(&x, Pad::ZERO, Act::Relu)?;
            let h = b.conv2.forward(&h, Pad::same(1), Act::Relu)?;
            let identity = match &b.downsample {
                Some(d) => d.forward(&x, Pad::ZERO, Act::None)?,
                None => x,
            };
            let h = b
                .conv3
                .forward_residual(&h, Pad::ZERO, Some(&identity), Act::Relu)?;
            out.push(h.clone());
            x = h;
        }
        Ok(out)
    }
}
