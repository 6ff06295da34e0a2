//! EfficientNet-Lite0 (ImageNet weights, the embedded default extractor).
//!
//! Lite0 is EfficientNet-B0 made quantisation-friendly: ReLU6 everywhere instead of swish,
//! no squeeze-excite, fixed stem and head. Semantics follow the TensorFlow original:
//! SAME padding (the extra pixel of a stride-2 window goes bottom / right), batch-norm eps
//! 1e-3, input `(pixel - 127) / 128` at 224x224. Records the 16 block outputs `blocks_0`
//! .. `blocks_15` and the head `head` (1280 channels).
//!
//! Owns: the architecture and its weight names. Must not: read files or images.

use candle_core::{Result, Tensor};

use super::ops::{global_avg_pool, Act, BatchNorm, Conv, DepthwiseConv, Pad};
use super::weights::Params;
use super::ExtractError;
use crate::format::LayerSpec;

/// The embedded default weights (see assets/weights/NOTICE.md for their origin).
pub static EMBEDDED_WEIGHTS: &[u8] =
    include_bytes!("../../assets/weights/efficientnet_lite0.safetensors");

/// Stride of each of the 16 blocks (stages of B0: 1, 2, 2, 3, 3, 4, 1 blocks).
const STRIDES: [usize; 16] = [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1];
const BN_EPS: f64 = 1e-3;
pub const INPUT_SIZE: usize = 224;
/// `(pixel/255 - mean) / std` with these equals `(pixel - 127) / 128`.
pub const MEAN: [f64; 3] = [127.0 / 255.0; 3];
pub const STD: [f64; 3] = [128.0 / 255.0; 3];

struct Block {
    expand: Option<Conv>,
    depthwise: DepthwiseConv,
    project: Conv,
    skip: bool,
}

pub struct EfficientNetLite0 {
    stem: Conv,
    blocks: Vec<Block>,
    head: Conv,
    fc_w: Tensor,
    fc_b: Tensor,
    layers: Vec<LayerSpec>,
}

fn bn(p: &mut Params, name: &str, c: usize) -> std::result::Result<BatchNorm, ExtractError> {
    Ok(BatchNorm {
        gamma: p.get(&format!("{name}.weight"), &[c])?,
        beta: p.get(&format!("{name}.bias"), &[c])?,
        mean: p.get(&format!("{name}.running_mean"), &[c])?,
        var: p.get(&format!("{name}.running_var"), &[c])?,
        eps: BN_EPS,
    })
}

/// Reads a conv weight whose shape is taken from the file (checked for rank 4), with
/// its batch-norm, and folds them.
fn conv_bn(
    p: &mut Params,
    conv: &str,
    bn_name: &str,
) -> std::result::Result<(Vec<f32>, [usize; 4], BatchNorm), ExtractError> {
    let name = format!("{conv}.weight");
    let dims = p.dims(&name).unwrap_or_default();
    let [o, i, kh, kw] = dims[..] else {
        return Err(ExtractError::Weights {
            origin: "efficientnet_lite0".into(),
            msg: format!("missing or non-4d tensor {name}"),
        });
    };
    let w = p.get(&name, &dims)?;
    let b = bn(p, bn_name, o)?;
    Ok((w, [o, i, kh, kw], b))
}

fn fold_err(e: candle_core::Error) -> ExtractError {
    ExtractError::Weights {
        origin: "efficientnet_lite0".into(),
        msg: e.to_string(),
    }
}

impl EfficientNetLite0 {
    /// Builds the network from a state dict in the layout of the PyTorch port
    /// (`_conv_stem`, `_bn0`, `_blocks.N.*`, `_conv_head`, `_bn1`, `_fc`).
    pub fn load(p: &mut Params) -> std::result::Result<EfficientNetLite0, ExtractError> {
        p.detect_prefix("_conv_stem.weight");
        let (w, d, b) = conv_bn(p, "_conv_stem", "_bn0")?;
        let stem = Conv::fold(&w, d, &b, 2).map_err(fold_err)?;
        let mut blocks = Vec::with_capacity(16);
        let mut layers = Vec::with_capacity(17);
        let mut cin = stem.cout;
        for (i, &stride) in STRIDES.iter().enumerate() {
            let pre = format!("_blocks.{i}");
            let expand = if p.dims(&format!("{pre}._expand_conv.weight")).is_some() {
                let (w, d, b) = conv_bn(p, &format!("{pre}._expand_conv"), &format!("{pre}._bn0"))?;
                Some(Conv::fold(&w, d, &b, 1).map_err(fold_err)?)
            } else {
                None
            };
            let (w, d, b) = conv_bn(p, &format!("{pre}._depthwise_conv"), &format!("{pre}._bn1"))?;
            let depthwise = DepthwiseConv::fold(&w, d, &b, stride).map_err(fold_err)?;
            let (w, d, b) = conv_bn(p, &format!("{pre}._project_conv"), &format!("{pre}._bn2"))?;
            let project = Conv::fold(&w, d, &b, 1).map_err(fold_err)?;
            let mid = expand.as_ref().map_or(cin, |e| e.cout);
            if expand.as_ref().is_some_and(|e| e.cin != cin)
                || depthwise.channels != mid
                || project.cin != mid
            {
                return Err(ExtractError::Weights {
                    origin: "efficientnet_lite0".into(),
                    msg: format!("block {i}: channel counts do not chain"),
                });
            }
            let cout = project.cout;
            blocks.push(Block {
                skip: stride == 1 && cin == cout,
                expand,
                depthwise,
                project,
            });
            layers.push(LayerSpec {
                name: format!("blocks_{i}"),
                neurons: cout as u32,
            });
            cin = cout;
        }
        let (w, d, b) = conv_bn(p, "_conv_head", "_bn1")?;
        let head = Conv::fold(&w, d, &b, 1).map_err(fold_err)?;
        if head.cin != cin {
            return Err(ExtractError::Weights {
                origin: "efficientnet_lite0".into(),
                msg: "head does not follow the last block".into(),
            });
        }
        layers.push(LayerSpec {
            name: "head".into(),
            neurons: head.cout as u32,
        });
        let classes = p.dims("_fc.weight").map_or(0, |d| d[0]);
        let fc_w = p.get("_fc.weight", &[classes, head.cout])?;
        let fc_b = p.get("_fc.bias", &[classes])?;
        let dev = &candle_core::Device::Cpu;
        let fc_w = Tensor::from_vec(fc_w, (classes, head.cout), dev)
            .and_then(|t| t.t())
            .and_then(|t| t.contiguous())
            .map_err(fold_err)?;
        let fc_b = Tensor::from_vec(fc_b, (1, classes), dev).map_err(fold_err)?;
        Ok(EfficientNetLite0 {
            stem,
            blocks,
            head,
            fc_w,
            fc_b,
            layers,
        })
    }

    pub fn layers(&self) -> &[LayerSpec] {
        &self.layers
    }

    /// Runs the network on a normalised NHWC batch `(N, 224, 224, 3)` and returns the
    /// recorded layers (NHWC) and the final feature map.
    pub fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let size = x.dim(1)?;
        let mut x = self
            .stem
            .forward(x, Pad::tf_same(size, self.stem.k, 2), Act::Relu6)?;
        let mut out = Vec::with_capacity(17);
        for b in &self.blocks {
            let inp = x.clone();
            let mut h = match &b.expand {
                Some(e) => e.forward(&x, Pad::ZERO, Act::Relu6)?,
                None => x.clone(),
            };
            let side = h.dim(1)?;
            h = b.depthwise.forward(
                &h,
                Pad::tf_same(side, b.depthwise.k, b.depthwise.stride),
                Act::Relu6,
            )?;
            h = b
                .project
                .forward_residual(&h, Pad::ZERO, b.skip.then_some(&inp), Act::None)?;
            out.push(h.clone());
            x = h;
        }
        out.push(self.head.forward(&x, Pad::ZERO, Act::Relu6)?);
        Ok(out)
    }

    /// ImageNet logits `(N, 1000)` from the head output of [`forward`](Self::forward).
    pub fn classify(&self, head: &Tensor) -> Result<Tensor> {
        global_avg_pool(head)?
            .matmul(&self.fc_w)?
            .broadcast_add(&self.fc_b)
    }
}
