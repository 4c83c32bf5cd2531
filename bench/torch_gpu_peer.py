#!/usr/bin/env python3
"""PyTorch (eager and torch.compile) and, where installed, ONNX Runtime's CUDA provider on the
same checkpoint and cells as the engine, on one GPU, for bench/gpu_check.sh (the GPU machine has
torch and transformers but reaches no package registry).

    python3 bench/torch_gpu_peer.py MODEL_DIR [--cells 1x128,32x128,256x128] [--fp16] [--compile]
        [--compile-mode max-autotune] [--compile-budget 300] [--ort] [--repeats 20] [--json FILE]

Engines: torch-eager fp32 (TF32 off, as sqz's fp32), with --fp16 also float16; with --compile
torch.compile of each (mode --compile-mode, default max-autotune; each compiled engine is built
and timed in a child process with --compile-budget seconds, and one that runs out is built again
with mode "default", the row saying which mode ran); with --ort ONNX Runtime's
CUDAExecutionProvider on the model exported at fp32 (skipped, with the reason, when onnxruntime
or its CUDA provider is missing).

Three figures per engine and cell, each the median of --repeats timed runs after 3 warm-ups:
  gpu_seq_per_s          forward only, outputs left on the GPU (CUDA events around the forward)
  host_seq_per_s         forward, then every output (last_hidden_state, pooler_output) copied to
                         host memory as a caller gets them (.cpu(), wall clock, synchronised)
  host_pooled_seq_per_s  forward, then only pooler_output copied to the host
sqz's matching figures: `sqz bench --output-place device` (gpu), the default (host, every
output), `--outputs pooler_output` (host pooled); bench/README.md names them so.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def parse_cells(text):
    cells = []
    for cell in text.split(","):
        batch, length = (int(x) for x in cell.split("x"))
        cells.append((batch, length))
    return cells


DEVICE = "cuda"  # --device cpu: a dry run of this script where there is no GPU


def sync(torch):
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def load_model(torch, model_dir, dtype):
    from transformers import AutoModel
    try:
        model = AutoModel.from_pretrained(model_dir, dtype=dtype)
    except TypeError:  # transformers before 4.56 names it torch_dtype
        model = AutoModel.from_pretrained(model_dir, torch_dtype=dtype)
    return model.to(DEVICE).eval()


def outputs_of(out):
    """The model's outputs by name, whatever container transformers returns."""
    if isinstance(out, dict):
        return {k: v for k, v in out.items() if hasattr(v, "shape")}
    names = ("last_hidden_state", "pooler_output")
    return {n: v for n, v in zip(names, out) if hasattr(v, "shape")}


def time_torch(torch, forward, ids, mask, repeats):
    """(gpu, host, host_pooled) median seconds of forward(ids, mask) -> {name: tensor}."""
    def gpu_once():
        if DEVICE != "cuda":
            t0 = time.perf_counter()
            forward(ids, mask)
            return time.perf_counter() - t0
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        forward(ids, mask)
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1000.0

    def host_once(names):
        sync(torch)
        t0 = time.perf_counter()
        outs = forward(ids, mask)
        host = [outs[n].to("cpu", copy=True) for n in outs if names is None or n in names]
        sync(torch)
        del host
        return time.perf_counter() - t0

    figures = []
    for measure in (gpu_once, lambda: host_once(None), lambda: host_once(("pooler_output",))):
        times = [measure() for _ in range(repeats + 3)][3:]
        figures.append(statistics.median(times))
    return figures


def run_torch(args, engine, dtype_name, compile_mode):
    import torch
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32, as in the engine
    torch.backends.cudnn.allow_tf32 = False
    dtype = torch.float16 if dtype_name == "float16" else torch.float32
    model = load_model(torch, args.model, dtype)
    built = time.perf_counter()
    call = model
    if engine == "torch-compile":
        call = torch.compile(model, mode=compile_mode)
    vocab = model.config.vocab_size
    rows = []
    with torch.inference_mode():
        def forward(ids, mask):
            return outputs_of(call(input_ids=ids, attention_mask=mask))
        for batch, length in parse_cells(args.cells):
            ids = torch.randint(1000, vocab, (batch, length), device=DEVICE)
            mask = torch.ones_like(ids)
            forward(ids, mask)  # compiles (torch.compile) for this shape
            gpu, host, pooled = time_torch(torch, forward, ids, mask, args.repeats)
            rows.append(row_of(engine, dtype_name, batch, length, gpu, host, pooled,
                               {"compile_mode": compile_mode} if engine == "torch-compile" else {}))
    if engine == "torch-compile":
        rows_note(rows, "build_and_time_s", time.perf_counter() - built)
    return rows


def run_ort(args):
    """ONNX Runtime, CUDA provider, fp32 export: outputs to the host (its default) and left on
    the GPU through I/O binding."""
    import numpy as np
    import onnxruntime as ort
    import torch
    provider = "CUDAExecutionProvider" if DEVICE == "cuda" else "CPUExecutionProvider"
    if provider not in ort.get_available_providers():
        raise RuntimeError(f"onnxruntime has no {provider} here")
    model = load_model(torch, args.model, torch.float32).cpu()
    path = os.path.join(tempfile.mkdtemp(), "model.onnx")
    ids = torch.ones((1, 8), dtype=torch.int64)
    with torch.inference_mode():
        names = list(outputs_of(model(input_ids=ids, attention_mask=ids)).keys())
        axes = {n: {0: "batch", 1: "length"} for n in ["input_ids", "attention_mask"]}
        try:  # the TorchScript exporter: dynamo=False where torch has the newer one too
            torch.onnx.export(model, (ids, ids), path, input_names=["input_ids", "attention_mask"],
                              output_names=names, dynamic_axes=axes, opset_version=17, dynamo=False)
        except TypeError:
            torch.onnx.export(model, (ids, ids), path, input_names=["input_ids", "attention_mask"],
                              output_names=names, dynamic_axes=axes, opset_version=17)
    session = ort.InferenceSession(path, providers=[provider])
    rows = []
    for batch, length in parse_cells(args.cells):
        feed = {"input_ids": np.random.randint(1000, model.config.vocab_size, (batch, length), dtype=np.int64),
                "attention_mask": np.ones((batch, length), dtype=np.int64)}

        def timed(run):
            times = []
            for i in range(args.repeats + 3):
                t0 = time.perf_counter()
                run()
                if i >= 3:
                    times.append(time.perf_counter() - t0)
            return statistics.median(times)

        host = timed(lambda: session.run(None, feed))
        pooled = timed(lambda: session.run(["pooler_output"], feed)) if "pooler_output" in names else float("nan")
        binding = session.io_binding()
        for k, v in feed.items():
            binding.bind_ortvalue_input(k, ort.OrtValue.ortvalue_from_numpy(v, DEVICE, 0))
        for n in names:
            binding.bind_output(n, DEVICE)
        gpu = timed(lambda: session.run_with_iobinding(binding))
        rows.append(row_of(f"ort-{DEVICE}", "float32", batch, length, gpu, host, pooled,
                           {"note": "gpu column by wall clock with I/O binding"}))
    return rows


def row_of(engine, precision, batch, length, gpu, host, pooled, extra):
    row = {"engine": engine, "precision": precision, "batch": batch, "length": length,
           "gpu_s": gpu, "host_s": host, "host_pooled_s": pooled,
           "gpu_seq_per_s": batch / gpu, "host_seq_per_s": batch / host,
           "host_pooled_seq_per_s": batch / pooled}
    row.update(extra)
    return row


def rows_note(rows, key, value):
    for row in rows:
        row[key] = value


def child_run(args, engine, dtype_name, mode, budget):
    """One compiled engine in a child process, so a build that runs past its budget can be cut
    off and tried again with another mode. Returns (rows, None) or (None, why)."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [sys.executable, os.path.abspath(__file__), args.model, "--cells", args.cells, "--repeats",
           str(args.repeats), "--device", DEVICE, "--only", f"{engine}:{dtype_name}:{mode}", "--json", out]
    try:
        subprocess.run(cmd, timeout=budget, check=True)
        with open(out) as f:
            return json.load(f)["rows"], None
    except subprocess.TimeoutExpired:
        return None, f"mode {mode} did not finish in {budget:.0f} s"
    except (subprocess.CalledProcessError, OSError, ValueError) as e:
        return None, f"mode {mode} failed: {e}"
    finally:
        os.unlink(out)


def print_row(row):
    mode = f" ({row['compile_mode']})" if "compile_mode" in row else ""
    print(f"{row['engine'] + mode:28s} {row['precision']:8s} batch {row['batch']:4d} length {row['length']:4d}: "
          f"gpu {row['gpu_seq_per_s']:9.1f}  host {row['host_seq_per_s']:9.1f}  host pooled "
          f"{row['host_pooled_seq_per_s']:9.1f} sequences/s ({row['gpu_s'] * 1e3:.2f} / {row['host_s'] * 1e3:.2f} / "
          f"{row['host_pooled_s'] * 1e3:.2f} ms)", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--cells", default="1x128,32x128,256x128")
    ap.add_argument("--fp16", action="store_true", help="also run in float16")
    ap.add_argument("--compile", action="store_true", help="also run torch.compile (slow to build)")
    ap.add_argument("--compile-mode", default="max-autotune")
    ap.add_argument("--compile-budget", type=float, default=300, help="seconds per compiled engine")
    ap.add_argument("--ort", action="store_true", help="also ONNX Runtime's CUDA provider, if installed")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--only", help=argparse.SUPPRESS)  # ENGINE:DTYPE:MODE, for the child of a compile
    ap.add_argument("--device", default="cuda", help="cpu: a dry run of the script without a GPU")
    ap.add_argument("--json")
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device
    import torch
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("torch_gpu_peer: no CUDA device", file=sys.stderr)
        return 77
    if args.only:
        engine, dtype_name, mode = args.only.split(":")
        rows = run_torch(args, engine, dtype_name, mode)
        with open(args.json, "w") as f:
            json.dump({"rows": rows}, f)
        return 0
    dtypes = ["float32"] + (["float16"] if args.fp16 else [])
    rows, notes = [], []
    for dtype_name in dtypes:
        for row in run_torch(args, "torch-eager", dtype_name, None):
            rows.append(row)
            print_row(row)
    for dtype_name in dtypes if args.compile else []:
        got, why = child_run(args, "torch-compile", dtype_name, args.compile_mode, args.compile_budget)
        if got is None and args.compile_mode != "default":
            notes.append(f"torch-compile {dtype_name}: {why}; built again with mode default")
            print(notes[-1], flush=True)
            got, why = child_run(args, "torch-compile", dtype_name, "default", args.compile_budget)
        if got is None:
            notes.append(f"torch-compile {dtype_name}: {why}")
            print(notes[-1], flush=True)
            continue
        for row in got:
            rows.append(row)
            print_row(row)
    if args.ort:
        try:
            for row in run_ort(args):
                rows.append(row)
                print_row(row)
        except Exception as e:  # optional peer: say why it is missing, keep the others
            notes.append(f"ort-{DEVICE} skipped: {e}")
            print(notes[-1], flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__,
                       "gpu": torch.cuda.get_device_name(0) if DEVICE == "cuda" else "none (dry run on the CPU)",
                       "notes": notes,
                       "columns": {"gpu_seq_per_s": "outputs left on the GPU",
                                   "host_seq_per_s": "every output copied to the host",
                                   "host_pooled_seq_per_s": "pooler_output copied to the host"},
                       "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
