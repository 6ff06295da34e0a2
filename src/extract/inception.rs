//! The FID Inception-v3 (the network of pytorch-fid and clean-fid, weights
//! `pt_inception-2015-12-05`), as the reference's `inception`: torchvision's Inception3
//! stem and mixed blocks with the FID variants (average pools that exclude padding in the
//! A, C and first E blocks, a max pool in the last E block), every convolution followed by
//! batch-norm (eps 1e-3) and ReLU. Input 299x299 scaled to [-1, 1] (mean = std = 0.5).
//! Records the four outputs FID implementations expose: `block_0` (first max pool, 64),
//! `block_1` (second max pool, 192), `block_2` (`Mixed_6e`, 768) and `block_3` (global
//! average pool after `Mixed_7c`, 2048, one position per image). `layer-gaussian` on
//! `block_3` is the Gaussian FID compares (docs/EXTRACTORS.md).
//!
//! Weights: torchvision / pytorch-fid names (`Conv2d_1a_3x3.conv.weight`,
//! `Conv2d_1a_3x3.bn.*`, `Mixed_5b.branch1x1.conv.weight`, ...); the classifier is
//! ignored. Channel counts come from the weight shapes.
//!
//! Owns: the architecture and its weight names. Must not: read files or images.

use candle_core::{Result, Tensor};

use super::ops::{avg_pool, global_avg_pool, max_pool, Act, BatchNorm, Conv, Pad};
use super::vit::dims_of;
use super::weights::Params;
use super::ExtractError;
use crate::format::LayerSpec;

pub const INPUT_SIZE: usize = 299;
pub const MEAN: [f64; 3] = [0.5, 0.5, 0.5];
pub const STD: [f64; 3] = [0.5, 0.5, 0.5];
const BN_EPS: f64 = 1e-3;

/// Convolution + batch-norm + ReLU (torchvision's `BasicConv2d`).
struct Basic {
    conv: Conv,
    pad: Pad,
}

impl Basic {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.conv.forward(x, self.pad, Act::Relu)
    }
}

/// Reads `{name}.conv.weight` and `{name}.bn.*`; `pad` None is "same" for stride 1
/// (`kh / 2`, `kw / 2`).
fn basic(
    p: &mut Params,
    name: &str,
    stride: usize,
    pad: Option<Pad>,
) -> std::result::Result<Basic, ExtractError> {
    let wn = format!("{name}.conv.weight");
    let d = dims_of(p, &wn)?;
    let dims = match d[..] {
        [o, i, kh, kw] if o > 0 && i > 0 && kh > 0 && kw > 0 => [o, i, kh, kw],
        _ => {
            return Err(ExtractError::Weights {
                origin: p.origin().into(),
                msg: format!("tensor {wn} has shape {d:?}, expected [Cout, Cin, kh, kw]"),
            })
        }
    };
    let w = p.get(&wn, &dims)?;
    let c = dims[0];
    let bn = BatchNorm {
        gamma: p.get(&format!("{name}.bn.weight"), &[c])?,
        beta: p.get(&format!("{name}.bn.bias"), &[c])?,
        mean: p.get(&format!("{name}.bn.running_mean"), &[c])?,
        var: p.get(&format!("{name}.bn.running_var"), &[c])?,
        eps: BN_EPS,
    };
    let conv = Conv::fold(&w, dims, &bn, stride).map_err(|e| ExtractError::Weights {
        origin: p.origin().into(),
        msg: format!("{wn}: {e}"),
    })?;
    Ok(Basic {
        conv,
        pad: pad.unwrap_or(Pad::hw(dims[2] / 2, dims[3] / 2)),
    })
}

enum Mixed {
    /// InceptionA: 1x1; 1x1 -> 5x5; 1x1 -> 3x3 -> 3x3; avg pool -> 1x1.
    A([Basic; 7]),
    /// InceptionB: 3x3 s2; 1x1 -> 3x3 -> 3x3 s2; max pool s2.
    B([Basic; 4]),
    /// InceptionC: 1x1; 1x1 -> 1x7 -> 7x1; 1x1 -> 7x1 -> 1x7 -> 7x1 -> 1x7; avg pool -> 1x1.
    C([Basic; 10]),
    /// InceptionD: 1x1 -> 3x3 s2; 1x1 -> 1x7 -> 7x1 -> 3x3 s2; max pool s2.
    D([Basic; 6]),
    /// InceptionE: 1x1; 1x1 -> (1x3 | 3x1); 1x1 -> 3x3 -> (1x3 | 3x1); pool -> 1x1, the pool
    /// an average (excluding padding) or, in the last block, a max.
    E([Basic; 9], bool),
}

fn cat(parts: &[Tensor]) -> Result<Tensor> {
    Tensor::cat(parts, 3)
}

impl Mixed {
    fn load(p: &mut Params, name: &str, kind: char) -> std::result::Result<Mixed, ExtractError> {
        let mut b = |branch: &str, stride: usize, pad: Option<Pad>| {
            basic(p, &format!("{name}.{branch}"), stride, pad)
        };
        let s2 = Some(Pad::ZERO);
        Ok(match kind {
            'A' => Mixed::A([
                b("branch1x1", 1, None)?,
                b("branch5x5_1", 1, None)?,
                b("branch5x5_2", 1, None)?,
                b("branch3x3dbl_1", 1, None)?,
                b("branch3x3dbl_2", 1, None)?,
                b("branch3x3dbl_3", 1, None)?,
                b("branch_pool", 1, None)?,
            ]),
            'B' => Mixed::B([
                b("branch3x3", 2, s2)?,
                b("branch3x3dbl_1", 1, None)?,
                b("branch3x3dbl_2", 1, None)?,
                b("branch3x3dbl_3", 2, s2)?,
            ]),
            'C' => Mixed::C([
                b("branch1x1", 1, None)?,
                b("branch7x7_1", 1, None)?,
                b("branch7x7_2", 1, None)?,
                b("branch7x7_3", 1, None)?,
                b("branch7x7dbl_1", 1, None)?,
                b("branch7x7dbl_2", 1, None)?,
                b("branch7x7dbl_3", 1, None)?,
                b("branch7x7dbl_4", 1, None)?,
                b("branch7x7dbl_5", 1, None)?,
                b("branch_pool", 1, None)?,
            ]),
            'D' => Mixed::D([
                b("branch3x3_1", 1, None)?,
                b("branch3x3_2", 2, s2)?,
                b("branch7x7x3_1", 1, None)?,
                b("branch7x7x3_2", 1, None)?,
                b("branch7x7x3_3", 1, None)?,
                b("branch7x7x3_4", 2, s2)?,
            ]),
            _ => Mixed::E(
                [
                    b("branch1x1", 1, None)?,
                    b("branch3x3_1", 1, None)?,
                    b("branch3x3_2a", 1, None)?,
                    b("branch3x3_2b", 1, None)?,
                    b("branch3x3dbl_1", 1, None)?,
                    b("branch3x3dbl_2", 1, None)?,
                    b("branch3x3dbl_3a", 1, None)?,
                    b("branch3x3dbl_3b", 1, None)?,
                    b("branch_pool", 1, None)?,
                ],
                kind == 'M',
            ),
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Mixed::A(c) => {
                let b1 = c[0].forward(x)?;
                let b5 = c[2].forward(&c[1].forward(x)?)?;
                let b3 = c[5].forward(&c[4].forward(&c[3].forward(x)?)?)?;
                let bp = c[6].forward(&avg_pool(x, 3, 1, 1)?)?;
                cat(&[b1, b5, b3, bp])
            }
            Mixed::B(c) => {
                let b3 = c[0].forward(x)?;
                let bd = c[3].forward(&c[2].forward(&c[1].forward(x)?)?)?;
                let bp = max_pool(x, 3, 2, 0)?;
                cat(&[b3, bd, bp])
            }
            Mixed::C(c) => {
                let b1 = c[0].forward(x)?;
                let b7 = c[3].forward(&c[2].forward(&c[1].forward(x)?)?)?;
                let mut bd = c[4].forward(x)?;
                for conv in &c[5..9] {
                    bd = conv.forward(&bd)?;
                }
                let bp = c[9].forward(&avg_pool(x, 3, 1, 1)?)?;
                cat(&[b1, b7, bd, bp])
            }
            Mixed::D(c) => {
                let b3 = c[1].forward(&c[0].forward(x)?)?;
                let mut b7 = c[2].forward(x)?;
                for conv in &c[3..6] {
                    b7 = conv.forward(&b7)?;
                }
                let bp = max_pool(x, 3, 2, 0)?;
                cat(&[b3, b7, bp])
            }
            Mixed::E(c, max) => {
                let b1 = c[0].forward(x)?;
                let h = c[1].forward(x)?;
                let b3 = cat(&[c[2].forward(&h)?, c[3].forward(&h)?])?;
                let h = c[5].forward(&c[4].forward(x)?)?;
                let bd = cat(&[c[6].forward(&h)?, c[7].forward(&h)?])?;
                let pooled = if *max {
                    max_pool(x, 3, 1, 1)?
                } else {
                    avg_pool(x, 3, 1, 1)?
                };
                let bp = c[8].forward(&pooled)?;
                cat(&[b1, b3, bd, bp])
            }
        }
    }
}

pub struct InceptionV3 {
    stem0: [Basic; 3],
    stem1: [Basic; 2],
    mixed2: Vec<Mixed>,
    mixed3: Vec<Mixed>,
    layers: Vec<LayerSpec>,
}

/// Output channels of the last convolution-free concatenation are only known after a run,
/// so the layer widths are computed from the weights.
fn out_channels(m: &Mixed, cin: usize) -> usize {
    match m {
        Mixed::A(c) => c[0].conv.cout + c[2].conv.cout + c[5].conv.cout + c[6].conv.cout,
        Mixed::B(c) => c[0].conv.cout + c[3].conv.cout + cin,
        Mixed::C(c) => c[0].conv.cout + c[3].conv.cout + c[8].conv.cout + c[9].conv.cout,
        Mixed::D(c) => c[1].conv.cout + c[5].conv.cout + cin,
        Mixed::E(c, _) => {
            c[0].conv.cout
                + c[2].conv.cout
                + c[3].conv.cout
                + c[6].conv.cout
                + c[7].conv.cout
                + c[8].conv.cout
        }
    }
}

impl InceptionV3 {
    pub fn load(p: &mut Params) -> std::result::Result<InceptionV3, ExtractError> {
        p.detect_prefix("Conv2d_1a_3x3.conv.weight");
        let z = Some(Pad::ZERO);
        let stem0 = [
            basic(p, "Conv2d_1a_3x3", 2, z)?,
            basic(p, "Conv2d_2a_3x3", 1, z)?,
            basic(p, "Conv2d_2b_3x3", 1, Some(Pad::same(1)))?,
        ];
        let stem1 = [
            basic(p, "Conv2d_3b_1x1", 1, z)?,
            basic(p, "Conv2d_4a_3x3", 1, z)?,
        ];
        let mut mixed2 = Vec::new();
        for (n, k) in [
            ("Mixed_5b", 'A'),
            ("Mixed_5c", 'A'),
            ("Mixed_5d", 'A'),
            ("Mixed_6a", 'B'),
            ("Mixed_6b", 'C'),
            ("Mixed_6c", 'C'),
            ("Mixed_6d", 'C'),
            ("Mixed_6e", 'C'),
        ] {
            mixed2.push(Mixed::load(p, n, k)?);
        }
        let mut mixed3 = Vec::new();
        for (n, k) in [("Mixed_7a", 'D'), ("Mixed_7b", 'E'), ("Mixed_7c", 'M')] {
            mixed3.push(Mixed::load(p, n, k)?);
        }
        let c0 = stem0[2].conv.cout;
        let c1 = stem1[1].conv.cout;
        let c2 = mixed2.iter().fold(c1, |c, m| out_channels(m, c));
        let c3 = mixed3.iter().fold(c2, |c, m| out_channels(m, c));
        let layers = [c0, c1, c2, c3]
            .iter()
            .enumerate()
            .map(|(i, &c)| LayerSpec {
                name: format!("block_{i}"),
                neurons: c as u32,
            })
            .collect();
        Ok(InceptionV3 {
            stem0,
            stem1,
            mixed2,
            mixed3,
            layers,
        })
    }

    pub fn layers(&self) -> &[LayerSpec] {
        &self.layers
    }

    /// Runs a normalised NHWC batch; returns the four blocks, NHWC (`block_3` 1x1).
    pub fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let mut h = x.clone();
        for c in &self.stem0 {
            h = c.forward(&h)?;
        }
        let b0 = max_pool(&h, 3, 2, 0)?;
        let mut h = b0.clone();
        for c in &self.stem1 {
            h = c.forward(&h)?;
        }
        let b1 = max_pool(&h, 3, 2, 0)?;
        let mut h = b1.clone();
        for m in &self.mixed2 {
            h = m.forward(&h)?;
        }
        let b2 = h.clone();
        for m in &self.mixed3 {
            h = m.forward(&h)?;
        }
        let (n, _, _, c) = h.dims4()?;
        let b3 = global_avg_pool(&h)?.reshape((n, 1, 1, c))?;
        Ok(vec![b0, b1, b2, b3])
    }
}
