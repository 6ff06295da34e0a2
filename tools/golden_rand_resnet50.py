#!/usr/bin/env python3
"""Golden Visual DNAs from the reference Python implementation (vdna 0.1.1, rand_resnet50).

Runs vdna's own ``rand_resnet50`` model and extraction pipeline
(``vdna.VDNAProcessor.make_vdna``: file listing, image loading, "clean" resize,
normalisation, histogram / Gaussian fitting, saving) on a folder of images, with
weights and activation ranges given as local files instead of the Hugging Face
hub that vdna normally downloads them from.

Usage
-----
    python tools/golden_rand_resnet50.py WEIGHTS.safetensors RANGES.json IMAGES_DIR OUT_DIR
        writes OUT_DIR/histogram-100.{json,npz}, OUT_DIR/gaussian.{json,npz}
        (vdna's own file format) and OUT_DIR/activations.json.

    python tools/golden_rand_resnet50.py --compute-ranges WEIGHTS.safetensors IMAGES_DIR OUT_RANGES.json
        runs vdna's "activation-ranges" DNA over IMAGES_DIR and writes the
        ranges in the JSON layout vdna reads (mins_per_neuron / maxs_per_neuron),
        plus vdna's own activation-ranges DNA next to it (<stem>_vdna.{json,npz}).

    python tools/golden_rand_resnet50.py --random-weights OUT.safetensors [SEED]
        writes a randomly initialised ResNet-50 state dict (torchvision layout
        without the fc layer, BatchNorm statistics randomised too) for tests.

Options (any mode): --device DEV (default cpu), --batch-size N (default 64).

How the hub is bypassed: vdna calls ``hf_hub_download`` (bound in
``vdna.networks.random_resnet50``) for "Random/rand_resnet50/activation_ranges.json"
and "Random/rand_resnet50/weights.pth"; that name is replaced by a function that
returns the given RANGES.json and a temporary ``weights.pth`` holding
``{"model_state_dict": <state dict from WEIGHTS.safetensors>}``, which vdna then
``torch.load``s and loads with ``load_state_dict`` (strict) as usual.

On a CPU device, vdna 0.1.1's ``ResNetFeatureExtractor.forward`` cannot run
(it calls ``tensor.cuda(device=inputs[0].device)``, which raises for a CPU
device); there it is replaced by the same code without that transfer.
Nothing else in vdna is changed.
"""

import json
import os
import shutil
import struct
import sys
import tempfile
import time

import numpy as np
import torch

RANGES_HUB_FILE = "Random/rand_resnet50/activation_ranges.json"
WEIGHTS_HUB_FILE = "Random/rand_resnet50/weights.pth"

_ST_NP = {"F32": "<f4", "F64": "<f8", "F16": "<f2", "I64": "<i8", "I32": "<i4",
          "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "u1"}
_NP_ST = {np.dtype("float32"): "F32", np.dtype("float64"): "F64", np.dtype("float16"): "F16",
          np.dtype("int64"): "I64", np.dtype("int32"): "I32", np.dtype("int16"): "I16",
          np.dtype("int8"): "I8", np.dtype("uint8"): "U8"}


# --------------------------------------------------------------------------
# safetensors (numpy only)

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


def write_safetensors(path, arrays, metadata=None):
    header = {"__metadata__": dict(metadata or {})}
    blobs, offset = [], 0
    for name in sorted(arrays):
        arr = np.asarray(arrays[name])
        blob = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": _NP_ST[arr.dtype], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * ((-len(hb)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for blob in blobs:
            f.write(blob)


def load_state_dict(path):
    sd = {}
    for k, v in read_safetensors(path).items():
        if k.startswith("module."):
            k = k[len("module."):]
        sd[k] = torch.from_numpy(v)
    return sd


# --------------------------------------------------------------------------
# vdna plumbing

class LocalVdna:
    """Makes vdna's rand_resnet50 read its weights and ranges from local files."""

    def __init__(self, weights_path, ranges_path, device):
        import vdna.networks.random_resnet50 as rr

        self.rr = rr
        self.tmp = tempfile.mkdtemp(prefix="vdna_golden_")
        self.weights_pth = os.path.join(self.tmp, "weights.pth")
        torch.save({"model_state_dict": load_state_dict(weights_path)}, self.weights_pth)
        self.ranges_path = os.path.abspath(ranges_path)
        self.saved = {"hf_hub_download": rr.hf_hub_download,
                      "forward": rr.ResNetFeatureExtractor.forward}

        def local_hub_download(repo_id=None, filename=None, **kwargs):
            if filename == RANGES_HUB_FILE:
                return self.ranges_path
            if filename == WEIGHTS_HUB_FILE:
                return self.weights_pth
            raise RuntimeError(f"unexpected hub download {repo_id}/{filename}")

        rr.hf_hub_download = local_hub_download
        if torch.device(device).type == "cpu":
            rr.ResNetFeatureExtractor.forward = _forward_without_cuda_transfer

    def close(self):
        self.rr.hf_hub_download = self.saved["hf_hub_download"]
        self.rr.ResNetFeatureExtractor.forward = self.saved["forward"]
        shutil.rmtree(self.tmp, ignore_errors=True)


def _forward_without_cuda_transfer(self, inputs):
    # vdna 0.1.1 ResNetFeatureExtractor.forward, minus `.cuda(device=..., non_blocking=True)`.
    if not isinstance(inputs, list):
        inputs = [inputs]
    idx_crops = torch.cumsum(
        torch.unique_consecutive(torch.tensor([inp.shape[-1] for inp in inputs]), return_counts=True)[1], 0
    )
    start_idx = 0
    for end_idx in idx_crops:
        if self.dont_return_features:
            _out = self.forward_backbone(torch.cat(inputs[start_idx:end_idx]))
            features = {}
        else:
            _out, features = self.forward_backbone(torch.cat(inputs[start_idx:end_idx]))
        start_idx = end_idx
    return features


def make_vdna(source, distribution_name, device, batch_size):
    from vdna import VDNAProcessor

    processor = VDNAProcessor()
    return processor.make_vdna(
        source=source,
        feat_extractor_name="rand_resnet50",
        distribution_name=distribution_name,
        device=device,
        batch_size=batch_size,
        num_workers=0,
        verbose=False,
        seed=0,
    )


def per_image_activations(images_dir, device):
    """Per-image, per-layer, per-channel spatial means/maxes from vdna's model and preprocessing."""
    from vdna.networks import get_feature_extractor
    from vdna.utils.settings import DataSettings, ExtractionSettings

    settings = ExtractionSettings(device=device, num_workers=0, verbose=False, batch_size=1)
    model = get_feature_extractor("rand_resnet50", settings)
    data_settings = DataSettings(source=images_dir, shuffle_files=False)
    files = model.get_files_list(data_settings)
    loader = model.get_dataloader(data_settings)  # vdna's ResizeDataset, same order as `files`
    out = []
    with torch.no_grad():
        for path, batch in zip(files, loader):
            feats = model.get_batch_features(batch, torch.device(device))
            entry = {
                "file": os.path.relpath(path, images_dir),
                "input_channel_sums": [float(v) for v in batch[0].double().sum(dim=(1, 2))],
                "layers": {},
            }
            for layer, act in feats.items():
                # same op as vdna's Gaussian path (float32 torch.mean over H, W)
                mean = torch.mean(act, dim=(2, 3))[0]
                amax = torch.amax(act, dim=(2, 3))[0]
                entry["layers"][layer] = {
                    "shape": list(act.shape[1:]),
                    "mean": [float(v) for v in mean.cpu()],
                    "max": [float(v) for v in amax.cpu()],
                }
            out.append(entry)
    return out


# --------------------------------------------------------------------------
# modes

def random_weights(out_path, seed):
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.resnet50(weights=None)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.1 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
    sd = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items() if not k.startswith("fc.")}
    write_safetensors(out_path, sd, {"format": "pt", "note": f"random resnet50, seed {seed}"})
    print(f"wrote {out_path}: {len(sd)} tensors")


def compute_ranges(weights, images_dir, out_json, device, batch_size):
    tmp = tempfile.mkdtemp(prefix="vdna_ranges_")
    bootstrap = os.path.join(tmp, "empty_ranges.json")
    with open(bootstrap, "w") as f:
        json.dump({"mins_per_neuron": {}, "maxs_per_neuron": {}}, f)
    local = LocalVdna(weights, bootstrap, device)
    try:
        t0 = time.time()
        dna = make_vdna(images_dir, "activation-ranges", device, batch_size)
        print(f"activation-ranges over {dna.num_images} images: {time.time() - t0:.1f}s")
    finally:
        local.close()
        shutil.rmtree(tmp, ignore_errors=True)
    # Same layout as vdna's upstream scripts/save_activation_ranges.py:
    # {"mins_per_neuron": {layer: {"0": min, "1": ...}}, "maxs_per_neuron": {...}}, indent 4,
    # layers in neurons_list order, neuron keys "0".."C-1" in order, float32 values as floats.
    ranges = {"mins_per_neuron": {}, "maxs_per_neuron": {}}
    for layer, count in dna.neurons_list.items():
        mins = dna.data[layer]["min"].reshape(-1).cpu()
        maxs = dna.data[layer]["max"].reshape(-1).cpu()
        assert mins.numel() == count
        ranges["mins_per_neuron"][layer] = {str(i): mins[i].item() for i in range(count)}
        ranges["maxs_per_neuron"][layer] = {str(i): maxs[i].item() for i in range(count)}
    os.makedirs(os.path.dirname(os.path.abspath(out_json)), exist_ok=True)
    with open(out_json, "w") as f:
        f.write(json.dumps(ranges, indent=4))
    stem = os.path.splitext(out_json)[0] + "_vdna"
    dna.save(stem)
    print(f"wrote {out_json} and {stem}.json/.npz")


def golden(weights, ranges, images_dir, out_dir, device, batch_size):
    os.makedirs(out_dir, exist_ok=True)
    local = LocalVdna(weights, ranges, device)
    timings = {}
    try:
        for dist in ("histogram-100", "gaussian"):
            t0 = time.time()
            dna = make_vdna(images_dir, dist, device, batch_size)
            dna.save(os.path.join(out_dir, dist))
            timings[dist] = time.time() - t0
            print(f"{dist}: {dna.num_images} images, {timings[dist]:.1f}s")
        t0 = time.time()
        acts = per_image_activations(images_dir, device)
        timings["activations"] = time.time() - t0
    finally:
        local.close()
    with open(os.path.join(out_dir, "activations.json"), "w") as f:
        json.dump({
            "feature_extractor": "rand_resnet50",
            "note": "per image (vdna's sorted file order), per layer: shape [C,H,W], per-channel "
                    "float32 torch.mean over H,W ('mean') and max ('max') of vdna's model forward "
                    "on vdna's preprocessed input; input_channel_sums are float64 sums of the "
                    "normalised 3x224x224 input",
            "versions": {"torch": torch.__version__, "numpy": np.__version__},
            "images": acts,
        }, f)
    print(f"activations: {len(acts)} images, {timings['activations']:.1f}s")
    print(f"wrote {out_dir}")


def main(argv):
    args = list(argv[1:])
    opts = {"--device": "cpu", "--batch-size": "64"}
    for key in list(opts):
        if key in args:
            i = args.index(key)
            opts[key] = args[i + 1]
            del args[i:i + 2]
    device, batch_size = opts["--device"], int(opts["--batch-size"])
    if args and args[0] == "--random-weights" and len(args) in (2, 3):
        random_weights(args[1], int(args[2]) if len(args) == 3 else 0)
    elif args and args[0] == "--compute-ranges" and len(args) == 4:
        compute_ranges(args[1], args[2], args[3], device, batch_size)
    elif len(args) == 4 and not args[0].startswith("--"):
        golden(args[0], args[1], args[2], args[3], device, batch_size)
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
