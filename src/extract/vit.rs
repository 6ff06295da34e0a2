//! Vision Transformer in the DINO / Mugs layout, as the reference's `dino_vit_base` and
//! `mugs_vit_base`: a `patch x patch` stride-`patch` convolution with bias embeds the
//! image, a learnt `[CLS]` token is put in front, learnt position embeddings are added (no
//! interpolation: the input side is `patch * sqrt(tokens - 1)`), then `depth` pre-norm
//! blocks (LayerNorm eps 1e-6, multi-head attention with a fused biased `qkv`, exact GELU
//! MLP) and a final LayerNorm. Records each block's output `block_0` .. `block_{depth-1}`
//! and the final norm `last_norm`, every token (the `[CLS]` token first, then the patches
//! row by row) a position, as `(N, tokens, 1, dim)` tensors.
//!
//! The configuration is read from the weights: `dim` and `patch` from
//! `patch_embed.proj.weight`, the depth from the `blocks.N` present, the MLP width from
//! `blocks.0.mlp.fc1.weight`, the grid from `pos_embed`; heads are `dim / 64` as in every
//! DINO / Mugs ViT (S: 6, B: 12, L: 16). Names: `patch_embed.proj.{weight,bias}`,
//! `cls_token`, `pos_embed`, `blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1,
//! mlp.fc2}.{weight,bias}`, `norm.{weight,bias}`; anything else (Mugs' `relation_blocks`,
//! heads) is ignored and left out of the weights digest.
//!
//! Owns: the architecture and its weight names. Must not: read files or images.

use candle_core::{Device, Result, Tensor};

use super::ops::{Act, Conv, Pad};
use super::transformer::{Block, LayerNorm, Linear, Mlp};
use super::weights::Params;
use super::ExtractError;
use crate::format::LayerSpec;

pub const INPUT_SIZE: usize = 224;
pub const MEAN: [f64; 3] = [0.485, 0.456, 0.406];
pub const STD: [f64; 3] = [0.229, 0.224, 0.225];
const LN_EPS: f64 = 1e-6;
/// Channels per attention head in the DINO / Mugs ViTs.
pub const HEAD_DIM: usize = 64;

pub struct Vit {
    patch: Conv,
    /// `[CLS]` plus position 0, then the patch positions: `tokens x dim`.
    cls: Vec<f32>,
    pos: Vec<f32>,
    blocks: Vec<Block>,
    norm: LayerNorm,
    dim: usize,
    grid: usize,
    layers: Vec<LayerSpec>,
}

/// Reads a linear layer `{name}.weight` `(cout, cin)` and `{name}.bias`.
pub(crate) fn linear(
    p: &mut Params,
    name: &str,
    cout: usize,
    cin: usize,
) -> std::result::Result<Linear, ExtractError> {
    Ok(Linear {
        w: p.get(&format!("{name}.weight"), &[cout, cin])?,
        b: p.get(&format!("{name}.bias"), &[cout])?,
        cin,
        cout,
    })
}

pub(crate) fn layer_norm(
    p: &mut Params,
    name: &str,
    dim: usize,
    eps: f64,
) -> std::result::Result<LayerNorm, ExtractError> {
    Ok(LayerNorm {
        g: p.get(&format!("{name}.weight"), &[dim])?,
        b: p.get(&format!("{name}.bias"), &[dim])?,
        eps,
    })
}

/// A patch-embedding convolution: PyTorch `(dim, 3, patch, patch)` weight with an optional
/// bias, as an im2col + gemm [`Conv`].
pub(crate) fn patch_conv(
    w: &[f32],
    dim: usize,
    patch: usize,
    bias: Option<Vec<f32>>,
    origin: &str,
) -> std::result::Result<Conv, ExtractError> {
    Conv::with_bias(w, [dim, 3, patch, patch], bias, patch).map_err(|e| ExtractError::Weights {
        origin: origin.into(),
        msg: e.to_string(),
    })
}

/// The shape of `name`, or an error naming it.
pub(crate) fn dims_of(p: &Params, name: &str) -> std::result::Result<Vec<usize>, ExtractError> {
    p.dims(name).ok_or_else(|| ExtractError::Weights {
        origin: p.origin().into(),
        msg: format!("missing tensor {name} (is this the right architecture?)"),
    })
}

/// `sqrt(tokens - 1)` when the position table is a square grid plus one `[CLS]` entry.
pub(crate) fn grid_of(
    tokens: usize,
    name: &str,
    origin: &str,
) -> std::result::Result<usize, ExtractError> {
    let g = (tokens.saturating_sub(1) as f64).sqrt().round() as usize;
    if g == 0 || g * g + 1 != tokens {
        return Err(ExtractError::Weights {
            origin: origin.into(),
            msg: format!("tensor {name} holds {tokens} positions, not a square grid plus [CLS]"),
        });
    }
    Ok(g)
}

pub(crate) fn heads_for(dim: usize, origin: &str) -> std::result::Result<usize, ExtractError> {
    if dim == 0 || !dim.is_multiple_of(HEAD_DIM) {
        return Err(ExtractError::Weights {
            origin: origin.into(),
            msg: format!("embedding width {dim} is not a multiple of the {HEAD_DIM}-channel heads"),
        });
    }
    Ok(dim / HEAD_DIM)
}

/// Adds the `[CLS]` token and the position embeddings in front of the patch tokens
/// `(N, grid, grid, dim)`: returns `N * tokens` rows.
pub(crate) fn tokens_of(
    patches: &Tensor,
    cls: &[f32],
    pos: &[f32],
    dim: usize,
) -> Result<(Vec<f32>, usize, usize)> {
    let (n, gh, gw, c) = patches.dims4()?;
    let tokens = gh * gw + 1;
    if c != dim || pos.len() != tokens * dim {
        candle_core::bail!(
            "input gives {gh}x{gw} patches but the position embeddings hold {} tokens: \
             resize images to the extractor's input size",
            pos.len() / dim.max(1)
        )
    }
    let mut x = vec![0f32; n * tokens * dim];
    super::ops::with_values(patches, |pv| {
        for b in 0..n {
            let dst = &mut x[b * tokens * dim..][..tokens * dim];
            for (o, (c, p)) in dst[..dim].iter_mut().zip(cls.iter().zip(&pos[..dim])) {
                *o = c + p;
            }
            let src = &pv[b * (tokens - 1) * dim..][..(tokens - 1) * dim];
            for ((o, s), p) in dst[dim..].iter_mut().zip(src).zip(&pos[dim..]) {
                *o = s + p;
            }
        }
    })?;
    Ok((x, n, tokens))
}

/// Width and patch size from a patch-embedding convolution `[width, 3, patch, patch]`.
pub(crate) fn patch_embed_dims(
    p: &Params,
    name: &str,
    origin: &str,
) -> std::result::Result<(usize, usize), ExtractError> {
    let wd = dims_of(p, name)?;
    match wd[..] {
        [d, 3, k, k2] if k == k2 && d > 0 && k > 0 => Ok((d, k)),
        _ => Err(ExtractError::Weights {
            origin: origin.to_string(),
            msg: format!("tensor {name} has shape {wd:?}, expected [width, 3, patch, patch]"),
        }),
    }
}

/// A `(N, tokens, 1, dim)` tensor from `N * tokens` rows.
pub(crate) fn token_tensor(v: Vec<f32>, n: usize, tokens: usize, dim: usize) -> Result<Tensor> {
    Tensor::from_vec(v, (n, tokens, 1, dim), &Device::Cpu)
}

impl Vit {
    pub fn load(p: &mut Params) -> std::result::Result<Vit, ExtractError> {
        p.detect_prefix("patch_embed.proj.weight");
        let origin = p.origin().to_string();
        let (dim, patch) = patch_embed_dims(p, "patch_embed.proj.weight", &origin)?;
        let heads = heads_for(dim, &origin)?;
        let pd = dims_of(p, "pos_embed")?;
        let tokens = match pd[..] {
            [1, t, d] if d == dim => t,
            _ => {
                return Err(ExtractError::Weights {
                    origin,
                    msg: format!("tensor pos_embed has shape {pd:?}, expected [1, tokens, {dim}]"),
                })
            }
        };
        let grid = grid_of(tokens, "pos_embed", &origin)?;
        let depth = (0..)
            .take_while(|i| p.dims(&format!("blocks.{i}.norm1.weight")).is_some())
            .count();
        if depth == 0 {
            return Err(ExtractError::Weights {
                origin,
                msg: "missing tensor blocks.0.norm1.weight (is this the right architecture?)"
                    .into(),
            });
        }
        let hidden = dims_of(p, "blocks.0.mlp.fc1.weight")?
            .first()
            .copied()
            .unwrap_or(0);
        let w = p.get("patch_embed.proj.weight", &[dim, 3, patch, patch])?;
        let b = p.get("patch_embed.proj.bias", &[dim])?;
        let patch_conv = patch_conv(&w, dim, patch, Some(b), &origin)?;
        let cls = p.get("cls_token", &[1, 1, dim])?;
        let pos = p.get("pos_embed", &[1, tokens, dim])?;
        let mut blocks = Vec::with_capacity(depth);
        for i in 0..depth {
            let n = format!("blocks.{i}");
            blocks.push(Block {
                norm1: layer_norm(p, &format!("{n}.norm1"), dim, LN_EPS)?,
                qkv: linear(p, &format!("{n}.attn.qkv"), 3 * dim, dim)?,
                proj: linear(p, &format!("{n}.attn.proj"), dim, dim)?,
                norm2: layer_norm(p, &format!("{n}.norm2"), dim, LN_EPS)?,
                fc1: linear(p, &format!("{n}.mlp.fc1"), hidden, dim)?,
                fc2: linear(p, &format!("{n}.mlp.fc2"), dim, hidden)?,
                heads,
                act: Mlp::Gelu,
            });
        }
        let norm = layer_norm(p, "norm", dim, LN_EPS)?;
        let mut layers: Vec<LayerSpec> = (0..depth)
            .map(|i| LayerSpec {
                name: format!("block_{i}"),
                neurons: dim as u32,
            })
            .collect();
        layers.push(LayerSpec {
            name: "last_norm".into(),
            neurons: dim as u32,
        });
        Ok(Vit {
            patch: patch_conv,
            cls,
            pos,
            blocks,
            norm,
            dim,
            grid,
            layers,
        })
    }

    pub fn layers(&self) -> &[LayerSpec] {
        &self.layers
    }

    /// The input side the position embeddings were learnt for.
    pub fn input_size(&self) -> usize {
        self.grid * self.patch.k
    }

    /// Runs a normalised NHWC batch; returns the block outputs and the final norm.
    pub fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let patches = self.patch.forward(x, Pad::ZERO, Act::None)?;
        let (mut h, n, tokens) = tokens_of(&patches, &self.cls, &self.pos, self.dim)?;
        drop(patches);
        let mut out = Vec::with_capacity(self.layers.len());
        for (i, b) in self.blocks.iter().enumerate() {
            let y = b.forward(&h, n, tokens);
            if i > 0 {
                // h is block i-1's output.
                out.push(token_tensor(h, n, tokens, self.dim)?);
            }
            h = y;
        }
        let last = self.norm.forward(&h);
        out.push(token_tensor(h, n, tokens, self.dim)?);
        out.push(token_tensor(last, n, tokens, self.dim)?);
        Ok(out)
    }
}
