#!/usr/bin/env python3
"""Input for timing `sqz infer` on a random-weight checkpoint (no network needed):

    python3 bench/make_infer_lines.py MODEL_DIR --lines 100000 --out lines.jsonl [--seed 1]

Gives MODEL_DIR a vocab.txt when it has no tokenizer (BERT's special tokens at their usual ids:
[PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103; every other id a word "w<id>", so each word
is one token), and writes JSON Lines {"id": n, "text": ...} whose lengths in words follow the
same log-normal as `sqz bench`'s mixed batches (median 40, sigma 0.55, clamped to [3, 510]):
mixed lengths, as a corpus has them. Only the standard library is used.
"""
import argparse
import json
import math
import os
import random
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--lines", type=int, default=100000)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    with open(os.path.join(args.model, "config.json")) as f:
        vocab_size = json.load(f)["vocab_size"]
    special = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]"}
    vocab_path = os.path.join(args.model, "vocab.txt")
    has_tokenizer = any(os.path.exists(os.path.join(args.model, n)) for n in ("vocab.txt", "tokenizer.json"))
    if not has_tokenizer:
        with open(vocab_path, "w") as f:
            for i in range(vocab_size):
                f.write(special.get(i, f"w{i}") + "\n")
    rng = random.Random(args.seed)
    with open(args.out, "w") as f:
        for n in range(args.lines):
            words = int(round(math.exp(math.log(40) + 0.55 * rng.gauss(0, 1))))
            words = max(3, min(510, words))
            text = " ".join(f"w{rng.randrange(1000, vocab_size)}" for _ in range(words))
            f.write(json.dumps({"id": n, "text": text}) + "\n")
    print(f"make_infer_lines: {args.lines} lines in {args.out}"
          f"{'' if has_tokenizer else f', vocab.txt of {vocab_size} entries in {args.model}'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
