#!/usr/bin/env python3
"""Converts OpenAI's CLIP checkpoint (ViT-B-16.pt, a TorchScript archive) to safetensors.

vdna-db reads PyTorch zip state dicts and safetensors, not TorchScript programs. The
reference library loads OpenAI's file with ``torch.load`` (which hands TorchScript
archives to ``torch.jit.load``) and takes its ``state_dict()``; this does the same and
writes the image encoder's tensors (``visual.*``) unchanged (float16, as published):

    python tools/convert_clip.py ViT-B-16.pt clip_vit_b16.safetensors
    vdna-db extract IMAGES --extractor clip_im_vit_b16 --weights clip_vit_b16.safetensors ...

A plain state-dict file (``torch.save(model.state_dict())``) is accepted too. The weights
digest vdna-db pins in a space depends on the tensor values only, not on the file format.
"""

import sys

import torch
from safetensors.torch import save_file


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, dst = sys.argv[1], sys.argv[2]
    try:
        sd = torch.jit.load(src, map_location="cpu").state_dict()
    except RuntimeError:
        sd = torch.load(src, map_location="cpu", weights_only=True)
        if "state_dict" in sd:
            sd = sd["state_dict"]
    visual = {k: v.contiguous() for k, v in sd.items() if k.startswith("visual.")}
    if not visual:
        sys.exit(f"{src}: no visual.* tensors (is this a CLIP checkpoint?)")
    save_file(visual, dst)
    print(f"wrote {len(visual)} tensors to {dst}")


if __name__ == "__main__":
    main()
