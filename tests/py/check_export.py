"""Checks an npz exported by vdna-db against the reference library's original, with an
independent reader written on the Python standard library only (zipfile + the .npy
header, parsed with ast): same numeric members, dtypes, shapes and data bytes, and a json
carrying what the reference's loader reads. Object members (the pickled dicts of Gaussian
files) are recognised by their dtype and never unpickled."""
import ast
import json
import sys
import zipfile


def read_npy(raw):
    assert raw[:6] == b"\x93NUMPY", "bad npy magic"
    major = raw[6]
    if major == 1:
        hlen = int.from_bytes(raw[8:10], "little")
        start = 10
    else:
        hlen = int.from_bytes(raw[8:12], "little")
        start = 12
    header = ast.literal_eval(raw[start:start + hlen].decode("latin1"))
    return header["descr"], header["fortran_order"], tuple(header["shape"]), raw[start + hlen:]


def members(path):
    out = {}
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            descr, fortran, shape, data = read_npy(z.read(name))
            if descr == "|O":
                continue
            assert not fortran, f"{name}: fortran order"
            out[name] = (descr, shape, data)
    return out


orig_path, new_path, new_json = sys.argv[1:4]
orig, new = members(orig_path), members(new_path)
assert sorted(orig) == sorted(new), (sorted(orig), sorted(new))
for k in orig:
    assert orig[k][0] == new[k][0], (k, orig[k][0], new[k][0])
    assert orig[k][1] == new[k][1], (k, orig[k][1], new[k][1])
    assert orig[k][2] == new[k][2], f"{k}: data bytes differ"
meta = json.load(open(new_json))
ref = json.load(open(orig_path[:-4] + ".json"))
for key in ("type", "name", "num_images", "neurons_list", "distribution", "feature_extractor_name"):
    assert meta[key] == ref[key], (key, meta[key], ref[key])
assert list(meta["neurons_list"]) == list(ref["neurons_list"]), "layer order"
print("ok", len(orig), "arrays identical")
