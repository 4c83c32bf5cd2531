"""Failures raise SqueezeBertError carrying the library's own message: the same text `sqz`
prints for the same mistake (the CLI is the reference for what the library says)."""

import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

import squeezebert
from conftest import FIXTURES, SQZ, sqz_infer

CLASSIFY = FIXTURES / "infer" / "classify"


def sqz_stderr(*args):
    if not SQZ:
        pytest.skip("SQZ_CLI (the sqz binary) is not set: run through python/tests/run.sh")
    done = subprocess.run([SQZ, *args], capture_output=True)
    assert done.returncode != 0
    return done.stderr.decode().strip()


def test_missing_model_folder():
    with tempfile.TemporaryDirectory() as empty:
        cli = sqz_stderr("infer", "--model", empty, "--input", "/dev/null")
        with pytest.raises(squeezebert.SqueezeBertError) as caught:
            squeezebert.Engine(empty, backend="cpu_ref")
    # "sqz infer: i/o error: cannot open .../config.json (...)": status, then the library's message
    assert cli == f"sqz infer: {caught.value.status}: {caught.value}"
    assert "config.json" in str(caught.value)


def test_unknown_backend_and_precision():
    with pytest.raises(squeezebert.SqueezeBertError, match="unknown backend 'nope'"):
        squeezebert.Engine(CLASSIFY, backend="nope")
    cli = sqz_stderr("infer", "--model", str(CLASSIFY), "--precision", "fp8", "--input", "/dev/null")
    with pytest.raises(squeezebert.SqueezeBertError) as caught:
        squeezebert.Engine(CLASSIFY, backend="cpu_ref", precision="fp8")
    assert cli == f"sqz infer: {caught.value}"


def test_input_errors_carry_the_pipeline_message():
    """An input the pipeline refuses: answers() gives its message in place, the task methods
    raise it naming the input; the message is the one `sqz infer` writes for the same line."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        folder.mkdir()
        for f in (FIXTURES / "infer" / "fill-mask").iterdir():
            (folder / f.name).symlink_to(f)
        (folder / "input.jsonl").unlink()
        (folder / "input.jsonl").write_text(json.dumps({"text": "no mask here"}) + "\n" +
                                            json.dumps({"text": "a [MASK] day"}) + "\n")
        cli = [json.loads(line) for line in sqz_infer(folder)]
        with squeezebert.Engine(folder, backend="cpu_ref") as engine:
            answers = engine.answers(["no mask here", "a [MASK] day"])
            assert answers[0] == {"error": cli[0]["error"]} and "masks" in answers[1]
            with pytest.raises(squeezebert.SqueezeBertError) as caught:
                engine.fill_mask(["a [MASK] day", "no mask here"])
            assert str(caught.value) == f"input 1: {cli[0]['error']}"


def test_run_errors_and_misuse():
    with squeezebert.Engine(CLASSIFY, backend="cpu_ref") as engine:
        with pytest.raises(squeezebert.SqueezeBertError, match=r"input_ids\[0\]\[1\] = 5000 is outside the vocabulary"):
            engine.forward([[101, 5000, 102]])
        with pytest.raises(squeezebert.SqueezeBertError, match="needs a different head"):
            engine.fill_mask("a [MASK] day")
        with pytest.raises(ValueError, match="attention_mask has shape"):
            engine.forward([[101, 102]], attention_mask=[[1, 1, 1]])
        with pytest.raises(ValueError):
            engine.qa(["q"], "one context for a list")
        with pytest.raises(TypeError):
            engine.classify([b"ok", 5])
        # the engine still answers after each failure
        assert engine.classify("ok")["label"] in ("negative", "neutral", "positive")
    with pytest.raises(squeezebert.SqueezeBertError, match="closed"):
        engine.classify("ok")


def test_folder_without_tokenizer_runs_forward_only():
    folder = FIXTURES / "models" / "sqb-default" / "seqcls-safetensors"
    with squeezebert.Engine(folder, backend="cpu_ref") as engine:
        assert engine.forward(np.array([[101, 7, 102]]))["logits"].shape[0] == 1
        with pytest.raises(squeezebert.SqueezeBertError, match="vocab.txt"):
            engine.classify("ok")
