#!/usr/bin/env python3
"""PyTorch + transformers on the same checkpoint and the same cells as the engine, on one GPU,
for bench/gpu_check.sh (the GPU machine has torch and transformers but reaches no registry).

    python3 bench/torch_gpu_peer.py MODEL_DIR --cells 1x128,32x128,256x128,32x512 [--fp16] [--compile]

Prints one line per cell: engine, precision, batch, length, sequences/s (median of timed
runs, CUDA events, after warm-up), and writes them as JSON with --json FILE.
"""
import argparse
import json
import statistics
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--cells", default="1x128,32x128,256x128,32x512")
    ap.add_argument("--fp16", action="store_true", help="also run in float16")
    ap.add_argument("--compile", action="store_true", help="also run torch.compile (slow to build)")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--json")
    args = ap.parse_args()
    import torch
    from transformers import AutoModel

    if not torch.cuda.is_available():
        print("torch_gpu_peer: no CUDA device", file=sys.stderr)
        return 77
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32, as in the engine
    torch.backends.cudnn.allow_tf32 = False
    rows = []
    variants = [("torch-eager", torch.float32)]
    if args.fp16:
        variants.append(("torch-eager", torch.float16))
    if args.compile:
        variants.append(("torch-compile", torch.float16 if args.fp16 else torch.float32))
    for name, dtype in variants:
        try:
            model = AutoModel.from_pretrained(args.model, dtype=dtype)
        except TypeError:  # transformers before 4.56 names it torch_dtype
            model = AutoModel.from_pretrained(args.model, torch_dtype=dtype)
        model = model.cuda().eval()
        if name == "torch-compile":
            model = torch.compile(model)
        vocab = model.config.vocab_size
        for cell in args.cells.split(","):
            batch, length = (int(x) for x in cell.split("x"))
            ids = torch.randint(0, vocab, (batch, length), device="cuda")
            mask = torch.ones_like(ids)
            times = []
            with torch.no_grad():
                for i in range(args.repeats + 3):
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    model(input_ids=ids, attention_mask=mask)
                    end.record()
                    torch.cuda.synchronize()
                    if i >= 3:
                        times.append(start.elapsed_time(end) / 1000.0)
            seconds = statistics.median(times)
            row = {"engine": name, "precision": str(dtype).replace("torch.", ""), "batch": batch,
                   "length": length, "seconds": seconds, "sequences_per_s": batch / seconds}
            rows.append(row)
            print(f"{name:14s} {row['precision']:8s} batch {batch:4d} length {length:4d}: "
                  f"{row['sequences_per_s']:10.1f} sequences/s ({seconds * 1e3:.2f} ms)", flush=True)
        del model
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
