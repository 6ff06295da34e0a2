#!/usr/bin/env python3
"""PyTorch CPU throughput of the same networks vdna-db runs, for the extraction bench.

    python3 tools/bench_torch.py RESNET_WEIGHTS.safetensors EFFNET_WEIGHTS.safetensors \
        [--batch 16] [--batches 3] [--threads N] [--vit VIT_B16_WEIGHTS.safetensors] [--vgg VGG16_WEIGHTS.safetensors]
        [--inception FID_INCEPTION_WEIGHTS.safetensors]

Prints one JSON object: images/s of the network forward alone (no decoding), for
rand_resnet50 (torchvision ResNet-50 layout, the reference's stem padding) and
efficientnet_lite0 (TensorFlow SAME padding, ReLU6, batch-norm eps 1e-3) and, with --vit,
torchvision's VGG16 features with --vgg (13 ReLU outputs kept), torchvision's
Inception-v3 with --inception (the FID network's four blocks kept, at 299x299), and with --vit the
DINO / Mugs ViT-B/16 (written as the reference's modules are: explicit q k^T softmax
attention, exact GELU, LayerNorm eps 1e-6; all 13 outputs kept), at the given batch size, best of --batches timed batches after one warm-up batch. Needs torch and numpy.
"""

import argparse
import json
import math
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def load_safetensors(path):
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        a, b = meta["data_offsets"]
        dtype = {"F32": np.float32, "I64": np.int64}[meta["dtype"]]
        out[name] = torch.from_numpy(np.frombuffer(data[a:b], dtype=dtype).reshape(meta["shape"]).copy())
    return out


class Bottleneck(nn.Module):
    def __init__(self, cin, width, stride, down):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * 4)
        self.downsample = nn.Sequential(nn.Conv2d(cin, width * 4, 1, stride, bias=False), nn.BatchNorm2d(width * 4)) if down else None

    def forward(self, x):
        o = F.relu(self.bn1(self.conv1(x)))
        o = F.relu(self.bn2(self.conv2(o)))
        o = self.bn3(self.conv3(o))
        return F.relu(o + (self.downsample(x) if self.downsample is not None else x))


class ResNet50(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 2, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for i, (n, w) in enumerate([(3, 64), (4, 128), (6, 256), (3, 512)]):
            blocks = []
            for b in range(n):
                blocks.append(Bottleneck(cin, w, 2 if (i > 0 and b == 0) else 1, b == 0))
                cin = w * 4
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(F.pad(x, (1, 1, 1, 1)))))
        x = F.max_pool2d(x, 3, 2, 1)
        feats = []
        for l in (self.layer1, self.layer2, self.layer3, self.layer4):
            for blk in l:
                x = blk(x)
                feats.append(x)
        return feats


def same_pad(x, k, s):
    size = x.shape[-1]
    out = math.ceil(size / s)
    total = max((out - 1) * s + k - size, 0)
    return F.pad(x, (total // 2, total - total // 2, total // 2, total - total // 2))


class EffLite0(nn.Module):
    STRIDES = [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1]

    def __init__(self, sd):
        super().__init__()
        self.sd = {k: v for k, v in sd.items()}

    def bn(self, x, name):
        sd = self.sd
        return F.batch_norm(x, sd[name + ".running_mean"], sd[name + ".running_var"], sd[name + ".weight"], sd[name + ".bias"], False, 0.0, 1e-3)

    def forward(self, x):
        sd = self.sd
        w = sd["_conv_stem.weight"]
        x = F.relu6(self.bn(F.conv2d(same_pad(x, 3, 2), w, stride=2), "_bn0"))
        feats = []
        for i, s in enumerate(self.STRIDES):
            p = f"_blocks.{i}."
            h = x
            if p + "_expand_conv.weight" in sd:
                h = F.relu6(self.bn(F.conv2d(h, sd[p + "_expand_conv.weight"]), p + "_bn0"))
            dw = sd[p + "_depthwise_conv.weight"]
            k = dw.shape[-1]
            h = F.relu6(self.bn(F.conv2d(same_pad(h, k, s), dw, stride=s, groups=dw.shape[0]), p + "_bn1"))
            h = self.bn(F.conv2d(h, sd[p + "_project_conv.weight"]), p + "_bn2")
            if s == 1 and h.shape == x.shape:
                h = h + x
            feats.append(h)
            x = h
        feats.append(F.relu6(self.bn(F.conv2d(x, sd["_conv_head.weight"]), "_bn1")))
        return feats


class VitB16(nn.Module):
    """The DINO / Mugs ViT-B/16 forward as the reference writes it, on a state dict."""

    def __init__(self, sd, heads=12, depth=12):
        super().__init__()
        self.sd, self.heads, self.depth = sd, heads, depth

    def ln(self, x, name):
        return F.layer_norm(x, x.shape[-1:], self.sd[name + ".weight"], self.sd[name + ".bias"], 1e-6)

    def lin(self, x, name):
        return F.linear(x, self.sd[name + ".weight"], self.sd[name + ".bias"])

    def forward(self, x):
        sd = self.sd
        x = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=16)
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat((sd["cls_token"].expand(x.shape[0], -1, -1), x), dim=1) + sd["pos_embed"]
        feats = []
        for i in range(self.depth):
            p = f"blocks.{i}."
            B, N, C = x.shape
            qkv = self.lin(self.ln(x, p + "norm1"), p + "attn.qkv")
            qkv = qkv.reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
            attn = ((q @ k.transpose(-2, -1)) * (C // self.heads) ** -0.5).softmax(dim=-1)
            y = (attn @ v).transpose(1, 2).reshape(B, N, C)
            x = x + self.lin(y, p + "attn.proj")
            h = F.gelu(self.lin(self.ln(x, p + "norm2"), p + "mlp.fc1"))
            x = x + self.lin(h, p + "mlp.fc2")
            feats.append(x)
        feats.append(self.ln(x, "norm"))
        return feats


class Vgg16(nn.Module):
    """torchvision's VGG16 feature stack, every ReLU output kept, on a state dict."""

    POOL_BEFORE = {5, 10, 17, 24}

    def __init__(self, sd):
        super().__init__()
        self.sd = sd

    def forward(self, x):
        feats = []
        for i in [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]:
            if i in self.POOL_BEFORE:
                x = F.max_pool2d(x, 2, 2)
            x = F.relu(F.conv2d(x, self.sd[f"features.{i}.weight"], self.sd[f"features.{i}.bias"], padding=1))
            feats.append(x)
        return feats


class Inception(nn.Module):
    """torchvision's Inception-v3 up to the final pool, the four FID blocks kept."""

    def __init__(self, sd):
        super().__init__()
        import torchvision

        self.net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=1008)
        self.net.load_state_dict(sd, strict=False)
        self.size = 299

    def forward(self, x):
        n = self.net
        x = n.Conv2d_2b_3x3(n.Conv2d_2a_3x3(n.Conv2d_1a_3x3(x)))
        b0 = F.max_pool2d(x, 3, 2)
        b1 = F.max_pool2d(n.Conv2d_4a_3x3(n.Conv2d_3b_1x1(b0)), 3, 2)
        x = b1
        for m in [n.Mixed_5b, n.Mixed_5c, n.Mixed_5d, n.Mixed_6a, n.Mixed_6b, n.Mixed_6c, n.Mixed_6d, n.Mixed_6e]:
            x = m(x)
        b2 = x
        for m in [n.Mixed_7a, n.Mixed_7b, n.Mixed_7c]:
            x = m(x)
        return [b0, b1, b2, F.adaptive_avg_pool2d(x, 1)]


def bench(model, batch, batches):
    size = getattr(model, "size", 224)
    x = torch.randn(batch, 3, size, size)
    with torch.no_grad():
        model(x)
        best = float("inf")
        for _ in range(batches):
            t = time.perf_counter()
            model(x)
            best = min(best, time.perf_counter() - t)
    return batch / best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("resnet_weights")
    ap.add_argument("effnet_weights")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--vit", default=None)
    ap.add_argument("--vgg", default=None)
    ap.add_argument("--inception", default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    r = ResNet50().eval()
    r.load_state_dict(load_safetensors(a.resnet_weights), strict=False)
    e = EffLite0(load_safetensors(a.effnet_weights)).eval()
    out = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch": a.batch,
        "rand_resnet50": bench(r, a.batch, a.batches),
        "efficientnet_lite0": bench(e, a.batch, a.batches),
    }
    if a.vit:
        out["mugs_vit_base"] = bench(VitB16(load_safetensors(a.vit)).eval(), a.batch, a.batches)
    if a.vgg:
        out["vgg16"] = bench(Vgg16(load_safetensors(a.vgg)).eval(), a.batch, a.batches)
    if a.inception:
        out["inception"] = bench(Inception(load_safetensors(a.inception)).eval(), a.batch, a.batches)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
