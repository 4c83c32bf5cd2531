#!/usr/bin/env bash
# Regenerate the reference fixtures in tests/fixtures/models/ (see the README there).
#
# Only needed when the fixtures must be rebuilt; the build and the tests never run this.
# It creates a Python virtual environment, installs the pinned reference stack with pip
# (from whatever package index pip is configured to use) and runs tools/gen_fixtures.py,
# which writes the fixtures and then reloads and re-checks every one of them.
#
#   SQZ_FIXTURE_VENV=/path/to/venv  reuse / create the venv there (kept afterwards);
#                                   unset: a temporary venv is created and removed at exit.
#   PYTHON=python3.11               interpreter used to create the venv (default python3).
#   Extra arguments are passed on to gen_fixtures.py (e.g. --dump-keys, --out DIR).
#
# CPU only. Any torch build of the pinned version works (a CPU-only wheel is enough).
set -euo pipefail

TORCH_VERSION=2.15.0
TRANSFORMERS_VERSION=5.24.0
SAFETENSORS_VERSION=0.8.0
NUMPY_VERSION=2.4.6

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"

if [[ -n "${SQZ_FIXTURE_VENV:-}" ]]; then
    venv="$SQZ_FIXTURE_VENV"
else
    venv="$(mktemp -d "${TMPDIR:-/tmp}/sqz-fixture-venv.XXXXXX")"
    trap 'rm -rf "$venv"' EXIT
fi

if [[ ! -x "$venv/bin/python" ]]; then
    "${PYTHON:-python3}" -m venv "$venv"
fi

"$venv/bin/python" -m pip install \
    "torch==${TORCH_VERSION}" \
    "transformers==${TRANSFORMERS_VERSION}" \
    "safetensors==${SAFETENSORS_VERSION}" \
    "numpy==${NUMPY_VERSION}"

cd "$root"
"$venv/bin/python" tools/gen_fixtures.py --out "$root/tests/fixtures/models" "$@"
"$venv/bin/python" tools/gen_legacy_fixtures.py "$root/tests/fixtures/models"
