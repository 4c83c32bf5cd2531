"""What the Python layer costs over the C library on the same batches (issue 15, item 4).

    python python/bench_overhead.py MODEL_DIR [--backend opencl] [--batch 32] [--length 128]

forward: Engine.forward (array checks, the output arrays copied out) against the bare
sqz_session_run call through ctypes on the same batch; answers: Engine.answers on `batch` texts
of about `length` tokens against the time inside sqz_pipeline_run (so tokenizing, also C but
called once per text from Python, counts as overhead: an upper bound). Median of --repeat runs,
interleaved so a busy machine slows both sides alike.
"""

import argparse
import ctypes
import statistics
import time

import numpy as np

import squeezebert
from squeezebert import _native as N


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--backend", default="opencl")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()

    engine = squeezebert.Engine(args.model, backend=args.backend)
    rng = np.random.default_rng(1)
    ids = rng.integers(1000, 2000, (args.batch, args.length), dtype=np.int64)
    mask = np.ones_like(ids)
    batch = N.Input(batch=args.batch, choices=0, seq_len=args.length,
                    input_ids=ids.ctypes.data_as(ctypes.POINTER(ctypes.c_int64)),
                    attention_mask=mask.ctypes.data_as(ctypes.POINTER(ctypes.c_int64)))

    def bare() -> float:
        result = ctypes.c_void_p()
        t = time.perf_counter()
        N.check(N.lib.sqz_session_select_outputs(engine._session, None, 0), "select")
        N.check(N.lib.sqz_session_run(engine._session, ctypes.byref(batch), ctypes.byref(result)), "run")
        N.lib.sqz_result_free(result)
        return time.perf_counter() - t

    def wrapped() -> float:
        t = time.perf_counter()
        engine.forward(ids, attention_mask=mask)
        return time.perf_counter() - t

    wrapped(), bare()  # plans compiled, memory pooled
    b, w = [], []
    for _ in range(args.repeat):
        b.append(bare())
        w.append(wrapped())
    mb, mw = statistics.median(b), statistics.median(w)
    print(f"forward {args.batch}x{args.length} on {engine.backend}: C {mb * 1e3:.2f} ms, "
          f"Python {mw * 1e3:.2f} ms, overhead {100 * (mw - mb) / mb:.1f}%")

    text = " ".join(["word"] * (args.length - 2))  # "word" is one token: length tokens with [CLS], [SEP]
    texts = [text] * args.batch
    inside = []
    real_run = N.lib.sqz_pipeline_run

    def timed_run(*a):
        t = time.perf_counter()
        try:
            return real_run(*a)
        finally:
            inside.append(time.perf_counter() - t)

    N.lib.sqz_pipeline_run = timed_run
    engine.answers(texts)
    inside.clear()
    total = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        engine.answers(texts)
        total.append(time.perf_counter() - t)
    mi, mt = statistics.median(inside), statistics.median(total)
    print(f"answers {args.batch} texts x {args.length} tokens ({engine.task}) on {engine.backend}: "
          f"in sqz_pipeline_run {mi * 1e3:.2f} ms, Python call {mt * 1e3:.2f} ms, "
          f"overhead {100 * (mt - mi) / mi:.1f}%")


if __name__ == "__main__":
    main()
