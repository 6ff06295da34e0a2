#!/usr/bin/env python3
"""Golden activations of CLIP's ViT image encoder from the reference library's own module.

Builds ``vdna.networks.clip.VisionTransformer`` (vdna 0.1.1, the module behind
``clip_im_vit_b16``) on seeded random weights, saves them as OpenAI's state dict names
them (``visual.`` prefix, plus a text-tower tensor that must be ignored) in a PyTorch zip
file, runs a seeded random input batch and writes the layers the reference records
(``block_i``: every token of each residual block's output; ``last_norm``: ``ln_post`` of
the class token) as ``(N, tokens, width)`` float32 tensors to a safetensors file, beside
the input as ``input`` in NHWC. Runs in float32 (the architecture check; the reference
itself converts CLIP to float16, see docs/EXTRACTORS.md).

Usage
-----
    python tools/golden_clip.py tiny OUT_DIR
        width 128, 2 layers (2 heads), patch 16, 48x48 input, 2 images:
        OUT_DIR/clip-tiny.pth and OUT_DIR/clip-tiny-golden.safetensors (committed under
        fixtures/extract/).
    python tools/golden_clip.py full OUT_DIR
        ViT-B/16 (width 768, 12 layers, 12 heads, 224x224): clip-base.pth and
        clip-base-golden.safetensors for the slow test (VDNA_FULL_GOLDEN=OUT_DIR).
"""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from vdna.networks import clip

CONFIGS = {
    "tiny": dict(width=128, layers=2, patch=16, size=48, name="clip-tiny"),
    "full": dict(width=768, layers=12, patch=16, size=224, name="clip-base"),
}
SEED = 11
BATCH = 2


def main() -> None:
    if len(sys.argv) != 3 or sys.argv[1] not in CONFIGS:
        sys.exit(__doc__)
    cfg = CONFIGS[sys.argv[1]]
    out = Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    model = clip.VisionTransformer(
        input_resolution=cfg["size"],
        patch_size=cfg["patch"],
        width=cfg["width"],
        layers=cfg["layers"],
        heads=cfg["width"] // 64,
        output_dim=64,
    ).eval()
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("weight") and p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
            elif "ln_" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:  # biases, class and position embeddings, proj
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    sd = {"visual." + k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    sd["ln_final.weight"] = torch.ones(8)
    torch.save(sd, out / f"{cfg['name']}.pth")

    x = torch.randn((BATCH, 3, cfg["size"], cfg["size"]), generator=torch.Generator().manual_seed(SEED + 1))
    with torch.no_grad():
        _, feats = model(x)
    tensors = {"input": x.permute(0, 2, 3, 1).contiguous()}
    for i, f in enumerate(feats[:-1]):
        tensors[f"block_{i}"] = f.permute(1, 0, 2).contiguous()  # LND -> NLD
    tensors["last_norm"] = feats[-1].contiguous()  # (N, 1, D)
    save_file(tensors, str(out / f"{cfg['name']}-golden.safetensors"))
    for k, v in tensors.items():
        print(k, tuple(v.shape), f"absmax {v.abs().max().item():.4g}")


if __name__ == "__main__":
    main()
