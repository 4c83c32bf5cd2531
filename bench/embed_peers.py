#!/usr/bin/env python3
"""An embedding job, `sqz infer --task embed` against sentence-transformers, in the same run.

Embeds N mixed-length sentences (default 4,000) with a real sentence-transformers model
(default all-MiniLM-L6-v2, fetched by tools/fetch_minilm.sh) and reports lines/s of each:

- sqz: `sqz infer --model DIR --task embed --backend B --threads T` on a JSON Lines file; its
  own summary line gives lines/s over the wall time of the job after the model is loaded
  (tokenizing, batching, the forward passes, pooling, normalising and writing JSON all
  included).
- sentence-transformers: `SentenceTransformer(DIR, device="cpu").encode(texts, batch_size)`
  with `torch.set_num_threads(T)`, timed around `encode` alone (model loaded before), one
  warm-up call on 64 texts first. With --st-precisions fp32,bf16 also the model cast to
  torch.bfloat16 (torch's own bf16 kernels: the like-for-like peer of `sqz --precision bf16`).

Then every sqz embedding is compared with sentence-transformers' (max |difference|), so the
two rows did the same work. The sentences are made here, deterministically from --seed: words
drawn from the model's own vocabulary (whole words only), lengths from a log-normal with median
12 words and sigma 0.6, clamped to [3, 80] words (short queries to paragraph-long passages; a
model of search/retrieval text, not a measured trace). --rounds R repeats both and keeps each
one's best round.

    bench/embed_peers.py                          # cpu backend, every core
    bench/embed_peers.py --backends cpu,opencl --precisions fp32,bf16 --threads 2 --rounds 2 --json out.json

Needs the virtual environment of bench/peers.py with sentence-transformers installed in it
(`--venv DIR`; pip installs it there when missing).
"""
import argparse
import json
import math
import os
import random
import re
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ensure_venv(args):
    """Re-runs inside the peers' virtual environment, with sentence-transformers in it."""
    if args.no_venv or os.environ.get("SQZ_PEERS_IN_VENV") == "1":
        return
    py = os.path.join(os.path.abspath(args.venv), "bin", "python")
    if not os.path.exists(py):
        subprocess.run([sys.executable, os.path.join(REPO, "bench", "peers.py"), "--setup-only",
                        "--venv", args.venv], check=True)
    if subprocess.run([py, "-c", "import sentence_transformers"], capture_output=True).returncode:
        print("embed_peers: installing sentence-transformers (pip)", file=sys.stderr)
        subprocess.run([py, "-m", "pip", "install", "--quiet", "sentence-transformers"], check=True)
    env = dict(os.environ, SQZ_PEERS_IN_VENV="1")
    os.execve(py, [py, os.path.abspath(__file__), *sys.argv[1:]], env)


def vocabulary_words(model_dir):
    """Whole lower-case words of the model's WordPiece vocabulary (tokenizer.json or vocab.txt)."""
    words = []
    tj = os.path.join(model_dir, "tokenizer.json")
    if os.path.exists(tj):
        with open(tj, encoding="utf-8") as f:
            words = list(json.load(f)["model"]["vocab"].keys())
    else:
        with open(os.path.join(model_dir, "vocab.txt"), encoding="utf-8") as f:
            words = [w.rstrip("\n") for w in f]
    return [w for w in words if re.fullmatch(r"[a-z]{2,}", w)]


def make_sentences(model_dir, n, seed):
    rng = random.Random(seed)
    words = vocabulary_words(model_dir)
    out = []
    for _ in range(n):
        k = min(80, max(3, round(math.exp(math.log(12) + 0.6 * rng.gauss(0, 1)))))
        s = " ".join(rng.choice(words) for _ in range(k))
        out.append(s[0].upper() + s[1:] + rng.choice([".", ".", ".", "?", "!"]))
    return out


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def run_sqz(args, model_dir, backend, precision, inp, work):
    out = os.path.join(work, f"sqz-{backend}-{precision}.jsonl")
    cmd = [args.sqz, "infer", "--model", model_dir, "--task", "embed", "--backend", backend,
           "--precision", precision, "--input", inp, "--output", out]
    if backend == "cpu":
        cmd += ["--threads", str(args.threads)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"embed_peers: {' '.join(cmd)} failed:\n{res.stderr}")
    m = re.search(r"in ([0-9.]+) s: ([0-9.]+) lines/s", res.stderr)
    with open(out) as f:
        embeddings = [json.loads(line)["embedding"] for line in f]
    summary = [line for line in res.stderr.splitlines() if "lines/s" in line][-1]
    return {"seconds": float(m.group(1)), "lines_per_s": float(m.group(2)), "summary": summary,
            "command": " ".join(cmd)}, embeddings


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sqz", default=os.path.join(REPO, "build", "sqz"))
    ap.add_argument("--model", help="a sentence-transformers folder (default: tools/fetch_minilm.sh)")
    ap.add_argument("--backends", default="cpu", help="sqz backends, comma-separated")
    ap.add_argument("--precisions", default="fp32",
                    help="sqz precisions, comma-separated (a backend that lacks one is left out)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--sentences", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32, help="sentence-transformers' encode batch")
    ap.add_argument("--st-precisions", default="fp32",
                    help="sentence-transformers' precisions, comma-separated: fp32 and/or bf16 (the "
                         "model cast to torch.bfloat16: the same-precision peer of sqz's bf16 rows); "
                         "the ratios are against its fp32 row, or its only one")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--venv", default=os.path.join(os.path.expanduser("~"), ".cache", "sqz-bench",
                                                   "peers-venv"))
    ap.add_argument("--no-venv", action="store_true")
    args = ap.parse_args()
    ensure_venv(args)
    args.sqz = os.path.abspath(args.sqz)

    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer
    model_dir = args.model or subprocess.run([os.path.join(REPO, "tools", "fetch_minilm.sh")],
                                             check=True, capture_output=True, text=True).stdout.strip()
    texts = make_sentences(model_dir, args.sentences, args.seed)
    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    st_models = {}
    for precision in args.st_precisions.split(","):
        if precision not in ("fp32", "bf16"):
            sys.exit(f"embed_peers: --st-precisions: '{precision}' is not fp32 or bf16")
        m = SentenceTransformer(model_dir, device="cpu")
        if precision == "bf16":
            m = m.to(torch.bfloat16)
        m.encode(texts[:64], batch_size=args.batch_size)  # warm-up
        st_models[precision] = m
    results = {"machine": {"cpu": subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo"],
                                                 capture_output=True, text=True).stdout.split(":")[-1].strip(),
                           "cores": os.cpu_count()},
               "model": model_dir, "sentences": len(texts), "threads": args.threads,
               "seed": args.seed, "rounds": [], "best": {}}
    with tempfile.TemporaryDirectory(prefix="sqz-embed-") as work:
        inp = os.path.join(work, "input.jsonl")
        with open(inp, "w") as f:
            for i, t in enumerate(texts):
                f.write(json.dumps({"id": i, "text": t}) + "\n")
        for r in range(args.rounds):
            rnd = {"loadavg": loadavg()}
            for backend in args.backends.split(","):
                for precision in args.precisions.split(","):
                    if precision != "fp32" and backend not in ("cpu", "cuda"):
                        continue
                    row, emb = run_sqz(args, model_dir, backend, precision, inp, work)
                    key = f"sqz:{backend}" + ("" if precision == "fp32" else f" {precision}")
                    rnd[key] = dict(row, embeddings=emb)
            ref = None
            for precision, m in st_models.items():
                t0 = time.perf_counter()
                out = m.encode(texts, batch_size=args.batch_size, convert_to_tensor=True)
                secs = time.perf_counter() - t0
                out = out.float().cpu().numpy()
                key = "sentence-transformers" + ("" if precision == "fp32" else f" {precision}")
                rnd[key] = {"seconds": secs, "lines_per_s": len(texts) / secs,
                            "summary": f"encode(batch_size={args.batch_size}), torch {torch.__version__}, "
                                       f"{precision}, {torch.get_num_threads()} threads"}
                if ref is None or precision == "fp32":  # the others are compared with fp32's
                    ref = out
                rnd[key]["embeddings"] = out
            for key in list(rnd):
                if key.startswith("sqz:") or (key.startswith("sentence-transformers ")):
                    got = np.asarray(rnd[key].pop("embeddings"), dtype=np.float32)
                    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
                    rnd[key]["max_abs_diff_vs_st"] = float(np.max(np.abs(got - ref)))
                    rnd[key]["min_cosine_vs_st"] = float(np.min(cos))
            rnd.get("sentence-transformers", {}).pop("embeddings", None)
            results["rounds"].append(rnd)
            print(f"embed_peers: round {r + 1}: load {rnd['loadavg']}: " + "; ".join(
                f"{k} {v['lines_per_s']:.1f} lines/s" for k, v in rnd.items() if k != "loadavg"),
                file=sys.stderr)
    for rnd in results["rounds"]:
        for key, v in rnd.items():
            if key != "loadavg" and (key not in results["best"]
                                     or v["lines_per_s"] > results["best"][key]["lines_per_s"]):
                results["best"][key] = dict(v, loadavg=rnd["loadavg"])
    st_key = "sentence-transformers" if "sentence-transformers" in results["best"] else \
        next(k for k in results["best"] if k.startswith("sentence-transformers"))
    st_best = results["best"][st_key]["lines_per_s"]
    print(f"{len(texts)} sentences, {args.threads} threads, best of {args.rounds} round(s):")
    for key, v in results["best"].items():
        extra = (f", vs sentence-transformers: max |diff| {v['max_abs_diff_vs_st']:.1e}, "
                 f"min cosine {v['min_cosine_vs_st']:.6f}") if "max_abs_diff_vs_st" in v else ""
        print(f"  {key:<26} {v['lines_per_s']:8.1f} lines/s  {v['lines_per_s'] / st_best:5.2f}x"
              f"  (load {v['loadavg']}{extra})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
