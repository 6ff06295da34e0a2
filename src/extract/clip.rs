//! CLIP's ViT image encoder in the OpenAI layout, as the reference's `clip_im_vit_b16`: a
//! bias-free `patch x patch` stride-`patch` convolution, the class embedding in front,
//! position embeddings added, `ln_pre`, then `layers` pre-norm residual attention blocks
//! (LayerNorm eps 1e-5, `nn.MultiheadAttention` with a fused `in_proj`, QuickGELU MLP) and
//! `ln_post` on the class token. Records each block's output `block_0` ..
//! `block_{layers-1}` over every token (class token first), and `last_norm`, the
//! `ln_post` of the class token (one position per image), as the reference does; the
//! final projection `visual.proj` is not used. CLIP's own normalisation constants.
//!
//! The configuration comes from the weights: width and patch from `visual.conv1.weight`,
//! the grid from `visual.positional_embedding`, the depth from the
//! `visual.transformer.resblocks.N` present, heads `width / 64` (as CLIP builds them).
//! Names: `visual.conv1.weight`, `visual.class_embedding`, `visual.positional_embedding`,
//! `visual.ln_pre`, `visual.transformer.resblocks.N.{ln_1, attn.in_proj_weight,
//! attn.in_proj_bias, attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}`, `visual.ln_post`; the
//! text tower and anything else in the file is ignored.
//!
//! Precision: OpenAI's file holds float16 weights and the reference runs the encoder in
//! float16; here the same values run in float32, so activations differ from the
//! reference's by float16 rounding (see docs/EXTRACTORS.md).
//!
//! Owns: the architecture and its weight names. Must not: read files or images.

use candle_core::{Result, Tensor};

use super::ops::{Act, Conv, Pad};
use super::transformer::{Block, LayerNorm, Linear, Mlp};
use super::vit::{
    dims_of, grid_of, heads_for, layer_norm, linear, patch_conv, token_tensor, tokens_of,
};
use super::weights::Params;
use super::ExtractError;
use crate::format::LayerSpec;

pub const INPUT_SIZE: usize = 224;
pub const MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
pub const STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];
const LN_EPS: f64 = 1e-5;

pub struct ClipVit {
    patch: Conv,
    cls: Vec<f32>,
    pos: Vec<f32>,
    ln_pre: LayerNorm,
    blocks: Vec<Block>,
    ln_post: LayerNorm,
    dim: usize,
    grid: usize,
    layers: Vec<LayerSpec>,
}

impl ClipVit {
    pub fn load(p: &mut Params) -> std::result::Result<ClipVit, ExtractError> {
        p.detect_prefix("visual.conv1.weight");
        let origin = p.origin().to_string();
        let (dim, patch) = super::vit::patch_embed_dims(p, "visual.conv1.weight", &origin)?;
        let heads = heads_for(dim, &origin)?;
        let pd = dims_of(p, "visual.positional_embedding")?;
        let tokens = match pd[..] {
            [t, d] if d == dim => t,
            _ => {
                return Err(ExtractError::Weights {
                    origin,
                    msg: format!(
                        "tensor visual.positional_embedding has shape {pd:?}, expected \
                         [tokens, {dim}]"
                    ),
                })
            }
        };
        let grid = grid_of(tokens, "visual.positional_embedding", &origin)?;
        let block = |i: usize| format!("visual.transformer.resblocks.{i}");
        let depth = (0..)
            .take_while(|&i| p.dims(&format!("{}.ln_1.weight", block(i))).is_some())
            .count();
        if depth == 0 {
            return Err(ExtractError::Weights {
                origin,
                msg: "missing tensor visual.transformer.resblocks.0.ln_1.weight \
                      (is this the right architecture?)"
                    .into(),
            });
        }
        let hidden = dims_of(p, &format!("{}.mlp.c_fc.weight", block(0)))?
            .first()
            .copied()
            .unwrap_or(0);
        let w = p.get("visual.conv1.weight", &[dim, 3, patch, patch])?;
        let patch_conv = patch_conv(&w, dim, patch, None, &origin)?;
        let cls = p.get("visual.class_embedding", &[dim])?;
        let pos = p.get("visual.positional_embedding", &[tokens, dim])?;
        let ln_pre = layer_norm(p, "visual.ln_pre", dim, LN_EPS)?;
        let mut blocks = Vec::with_capacity(depth);
        for i in 0..depth {
            let n = block(i);
            blocks.push(Block {
                norm1: layer_norm(p, &format!("{n}.ln_1"), dim, LN_EPS)?,
                qkv: Linear {
                    w: p.get(&format!("{n}.attn.in_proj_weight"), &[3 * dim, dim])?,
                    b: p.get(&format!("{n}.attn.in_proj_bias"), &[3 * dim])?,
                    cin: dim,
                    cout: 3 * dim,
                },
                proj: linear(p, &format!("{n}.attn.out_proj"), dim, dim)?,
                norm2: layer_norm(p, &format!("{n}.ln_2"), dim, LN_EPS)?,
                fc1: linear(p, &format!("{n}.mlp.c_fc"), hidden, dim)?,
                fc2: linear(p, &format!("{n}.mlp.c_proj"), dim, hidden)?,
                heads,
                act: Mlp::QuickGelu,
            });
        }
        let ln_post = layer_norm(p, "visual.ln_post", dim, LN_EPS)?;
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
        Ok(ClipVit {
            patch: patch_conv,
            cls,
            pos,
            ln_pre,
            blocks,
            ln_post,
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

    /// Runs a normalised NHWC batch; returns the block outputs `(N, tokens, 1, width)` and
    /// `last_norm` `(N, 1, 1, width)`.
    pub fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let patches = self.patch.forward(x, Pad::ZERO, Act::None)?;
        let (emb, n, tokens) = tokens_of(&patches, &self.cls, &self.pos, self.dim)?;
        drop(patches);
        let mut h = self.ln_pre.forward(&emb);
        drop(emb);
        let mut out = Vec::with_capacity(self.layers.len());
        for (i, b) in self.blocks.iter().enumerate() {
            let y = b.forward(&h, n, tokens);
            if i > 0 {
                // h is block i-1's output.
                out.push(token_tensor(h, n, tokens, self.dim)?);
            }
            h = y;
        }
        let cls: Vec<f32> = h
            .chunks_exact(tokens * self.dim)
            .flat_map(|s| s[..self.dim].iter().copied())
            .collect();
        let last = self.ln_post.forward(&cls);
        out.push(token_tensor(h, n, tokens, self.dim)?);
        out.push(token_tensor(last, n, 1, self.dim)?);
        Ok(out)
    }
}
