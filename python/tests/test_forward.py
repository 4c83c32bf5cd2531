"""Engine.forward against transformers' own outputs (tests/fixtures/models, the same cases and
bar as tests/test_fixtures.c): every output present, named and shaped as transformers names and
shapes it, within 1e-5 of max |reference| (per-token outputs only where the mask is 1)."""

import json

import numpy as np
import pytest

import squeezebert
from conftest import FIXTURES

TOLERANCE = 1e-5
CASES = json.loads((FIXTURES / "models" / "manifest.json").read_text()) + \
    json.loads((FIXTURES / "models" / "variants" / "manifest.json").read_text())
BACKENDS = sorted({"cpu_ref", squeezebert.pick_backend()})


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", [c["dir"] for c in CASES])
def test_forward_matches_transformers(case, backend):
    folder = FIXTURES / "models" / case
    given = json.loads((folder / "input.json").read_text())
    expected = json.loads((folder / "expected.json").read_text())["outputs"]
    ids = np.array(given["input_ids"], dtype=np.int64)
    mask = np.array(given["attention_mask"], dtype=np.int64)
    with squeezebert.Engine(folder, backend=backend) as engine:
        got = engine.forward(ids, attention_mask=mask, token_type_ids=given["token_type_ids"])
    assert sorted(got) == sorted(expected)
    for name, want in expected.items():
        ref = np.array(want["data"], dtype=np.float64).reshape(want["shape"])
        out = got[name]
        assert out.dtype == np.float32 and list(out.shape) == want["shape"], name
        assert np.isfinite(out).all(), name
        # per-token outputs ([batch, seq, ...] of a [batch, seq] input) only where a token is
        per_token = ids.ndim == 2 and out.ndim >= 2 and out.shape[1] == ids.shape[1]
        keep = (mask != 0) if per_token else np.ones(out.shape[:1], dtype=bool)
        diff = np.abs(out[keep].astype(np.float64) - ref[keep]).max()
        scale = np.abs(ref[keep]).max()
        assert scale > 0 and diff <= TOLERANCE * scale, f"{case} {name}: relative error {diff / scale:.3e}"


def test_forward_of_tokenize_equals_classify():
    """tokenize(padding=True) feeds forward; its logits give classify's probabilities."""
    with squeezebert.Engine(FIXTURES / "infer" / "classify", backend="cpu_ref") as engine:
        texts = ["a fine day", "rain again and again, all week long"]
        batch = engine.tokenize(texts, padding=True)
        assert batch["attention_mask"][0].sum() < batch["attention_mask"][1].sum()
        logits = engine.forward(**batch)["logits"].astype(np.float64)
        probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        answers = engine.classify(texts)
        for row, answer in zip(probabilities, answers):
            assert np.allclose(row, list(answer["scores"].values()), rtol=0, atol=1e-6)
