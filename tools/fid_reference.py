#!/usr/bin/env python3
"""FID between two image folders as pytorch-fid computes it, on the reference's modules.

Features: the reference library's own pipeline pieces (vdna 0.1.1): its ``ResizeDataset``
("clean" resize to 299, mean = std = 0.5) and its ``InceptionV3`` block 3, with the
weights from a local safetensors file in the FID weights' names. Statistics and distance:
pytorch-fid's formula (float64 mean and ``np.cov``, ``scipy.linalg.sqrtm`` with its
``1e-6 I`` retry). Used to check ``vdna-db compare --metric fd --mask block_3`` on
``layer-gaussian`` DNAs of the same folders (docs/EXTRACTORS.md#fid).

    python tools/fid_reference.py WEIGHTS.safetensors DIR_A DIR_B
    python tools/fid_reference.py --portable-weights OUT.safetensors
        writes the FID Inception with tools/golden_inception.py's portable weights
"""

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from scipy import linalg

sys.path.insert(0, str(Path(__file__).parent))
import golden_inception  # noqa: E402
from vdna.networks import inception_pytorch as ref  # noqa: E402
from vdna.utils.im import IM_EXTENSIONS, ResizeDataset  # noqa: E402

SHAPES = Path(__file__).parent.parent / "fixtures/extract/inception-shapes.json"


def model(weights):
    sd = load_file(weights)
    for k, v in ref._inception_v3(num_classes=1008, aux_logits=False, pretrained=False).state_dict().items():
        if k.endswith("num_batches_tracked"):
            sd[k] = v
    ranges = Path(tempfile.mkdtemp()) / "ranges.json"
    ranges.write_text(json.dumps({"mins_per_neuron": {}, "maxs_per_neuron": {}}))
    ref.hf_hub_download = lambda **kw: str(ranges)
    ref.load_state_dict_from_url = lambda *a, **kw: sd
    return ref.InceptionV3(output_blocks=[3], resize_input=False, normalize_input=False).eval()


def stats(m, folder):
    files = sorted(str(f) for f in Path(folder).rglob("*") if f.suffix.lower().lstrip(".") in IM_EXTENSIONS)
    ds = ResizeDataset(files, None, crop_to_square_pre_resize="none", size=(299, 299), resize_mode="clean",
                       norm_mean=[0.5] * 3, norm_std=[0.5] * 3)
    with torch.no_grad():
        f = torch.cat([m(torch.stack([ds[i] for i in range(s, min(s + 16, len(ds)))]))["block_3"]
                       for s in range(0, len(ds), 16)])
    f = f.flatten(1).double().numpy()
    return f.mean(0), np.cov(f, rowvar=False)


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--portable-weights":
        shapes = json.loads(SHAPES.read_text())
        save_file({k: golden_inception.value(k, v) for k, v in shapes.items()}, sys.argv[2])
        return
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    m = model(sys.argv[1])
    (m1, s1), (m2, s2) = stats(m, sys.argv[2]), stats(m, sys.argv[3])
    covmean, _ = linalg.sqrtm(s1.dot(s2), disp=False)
    if not np.isfinite(covmean).all():
        off = np.eye(s1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((s1 + off).dot(s2 + off))
    fid = ((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real)
    print(json.dumps({"fid": float(fid)}))


if __name__ == "__main__":
    main()
