"""Ray Data on a local cluster: two CPU actors answer 20,000 lines, one actor is killed midway
and restarted by Ray, and still every id comes back exactly once with the record `sqz infer`
writes for its line; then `python -m squeezebert.ray` does the same job from the command line.
Run by python/tests/run.sh with ray installed (ctest test_python_ray); skipped without ray."""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

import squeezebert  # noqa: E402
from squeezebert.ray import Predictor, default_cpus_per_actor  # noqa: E402
from conftest import FIXTURES, sqz_infer  # noqa: E402

LINES = 20000
WORDS = ["fine", "rain", "day", "movie", "great", "terrible", "service", "ok", "never", "again",
         "café", "zürich", "東京", "good", "bad", "the", "a", "was", "not", "very"]


def make_input(folder: Path, count: int) -> Path:
    """count lines {"id": i, "text": ...}: texts of 0 to 24 words (an empty one is an error)."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in (FIXTURES / "infer" / "classify").iterdir():
        if f.name not in ("input.jsonl", "expected.jsonl"):
            (folder / f.name).symlink_to(f)
    with open(folder / "input.jsonl", "w", encoding="utf-8") as out:
        for i in range(count):
            words = [WORDS[(i * 7 + k * 13) % len(WORDS)] for k in range(i % 25)]
            out.write(json.dumps({"id": i, "text": " ".join(words)}, ensure_ascii=False) + "\n")
    return folder


def expected_line(row) -> str:
    """The record sqz infer writes for a row: its id, then the answer fields (or line and error)."""
    if row["error"]:
        return squeezebert.dumps({"id": int(row["id"]), "line": int(row["id"]) + 1, "error": row["error"]})
    return '{"id":' + str(int(row["id"])) + "," + row["answer"][1:]


def check_rows(rows, reference):
    ids = sorted(int(r["id"]) for r in rows)
    assert ids == list(range(len(reference))), "every line answered exactly once"
    errors = 0
    for row in rows:
        assert expected_line(row) == reference[int(row["id"])], f"line {int(row['id']) + 1}"
        errors += bool(row["error"])
    assert 0 < errors < len(rows) // 10


def within(seconds, job):
    """job() in a thread, failing the test after `seconds` (the fixture's ray.shutdown then
    ends the cluster's processes: a hung job must not leave them behind)."""
    done = []
    worker = threading.Thread(target=lambda: done.append(job()), daemon=True)
    worker.start()
    worker.join(seconds)
    assert done, f"the Ray job did not finish in {seconds} s"
    return done[0]


@pytest.fixture
def cluster():
    """A local cluster of 3 logical CPUs (two actors and the reader) for one test (the command-line test starts its own)."""
    ray.init(num_cpus=3, include_dashboard=False, object_store_memory=200 * 1024 * 1024,
             log_to_driver=False)
    yield
    ray.shutdown()


def test_two_actors_one_killed(tmp_path, cluster):
    model = make_input(tmp_path / "model", LINES)
    reference = sqz_infer(model)
    assert len(reference) == LINES
    marker, starts = tmp_path / "killed", tmp_path / "starts"

    class DyingOnce(Predictor):  # defined here so Ray ships it by value
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.calls = 0
            with open(starts, "a") as f:
                f.write(f"{os.getpid()}\n")

        def __call__(self, batch):
            self.calls += 1
            if self.calls == 3:
                try:  # the first actor to reach its third batch dies, once in the whole run
                    os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
                    os._exit(1)
                except FileExistsError:
                    pass
            return super().__call__(batch)

    data = ray.data.read_json(str(model / "input.jsonl"))
    answered = data.map_batches(DyingOnce, batch_format="numpy", batch_size=500, concurrency=2,
                                num_cpus=1, fn_constructor_kwargs={"model_dir": str(model),
                                                                   "backend": "cpu_ref"})
    rows = within(600, answered.take_all)
    assert marker.exists(), "the failure was injected"
    assert len(set(starts.read_text().split())) >= 3, "two actors, and one restarted"
    check_rows(rows, reference)


def test_default_cpus_per_actor_leaves_one_for_the_readers():
    assert default_cpus_per_actor(2, 2) == 0.5  # this machine: 2 actors and the reader on 2 CPUs
    assert default_cpus_per_actor(1, 2) == 1.0
    assert default_cpus_per_actor(2, 16) == 1.0
    assert default_cpus_per_actor(3, 1) == 0.0


def test_command_line_job(tmp_path):
    model = make_input(tmp_path / "model", 2000)
    reference = sqz_infer(model)
    out = tmp_path / "out"
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    done = subprocess.run([sys.executable, "-m", "squeezebert.ray", "--model", str(model), "--input",
                           str(model / "input.jsonl"), "--output", str(out), "--backend", "cpu_ref",
                           "--actors", "2", "--batch-size", "300"],  # CPUs per actor: the default
                          capture_output=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    rows = [json.loads(line) for f in sorted(out.iterdir()) if f.is_file()
            for line in f.read_text(encoding="utf-8").splitlines()]
    check_rows(rows, reference)
