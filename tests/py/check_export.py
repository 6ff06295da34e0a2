"""Checks an npz exported by vdna-db against the reference library's original with numpy:
same members (object members of Gaussian files aside), dtypes, shapes and values, and a
json the reference's loader accepts (type, name, num_images, neurons_list)."""
import json
import sys

import numpy as np

orig_path, new_path, new_json = sys.argv[1:4]
orig = np.load(orig_path, allow_pickle=False)
new = np.load(new_path, allow_pickle=False)


def is_numeric(npz, key):
    # Object members (pickled dicts) refuse to load without pickle: skip them unread.
    try:
        npz[key]
        return True
    except ValueError:
        return False


meta = json.load(open(new_json))
for key in ("type", "name", "num_images", "neurons_list", "distribution", "feature_extractor_name"):
    assert key in meta, f"json lacks {key}"
numeric = [k for k in orig.files if is_numeric(orig, k)]
assert sorted(numeric) == sorted(new.files), (sorted(numeric), sorted(new.files))
for k in numeric:
    a, b = orig[k], new[k]
    assert a.dtype == b.dtype, (k, a.dtype, b.dtype)
    assert a.shape == b.shape, (k, a.shape, b.shape)
    assert np.array_equal(a, b), f"{k}: values differ"
assert list(meta["neurons_list"].keys()) == [k for k in json.load(open(orig_path[:-4] + ".json"))["neurons_list"]]
print("ok", len(numeric), "arrays identical")
