"""Writes two small layer-gaussian DNAs in the reference library's file layout (.json +
.npz with mu-<layer> and sigma-<layer> float64 members) and the FD / NFD between them,
computed here with numpy independently of vdna-db: FD per layer as
|mu1-mu2|^2 + tr(S1) + tr(S2) - 2 * sum(sqrt(eigvals(S1 @ S2))), the eigenvalues of the
non-symmetric product (vdna-db uses the symmetric form S1^1/2 S2 S1^1/2 instead). One layer
has rank-deficient covariances. Run once: python3 tests/py/make_layer_gaussian_golden.py
(needs numpy); the outputs are committed in fixtures/layer-gaussian/."""
import json
import os

import numpy as np

out = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "layer-gaussian")
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(2023)
layers = {"block_0": 6, "block_1": 10, "block_2": 4}


def sample(n_images, shift):
    data = {}
    for name, k in layers.items():
        if name == "block_2":
            # Rank-deficient: 4 neurons driven by 2 factors.
            f = rng.normal(size=(n_images, 2))
            x = f @ rng.normal(size=(2, k)) + shift
        else:
            a = rng.normal(size=(k, k))
            x = rng.normal(size=(n_images, k)) @ a + shift
        data[name] = (x.mean(0), np.cov(x.T))
    return data


def save(stem, data, n_images):
    arrays = {}
    for name, (mu, sigma) in data.items():
        arrays["mu-" + name] = mu.astype(np.float64)
        arrays["sigma-" + name] = sigma.astype(np.float64)
    np.savez_compressed(os.path.join(out, stem + ".npz"), **arrays)
    meta = {
        "time_of_compute": "",
        "vdna_version": "0.1.1",
        "distribution": {},
        "type": "layer-gaussian",
        "name": "layer-gaussian",
        "data_settings": {"source": "synthetic"},
        "extraction_settings": {"average_feats_spatially": True},
        "num_images": n_images,
        "feature_extractor_name": "tiny_net",
        "neurons_list": layers,
    }
    with open(os.path.join(out, stem + ".json"), "w") as f:
        json.dump(meta, f, indent=4)


a, b = sample(40, 0.0), sample(30, 0.5)
save("a", a, 40)
save("b", b, 30)


def fd(mu1, s1, mu2, s2):
    ev = np.linalg.eigvals(s1 @ s2)
    tr_covmean = np.sum(np.sqrt(np.clip(ev.real, 0, None)))
    d = mu1 - mu2
    return float(d @ d + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def nfd(mu1, s1, mu2, s2):
    v1, v2 = np.diag(s1), np.diag(s2)
    return (mu1 - mu2) ** 2 + v1 + v2 - 2 * np.sqrt(v1 * v2)


fd_layers = {n: fd(*a[n], *b[n]) for n in layers}
nfd_all = np.concatenate([nfd(*a[n], *b[n]) for n in layers])
golden = {
    "description": "FD and NFD between fixtures/layer-gaussian/a and b, computed with numpy by tests/py/make_layer_gaussian_golden.py",
    "fd_per_layer": fd_layers,
    "fd_all": float(np.mean(list(fd_layers.values()))),
    "nfd_all": float(nfd_all.mean()),
    "nfd_per_layer": {n: float(nfd(*a[n], *b[n]).mean()) for n in layers},
}
with open(os.path.join(out, "distances.json"), "w") as f:
    json.dump(golden, f, indent=1)
print(json.dumps(golden, indent=1))
