#!/usr/bin/env python3
"""The peers of `sqz bench`, measured in the same run on the same machine.

Runs `sqz bench` on a checkpoint directory, then the same model (the same weights, loaded
from that directory) in PyTorch + transformers and in ONNX Runtime, for the same cells
(batch sizes, lengths, the same mixed-length batches and token ids), and merges their rows
into the report with ratios. The table, CSV and SVG are drawn by `sqz bench --from`.

    bench/peers.py                            # random squeezebert-uncased, default grid
    bench/peers.py --model DIR -- --batch 1,8 --length 128   # after --: sqz bench options

It makes its own virtual environment and installs what it needs there with pip (torch,
transformers, safetensors, numpy, onnx, onnxruntime; onnxruntime-gpu where nvidia-smi
sees a GPU); --venv DIR picks or reuses one. Nothing here is needed by the build or tests.

Thread settings of every engine are printed before the run and stored in the report; by
default the peers get as many threads as the machine has cores, which is what PoCL uses
for the OpenCL backend here (one thread per compute unit).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
M64 = (1 << 64) - 1
PACKAGES = ["numpy", "torch", "transformers", "safetensors", "onnx", "onnxscript"]


# ---- environment ---------------------------------------------------------------------------

def have_nvidia_gpu():
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def ensure_venv(args):
    """Re-runs this script inside a venv that has every package (installed with pip if not)."""
    if args.no_venv or os.environ.get("SQZ_PEERS_IN_VENV") == "1":
        return
    venv = os.path.abspath(args.venv)
    py = os.path.join(venv, "bin", "python")
    if not os.path.exists(py):
        print(f"peers: creating a virtual environment in {venv}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    ort = "onnxruntime-gpu" if have_nvidia_gpu() else "onnxruntime"
    probe = "import numpy, torch, transformers, safetensors, onnx, onnxruntime"
    if subprocess.run([py, "-c", probe], capture_output=True).returncode != 0:
        print(f"peers: installing {' '.join(PACKAGES + [ort])} into {venv} (pip)", file=sys.stderr)
        subprocess.run([py, "-m", "pip", "install", "--quiet", *PACKAGES, ort], check=True)
    env = dict(os.environ, SQZ_PEERS_IN_VENV="1")
    os.execve(py, [py, os.path.abspath(__file__), *sys.argv[1:]], env)


# ---- the inputs sqz bench used (cli/sqz_bench.c: bench_token_id) ---------------------------

def splitmix64(x):
    z = (x + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def token_id(seed, row, pos, length, vocab):
    if pos == 0:
        i = 101
    elif pos == length - 1:
        i = 102
    else:
        h = splitmix64(((seed << 40) + (row << 20) + pos) & M64)
        i = 1000 + h % (vocab - 1000) if vocab > 1000 else h % vocab
    return i % vocab


def cell_input(np, cell, seed, vocab):
    """ids and mask of a cell, padded to the batch's longest row: what a tokenizer called with
    padding=True gives, so a peer does not pay for padding sqz bench added to reach W."""
    lengths = cell["lengths"]
    width = max(lengths)
    ids = np.zeros((len(lengths), width), dtype=np.int64)
    mask = np.zeros((len(lengths), width), dtype=np.int64)
    for r, n in enumerate(lengths):
        ids[r, :n] = [token_id(seed, r, w, n, vocab) for w in range(n)]
        mask[r, :n] = 1
    return ids, mask


def progress(text):
    """One line rewritten in place on a terminal; a line per cell into a log. None ends it."""
    tty = sys.stderr.isatty()
    if text is None:
        if tty:
            print("\r\033[K", end="", file=sys.stderr, flush=True)
    elif tty:
        print(f"\r\033[Kpeers: {text}", end="", file=sys.stderr, flush=True)
    else:
        print(f"peers: {text}", file=sys.stderr, flush=True)


# ---- timing (the same rule as sqz bench) ------------------------------------------------------

def percentile(sorted_values, p):
    n = len(sorted_values)
    pos = p / 100 * (n - 1)
    lo = int(pos)
    if lo >= n - 1:
        return sorted_values[-1]
    return sorted_values[lo] + (pos - lo) * (sorted_values[lo + 1] - sorted_values[lo])


def time_cell(run, settings):
    """First run apart; then at least min_repeats runs, until the cell's budget is spent."""
    t0 = time.perf_counter()
    out = run()
    first = time.perf_counter() - t0
    samples, spent = [], 0.0
    while len(samples) < settings["min_repeats"] or (
            spent < settings["budget_s"] and len(samples) < settings["max_repeats"]):
        a = time.perf_counter()
        out = run()
        t = time.perf_counter() - a
        samples.append(t)
        spent += t
    return first, samples, out


def make_row(engine, backend, device, cell, first, samples, flops, threads, validation, extra):
    s = sorted(samples)
    p50 = percentile(s, 50)
    real = sum(cell["lengths"])
    row = {
        "engine": engine, "backend": backend, "device": device, "precision": "fp32",
        "mode": cell["mode"], "batch": cell["batch"], "seq_len": cell["seq_len"],
        "real_tokens": real, "padded_tokens": cell["batch"] * cell["seq_len"],
        "computed_tokens": cell["batch"] * max(cell["lengths"]),  # padded to the longest row
        "status": "ok", "repeats": len(samples),
        "latency_ms": {"p50": p50 * 1e3, "p90": percentile(s, 90) * 1e3,
                       "p99": percentile(s, 99) * 1e3, "mean": sum(s) / len(s) * 1e3,
                       "min": s[0] * 1e3, "max": s[-1] * 1e3},
        "samples_ms": [t * 1e3 for t in samples],
        "seq_per_s": cell["batch"] / p50, "tokens_per_s": real / p50,
        "flops_per_batch": flops, "gflops": flops / p50 * 1e-9 if flops else None,
        "peak_gflops": None, "peak_fraction": None,
        "memory_bytes": None,
        "warmup": {"session_create_s": extra.get("session_s"), "first_run_s": first,
                   "plan_compile_s": None},
        "validation": validation, "threads": threads,
    }
    if cell["mode"] == "mixed":
        row["lengths"] = cell["lengths"]
    return row


# ---- the check: a peer's output against sqz cpu_ref on the same sequence -----------------------

class Reference:
    """`sqz forward` on cpu_ref for one sequence alone, cached per (row, length)."""

    def __init__(self, sqz, model_dir, seed, vocab, work):
        self.sqz, self.model_dir, self.seed, self.vocab, self.work = sqz, model_dir, seed, vocab, work
        self.cache = {}

    def get(self, row, length):
        key = (row, length)
        if key not in self.cache:
            ids = [token_id(self.seed, row, w, length, self.vocab) for w in range(length)]
            src = os.path.join(self.work, f"ref_{row}_{length}.json")
            dst = os.path.join(self.work, f"ref_{row}_{length}.out.json")
            with open(src, "w") as f:
                json.dump({"input_ids": [ids]}, f)
            subprocess.run([self.sqz, "forward", "--model", self.model_dir, "--backend", "cpu_ref",
                            "--input", src, "--output", dst], check=True)
            with open(dst) as f:
                self.cache[key] = json.load(f)
        return self.cache[key]


def compare(np, outputs, ref, row, length, tolerance):
    """Worst max|peer - ref| / max|ref| over the outputs both have, at the row's real positions."""
    worst, name = 0.0, ""
    for key, want in ref.items():
        if key not in outputs:
            continue
        want = np.asarray(want, dtype=np.float64)[0]
        got = np.asarray(outputs[key], dtype=np.float64)[row]
        if outputs[key].ndim == 3 or key in ("start_logits", "end_logits"):
            got, want = got[:length], want[:length]  # per token: the real positions only
        if not np.all(np.isfinite(got)):
            rel = float("inf")
        else:
            rel = float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-30))
        if rel >= worst:
            worst, name = rel, key
    return {"status": "pass" if worst <= tolerance else "fail", "max_rel": worst,
            "worst_output": name, "tolerance": tolerance,
            "compared": f"row {row} ({length} tokens), every output, vs sqz cpu_ref alone"}


# ---- the peers -------------------------------------------------------------------------------

def torch_outputs(out):
    names = ("last_hidden_state", "pooler_output", "logits", "start_logits", "end_logits")
    return {n: getattr(out, n).detach().cpu().numpy() for n in names if getattr(out, n, None) is not None}


def load_torch_model(torch, transformers, model_dir):
    config = transformers.AutoConfig.from_pretrained(model_dir)
    arch = (config.architectures or ["AutoModel"])[0]
    cls = getattr(transformers, arch, transformers.AutoModel)
    try:
        model = cls.from_pretrained(model_dir, dtype=torch.float32)
    except TypeError:  # transformers before 4.56 names it torch_dtype
        model = cls.from_pretrained(model_dir, torch_dtype=torch.float32)
    model.eval()
    return model, arch


class Peer:
    """One engine on one device: set up once, then timed over the cells in every round."""

    engine = backend = threads = None

    def run_cells(self, np, args, settings, cells, ref):
        rows = []
        for i, cell in enumerate(cells):
            progress(f"{self.engine} {self.backend} {cell['mode']} {cell['batch']}x{cell['seq_len']} "
                     f"({i + 1}/{len(cells)})")
            ids, mask = cell_input(np, cell, settings["input_seed"], args.vocab)
            first, samples, out = time_cell(lambda: self.run(ids, mask), settings)
            validation = {"status": "off"}
            if ref:
                r = cell["check_row"]
                validation = compare(np, out, ref.get(r, cell["lengths"][r]), r,
                                     cell["lengths"][r], args.tolerance)
            rows.append(make_row(self.engine, self.backend, "default", cell, first, samples,
                                 cell["flops"], self.threads, validation,
                                 {"session_s": self.session_s if i == 0 else None}))
        progress(None)
        return rows


class TorchPeer(Peer):
    engine = "torch"

    def __init__(self, torch, transformers, model_dir, device):
        self.torch, self.backend = torch, device
        t0 = time.perf_counter()
        self.model, arch = load_torch_model(torch, transformers, model_dir)
        self.model.to(device)
        self.session_s = time.perf_counter() - t0
        self.threads = (f"torch.get_num_threads()={torch.get_num_threads()}, "
                        f"get_num_interop_threads()={torch.get_num_interop_threads()}")
        self.device_entry = {
            "engine": "torch", "backend": device, "device": "default", "status": "ok",
            "description": f"PyTorch {torch.__version__} + transformers {transformers.__version__}, "
                           f"{arch}, fp32, eval, inference_mode"
                           + (f", {torch.cuda.get_device_name()}" if device == "cuda" else ""),
            "threads": self.threads, "peaks": []}

    def run(self, ids, mask):
        # as a caller sees it: inputs from host arrays, outputs back as host arrays
        torch = self.torch
        with torch.inference_mode():
            out = self.model(input_ids=torch.from_numpy(ids).to(self.backend),
                             attention_mask=torch.from_numpy(mask).to(self.backend))
            return torch_outputs(out)


class OrtPeer(Peer):
    engine = "onnxruntime"

    def __init__(self, torch, transformers, model_dir, work, threads_n, use_cuda):
        import onnxruntime as ort
        path = os.path.join(work, "model.onnx")
        if not os.path.exists(path):
            model, _ = load_torch_model(torch, transformers, model_dir)
            t0 = time.perf_counter()
            with torch.inference_mode():
                self.outs = export_onnx(torch, model, path, "cpu")
            self.export_s = time.perf_counter() - t0
            with open(path + ".outputs", "w") as f:
                json.dump([self.outs, self.export_s], f)
        with open(path + ".outputs") as f:
            self.outs, self.export_s = json.load(f)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads_n
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.backend = "cuda" if use_cuda else "cpu"
        providers = (["CUDAExecutionProvider", "CPUExecutionProvider"] if use_cuda
                     else ["CPUExecutionProvider"])
        t0 = time.perf_counter()
        self.sess = ort.InferenceSession(path, so, providers=providers)
        self.session_s = time.perf_counter() - t0
        self.threads = (f"intra_op_num_threads={so.intra_op_num_threads}, "
                        f"inter_op_num_threads={so.inter_op_num_threads}, sequential")
        self.device_entry = {
            "engine": "onnxruntime", "backend": self.backend, "device": "default", "status": "ok",
            "description": f"ONNX Runtime {ort.__version__} ({', '.join(self.sess.get_providers())}), "
                           f"model exported by torch.onnx (opset 17) in {self.export_s:.1f} s, "
                           f"ORT_ENABLE_ALL, fp32",
            "threads": self.threads, "peaks": []}

    def run(self, ids, mask):
        return dict(zip(self.outs, self.sess.run(None, {"input_ids": ids, "attention_mask": mask})))


def export_onnx(torch, model, path, device):
    ids = torch.ones((2, 16), dtype=torch.int64, device=device)
    mask = torch.ones((2, 16), dtype=torch.int64, device=device)
    names = ["input_ids", "attention_mask"]
    outs = list(torch_outputs(model(input_ids=ids, attention_mask=mask)).keys())
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    for o in outs:  # per-sequence outputs have no sequence axis
        axes[o] = {0: "batch"} if o in ("pooler_output", "logits") else {0: "batch", 1: "sequence"}
    warnings.filterwarnings("ignore")  # the exporters' notes on traced control flow
    # the TorchScript exporter handles SqueezeBERT's conv1d layers with dynamic axes; the dynamo
    # exporter is the fallback
    try:
        torch.onnx.export(model, (ids, mask), path, input_names=names, output_names=outs,
                          dynamic_axes=axes, opset_version=17, dynamo=False)
    except Exception as e:  # noqa: BLE001 - any exporter failure: try the other one
        print(f"peers: TorchScript ONNX export failed ({e}); trying dynamo=True", file=sys.stderr)
        batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
        torch.onnx.export(model, (ids, mask), path, input_names=names, output_names=outs,
                          dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}), dynamo=True)
    return outs


def best_of_rounds(reports):
    """The first round's report, each timed row replaced by the round whose p50 was lowest:
    on a shared machine every engine gets as many chances at a quiet moment."""
    def key(row):
        return (row["engine"], row["backend"], row["device"], row["precision"], row.get("mode"),
                row.get("timing", "latency"), row.get("batch"), row.get("seq_len"))
    best = {}
    for report in reports:
        for row in report["rows"]:
            k = key(row)
            if row.get("status") != "ok":
                best.setdefault(k, row)
            elif (k not in best or best[k].get("status") != "ok"
                  or row["latency_ms"]["p50"] < best[k]["latency_ms"]["p50"]):
                best[k] = row
    merged = reports[0]
    merged["rows"] = [best[key(row)] for row in merged["rows"]]
    return merged


def cells_of(report):
    """The grid sqz bench ran: one cell per (mode, batch, length), with its row lengths and the
    FLOPs the engine's plan counts for it (the useful work, the same for every engine)."""
    cells = {}
    for row in report["rows"]:
        if row.get("engine") != "sqz" or row.get("status") not in ("ok", "skipped"):
            continue
        key = (row["mode"], row["batch"], row["seq_len"])
        cell = cells.setdefault(key, {
            "mode": row["mode"], "batch": row["batch"], "seq_len": row["seq_len"],
            "lengths": row.get("lengths") or [row["seq_len"]] * row["batch"],
            "check_row": row.get("check_row", 0), "flops": None})
        if row.get("flops_per_batch"):
            cell["flops"] = row["flops_per_batch"]
    return sorted(cells.values(), key=lambda c: (c["mode"] == "mixed", c["seq_len"], c["batch"]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sqz", default=os.path.join(REPO, "build", "sqz"), help="the sqz binary")
    ap.add_argument("--model", help="checkpoint directory (default: a random squeezebert-uncased)")
    ap.add_argument("--random", default="squeezebert-uncased", help="preset when --model is absent")
    ap.add_argument("--seed", type=int, default=1, help="weight seed of --random")
    ap.add_argument("--out", default="bench-out", help="folder for the reports (default bench-out)")
    ap.add_argument("--engines", default="torch,onnxruntime")
    ap.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto",
                    help="peers on cpu, cuda, or both when a GPU is there (auto)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="intra-op threads of torch and ONNX Runtime, and sqz bench --threads for "
                         "the cpu backend (default: every core)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run sqz bench and the peers R times and keep each row's best round "
                         "(lowest p50): for a machine other work shares")
    ap.add_argument("--tolerance", type=float, default=1e-4)
    ap.add_argument("--no-validate", action="store_true", help="skip comparing with sqz cpu_ref")
    ap.add_argument("--venv", default=os.path.join(os.path.expanduser("~"), ".cache", "sqz-bench",
                                                   "peers-venv"))
    ap.add_argument("--no-venv", action="store_true", help="use this Python as it is")
    ap.add_argument("--from-report", help="skip sqz bench: add peers to this existing report")
    ap.add_argument("--setup-only", action="store_true",
                    help="make the virtual environment, print the versions and stop")
    ap.add_argument("bench_args", nargs="*", help="after --: options for sqz bench")
    args = ap.parse_args()
    ensure_venv(args)

    import numpy as np
    import torch
    import transformers
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if args.setup_only:
        import onnxruntime
        print(f"peers: {sys.executable}: torch {torch.__version__}, transformers "
              f"{transformers.__version__}, onnxruntime {onnxruntime.__version__} "
              f"({', '.join(onnxruntime.get_available_providers())})")
        return

    os.makedirs(args.out, exist_ok=True)
    args.work = tempfile.mkdtemp(prefix="sqz-peers-")
    sqz = os.path.abspath(args.sqz)
    if not os.access(sqz, os.X_OK):
        sys.exit(f"peers: {sqz} is not an executable sqz (build it, or pass --sqz)")
    try:
        if args.model:
            args.model_dir = os.path.abspath(args.model)
        else:
            args.model_dir = os.path.join(args.work, "model")
            subprocess.run([sqz, "random-model", "--config", args.random, "--seed", str(args.seed),
                            "--out", args.model_dir], check=True)
        with open(os.path.join(args.model_dir, "config.json")) as f:
            args.vocab = json.load(f)["vocab_size"]

        torch.set_num_threads(args.threads)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass  # already set by an earlier parallel region; printed below either way
        devices = []
        if args.device in ("cpu", "auto"):
            devices.append("cpu")
        if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
            devices.append("cuda")
        engines = args.engines.split(",")
        peers = []
        for device in devices:
            if "torch" in engines:
                peers.append(TorchPeer(torch, transformers, args.model_dir, device))
            if "onnxruntime" in engines:
                import onnxruntime as ort
                if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
                    print("peers: onnxruntime has no CUDA provider here; no ORT cuda rows",
                          file=sys.stderr)
                else:
                    peers.append(OrtPeer(torch, transformers, args.model_dir, args.work,
                                         args.threads, device == "cuda"))

        # each round: our engine first, then the peers right after it on the same machine
        reports, ref = [], None
        for rnd in range(args.rounds):
            sqz_json = os.path.join(args.out, "sqz.json" if args.rounds == 1 else f"sqz-{rnd + 1}.json")
            if args.from_report:
                shutil.copy(args.from_report, sqz_json)
            else:
                # the cpu backend gets the peers' thread count unless the options name one
                threads = [] if any(a.startswith("--threads") for a in args.bench_args) else [
                    "--threads", str(args.threads)]
                cmd = [sqz, "bench", "--model", args.model_dir, "--json", sqz_json, *threads,
                       *args.bench_args]
                print(f"peers: round {rnd + 1}/{args.rounds}: " + " ".join(cmd), file=sys.stderr)
                subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL)
            with open(sqz_json) as f:
                report = json.load(f)
            cells = cells_of(report)
            try:  # the machine's load when the peers start, next to the one sqz bench recorded
                with open("/proc/loadavg") as f:
                    report["run"]["loadavg"] += "; at the peers' start " + " ".join(f.read().split()[:3])
            except OSError:
                pass
            if rnd == 0:
                # every engine's threads, side by side, before a peer is timed
                print("threads:", file=sys.stderr)
                for dev in report["devices"]:
                    if dev.get("status") == "ok":
                        print(f"  sqz {dev['backend']:<10} {dev['threads']}", file=sys.stderr)
                for peer in peers:
                    print(f"  {peer.engine:<11} {peer.backend:<4} {peer.threads}", file=sys.stderr)
                print("  (cpu_ref is one thread by design; sqz:cpu, with --threads N, and sqz:opencl "
                      "are the rows to compare with the peers)", file=sys.stderr)
                if not args.no_validate:
                    ref = Reference(sqz, args.model_dir, report["settings"]["input_seed"],
                                    args.vocab, args.work)
            for peer in peers:
                report["rows"].extend(peer.run_cells(np, args, report["settings"], cells, ref))
            reports.append(report)

        report = best_of_rounds(reports)
        report["devices"].extend(peer.device_entry for peer in peers)
        if not args.model:
            report["model"]["source"] = f"random {args.random}, seed {args.seed}"
        if args.rounds > 1:
            report["run"]["loadavg"] = " | ".join(
                f"round {i + 1}: {r['run']['loadavg']}" for i, r in enumerate(reports))
            report["run"]["timing"] += f"; best of {args.rounds} rounds per row (lowest p50)"
        report["run"]["peers_command"] = " ".join(["bench/peers.py", *sys.argv[1:]])

        merged = os.path.join(args.out, "bench.json")
        with open(merged, "w") as f:
            json.dump(report, f, indent=1)
        subprocess.run([sqz, "bench", "--from", merged, "--csv", os.path.join(args.out, "bench.csv"),
                        "--plot", os.path.join(args.out, "bench.svg"), "--baseline", "torch"],
                       check=True)
        print(f"peers: wrote {merged}", file=sys.stderr)
    finally:
        shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
