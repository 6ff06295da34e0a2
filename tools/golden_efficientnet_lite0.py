#!/usr/bin/env python3
"""Reference EfficientNet-Lite0 forward pass and golden-data writer.

This is an independent PyTorch implementation (plain torch.nn.functional ops,
no EfficientNet library) of EfficientNet-Lite0 as used for image-to-DNA
extraction.  The architecture is derived from the weight shapes in the
safetensors file produced by tools/convert_efficientnet_lite0.py.

Semantics
---------
* Image loading: PIL ``Image.open(path).convert("RGB")`` -> uint8 HxWx3.
* "Clean" resize to 224x224: per channel,
  ``Image.fromarray(ch.astype(np.float32), mode="F").resize((224, 224), BICUBIC)``
  then ``np.clip(., 0, 255)``; no re-quantisation.  (Pillow returns a copy,
  without resampling, when the image already is 224x224.)
* Normalisation (float32, torchvision ``ToTensor`` + ``Normalize`` order):
  ``t = x / 255``; ``t = (t - mean) / std`` with mean = 127/255 and
  std = 128/255 (both rounded to float32 first), i.e. approximately (x - 127) / 128.
* Network (NCHW, float32): TensorFlow "SAME" padding for every convolution
  (pad_total = max((ceil(in / s) - 1) * s + k - in, 0), pad_before = pad_total // 2,
  pad_after = the rest, i.e. the extra pixel goes bottom/right), batch norm in
  inference mode with eps = 1e-3, ReLU6 after stem / expand / depthwise / head,
  no activation after the projection conv, no squeeze-excite, identity skip
  when stride == 1 and Cin == Cout.
  stem: 3x3 conv stride 2 -> 32, bn0, relu6
  blocks 0..15 (MBConv; block 0 has no expand conv; strides 2 in blocks
  1, 3, 5, 11, else 1; kernel sizes and channel counts from the weights)
  head: 1x1 conv -> 1280, bn1, relu6  (recorded as "head")
  global average pool, fully connected layer ``_fc`` -> 1000 ImageNet logits.
* Recorded layers: "input" (the normalised 3x224x224 tensor), "blocks_0" ..
  "blocks_15" (block outputs, after the skip addition) and "head".

Usage
-----
    python tools/golden_efficientnet_lite0.py [--weights W] [--images DIR] [--out JSON]
    python tools/golden_efficientnet_lite0.py --write-synthetic [--images DIR]

Defaults are relative to the repository root (the parent of this script's
folder): assets/weights/efficientnet_lite0.safetensors, fixtures/images,
fixtures/extract/efficientnet_lite0_golden.json.

``--write-synthetic`` (re)creates the synthetic fixture images gradient.png,
noise.png and gray.png in the images folder and exits.
"""

import argparse
import hashlib
import json
import math
import os
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

REPO_ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
DEFAULT_WEIGHTS = os.path.join(REPO_ROOT, "assets", "weights", "efficientnet_lite0.safetensors")
DEFAULT_IMAGES = os.path.join(REPO_ROOT, "fixtures", "images")
DEFAULT_OUT = os.path.join(REPO_ROOT, "fixtures", "extract", "efficientnet_lite0_golden.json")

INPUT_SIZE = 224
NORM_MEAN = [127.0 / 255.0] * 3
NORM_STD = [128.0 / 255.0] * 3
BN_EPS = 1e-3
NUM_BLOCKS = 16
STRIDE2_BLOCKS = (1, 3, 5, 11)
STEM_STRIDE = 2

IM_EXTENSIONS = {"png", "jpg", "jpeg", "bmp", "ppm", "pgm", "tif", "tiff", "webp"}

SAMPLING_DOC = (
    "For a layer of shape (C,H,W): values[i] are the raw float32 activations at "
    "channels c in range(0, C, max(1, C // 16)), rows y in range(0, H, max(1, H // 5)), "
    "columns x in range(0, W, max(1, W // 5)), flattened in nested loop order "
    "for c: for y: for x (c outermost, x innermost). channel_mean[c] is the mean over "
    "all H*W positions of channel c, accumulated in float64 from the float32 "
    "activations; channel_max[c] is the float32 maximum."
)

SYNTHETIC = ("gradient.png", "noise.png", "gray.png")


# --------------------------------------------------------------------------
# safetensors reading (numpy only)

_ST_NP = {"F32": "<f4", "F64": "<f8", "F16": "<f2", "I64": "<i8", "I32": "<i4",
          "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "u1"}


def read_safetensors(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n).decode("utf-8"))
        data = f.read()
    header.pop("__metadata__", None)
    out = {}
    for name, info in header.items():
        b, e = info["data_offsets"]
        arr = np.frombuffer(data[b:e], dtype=np.dtype(_ST_NP[info["dtype"]]))
        out[name] = arr.reshape(info["shape"]).copy()
    return out


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------
# preprocessing

def load_rgb_uint8(path):
    with Image.open(path) as im:
        return np.array(im.convert("RGB"))


def clean_resize(img_u8, size=INPUT_SIZE):
    """Per-channel float32 PIL bicubic resize, clipped to [0, 255]; returns HxWx3 float32."""
    chans = []
    for idx in range(3):
        ch = Image.fromarray(img_u8[:, :, idx].astype(np.float32), mode="F")
        ch = ch.resize((size, size), resample=Image.BICUBIC)
        chans.append(np.asarray(ch).clip(0, 255).reshape(size, size, 1))
    return np.concatenate(chans, axis=2).astype(np.float32)


def normalise(resized_hwc, dtype=torch.float32):
    t = torch.from_numpy(np.ascontiguousarray(resized_hwc.transpose(2, 0, 1))).to(dtype)
    t = t / 255
    mean = torch.as_tensor(NORM_MEAN, dtype=torch.float32).to(dtype).view(-1, 1, 1)
    std = torch.as_tensor(NORM_STD, dtype=torch.float32).to(dtype).view(-1, 1, 1)
    return (t - mean) / std


# --------------------------------------------------------------------------
# model

def same_pad(x, k, stride):
    ih, iw = x.shape[-2:]

    def total(n):
        return max((math.ceil(n / stride) - 1) * stride + k - n, 0)

    ph, pw = total(ih), total(iw)
    return F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])


def conv_same(x, w, stride=1, groups=1):
    k = w.shape[-1]
    assert w.shape[-2] == k
    return F.conv2d(same_pad(x, k, stride), w, None, stride, 0, 1, groups)


class EfficientNetLite0:
    def __init__(self, weights, dtype=torch.float32):
        self.w = {k: torch.from_numpy(v).to(dtype) for k, v in weights.items()
                  if not k.endswith("num_batches_tracked")}
        self.blocks = []
        for i in range(NUM_BLOCKS):
            p = f"_blocks.{i}."
            dw = self.w[p + "_depthwise_conv.weight"]
            proj = self.w[p + "_project_conv.weight"]
            has_expand = (p + "_expand_conv.weight") in self.w
            cin = self.w[p + "_expand_conv.weight"].shape[1] if has_expand else dw.shape[0]
            self.blocks.append({
                "prefix": p,
                "expand": has_expand,
                "kernel": dw.shape[-1],
                "stride": 2 if i in STRIDE2_BLOCKS else 1,
                "cin": cin,
                "mid": dw.shape[0],
                "cout": proj.shape[0],
            })
        assert not self.blocks[0]["expand"]

    def bn(self, x, prefix):
        return F.batch_norm(x, self.w[prefix + "running_mean"], self.w[prefix + "running_var"],
                            self.w[prefix + "weight"], self.w[prefix + "bias"],
                            training=False, momentum=0.0, eps=BN_EPS)

    def forward(self, x):
        """x: (N,3,224,224). Returns (logits, {layer: activation})."""
        feats = {}
        x = F.relu6(self.bn(conv_same(x, self.w["_conv_stem.weight"], STEM_STRIDE), "_bn0."))
        for i, b in enumerate(self.blocks):
            p = b["prefix"]
            inp = x
            if b["expand"]:
                x = F.relu6(self.bn(conv_same(x, self.w[p + "_expand_conv.weight"]), p + "_bn0."))
            x = F.relu6(self.bn(conv_same(x, self.w[p + "_depthwise_conv.weight"], b["stride"],
                                          groups=b["mid"]), p + "_bn1."))
            x = self.bn(conv_same(x, self.w[p + "_project_conv.weight"]), p + "_bn2.")
            if b["stride"] == 1 and b["cin"] == b["cout"]:
                x = x + inp
            feats[f"blocks_{i}"] = x
        x = F.relu6(self.bn(conv_same(x, self.w["_conv_head.weight"]), "_bn1."))
        feats["head"] = x
        pooled = x.mean(dim=(2, 3))
        logits = F.linear(pooled, self.w["_fc.weight"], self.w["_fc.bias"])
        return logits, feats


# --------------------------------------------------------------------------
# golden statistics

def sample_indices(c, h, w):
    cs = range(0, c, max(1, c // 16))
    ys = range(0, h, max(1, h // 5))
    xs = range(0, w, max(1, w // 5))
    return cs, ys, xs


def layer_stats(act_chw):
    """act_chw: float32 numpy (C,H,W)."""
    c, h, w = act_chw.shape
    cs, ys, xs = sample_indices(c, h, w)
    values = [float(act_chw[ci, y, x]) for ci in cs for y in ys for x in xs]
    a64 = act_chw.astype(np.float64).reshape(c, -1)
    return {
        "shape": [c, h, w],
        "channel_mean": [float(v) for v in a64.mean(axis=1)],
        "channel_max": [float(v) for v in act_chw.reshape(c, -1).max(axis=1)],
        "values": values,
    }


def list_images(images_dir):
    names = [n for n in os.listdir(images_dir)
             if not n.startswith(".") and n.rsplit(".", 1)[-1].lower() in IM_EXTENSIONS]
    return sorted(names)


def write_synthetic(images_dir):
    os.makedirs(images_dir, exist_ok=True)
    # gradient.png: 160x120 (width x height) RGB
    w, h = 160, 120
    yy, xx = np.mgrid[0:h, 0:w].astype(np.int64)
    grad = np.stack([(xx * 255) // (w - 1),
                     (yy * 255) // (h - 1),
                     ((xx + yy) * 255) // (w + h - 2)], axis=2).astype(np.uint8)
    Image.fromarray(grad, mode="RGB").save(os.path.join(images_dir, "gradient.png"))
    # noise.png: 97x131 (width x height) RGB, seeded uniform noise
    rng = np.random.default_rng(20240521)
    noise = rng.integers(0, 256, size=(131, 97, 3), dtype=np.uint8)
    Image.fromarray(noise, mode="RGB").save(os.path.join(images_dir, "noise.png"))
    # gray.png: 64x80 (width x height) grayscale "L": ramp plus 8-pixel checkerboard
    w, h = 64, 80
    yy, xx = np.mgrid[0:h, 0:w].astype(np.int64)
    gray = ((xx * 3 + yy * 2) % 192 + ((xx // 8 + yy // 8) % 2) * 63).astype(np.uint8)
    Image.fromarray(gray, mode="L").save(os.path.join(images_dir, "gray.png"))
    for n in SYNTHETIC:
        print("wrote", os.path.join(images_dir, n))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", default=DEFAULT_WEIGHTS)
    ap.add_argument("--images", default=DEFAULT_IMAGES)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--write-synthetic", action="store_true",
                    help="(re)create gradient.png, noise.png, gray.png in --images and exit")
    args = ap.parse_args(argv)

    if args.write_synthetic:
        write_synthetic(args.images)
        return 0

    torch.set_grad_enabled(False)
    weights = read_safetensors(args.weights)
    model32 = EfficientNetLite0(weights, torch.float32)
    model64 = EfficientNetLite0(weights, torch.float64)

    images = []
    resize_golden = None
    for name in list_images(args.images):
        path = os.path.join(args.images, name)
        img = load_rgb_uint8(path)
        resized = clean_resize(img)
        x32 = normalise(resized, torch.float32)[None]
        logits, feats = model32.forward(x32)
        # float64 run of the same network (input computed in float64 as well),
        # only used to report how far float32 drifts from exact arithmetic.
        x64 = normalise(resized, torch.float64)[None]
        logits64, feats64 = model64.forward(x64)

        logits = logits[0].numpy()
        top = np.argsort(-logits.astype(np.float64), kind="stable")[:5]
        layers = {"input": layer_stats(x32[0].numpy())}
        drift = {"input": float((x32[0].double() - x64[0]).abs().max())}
        for lname, act in feats.items():
            layers[lname] = layer_stats(act[0].numpy())
            drift[lname] = float((act[0].double() - feats64[lname][0]).abs().max())
        drift["logits"] = float(np.abs(logits.astype(np.float64) - logits64[0].numpy()).max())
        entry = {
            "file": name,
            "source_size": [int(img.shape[1]), int(img.shape[0])],
            "resize_channel_sums": [float(resized[:, :, c].astype(np.float64).sum()) for c in range(3)],
            "top5": {"indices": [int(i) for i in top],
                     "logits": [float(logits[i]) for i in top]},
            "layers": layers,
            "f32_vs_f64_max_abs_diff": drift,
        }
        images.append(entry)
        print(f"{name}: {img.shape[1]}x{img.shape[0]} top5 {entry['top5']['indices']} "
              f"logits {[round(v, 3) for v in entry['top5']['logits']]}")
        if name == "noise.png":
            resize_golden = {
                "file": name,
                "size": [INPUT_SIZE, INPUT_SIZE],
                "channel0_every16": {
                    "rows": list(range(0, INPUT_SIZE, 16)),
                    "cols": list(range(0, INPUT_SIZE, 16)),
                    "values": [float(resized[y, x, 0]) for y in range(0, INPUT_SIZE, 16)
                               for x in range(0, INPUT_SIZE, 16)],
                    "order": "row-major: for y in rows: for x in cols",
                },
                "channel_sums": [float(resized[:, :, c].astype(np.float64).sum()) for c in range(3)],
                "note": "values are the clean-resized float32 pixels in [0,255] (before /255); "
                        "channel_sums are float64 sums of all 224*224 float32 values of each channel",
            }

    golden = {
        "model": "efficientnet_lite0",
        "weights": {"file": os.path.basename(args.weights), "sha256": sha256_file(args.weights)},
        "generator": "tools/golden_efficientnet_lite0.py",
        "versions": {"torch": torch.__version__, "numpy": np.__version__,
                     "pillow": Image.__version__},
        "preprocessing": {
            "load": "PIL Image.open(path).convert('RGB') -> uint8 HxWx3",
            "resize": "per channel PIL mode 'F' (float32) BICUBIC resize to 224x224, clip [0,255], no quantisation",
            "normalise": "float32: t = x / 255; t = (t - float32(127/255)) / float32(128/255)",
            "input_size": [INPUT_SIZE, INPUT_SIZE],
            "mean": NORM_MEAN,
            "std": NORM_STD,
        },
        "architecture": {
            "padding": "TF SAME (extra pad bottom/right)",
            "bn_eps": BN_EPS,
            "activation": "relu6",
            "stem": {"kernel": 3, "stride": STEM_STRIDE, "out": 32},
            "blocks": [{k: v for k, v in b.items() if k != "prefix"} for b in model32.blocks],
            "head": {"out": 1280},
            "classes": 1000,
        },
        "layers": ["input"] + [f"blocks_{i}" for i in range(NUM_BLOCKS)] + ["head"],
        "sampling": SAMPLING_DOC,
        "images": images,
        "resize": resize_golden,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(golden, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
