"""The ctypes mirrors of _native.py against the C headers as the compiler lays them out
(python/tests/struct_layout.c, built by ctest, path in SQZ_LAYOUT): same size, every field at
the same offset. A field added to a header without the mirror fails here."""

import ctypes
import os
import subprocess

import pytest

from squeezebert import _native


def test_mirrors_match_the_headers():
    program = os.environ.get("SQZ_LAYOUT")
    if not program:
        pytest.skip("SQZ_LAYOUT (the struct_layout program) is not set: run through ctest")
    lines = subprocess.run([program], capture_output=True, check=True, text=True).stdout.split("\n")
    layout = dict(line.split(" ") for line in lines if line)
    assert sorted(k for k in layout if "." not in k) == sorted(_native.MIRRORS)
    for c_name, mirror in _native.MIRRORS.items():
        assert ctypes.sizeof(mirror) == int(layout[c_name]), f"{c_name}: size"
        fields = [f[0] for f in mirror._fields_]
        assert sorted(fields) == sorted(k.split(".")[1] for k in layout if k.startswith(c_name + ".")), c_name
        for field in fields:
            assert getattr(mirror, field).offset == int(layout[f"{c_name}.{field}"]), f"{c_name}.{field}"

