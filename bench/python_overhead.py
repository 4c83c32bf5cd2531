"""What the Python layer costs over the C library on the same batches (issue 15).

    python bench/python_overhead.py MODEL_DIR [--backends opencl,cpu] [--batch 32] [--length 128]
                                    [--rounds 7]

MODEL_DIR: a checkpoint with tokenizer files (bench/RESULTS.md makes a random squeezebert-mnli
with `sqz random-model` and the vocabulary of tests/fixtures/infer/classify). Per backend, on one
batch of `batch` sequences of `length` tokens:

- forward: Engine.forward (array checks, the outputs copied into numpy) against the bare
  sqz_session_run call on the same ids through ctypes, two calls back to back; and the time
  inside sqz_session_run during Engine.forward (the same call: no noise between two runs);
- answers: Engine.answers on `batch` texts of `length` tokens against the time inside
  sqz_pipeline_run during it (tokenizing, C called once per text from Python, and building the
  answer dicts count as overhead: an upper bound).

The machine is shared, so each forward round runs the two calls back to back, alternating which
goes first; a figure is the best (least) time over the rounds. The forward rounds come before the
answers rounds, and the backends one after the other; the load average is printed after each
round.
"""

import argparse
import ctypes
import time
from typing import Callable, Dict, List

import numpy as np

import squeezebert
from squeezebert import _native as N


def load_average() -> str:
    with open("/proc/loadavg", encoding="ascii") as f:
        return " ".join(f.read().split()[:3])


class Inside:
    """Times every call of one library function made through squeezebert._native.lib."""

    def __init__(self, name: str):
        self.name, self.real, self.last = name, getattr(N.lib, name), 0.0

    def __call__(self, *args: object) -> object:
        t = time.perf_counter()
        try:
            return self.real(*args)
        finally:
            self.last = time.perf_counter() - t

    def timing(self, call: Callable[[], object]) -> float:
        """The wall time of call(); self.last is then the time inside the library function."""
        setattr(N.lib, self.name, self)
        try:
            t = time.perf_counter()
            call()
            return time.perf_counter() - t
        finally:
            setattr(N.lib, self.name, self.real)


def measure(engine: squeezebert.Engine, batch: int, length: int, rounds: int, label: str) -> Dict[str, float]:
    rng = np.random.default_rng(1)
    ids = rng.integers(1000, 2000, (batch, length), dtype=np.int64)
    mask = np.ones_like(ids)
    raw = N.Input(batch=batch, choices=0, seq_len=length,
                  input_ids=ids.ctypes.data_as(ctypes.POINTER(ctypes.c_int64)),
                  attention_mask=mask.ctypes.data_as(ctypes.POINTER(ctypes.c_int64)))
    texts = [" ".join(["word"] * (length - 2))] * batch  # "word" is one token; + [CLS], [SEP]
    session_run, pipeline_run = Inside("sqz_session_run"), Inside("sqz_pipeline_run")

    def bare() -> float:
        result = ctypes.c_void_p()
        t = time.perf_counter()
        N.check(N.lib.sqz_session_select_outputs(engine._session, None, 0), "select")
        N.check(N.lib.sqz_session_run(engine._session, ctypes.byref(raw), ctypes.byref(result)), "run")
        N.lib.sqz_result_free(result)
        return time.perf_counter() - t

    times: Dict[str, List[float]] = {k: [] for k in ("bare", "forward", "forward_inside",
                                                     "answers", "answers_inside")}

    def forward_round(python_first: bool) -> None:
        if not python_first:
            times["bare"].append(bare())
        times["forward"].append(session_run.timing(lambda: engine.forward(ids, attention_mask=mask)))
        times["forward_inside"].append(session_run.last)
        if python_first:
            times["bare"].append(bare())

    def answers_round(_: bool) -> None:
        times["answers"].append(pipeline_run.timing(lambda: engine.answers(texts)))
        times["answers_inside"].append(pipeline_run.last)

    # the forward rounds, then the answers rounds: the pipeline selects other outputs, and the
    # first run after a switch would pay for it
    for name, one_round in (("forward", forward_round), ("answers", answers_round)):
        one_round(False)  # plans compiled, kernels built, memory pooled
        for k in times:
            if k.startswith(name) or (name == "forward" and k == "bare"):
                times[k].clear()
        for r in range(rounds):
            one_round(r % 2 == 1)
            latest = ", ".join(f"{k} {v[-1] * 1e3:.0f} ms" for k, v in times.items()
                               if k.startswith(name) or (name == "forward" and k == "bare"))
            print(f"{label} {name} round {r + 1}/{rounds}: {latest}; load average {load_average()}", flush=True)
    return {k: min(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--backends", default="opencl,cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    print(f"load average at start: {load_average()}", flush=True)
    best, devices = {}, {}
    for backend in args.backends.split(","):  # one after the other: no two backends' threads at once
        with squeezebert.Engine(args.model, backend=backend) as engine:
            devices[backend] = engine.device
            best[backend] = measure(engine, args.batch, args.length, args.rounds, backend)
    for backend, device in devices.items():
        print(f"{backend}: {device}")
    print(f"batch {args.batch} x {args.length} tokens, best of {args.rounds} rounds (ms)")
    print("| backend | sqz_session_run alone | Engine.forward | inside it | overhead (alone / inside) "
          "| Engine.answers | inside sqz_pipeline_run | overhead |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")

    def pct(outer: float, inner: float) -> str:
        return f"{100 * (outer - inner) / inner:+.1f}%"

    for backend, t in best.items():
        print(f"| {backend} | {t['bare'] * 1e3:.1f} | {t['forward'] * 1e3:.1f} | {t['forward_inside'] * 1e3:.1f} "
              f"| {pct(t['forward'], t['bare'])} / {pct(t['forward'], t['forward_inside'])} "
              f"| {t['answers'] * 1e3:.1f} | {t['answers_inside'] * 1e3:.1f} "
              f"| {pct(t['answers'], t['answers_inside'])} |")


if __name__ == "__main__":
    main()
