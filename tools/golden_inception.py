#!/usr/bin/env python3
"""Golden activations of the FID Inception-v3 from the reference library's own module.

Runs ``vdna.networks.inception_pytorch.InceptionV3`` (vdna 0.1.1, the module behind
``inception``: pytorch-fid's FID Inception with blocks 0..3, no resizing or rescaling
inside the network) on weights from a portable generator instead of the FID weights file
it would download (its ``load_state_dict_from_url`` and ``hf_hub_download`` are answered
locally). The generator needs no file, so the Rust test rebuilds the same weights:

    value = f(u), u = (splitmix64(fnv1a64(name) ^ i) >> 40) / 2^24 * 2 - 1   (i = flat index)
    conv / fc weights:     u * sqrt(6 / fan_in)
    bn weight, bias, mean: 1 + 0.2 u, 0.2 u, 0.2 u;  bn running_var: 1 + 0.5 (u + 1)
    fc bias:               0.1 u
    (computed in float64, rounded once to float32; splitmix64 with the usual constants)

Writes OUT_DIR/inception-shapes.json (every tensor's name and shape, in the FID weights
file's names) and OUT_DIR/inception-<size>-golden.safetensors: the input (NHWC) and the
four blocks (NHWC) for 2 seeded random inputs.

Usage
-----
    python tools/golden_inception.py 75 OUT_DIR     (committed under fixtures/extract/)
    python tools/golden_inception.py 299 OUT_DIR    (the slow test, VDNA_FULL_GOLDEN=OUT_DIR)
"""

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from vdna.networks import inception_pytorch as ref

M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def fnv1a64(s: str) -> int:
    h = 0xCBF29CE484222325
    for b in s.encode():
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def uniform(name: str, n: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = np.uint64(fnv1a64(name)) ^ np.arange(n, dtype=np.uint64)
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(40)).astype(np.float64) / 2.0**24 * 2.0 - 1.0


def value(name: str, shape) -> torch.Tensor:
    n = int(np.prod(shape))
    u = uniform(name, n)
    if name.endswith("conv.weight") or name == "fc.weight":
        v = u * np.sqrt(6.0 / float(np.prod(shape[1:])))
    elif name.endswith("bn.weight"):
        v = 1.0 + 0.2 * u
    elif name.endswith("bn.bias") or name.endswith("running_mean"):
        v = 0.2 * u
    elif name.endswith("running_var"):
        v = 1.0 + 0.5 * (u + 1.0)
    else:
        v = 0.1 * u
    return torch.from_numpy(v.astype(np.float32).reshape(shape))


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    size, out = int(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    shapes_model = ref._inception_v3(num_classes=1008, aux_logits=False, pretrained=False)
    for n, c in [("Mixed_5b", (192, 32)), ("Mixed_5c", (256, 64)), ("Mixed_5d", (288, 64))]:
        setattr(shapes_model, n, ref.FIDInceptionA(*c))
    for n, c in [("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)]:
        setattr(shapes_model, n, ref.FIDInceptionC(768, c))
    shapes_model.Mixed_7b = ref.FIDInceptionE_1(1280)
    shapes_model.Mixed_7c = ref.FIDInceptionE_2(2048)
    sd = {}
    shapes = {}
    for k, v in shapes_model.state_dict().items():
        if v.dtype == torch.float32:
            sd[k] = value(k, list(v.shape))
            shapes[k] = list(v.shape)
        else:
            sd[k] = v
    (out / "inception-shapes.json").write_text(json.dumps(shapes, indent=0))

    ranges = Path(tempfile.mkdtemp()) / "ranges.json"
    ranges.write_text(json.dumps({"mins_per_neuron": {}, "maxs_per_neuron": {}}))
    ref.hf_hub_download = lambda **kw: str(ranges)
    ref.load_state_dict_from_url = lambda *a, **kw: sd
    model = ref.InceptionV3(output_blocks=[0, 1, 2, 3], resize_input=False, normalize_input=False).eval()

    x = torch.randn((2, 3, size, size), generator=torch.Generator().manual_seed(3)).clamp(-1, 1)
    with torch.no_grad():
        feats = model(x)
    tensors = {"input": x.permute(0, 2, 3, 1).contiguous()}
    for k, v in feats.items():
        tensors[k] = v.permute(0, 2, 3, 1).contiguous()
    save_file(tensors, str(out / f"inception-{size}-golden.safetensors"))
    for k, v in tensors.items():
        print(k, tuple(v.shape), f"absmax {v.abs().max().item():.4g}")


if __name__ == "__main__":
    main()
