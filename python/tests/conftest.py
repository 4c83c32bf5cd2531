"""Shared pieces of the package's tests: where the fixtures and the `sqz` binary are
(SQZ_FIXTURES, SQZ_CLI, set by run.sh), and `sqz infer` itself as the reference."""

import os
import subprocess
from pathlib import Path
from typing import List

import pytest

FIXTURES = Path(os.environ.get("SQZ_FIXTURES", Path(__file__).resolve().parents[2] / "tests" / "fixtures"))
SQZ = os.environ.get("SQZ_CLI", "")


def sqz_infer(model: Path, *options: str, backend: str = "cpu_ref") -> List[str]:
    """The records `sqz infer` writes for the model's input.jsonl (exit 1: some lines failed)."""
    if not SQZ:
        pytest.skip("SQZ_CLI (the sqz binary) is not set: run through python/tests/run.sh")
    done = subprocess.run([SQZ, "infer", "--model", str(model), "--backend", backend, "--input",
                           str(model / "input.jsonl"), *options], capture_output=True)
    assert done.returncode in (0, 1), done.stderr.decode()
    return done.stdout.decode("utf-8").splitlines()
