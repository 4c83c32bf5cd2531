#!/usr/bin/env python3
"""Writes the checkpoint fixtures for tests/test_tensor_file.c.

Needs PyTorch and safetensors:  pip install torch safetensors
Run from anywhere:               python3 tools/gen_tensor_file_fixtures.py [OUT_DIR]
(OUT_DIR defaults to tests/fixtures/tensor_files next to this script's repository.)

Every checkpoint is written by torch.save / safetensors themselves, and next to each one
goes NAME.json with what torch says the file holds: for each tensor, in file order, its
dtype, shape and values as tensor.float().flatten().tolist() (non-finite values as the
strings "inf", "-inf", "nan"; null for integer tensors, which the C reader only lists).
The C test compares its reader against these, so the expectations never come from the
code under test. f16_bf16_conversions.json holds torch's own fp32 -> fp16/bf16 roundings.

The files are deliberately tiny (a few KB): a 4-wide toy model with the SqueezeBERT
naming (grouped Conv1d weights [O, I/g, 1], a decoder tied to the word embeddings, an
int64 position_ids buffer), views that share and stride through storages, and the
legacy and malicious files the reader must refuse.
"""
import collections
import json
import math
import os
import struct
import sys

import torch
from safetensors.torch import save_file

DTYPE_NAMES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def float_list(t):
    out = []
    for v in t.detach().float().flatten().tolist():
        if math.isnan(v):
            out.append("nan")
        elif math.isinf(v):
            out.append("inf" if v > 0 else "-inf")
        else:
            out.append(v)
    return out


def describe(state):
    entries = []
    for name, t in state.items():
        is_float = t.dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64)
        entries.append({
            "name": name,
            "dtype": DTYPE_NAMES[t.dtype],
            "shape": list(t.shape),
            "values": float_list(t) if is_float else None,
        })
    return {"tensors": entries}


def write_json(path, obj):
    # One list item per line: small files that still diff readably.
    ((key, items),) = obj.items()
    with open(path, "w") as f:
        f.write('{"%s": [\n' % key)
        f.write(",\n".join(json.dumps(item, separators=(",", ":")) for item in items))
        f.write("\n]}\n")


class TinySqueezeBert(torch.nn.Module):
    """The parameter names and layouts of SqueezeBertForMaskedLM, at a toy size."""

    def __init__(self):
        super().__init__()
        hidden, vocab, positions = 4, 10, 6
        self.embeddings = torch.nn.Module()
        self.embeddings.word_embeddings = torch.nn.Embedding(vocab, hidden)
        self.embeddings.position_embeddings = torch.nn.Embedding(positions, hidden)
        self.embeddings.LayerNorm = torch.nn.LayerNorm(hidden)
        # Old transformers versions saved this int64 buffer; readers must list it.
        self.embeddings.register_buffer(
            "position_ids", torch.arange(positions).expand((1, -1)), persistent=True)
        layer = torch.nn.Module()
        layer.attention = torch.nn.Module()
        layer.attention.query = torch.nn.Conv1d(hidden, hidden, 1, groups=2)
        self.encoder = torch.nn.Module()
        self.encoder.layers = torch.nn.ModuleList([layer])
        self.cls = torch.nn.Module()
        self.cls.predictions = torch.nn.Module()
        self.cls.predictions.decoder = torch.nn.Linear(hidden, vocab, bias=False)
        self.cls.predictions.bias = torch.nn.Parameter(torch.randn(vocab))
        # Tied, as in transformers: the two names share one storage in the state dict.
        self.cls.predictions.decoder.weight = self.embeddings.word_embeddings.weight


def save_bin(out_dir, name, state, **kwargs):
    path = os.path.join(out_dir, name + ".bin")
    torch.save(state, path, **kwargs)
    write_json(os.path.join(out_dir, name + ".json"), describe(state))


def save_st(out_dir, name, state):
    path = os.path.join(out_dir, name + ".safetensors")
    save_file({k: v.contiguous() for k, v in state.items()}, path, metadata={"format": "pt"})
    os.chmod(path, 0o644)  # safetensors creates files private; fixtures are plain files
    # save_file orders the header itself; describe the tensors in the file's order.
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        order = [k for k in json.loads(f.read(n)) if k != "__metadata__"]
    write_json(os.path.join(out_dir, name + ".json"),
               describe(collections.OrderedDict((k, state[k]) for k in order)))


def special_f16():
    # inf, nan, subnormals (smallest, largest), the largest finite, -0, a normal min.
    bits = [0x7C00, 0xFC00, 0x7E00, 0x0001, 0x03FF, 0x8001, 0x7BFF, 0x8000, 0x0400, 0x3C00]
    signed = [b - 0x10000 if b >= 0x8000 else b for b in bits]
    return torch.tensor(signed, dtype=torch.int16).view(torch.float16)


def conversions():
    """torch's fp32 -> fp16 / bf16 rounding for edge cases and random values."""
    g = torch.Generator().manual_seed(1)
    bits = [
        0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001,
        0x3F800000,  # 1.0
        0x3F801000,  # 1 + 2^-11: a tie between halves 1.0 and 1+2^-10, to even (1.0)
        0x3F803000,  # 1 + 3*2^-11: a tie, to even (up)
        0x3F801001, 0x3F800FFF,
        0x477FE000,  # 65504, the largest half
        0x477FEFFF,  # just below the overflow point
        0x477FF000,  # 65520: rounds to inf
        0x33000000,  # 2^-25: a tie between 0 and the smallest subnormal, to 0
        0x33000001,  # just above: the smallest subnormal
        0x33C00000,  # 3 * 2^-25: a tie, to even (2 * 2^-24)
        0x387FC000,  # just below the smallest normal half
        0x387FF000,  # a value that rounds up into the smallest normal
        0x38800000,  # 2^-14, the smallest normal half
        0x00000001, 0x007FFFFF,  # fp32 subnormals
        0x7F7FFFFF,  # FLT_MAX: bf16 rounds to inf
        0x7F7F7FFF, 0x7F7F8000,  # bf16: below and at the overflow tie
        0x3F808000, 0x3F818000,  # bf16 ties (to even: down, up)
    ]
    rand = torch.randint(0, 2**32, (150,), generator=g, dtype=torch.int64).tolist()
    # Random bit patterns are mostly huge or tiny: add values in the half range too.
    mid = (torch.randn(100, generator=g) * 1000).view(torch.int32).tolist()
    bits += rand + [b & 0xFFFFFFFF for b in mid]
    as_float = torch.tensor([b - (1 << 32) if b >= 1 << 31 else b for b in bits],
                            dtype=torch.int32).view(torch.float32)
    f16 = as_float.to(torch.float16).view(torch.int16).tolist()
    bf16 = as_float.to(torch.bfloat16).view(torch.int16).tolist()
    return {"cases": [{"f32": b, "f16": h & 0xFFFF, "bf16": o & 0xFFFF}
                      for b, h, o in zip(bits, f16, bf16)]}


class Evil:
    """What a malicious checkpoint does: unpickling would call os.system."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        here, "..", "tests", "fixtures", "tensor_files")
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(0)

    model = TinySqueezeBert()
    with torch.no_grad():
        model.embeddings.word_embeddings.weight[0, 0] = 1e-3  # widen the value range
    sd = model.state_dict()  # an OrderedDict carrying _metadata, as save_pretrained saves
    assert hasattr(sd, "_metadata")
    assert (sd["cls.predictions.decoder.weight"].untyped_storage().data_ptr()
            == sd["embeddings.word_embeddings.weight"].untyped_storage().data_ptr())
    save_bin(out_dir, "model_fp32", sd)

    half = TinySqueezeBert()
    half.load_state_dict(sd)
    half = half.half()
    half.register_buffer("special", special_f16())
    save_bin(out_dir, "model_fp16", half.state_dict())

    bf = TinySqueezeBert()
    bf.load_state_dict(sd)
    save_bin(out_dir, "model_bf16", bf.to(torch.bfloat16).state_dict())

    # Views: shared storage, transposes, offsets, zero strides, and a Parameter.
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4) / 8 - 0.5
    h = torch.linspace(-2, 2, 8).to(torch.float16)
    views = {
        "base": base,
        "transposed": base.t(),
        "row": base[1],
        "column": base[:, 2],
        "block": base[1:, 1:3],
        "expanded": torch.arange(3, dtype=torch.float32).expand(2, 3),
        "half_slice": h[3:7],
        "double": torch.tensor([1.5, -2.25, 1e-50, 1e300], dtype=torch.float64),
        "scalar": torch.tensor(3.25),
        "empty": torch.zeros(0, 3),
        "param": torch.nn.Parameter(torch.tensor([0.5, -0.5])),
        "flags": torch.tensor([True, False]),
    }
    save_bin(out_dir, "views", views)

    # Protocol 4 pickles (FRAME, SHORT_BINUNICODE, MEMOIZE, STACK_GLOBAL).
    save_bin(out_dir, "proto4", collections.OrderedDict(
        [("w", torch.tensor([[1.0, 2.0], [3.0, 4.0]])), ("b", torch.tensor([0.25]))]),
        pickle_protocol=4)

    for name, dtype in (("st_f32", torch.float32), ("st_f16", torch.float16),
                        ("st_bf16", torch.bfloat16)):
        st = collections.OrderedDict()
        for k, v in sd.items():
            if k == "cls.predictions.decoder.weight":
                continue  # tied: safetensors stores it once, as save_pretrained does
            st[k] = v.to(dtype) if v.is_floating_point() else v
        if dtype == torch.float16:
            st["special"] = special_f16()
        save_st(out_dir, name, st)

    # The legacy (pre-1.6) format, which the 2019-2020 hub uploads use: the same state dicts
    # as the zip files above, so their .json expectations apply unchanged.
    torch.save(collections.OrderedDict(a=torch.ones(2)), os.path.join(out_dir, "legacy.bin"),
               _use_new_zipfile_serialization=False)
    for name in ("model_fp32", "model_fp16", "views"):
        sd = torch.load(os.path.join(out_dir, name + ".bin"), weights_only=True)
        torch.save(sd, os.path.join(out_dir, name + "_legacy.bin"), _use_new_zipfile_serialization=False)

    # Files the reader must refuse.
    torch.save({"x": Evil()}, os.path.join(out_dir, "evil_reduce.bin"))

    write_json(os.path.join(out_dir, "f16_bf16_conversions.json"), conversions())


if __name__ == "__main__":
    main()
