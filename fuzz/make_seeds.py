#!/usr/bin/env python3
"""Seeds of the `safetensors` and `pth` fuzz targets, made from one xca checkpoint of the
network in fuzz/model.yaml (e.g. `xca train` on the synthetic data for an epoch). Plain
Python: no torch, numpy or safetensors needed.

    python3 fuzz/make_seeds.py ckpt/tiny_fuzz/epoch_001.safetensors

writes
    fuzz/corpus/safetensors/xca_f32.safetensors     the checkpoint itself
    fuzz/corpus/safetensors/xca_f16.safetensors     every tensor as float16
    fuzz/corpus/safetensors/torch_names.safetensors the original's (PyTorch) tensor names
    fuzz/corpus/pth/tiny.pth.tar                    torch.save layout: zip, {'state_dict_ema': ...}
    fuzz/corpus/pth/bare_f64.pth                    a bare state dict, float64 storages
    tests/data/pth/tiny_nan.pth.tar                 tiny.pth.tar with one NaN (tests/hardening.rs)

The `.pth` files are written as `torch.save` writes them (pickle protocol 2 in a stored zip
archive, tensors rebuilt by `torch._utils._rebuild_tensor_v2` from persistent storages),
with stand-ins for the two torch names the pickle refers to.
"""

import collections
import json
import math
import os
import pickle
import shutil
import struct
import sys
import types
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# --- reading and writing safetensors -------------------------------------------------------

SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8}
FMT = {"F64": "d", "F32": "f", "F16": "e", "I64": "q"}


def read_safetensors(path):
    """(metadata, [(name, dtype, shape, values)]) in file order."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    meta = header.pop("__metadata__", None)
    out = []
    for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        a, b = info["data_offsets"]
        dt = info["dtype"]
        count = (b - a) // SIZES[dt]
        vals = list(struct.unpack("<%d%s" % (count, FMT[dt]), body[a:b]))
        out.append((name, dt, info["shape"], vals))
    return meta, out


def pack(dtype, vals):
    return struct.pack("<%d%s" % (len(vals), FMT[dtype]), *vals)


def write_safetensors(path, tensors, meta):
    header, blobs, off = {}, [], 0
    for name, dtype, shape, vals in tensors:
        blob = pack(dtype, vals)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(blob)]}
        blobs.append(blob)
        off += len(blob)
    if meta:
        header["__metadata__"] = meta
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


# --- xca names to the original's (the inverse of src/model/torch.rs `torch_key`) -----------

SPATIAL = {"conv1": "0", "bn1": "1", "conv2": "3", "bn2": "4", "conv3": "6"}
LEAF = {"gamma": "weight", "beta": "bias"}


def torch_names(tensors):
    """[(torch key, shape, float values)], ConvLSTM conv_x/conv_h joined along dim 1."""
    by_name = {n: (s, v) for n, _, s, v in tensors}
    out = []
    for name, _, shape, vals in tensors:
        p = "backbone.long_term.convlstm.cells."
        if name.startswith(p):
            layer, conv, leaf = name[len(p) :].split(".", 2)
            key = "backbone.embd.0.lstm_op.cell_list.%s.conv.%s" % (layer, leaf)
            if conv == "conv_h":
                continue  # joined with conv_x below
            if leaf == "weight":
                hs, hv = by_name[p + layer + ".conv_h.weight"]
                o, cx, kh, kw = shape
                ch = hs[1]
                plane = kh * kw
                joined = []
                for r in range(o):
                    joined += vals[r * cx * plane : (r + 1) * cx * plane]
                    joined += hv[r * ch * plane : (r + 1) * ch * plane]
                out.append((key, [o, cx + ch, kh, kw], joined))
            else:
                out.append((key, shape, vals))
            continue
        p = "backbone.long_term.spatial."
        if name.startswith(p):
            layer, leaf = name[len(p) :].split(".", 1)
            key = "backbone.embd.0.attention_op.%s.%s" % (SPATIAL[layer], LEAF.get(leaf, leaf))
            out.append((key, shape, vals))
            continue
        assert not name.startswith("backbone.long_term.projection."), "fuzz/model.yaml has pretrain off"
        out.append((name.replace(".mlp_fc1.", ".mlp.0.").replace(".mlp_fc2.", ".mlp.3."), shape, vals))
    return out


# --- torch.save without torch ---------------------------------------------------------------


def _stand_in_module(name):
    mod = sys.modules.get(name) or types.ModuleType(name)
    sys.modules[name] = mod
    return mod


_torch = _stand_in_module("torch")
_utils = _stand_in_module("torch._utils")


def _rebuild_tensor_v2(*args):  # never called: only pickled by name
    raise NotImplementedError


_rebuild_tensor_v2.__module__ = "torch._utils"
_utils._rebuild_tensor_v2 = _rebuild_tensor_v2
STORAGE_TYPES = {}
for _dt, _cls in [("F32", "FloatStorage"), ("F64", "DoubleStorage"), ("I64", "LongStorage")]:
    _t = type(_cls, (), {"__module__": "torch"})
    setattr(_torch, _cls, _t)
    STORAGE_TYPES[_dt] = _t


class Storage:
    def __init__(self, key, dtype, vals):
        self.key, self.dtype, self.vals = key, dtype, vals


class Tensor:
    def __init__(self, storage, shape):
        self.storage, self.shape = storage, shape

    def __reduce__(self):
        stride, s = [], 1
        for d in reversed(self.shape):
            stride.insert(0, s)
            s *= d
        args = (self.storage, 0, tuple(self.shape), tuple(stride), False, collections.OrderedDict())
        return (_rebuild_tensor_v2, args)


class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", STORAGE_TYPES[obj.dtype], obj.key, "cpu", len(obj.vals))
        return None


def write_pth(path, entries, top_level_key, dtype="F32", nan_at=None):
    """A torch.save archive of [(key, shape, values)] (float `dtype`), under `top_level_key`
    (None: a bare state dict). `nan_at` = a key whose first value becomes NaN."""
    state = collections.OrderedDict()
    storages = []
    for key, shape, vals in entries:
        if key == nan_at:
            vals = [math.nan] + list(vals[1:])
        st = Storage(str(len(storages)), dtype, vals)
        storages.append(st)
        state[key] = Tensor(st, list(shape))
    # A BatchNorm step counter, as PyTorch saves one (int64, unused by xca).
    st = Storage(str(len(storages)), "I64", [3])
    storages.append(st)
    state["backbone.embd.0.attention_op.1.num_batches_tracked"] = Tensor(st, [])
    root = state if top_level_key is None else {top_level_key: state, "epoch": 1}
    import io

    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(root)
    arc = os.path.splitext(os.path.basename(path))[0].replace(".", "_")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(arc + "/data.pkl", buf.getvalue())
        z.writestr(arc + "/byteorder", "little")
        for st in storages:
            z.writestr(arc + "/data/" + st.key, pack(st.dtype, st.vals))
        z.writestr(arc + "/version", "3\n")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    src = sys.argv[1]
    meta, tensors = read_safetensors(src)
    assert meta and meta.get("format") == "xca", "an xca checkpoint"
    st_dir = os.path.join(ROOT, "fuzz/corpus/safetensors")
    pth_dir = os.path.join(ROOT, "fuzz/corpus/pth")
    test_dir = os.path.join(ROOT, "tests/data/pth")
    for d in (st_dir, pth_dir, test_dir):
        os.makedirs(d, exist_ok=True)
    shutil.copyfile(src, os.path.join(st_dir, "xca_f32.safetensors"))
    write_safetensors(
        os.path.join(st_dir, "xca_f16.safetensors"),
        [(n, "F16", s, v) for n, _, s, v in tensors],
        meta,
    )
    named = torch_names(tensors)
    write_safetensors(
        os.path.join(st_dir, "torch_names.safetensors"), [(k, "F32", s, v) for k, s, v in named], None
    )
    write_pth(os.path.join(pth_dir, "tiny.pth.tar"), named, "state_dict_ema")
    write_pth(os.path.join(pth_dir, "bare_f64.pth"), named, None, dtype="F64")
    nan_key = sorted(k for k, _, _ in named)[0]
    write_pth(os.path.join(test_dir, "tiny_nan.pth.tar"), named, "state_dict_ema", nan_at=nan_key)
    print("NaN in", nan_key)


if __name__ == "__main__":
    main()
