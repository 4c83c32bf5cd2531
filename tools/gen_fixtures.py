#!/usr/bin/env python3
"""Generate the reference fixtures for the SqueezeBERT / BERT inference engine tests.

For every (config, head) pair this script builds a tiny transformers model, overwrites every
parameter with seeded random values (so biases and LayerNorm parameters are non-trivial), saves
it in several on-disk formats and records the outputs transformers itself computes in fp32
eval mode (eager attention, no grad) on a small seeded input batch.

Layout written under the output directory (default: tests/fixtures/models next to this repo):

    <config>/<head>-<format>/config.json        model config (as transformers writes it)
    <config>/<head>-<format>/model.safetensors  or pytorch_model.bin
    <config>/<head>-<format>/input.json         input_ids / attention_mask / token_type_ids
    <config>/<head>-<format>/expected.json      every output tensor, shape + flat row-major data
    manifest.json                               list of all cases

Afterwards every case directory is reloaded with from_pretrained (fp32) and recomputed; the
script fails if any output differs from what was written.

Notes on transformers 5.x:
  * save_pretrained() only writes safetensors (the safe_serialization switch is gone and an
    unknown keyword is silently swallowed), so the "*-bin" cases are written with torch.save of
    the model's state_dict(), which is what transformers 4.x did for safe_serialization=False
    (tied tensors keep both keys and share one storage in the pickle).
  * Models are created and loaded with dtype=torch.float32 explicitly.

Usage: python tools/gen_fixtures.py [--out DIR] [--no-verify] [--dump-keys]
"""

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import zlib

import torch
import transformers
from transformers import BertConfig, SqueezeBertConfig

FLOAT_FMT = ".9g"
BATCH = 3
SEQ = 9
MC_BATCH, MC_CHOICES, MC_SEQ = 2, 3, 7

# ----------------------------------------------------------------------------------------------
# Configurations (directory names are fixed; the C tests refer to them)
# ----------------------------------------------------------------------------------------------
CONFIGS = {
    "sqb-default": (
        "squeezebert",
        dict(
            vocab_size=120,
            hidden_size=64,
            embedding_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=256,
            max_position_embeddings=32,
            type_vocab_size=2,
            # default grouping spelled out
            q_groups=4,
            k_groups=4,
            v_groups=4,
            post_attention_groups=1,
            intermediate_groups=4,
            output_groups=4,
        ),
    ),
    # transformers' own SqueezeBERT unit-test config (SqueezeBertModelTester)
    "sqb-hf-test": (
        "squeezebert",
        dict(
            vocab_size=99,
            hidden_size=32,
            embedding_size=32,
            num_hidden_layers=5,
            num_attention_heads=4,
            intermediate_size=64,
            hidden_act="gelu",
            max_position_embeddings=512,
            type_vocab_size=16,
            q_groups=2,
            k_groups=2,
            v_groups=2,
            post_attention_groups=2,
            intermediate_groups=4,
            output_groups=1,
        ),
    ),
    "sqb-odd": (
        "squeezebert",
        dict(
            vocab_size=77,
            hidden_size=60,
            embedding_size=60,
            num_hidden_layers=3,
            num_attention_heads=5,
            intermediate_size=90,
            max_position_embeddings=24,
            type_vocab_size=3,
            layer_norm_eps=1e-3,
            q_groups=3,
            k_groups=5,
            v_groups=1,
            post_attention_groups=2,
            intermediate_groups=3,
            output_groups=5,
        ),
    ),
    "bert": (
        "bert",
        dict(
            vocab_size=110,
            hidden_size=48,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=96,
            max_position_embeddings=40,
            type_vocab_size=2,
            layer_norm_eps=1e-3,
            hidden_act="gelu",
        ),
    ),
}

# head directory name -> (class-name suffix, extra config kwargs)
HEADS = {
    "base": ("Model", {}),
    "seqcls": ("ForSequenceClassification", {"num_labels": 3}),
    "tokcls": ("ForTokenClassification", {"num_labels": 4}),
    "qa": ("ForQuestionAnswering", {}),
    "mc": ("ForMultipleChoice", {}),
    "mlm": ("ForMaskedLM", {}),
}

# One config gets human-readable labels (the usual MNLI order guess)
CUSTOM_ID2LABEL = {("sqb-default", "seqcls"): {0: "contradiction", 1: "neutral", 2: "entailment"}}

# Extra formats: (config, head) -> list of formats beyond safetensors/bin
SPECIAL = {
    ("sqb-default", "mlm"): ["bin-f16"],
    ("sqb-hf-test", "seqcls"): ["safetensors-bf16"],
    ("bert", "seqcls"): ["bin-gamma"],
}

CLASS_PREFIX = {"squeezebert": "SqueezeBert", "bert": "Bert"}
CONFIG_CLASS = {"squeezebert": SqueezeBertConfig, "bert": BertConfig}


def case_seed(cfg_name, head):
    return zlib.crc32(f"{cfg_name}/{head}".encode()) & 0x7FFFFFFF


# ----------------------------------------------------------------------------------------------
# Model construction
# ----------------------------------------------------------------------------------------------
def make_config(cfg_name, head):
    model_type, kw = CONFIGS[cfg_name]
    kw = dict(kw)
    kw.update(HEADS[head][1])
    if (cfg_name, head) in CUSTOM_ID2LABEL:
        id2label = CUSTOM_ID2LABEL[(cfg_name, head)]
        kw["id2label"] = dict(id2label)
        kw["label2id"] = {v: k for k, v in id2label.items()}
    return CONFIG_CLASS[model_type](**kw)


def arch_name(cfg_name, head):
    return CLASS_PREFIX[CONFIGS[cfg_name][0]] + HEADS[head][0]


def randomize_(model, gen):
    """Overwrite every parameter with fresh random values (tied parameters are visited once)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            is_ln = ".LayerNorm." in name or ".layernorm." in name
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if is_ln and leaf == "weight":
                val = 1.0 + 0.1 * noise
            elif is_ln and leaf == "bias":
                val = 0.1 * noise
            elif ".embeddings." in name or name.startswith("embeddings."):
                val = 0.1 * noise
            elif leaf == "bias":  # includes cls.predictions.bias (= decoder.bias)
                val = 0.1 * noise
            else:
                # weight matrices ([out, in] Linear or [out, in/groups, 1] Conv1d): scale by fan-in so
                # pre-activations are O(1) and the GELU / tanh / softmax non-linearities really bend
                fan_in = p[0].numel()
                std = 1.0 / math.sqrt(fan_in)
                if any(s in name for s in (".query.", ".key.")):
                    std *= 1.5  # sharper, clearly non-uniform attention
                val = std * noise
            p.copy_(val)


def build_model(cfg_name, head, seed):
    torch.manual_seed(seed)
    config = make_config(cfg_name, head)
    cls = getattr(transformers, arch_name(cfg_name, head))
    model = cls._from_config(config, attn_implementation="eager", dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    randomize_(model, gen)
    model.eval()
    return model


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------
def make_rows(gen, n_rows, seq, vocab, type_vocab, lengths, mid_mask_row):
    """Token rows: ids over [0, vocab), right padding per `lengths`, one row with key 4 masked."""
    ids = torch.randint(0, vocab, (n_rows, seq), generator=gen)
    # make sure both ends of the vocabulary are exercised
    ids[0, seq - 1] = vocab - 1
    ids[n_rows - 1, 1] = 0
    n_types = 3 if type_vocab == 3 else 2  # 0/1 pairs; 0/1/2 for the type_vocab 3 config
    types = torch.randint(0, n_types, (n_rows, seq), generator=gen)
    types[:, 0] = 0
    # guarantee every allowed type id appears
    for t in range(n_types):
        types[0, seq - 1 - t] = t
    mask = torch.ones(n_rows, seq, dtype=torch.long)
    for r, L in enumerate(lengths):
        mask[r, L:] = 0
    mask[mid_mask_row, :] = 1
    mask[mid_mask_row, 4] = 0
    return ids, mask, types


def make_inputs(cfg_name, head, seed):
    _, kw = CONFIGS[cfg_name]
    gen = torch.Generator().manual_seed(seed + 1)
    vocab, tv = kw["vocab_size"], kw["type_vocab_size"]
    if head == "mc":
        n = MC_BATCH * MC_CHOICES
        # rows: full, padded to 5, middle-masked, padded to 4, full, padded to 6
        ids, mask, types = make_rows(gen, n, MC_SEQ, vocab, tv, [MC_SEQ, 5, MC_SEQ, 4, MC_SEQ, 6], 2)
        shape = (MC_BATCH, MC_CHOICES, MC_SEQ)
        ids, mask, types = ids.view(shape), mask.view(shape), types.view(shape)
    else:
        # rows: full length, padded to 6, middle-masked (key 4 only)
        ids, mask, types = make_rows(gen, BATCH, SEQ, vocab, tv, [SEQ, 6, SEQ], 2)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


# ----------------------------------------------------------------------------------------------
# Running and serialising
# ----------------------------------------------------------------------------------------------
def run_model(model, inputs):
    with torch.no_grad():
        out = model(**inputs, return_dict=True)
    res = {}
    for k, v in out.items():
        if isinstance(v, torch.Tensor):
            res[k] = v.detach().to(torch.float32).contiguous()
        elif v is not None:
            raise RuntimeError(f"unexpected non-tensor output {k}")
    return res


def fmt_tensor(t):
    vals = t.reshape(-1).tolist()
    out = []
    for x in vals:
        if x != x or x in (float("inf"), float("-inf")):
            raise RuntimeError("non-finite output value")
        out.append(format(x, FLOAT_FMT))
    return out


def write_json_inputs(path, inputs):
    with open(path, "w") as f:
        f.write("{\n")
        keys = ["input_ids", "attention_mask", "token_type_ids"]
        for i, k in enumerate(keys):
            f.write(f'  "{k}": {json.dumps(inputs[k].tolist(), separators=(",", ":"))}')
            f.write(",\n" if i + 1 < len(keys) else "\n")
        f.write("}\n")


def write_expected(path, outputs):
    parts = []
    for name, t in outputs.items():
        parts.append(
            f'    "{name}": {{"shape": {json.dumps(list(t.shape))}, "data": [' + ",".join(fmt_tensor(t)) + "]}"
        )
    with open(path, "w") as f:
        f.write('{\n  "outputs": {\n' + ",\n".join(parts) + "\n  },\n")
        f.write(f'  "transformers": "{transformers.__version__}",\n')
        f.write(f'  "torch": "{torch.__version__}"\n}}\n')


def clean_dir(d):
    """Drop anything save_pretrained may add that the fixtures do not need."""
    keep = {"config.json", "model.safetensors", "pytorch_model.bin", "input.json", "expected.json"}
    for fn in os.listdir(d):
        if fn not in keep:
            p = os.path.join(d, fn)
            shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)


def save_safetensors(model, d):
    model.save_pretrained(d)
    clean_dir(d)
    assert os.path.isfile(os.path.join(d, "model.safetensors")), d


def save_bin(model, d, state_dict=None):
    """pytorch_model.bin as transformers 4.x wrote it with safe_serialization=False: torch.save of the
    full state_dict (tied tensors appear under every name and share a storage), plus config.json."""
    os.makedirs(d, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)  # only to get the exact config.json (architectures, dtype)
        shutil.copy(os.path.join(tmp, "config.json"), os.path.join(d, "config.json"))
    sd = model.state_dict() if state_dict is None else state_dict
    torch.save(sd, os.path.join(d, "pytorch_model.bin"))
    clean_dir(d)


def gamma_state_dict(model, max_pos):
    sd = model.state_dict()
    out = type(sd)()
    for k, v in sd.items():
        if ".LayerNorm." in k and k.endswith(".weight"):
            k = k[: -len(".weight")] + ".gamma"
        elif ".LayerNorm." in k and k.endswith(".bias"):
            k = k[: -len(".bias")] + ".beta"
        out[k] = v
    out["bert.embeddings.position_ids"] = torch.arange(max_pos, dtype=torch.int64).unsqueeze(0)
    out["bert.unused_extra.weight"] = torch.full((4, 3), 7.0)
    return out


def load_case(d, arch, own_memory=True):
    """from_pretrained in fp32 (eager attention).  With own_memory, every parameter and buffer is copied
    into a fresh allocation: safetensors tensors are memory-mapped at offsets that are not 64-byte
    aligned, and CPU GEMV/GEMM kernels can then round differently (1 ulp), so exact comparisons are made
    on owned copies.  Tied parameters are the same Parameter object, so ties survive the copy."""
    cls = getattr(transformers, arch)
    model, info = cls.from_pretrained(
        d, dtype=torch.float32, attn_implementation="eager", output_loading_info=True
    )
    if own_memory:
        with torch.no_grad():
            for p in model.parameters():
                p.data = p.data.clone()
            for mod in model.modules():
                for bname, b in list(mod._buffers.items()):
                    if b is not None:
                        mod._buffers[bname] = b.clone()
    model.eval()
    return model, info


def to_tensor_inputs(js):
    return {k: torch.tensor(v, dtype=torch.long) for k, v in js.items()}


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------
def generate(out_root):
    manifest = []
    for cfg_name in CONFIGS:
        cfg_dir = os.path.join(out_root, cfg_name)
        if os.path.isdir(cfg_dir):
            shutil.rmtree(cfg_dir)
        os.makedirs(cfg_dir)
        for head in HEADS:
            seed = case_seed(cfg_name, head)
            arch = arch_name(cfg_name, head)
            model = build_model(cfg_name, head, seed)
            inputs = make_inputs(cfg_name, head, seed)
            outputs = run_model(model, inputs)

            def emit(fmt, outs):
                d = os.path.join(cfg_dir, f"{head}-{fmt}")
                write_json_inputs(os.path.join(d, "input.json"), inputs)
                write_expected(os.path.join(d, "expected.json"), outs)
                manifest.append(
                    {"dir": f"{cfg_name}/{head}-{fmt}", "config": cfg_name, "head": head, "format": fmt,
                     "architecture": arch}
                )

            save_safetensors(model, os.path.join(cfg_dir, f"{head}-safetensors"))
            emit("safetensors", outputs)
            save_bin(model, os.path.join(cfg_dir, f"{head}-bin"))
            emit("bin", outputs)

            for fmt in SPECIAL.get((cfg_name, head), []):
                d = os.path.join(cfg_dir, f"{head}-{fmt}")
                if fmt == "bin-f16":
                    half = build_model(cfg_name, head, seed).half()
                    save_bin(half, d)
                    del half
                    outs = run_model(load_case(d, arch)[0], inputs)
                elif fmt == "safetensors-bf16":
                    bf = build_model(cfg_name, head, seed).to(torch.bfloat16)
                    save_safetensors(bf, d)
                    del bf
                    outs = run_model(load_case(d, arch)[0], inputs)
                elif fmt == "bin-gamma":
                    os.makedirs(d)
                    sd = gamma_state_dict(model, CONFIGS[cfg_name][1]["max_position_embeddings"])
                    torch.save(sd, os.path.join(d, "pytorch_model.bin"))
                    # save_pretrained above already set architectures/dtype on this config object
                    model.config.save_pretrained(d)
                    clean_dir(d)
                    outs = outputs
                else:
                    raise ValueError(fmt)
                emit(fmt, outs)
            print(f"generated {cfg_name}/{head} ({arch}, seed {seed})", flush=True)

    with open(os.path.join(out_root, "manifest.json"), "w") as f:
        f.write("[\n" + ",\n".join("  " + json.dumps(m) for m in manifest) + "\n]\n")
    return manifest


def verify(out_root, manifest):
    """Reload every case with from_pretrained (fp32) and recompute; outputs must match the files."""
    failures = 0
    worst_mmap = 0.0
    print(f"\n{'case':40s} {'arch':38s} {'max|diff|':>10s}  loading notes")
    for m in manifest:
        d = os.path.join(out_root, m["dir"])
        with open(os.path.join(d, "input.json")) as f:
            inputs = to_tensor_inputs(json.load(f))
        with open(os.path.join(d, "expected.json")) as f:
            exp = json.load(f)["outputs"]
        model, info = load_case(d, m["architecture"])
        got = run_model(model, inputs)
        # as loaded (memory-mapped safetensors): may differ by rounding only
        mm = run_model(load_case(d, m["architecture"], own_memory=False)[0], inputs)
        mmdiff = max((mm[k] - got[k]).abs().max().item() for k in got)
        worst_mmap = max(worst_mmap, mmdiff)
        notes = []
        for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
            vals = info.get(key) or []
            if vals:
                notes.append(f"{key}={sorted(map(str, vals))}")
        ok = set(got) == set(exp)
        maxdiff = 0.0
        for name, t in got.items():
            if name not in exp:
                continue
            e = exp[name]
            if list(t.shape) != e["shape"]:
                ok = False
                continue
            ref = torch.tensor([float(x) for x in e["data"]], dtype=torch.float64).view(t.shape)
            maxdiff = max(maxdiff, (t.double() - ref).abs().max().item())
            if fmt_tensor(t) != [format(float(x), FLOAT_FMT) for x in e["data"]]:
                ok = False
        if info.get("missing_keys") or info.get("mismatched_keys"):
            ok = False
        if m["format"] == "bin-gamma":
            allowed = {"bert.unused_extra.weight", "bert.embeddings.position_ids",
                       "unused_extra.weight", "embeddings.position_ids"}
            if set(map(str, info.get("unexpected_keys") or [])) - allowed:
                ok = False
        elif info.get("unexpected_keys"):
            ok = False
        failures += not ok
        print(f"{m['dir']:40s} {m['architecture']:38s} {maxdiff:10.3g}  {'OK' if ok else 'FAIL'} {' '.join(notes)}")
    print(f"\n{len(manifest)} cases, {failures} failures (exact 9-digit match required)")
    print(f"largest difference when computing on the memory-mapped weights as loaded: {worst_mmap:.3g}")
    if worst_mmap > 1e-6:
        failures += 1
    return failures


def dump_keys(out_root, manifest):
    from safetensors import safe_open

    for m in manifest:
        d = os.path.join(out_root, m["dir"])
        print(f"\n== {m['dir']}")
        st = os.path.join(d, "model.safetensors")
        if os.path.isfile(st):
            with safe_open(st, "pt") as f:
                for k in f.keys():
                    t = f.get_slice(k)
                    print(f"  {k} {t.get_dtype()} {t.get_shape()}")
        else:
            sd = torch.load(os.path.join(d, "pytorch_model.bin"), map_location="cpu", weights_only=True)
            for k, v in sd.items():
                print(f"  {k} {v.dtype} {list(v.shape)} storage={v.untyped_storage().data_ptr():#x}")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(here, "..", "tests", "fixtures", "models"))
    ap.add_argument("--no-verify", action="store_true")
    ap.add_argument("--dump-keys", action="store_true", help="print the stored tensor names of every case")
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    out_root = os.path.abspath(args.out)
    os.makedirs(out_root, exist_ok=True)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, writing to {out_root}")

    manifest = generate(out_root)
    rc = 0
    if not args.no_verify:
        rc = 1 if verify(out_root, manifest) else 0
    if args.dump_keys:
        dump_keys(out_root, manifest)
    return rc


if __name__ == "__main__":
    sys.exit(main())
