#!/usr/bin/env bash
# Regenerate tests/fixtures/sentence/ (see the README there) with the references:
# transformers' tokenizer and sentence-transformers' encode.
#
# Only needed when the fixtures must be rebuilt; the build and the tests never run this.
# It creates a Python virtual environment, installs the pinned versions with pip, fetches the
# real all-MiniLM-L6-v2 (tools/fetch_minilm.sh: its tokenizer.json is one of the fixtures) and
# runs tools/gen_sentence_fixtures.py. CPU only; any torch build of the pinned version works.
#
#   SQZ_FIXTURE_VENV=/path/to/venv  reuse / create the venv there (kept afterwards);
#                                   unset: a temporary venv is created and removed at exit.
#   PYTHON=python3.11               interpreter used to create the venv (default python3).
#   --check-real BUILD/sqz          instead: compare `sqz infer --task embed` on the real model
#                                   with sentence-transformers (cpu_ref and OpenCL) and print
#                                   the largest difference; nothing is written.
set -euo pipefail

TORCH_VERSION=2.15.0
TRANSFORMERS_VERSION=5.24.0
TOKENIZERS_VERSION=0.23.3
SAFETENSORS_VERSION=0.8.0
SENTENCE_TRANSFORMERS_VERSION=6.2.0

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/sqz-sentence-fixtures.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
venv="${SQZ_FIXTURE_VENV:-$tmp/venv}"
if [[ ! -x "$venv/bin/python" ]]; then
    "${PYTHON:-python3}" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet \
    "torch==${TORCH_VERSION}" \
    "transformers==${TRANSFORMERS_VERSION}" \
    "tokenizers==${TOKENIZERS_VERSION}" \
    "safetensors==${SAFETENSORS_VERSION}" \
    "sentence-transformers==${SENTENCE_TRANSFORMERS_VERSION}"
real="$("$here/fetch_minilm.sh")"
cd "$root"
exec "$venv/bin/python" tools/gen_sentence_fixtures.py --real-model "$real" "$@"
