#!/usr/bin/env python3
"""Golden activations of the DINO / Mugs ViT from the reference library's own modules.

Builds ``vdna.networks.mugs_vit.VisionTransformer`` (vdna 0.1.1, the module behind
``mugs_vit_base``, with Mugs' extra relation block) on seeded random weights, saves the
weights the way the reference's Mugs file holds them (a PyTorch zip checkpoint
``{"state_dict": ...}``), runs a seeded random input batch and writes every recorded
layer (``block_0`` .. ``block_{depth-1}``, ``last_norm``) as ``(N, tokens, dim)``
float32 tensors to a safetensors file, beside the input as ``input`` in NHWC.
The same weights (relation blocks dropped) are also run through
``vdna.networks.dino_vit.VisionTransformer`` (the module behind ``dino_vit_base``) and
the two must agree exactly.

Weights: every tensor of the module's own initialisation is replaced by seeded normals
(linear / conv weights with std 1/sqrt(fan_in), biases, LayerNorm affine, [CLS] and
position embeddings with spread too) so that no path of the network is an identity.

Usage
-----
    python tools/golden_vit.py tiny OUT_DIR
        dim 128, depth 2 (2 heads), MLP 256, patch 16, 48x48 input, 2 images:
        OUT_DIR/vit-tiny.pth and OUT_DIR/vit-tiny-golden.safetensors (committed under
        fixtures/extract/).
    python tools/golden_vit.py full OUT_DIR
        ViT-B/16 (dim 768, depth 12, 12 heads, MLP 3072, 224x224), 2 images: the same two
        files named vit-base.pth / vit-base-golden.safetensors (about 350 MB; not
        committed) for the slow test (VDNA_FULL_GOLDEN=OUT_DIR cargo test -- --ignored).
"""

import sys
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import save_file

from vdna.networks import dino_vit, mugs_vit

CONFIGS = {
    "tiny": dict(dim=128, depth=2, heads=2, mlp_ratio=2.0, patch=16, size=48, name="vit-tiny"),
    "full": dict(dim=768, depth=12, heads=12, mlp_ratio=4.0, patch=16, size=224, name="vit-base"),
}
SEED = 7
BATCH = 2


def randomise(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("weight") and p.dim() >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:  # biases, cls_token, pos_embed
                p.copy_(0.2 * torch.randn(p.shape, generator=g))


def build(module, cfg, **extra):
    return module.VisionTransformer(
        img_size=[cfg["size"]],
        patch_size=cfg["patch"],
        embed_dim=cfg["dim"],
        depth=cfg["depth"],
        num_heads=cfg["heads"],
        mlp_ratio=cfg["mlp_ratio"],
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        **extra,
    ).eval()


def main() -> None:
    if len(sys.argv) != 3 or sys.argv[1] not in CONFIGS:
        sys.exit(__doc__)
    cfg = CONFIGS[sys.argv[1]]
    out = Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)

    mugs = build(mugs_vit, cfg, num_relation_blocks=1)
    randomise(mugs, SEED)
    sd = {k: v.detach().clone().contiguous() for k, v in mugs.state_dict().items()}
    torch.save({"state_dict": sd, "epoch": 0}, out / f"{cfg['name']}.pth")

    dino = build(dino_vit, cfg)
    dino.load_state_dict({k: v for k, v in sd.items() if not k.startswith("relation_blocks")}, strict=True)

    g = torch.Generator().manual_seed(SEED + 1)
    x = torch.randn((BATCH, 3, cfg["size"], cfg["size"]), generator=g)
    with torch.no_grad():
        feats = mugs(x)
        feats_dino = dino(x, return_all_feats=True)
    tensors = {"input": x.permute(0, 2, 3, 1).contiguous()}
    for i, (a, b) in enumerate(zip(feats, feats_dino)):
        assert torch.equal(a, b), f"mugs and dino modules differ at output {i}"
        name = f"block_{i}" if i < cfg["depth"] else "last_norm"
        tensors[name] = a.contiguous()
    save_file(tensors, str(out / f"{cfg['name']}-golden.safetensors"))
    for k, v in tensors.items():
        print(k, tuple(v.shape), f"absmax {v.abs().max().item():.4g}")


if __name__ == "__main__":
    main()
