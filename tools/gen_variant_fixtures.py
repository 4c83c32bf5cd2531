#!/usr/bin/env python3
"""Reference fixtures for the SqueezeBERT variants of docs/variants.md, computed with PyTorch and
transformers' own SqueezeBERT modules, independently of the engine:

  * linear attention: every layer's self-attention forward is replaced by the kernel-feature-map
    attention of Katharopoulos et al. (2020) with f(x) = elu(x) + 1, written here with einsum;
  * cross-layer sharing: the encoder's module list holds the same module object for every layer
    of a group, and the checkpoint stores the first layer of each group only;
  * layer reduction: the encoder's module list keeps the selected layers of a full checkpoint.

Each case directory under tests/fixtures/models/variants/ gets config.json (with the engine's
sqz_* keys), model.safetensors, input.json and expected.json in the format of
tools/gen_fixtures.py; manifest.json lists them. Run it through tools/gen_fixtures.sh's venv
(pinned torch, transformers, safetensors, numpy):

    SQZ_FIXTURE_VENV=/path/venv tools/gen_fixtures.sh   # once, to make the venv
    /path/venv/bin/python tools/gen_variant_fixtures.py [--out DIR]
"""

import argparse
import json
import os
import zlib

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import SqueezeBertConfig, SqueezeBertModel

FLOAT_FMT = ".9g"
BASE = dict(vocab_size=100, hidden_size=64, embedding_size=64, num_hidden_layers=4, num_attention_heads=4,
            intermediate_size=128, max_position_embeddings=64, type_vocab_size=3, q_groups=2, k_groups=2,
            v_groups=2, post_attention_groups=1, intermediate_groups=4, output_groups=4, pad_token_id=0)

# name -> the engine's config keys for the variant
CASES = {
    "linear": {"sqz_attention": "linear"},
    "share-all": {"sqz_share_layers": 4},
    "share-2-linear": {"sqz_share_layers": 2, "sqz_attention": "linear"},
    "run-2-layers": {"sqz_run_layers": 2},
    "stride-2": {"sqz_layer_stride": 2},
    "stride-3-run-1-share-2": {"sqz_layer_stride": 3, "sqz_run_layers": 1, "sqz_share_layers": 2},
}


def linear_attention_forward(valid):
    """A forward for SqueezeBertSelfAttention with linear attention; `valid` is a one-element list
    holding the [N, W] key mask of the current batch (1 = a real key)."""

    def forward(self, hidden_states, attention_mask, output_attentions):
        q = self.transpose_for_scores(self.query(hidden_states))  # [N, heads, W, d]
        k = self.transpose_for_scores(self.key(hidden_states))
        v = self.transpose_for_scores(self.value(hidden_states))
        fq, fk = F.elu(q) + 1.0, F.elu(k) + 1.0
        fk = fk * valid[0][:, None, :, None].to(fk.dtype)  # padded keys contribute nothing
        kv = torch.einsum("nhwd,nhwe->nhde", fk, v)
        z = fk.sum(dim=2)
        num = torch.einsum("nhwd,nhde->nhwe", fq, kv)
        den = torch.einsum("nhwd,nhd->nhw", fq, z)[..., None]
        return {"context_layer": self.transpose_output(num / den)}

    return forward


def seeded_model(name):
    torch.manual_seed(zlib.crc32(name.encode()))
    model = SqueezeBertModel(SqueezeBertConfig(**BASE)).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "LayerNorm" in pname or "layernorm" in pname:
                p.copy_((1.0 if pname.endswith("weight") else 0.0) + 0.1 * torch.randn_like(p))
            elif p.dim() >= 2 and "embeddings" not in pname:
                p.copy_(torch.randn_like(p) / (p.shape[1] ** 0.5))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    return model


def run_layers(keys, total):
    """The checkpoint layers a run uses, in order (docs/variants.md)."""
    stride = keys.get("sqz_layer_stride", 1)
    selected = list(range(0, total, stride))
    n = keys.get("sqz_run_layers", len(selected))
    return selected[:n]


def fmt(t):
    return ",".join(format(float(x), FLOAT_FMT) for x in t.reshape(-1).tolist())


def make_case(out_dir, name, keys):
    model = seeded_model(name)
    layers = model.encoder.layers
    share = keys.get("sqz_share_layers", 0)
    total = len(layers)
    # sharing: layer l is the module of layer l - l % share (one object, one set of weights)
    if share:
        layers = torch.nn.ModuleList(layers[l - l % share] for l in range(total))
    stored = {l - l % share for l in range(total)} if share else set(range(total))
    state = {k: v.contiguous() for k, v in model.state_dict().items()
             if not k.startswith("encoder.layers.") or int(k.split(".")[2]) in stored}
    model.encoder.layers = torch.nn.ModuleList(layers[l] for l in run_layers(keys, total))
    valid = [None]
    if keys.get("sqz_attention") == "linear":
        for layer in model.encoder.layers:
            layer.attention.forward = linear_attention_forward(valid).__get__(layer.attention)

    gen = torch.Generator().manual_seed(zlib.crc32(("input-" + name).encode()))
    batch, seq = 3, 11
    ids = torch.randint(1, BASE["vocab_size"], (batch, seq), generator=gen)
    types = torch.randint(0, BASE["type_vocab_size"], (batch, seq), generator=gen)
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[1, 7:] = 0  # a shorter sequence
    mask[2, 4] = 0   # a masked key inside a sequence
    valid[0] = mask
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, token_type_ids=types)

    case = os.path.join(out_dir, name)
    os.makedirs(case, exist_ok=True)
    config = model.config.to_dict()
    config.update(keys, architectures=["SqueezeBertModel"], model_type="squeezebert")
    config["num_hidden_layers"] = total  # the checkpoint's count; the sqz_* keys select
    for k in ("transformers_version", "_name_or_path", "torch_dtype", "dtype"):
        config.pop(k, None)
    with open(os.path.join(case, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    save_file(state, os.path.join(case, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(case, "input.json"), "w") as f:
        rows = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        f.write("{\n" + ",\n".join(f'  "{k}": {json.dumps(v.tolist(), separators=(",", ":"))}'
                                    for k, v in rows.items()) + "\n}\n")
    outputs = {"last_hidden_state": out.last_hidden_state, "pooler_output": out.pooler_output}
    with open(os.path.join(case, "expected.json"), "w") as f:
        f.write('{\n  "outputs": {\n' + ",\n".join(
            f'    "{k}": {{"shape": {json.dumps(list(t.shape))}, "data": [{fmt(t)}]}}' for k, t in outputs.items())
            + "\n  }\n}\n")
    return {"dir": "variants/" + name, "config": "variants", "head": "base", "format": "safetensors",
            "architecture": "SqueezeBertModel", "variant": keys}


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.join(here, "..", "tests", "fixtures", "models", "variants"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    manifest = [make_case(args.out, name, keys) for name, keys in CASES.items()]
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        f.write("[\n" + ",\n".join("  " + json.dumps(m) for m in manifest) + "\n]\n")
    print(f"wrote {len(manifest)} cases to {args.out}")


if __name__ == "__main__":
    main()
