#!/usr/bin/env python3
"""Derives legacy-format (torch.save before 1.6, as the 2019-2020 hub uploads are) copies of
some model fixtures: the same state dict re-saved with _use_new_zipfile_serialization=False,
so the source case's input.json and expected.json apply unchanged. Run after
tools/gen_fixtures.py (tools/gen_fixtures.sh does); needs torch."""
import json
import os
import shutil
import sys

import torch

CASES = [("sqb-default/mlm-bin-f16", "sqb-default/mlm-bin-f16-legacy"),
         ("bert/seqcls-bin", "bert/seqcls-bin-legacy")]


def main(root):
    manifest_path = os.path.join(root, "manifest.json")
    manifest = json.load(open(manifest_path))
    by_dir = {c["dir"]: c for c in manifest}
    for src, dst in CASES:
        s, d = os.path.join(root, src), os.path.join(root, dst)
        os.makedirs(d, exist_ok=True)
        state = torch.load(os.path.join(s, "pytorch_model.bin"), weights_only=True)
        torch.save(state, os.path.join(d, "pytorch_model.bin"), _use_new_zipfile_serialization=False)
        for name in ("config.json", "input.json", "expected.json"):
            shutil.copy(os.path.join(s, name), d)
        entry = dict(by_dir[src], dir=dst, format=by_dir[src]["format"] + "-legacy")
        by_dir[dst] = entry
        if all(c["dir"] != dst for c in manifest):
            manifest.append(entry)
    with open(manifest_path, "w") as f:
        f.write("[\n" + ",\n".join("  " + json.dumps(c) for c in manifest) + "\n]\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "models"))
