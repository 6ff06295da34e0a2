//! VGG16 as the reference's `vgg16`: torchvision's `features` stack (13 3x3 convolutions
//! with bias, zero padding 1, ReLU; 2x2 stride-2 max-pooling before `conv2_1`, `conv3_1`,
//! `conv4_1`, `conv5_1`), ImageNet mean / std at 224x224. Records the 13 ReLU outputs
//! `relu_1_1` .. `relu_5_3` (64, 64, 128, 128, 256 x 3, 512 x 6 neurons with torchvision's
//! weights); the classifier is not used.
//!
//! Weights: torchvision's state dict (`features.{0,2,5,7,10,12,14,17,19,21,24,26,28}.
//! {weight,bias}`); channel counts are read from the weight shapes (so reduced-width test
//! networks load too), everything else in the file is ignored.
//!
//! Owns: the architecture and its weight names. Must not: read files or images.

use candle_core::{Result, Tensor};

use super::ops::{max_pool, Act, Conv, Pad};
use super::vit::dims_of;
use super::weights::Params;
use super::ExtractError;
use crate::format::LayerSpec;

pub const INPUT_SIZE: usize = 224;
pub const MEAN: [f64; 3] = [0.485, 0.456, 0.406];
pub const STD: [f64; 3] = [0.229, 0.224, 0.225];
/// `(index in features, layer name, max-pool before it)`.
const CONVS: [(usize, &str, bool); 13] = [
    (0, "relu_1_1", false),
    (2, "relu_1_2", false),
    (5, "relu_2_1", true),
    (7, "relu_2_2", false),
    (10, "relu_3_1", true),
    (12, "relu_3_2", false),
    (14, "relu_3_3", false),
    (17, "relu_4_1", true),
    (19, "relu_4_2", false),
    (21, "relu_4_3", false),
    (24, "relu_5_1", true),
    (26, "relu_5_2", false),
    (28, "relu_5_3", false),
];

pub struct Vgg16 {
    convs: Vec<(Conv, bool)>,
    layers: Vec<LayerSpec>,
}

impl Vgg16 {
    pub fn load(p: &mut Params) -> std::result::Result<Vgg16, ExtractError> {
        p.detect_prefix("features.0.weight");
        let origin = p.origin().to_string();
        let mut cin = 3;
        let mut convs = Vec::with_capacity(CONVS.len());
        let mut layers = Vec::with_capacity(CONVS.len());
        for (i, name, pool) in CONVS {
            let wn = format!("features.{i}.weight");
            let d = dims_of(p, &wn)?;
            let cout = match d[..] {
                [o, c, 3, 3] if c == cin && o > 0 => o,
                _ => {
                    return Err(ExtractError::Weights {
                        origin,
                        msg: format!("tensor {wn} has shape {d:?}, expected [Cout, {cin}, 3, 3]"),
                    })
                }
            };
            let w = p.get(&wn, &[cout, cin, 3, 3])?;
            let b = p.get(&format!("features.{i}.bias"), &[cout])?;
            let conv = Conv::with_bias(&w, [cout, cin, 3, 3], Some(b), 1).map_err(|e| {
                ExtractError::Weights {
                    origin: origin.clone(),
                    msg: e.to_string(),
                }
            })?;
            convs.push((conv, pool));
            layers.push(LayerSpec {
                name: name.into(),
                neurons: cout as u32,
            });
            cin = cout;
        }
        Ok(Vgg16 { convs, layers })
    }

    pub fn layers(&self) -> &[LayerSpec] {
        &self.layers
    }

    /// Runs a normalised NHWC batch; returns the 13 ReLU outputs, NHWC.
    pub fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let mut out: Vec<Tensor> = Vec::with_capacity(self.convs.len());
        for (conv, pool) in &self.convs {
            let input = match out.last() {
                None => x.clone(),
                Some(prev) if *pool => max_pool(prev, 2, 2, 0)?,
                Some(prev) => prev.clone(),
            };
            out.push(conv.forward(&input, Pad::same(1), Act::Relu)?);
        }
        Ok(out)
    }
}
