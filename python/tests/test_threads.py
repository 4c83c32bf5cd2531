"""Threads: the GIL is released while the engine computes (ctypes.CDLL drops it for each foreign
call), an engine shared by threads gives each the answers it gives alone, and "auto" picks the
library's sqz_backend_auto, the backend `sqz infer --backend auto` picks."""

import re
import subprocess
import threading
import time

import pytest

import squeezebert
from squeezebert import _native
from conftest import FIXTURES, SQZ

CLASSIFY = FIXTURES / "infer" / "classify"
TEXTS = [f"the quick brown fox jumps over the lazy dog, take {i}" for i in range(1500)]


def test_gil_released_during_a_run(monkeypatch):
    """A second thread keeps counting while one sqz_pipeline_run (a single foreign call
    answering every text) computes: its longest pause inside the call is a small part of it."""
    window = []
    real_run = _native.lib.sqz_pipeline_run

    def timed_run(*args):
        window.append(time.perf_counter())
        try:
            return real_run(*args)
        finally:
            window.append(time.perf_counter())

    monkeypatch.setattr(_native.lib, "sqz_pipeline_run", timed_run)
    ticks, stop = [], threading.Event()

    def count():
        while not stop.is_set():
            ticks.append(time.perf_counter())

    with squeezebert.Engine(CLASSIFY, backend="cpu_ref") as engine:
        counter = threading.Thread(target=count)
        counter.start()
        try:
            engine.classify(TEXTS)
        finally:
            stop.set()
            counter.join()
    start, end = window
    inside = [t for t in ticks if start <= t <= end]
    duration = end - start
    assert duration > 0.2, f"the run took only {duration:.3f} s: too short to tell"
    gaps = [b - a for a, b in zip([start] + inside, inside + [end])]
    assert len(inside) > 1000 and max(gaps) < 0.25 * duration, \
        f"the counter paused {max(gaps):.3f} s of a {duration:.3f} s run ({len(inside)} ticks)"


def test_shared_engine_gives_each_thread_its_answers():
    with squeezebert.Engine(CLASSIFY, backend="cpu_ref") as engine:
        parts = [TEXTS[i::4][:100] for i in range(4)]
        alone = [engine.classify(p) for p in parts]
        together = [None] * 4

        def work(i):
            together[i] = engine.classify(parts[i])

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert together == alone


def test_auto_backend_is_the_librarys_choice():
    """backend="auto" (given or by default) opens what sqz_backend_auto names, and that is a
    backend that runs here; other names pass through pick_backend unchanged."""
    library = _native.lib.sqz_backend_auto().decode()
    assert library in squeezebert.backends()
    assert squeezebert.pick_backend() == squeezebert.pick_backend("auto") == library
    assert squeezebert.pick_backend("cpu_ref") == "cpu_ref"
    for engine in (squeezebert.Engine(CLASSIFY), squeezebert.Engine(CLASSIFY, backend="auto")):
        with engine:
            assert engine.backend == library
            assert engine.classify("a fine day")["label"]


def test_auto_backend_is_sqz_infers():
    if not SQZ:
        pytest.skip("SQZ_CLI (the sqz binary) is not set: run through python/tests/run.sh")
    done = subprocess.run([SQZ, "infer", "--model", str(CLASSIFY), "--backend", "auto", "--input",
                           "/dev/null"], capture_output=True, check=True)
    picked = re.search(r" tokens on (\S+) ", done.stderr.decode()).group(1)
    assert squeezebert.pick_backend("auto") == picked
    with squeezebert.Engine(CLASSIFY) as engine:
        assert engine.backend == picked
