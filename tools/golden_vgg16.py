#!/usr/bin/env python3
"""Golden activations of VGG16 from the reference library's own module.

Runs ``vdna.networks.vgg16.VGG16`` (vdna 0.1.1, the module behind ``vgg16``, with
``padding="zero"`` as the reference's extractor builds it) on seeded random weights:
the module takes torchvision's ``models.vgg16(pretrained=True)``, which would download,
so that one call is answered with a torchvision VGG of the requested widths whose
weights are seeded (He-normal convolutions, biases 0.1 N(0, 1)). The features state dict
is saved in torchvision's names (``features.N.weight`` / ``bias``) as a PyTorch zip file;
the 13 recorded ReLU outputs ``relu_1_1`` .. ``relu_5_3`` go to a safetensors file as
NHWC float32 tensors, beside the input as ``input``.

Usage
-----
    python tools/golden_vgg16.py tiny OUT_DIR
        widths 4, 4, 8, 8, 16 x 3, 32 x 6 on 32x32 inputs, 2 images: vgg-tiny.pth and
        vgg-tiny-golden.safetensors (committed under fixtures/extract/).
    python tools/golden_vgg16.py full OUT_DIR
        VGG16's own widths at 224x224: vgg-base.pth / vgg-base-golden.safetensors for the
        slow test (VDNA_FULL_GOLDEN=OUT_DIR).
"""

import sys
import types
from pathlib import Path

import torch
from safetensors.torch import save_file
from torchvision.models import vgg as tv_vgg

from vdna.networks import vgg16 as ref_vgg

CONFIGS = {
    "tiny": dict(cfg=[4, 4, "M", 8, 8, "M", 16, 16, 16, "M", 32, 32, 32, "M", 32, 32, 32, "M"], size=32, name="vgg-tiny"),
    "full": dict(cfg=tv_vgg.cfgs["D"], size=224, name="vgg-base"),
}
SEED = 5
BATCH = 2
NAMES = ["relu_1_1", "relu_1_2", "relu_2_1", "relu_2_2", "relu_3_1", "relu_3_2", "relu_3_3",
         "relu_4_1", "relu_4_2", "relu_4_3", "relu_5_1", "relu_5_2", "relu_5_3"]


def main() -> None:
    if len(sys.argv) != 3 or sys.argv[1] not in CONFIGS:
        sys.exit(__doc__)
    cfg = CONFIGS[sys.argv[1]]
    out = Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    tv = tv_vgg.VGG(tv_vgg.make_layers(cfg["cfg"]), init_weights=False).eval()
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in sorted(tv.features.named_parameters()):
            if name.endswith("weight"):
                p.copy_(torch.randn(p.shape, generator=g) * (2.0 / p[0].numel()) ** 0.5)
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    sd = {f"features.{k}": v.detach().clone().contiguous() for k, v in tv.features.state_dict().items()}
    torch.save(sd, out / f"{cfg['name']}.pth")

    ref_vgg.models = types.SimpleNamespace(vgg16=lambda pretrained: tv)
    model = ref_vgg.VGG16(requires_grad=False, padding="zero", replace_reluguided=False).eval()
    x = torch.randn((BATCH, 3, cfg["size"], cfg["size"]), generator=torch.Generator().manual_seed(SEED + 1))
    with torch.no_grad():
        feats = model.fw_relu(x, num_relus=13, do_normalize=False)
    tensors = {"input": x.permute(0, 2, 3, 1).contiguous()}
    for name, f in zip(NAMES, feats):
        tensors[name] = f.permute(0, 2, 3, 1).contiguous()
    save_file(tensors, str(out / f"{cfg['name']}-golden.safetensors"))
    for k, v in tensors.items():
        print(k, tuple(v.shape), f"absmax {v.abs().max().item():.4g}")


if __name__ == "__main__":
    main()
