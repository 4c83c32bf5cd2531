#!/usr/bin/env python3
"""sqz serve with the real clients people point at text-embeddings-inference: huggingface_hub's
InferenceClient.feature_extraction and the OpenAI client's embeddings.create (base64 by default,
and float), against a server on 127.0.0.1 on a free port. Their embeddings must equal
`sqz infer --task embed --normalize`'s for the same texts (1e-6).

    test_serve_clients.py SQZ_BINARY FIXTURES_DIR VENV_DIR

The clients are installed with pip into VENV_DIR (kept between runs); when pip cannot install
them (no network), the test says so and exits 77 (skipped)."""
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
from serve_load import start_server  # noqa: E402 (the tools folder first)

PACKAGES = ["openai", "huggingface_hub", "numpy"]
SKIP = 77


def in_venv(venv):
    """Re-runs this script with the venv's Python, creating the venv and installing the clients
    first when needed."""
    python = os.path.join(venv, "bin", "python")
    if os.path.realpath(sys.prefix) == os.path.realpath(venv):
        return
    if not os.path.exists(python):
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    probe = subprocess.run([python, "-c", "import openai, huggingface_hub, numpy"], capture_output=True)
    if probe.returncode != 0:
        got = subprocess.run([python, "-m", "pip", "install", "-q", "--timeout", "20", "--retries", "1", *PACKAGES],
                             capture_output=True, text=True)
        if got.returncode != 0:
            print("SKIP: pip could not install %s: %s" % (" ".join(PACKAGES), got.stderr.strip()[-400:]))
            sys.exit(SKIP)
    os.execv(python, [python] + sys.argv)


def main():
    sqz, fixtures, venv = sys.argv[1:4]
    in_venv(venv)
    import numpy as np
    from huggingface_hub import InferenceClient
    from openai import OpenAI

    model = os.path.join(fixtures, "infer", "embed")
    texts = []
    with open(os.path.join(model, "input.jsonl"), encoding="utf-8", errors="replace") as f:  # one line is invalid UTF-8
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("text"), str) and record["text"] and \
                    "\ufffd" not in record["text"] and \
                    "text_pair" not in record:
                texts.append(record["text"])
    tmp = tempfile.mkdtemp(prefix="sqz-serve-clients-")
    with open(os.path.join(tmp, "in.jsonl"), "w") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
    out = os.path.join(tmp, "out.jsonl")
    subprocess.run([sqz, "infer", "--model", model, "--backend", "cpu_ref", "--task", "embed", "--normalize",
                    "--input", os.path.join(tmp, "in.jsonl"), "--output", out], check=True, stderr=subprocess.DEVNULL)
    want = [json.loads(line) for line in open(out)]
    keep = [i for i, r in enumerate(want) if "embedding" in r]
    texts = [texts[i] for i in keep]
    want = np.array([want[i]["embedding"] for i in keep], dtype=np.float64)
    assert len(texts) >= 10, "too few fixture texts"

    proc, port = start_server(sqz, model, ["--backend", "cpu_ref", "--auto-truncate"], os.path.join(tmp, "serve.log"))
    try:
        base = "http://127.0.0.1:%d" % port
        hf = InferenceClient(model=base)
        for i, text in enumerate(texts):
            got = np.asarray(hf.feature_extraction(text), dtype=np.float64).reshape(-1)
            np.testing.assert_allclose(got, want[i], rtol=0, atol=1e-6,
                                       err_msg="InferenceClient.feature_extraction, text %d" % i)
        oa = OpenAI(base_url=base + "/v1", api_key="unused")
        for fmt in (None, "float", "base64"):
            kwargs = {} if fmt is None else {"encoding_format": fmt}
            answer = oa.embeddings.create(model="sqz", input=texts, **kwargs)
            assert [d.index for d in answer.data] == list(range(len(texts)))
            if fmt == "base64":  # the client leaves the string as it came
                import base64
                got = np.array([np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in answer.data])
            else:
                got = np.array([d.embedding for d in answer.data], dtype=np.float64)
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg="OpenAI client, encoding %s" % fmt)
            assert answer.usage.prompt_tokens > 0
        print("ok: InferenceClient and the OpenAI client (default, float, base64) on %d texts" % len(texts))
    finally:
        proc.terminate()
        code = proc.wait(timeout=60)
    assert code == 0, "sqz serve exited %d after SIGTERM" % code


if __name__ == "__main__":
    main()
