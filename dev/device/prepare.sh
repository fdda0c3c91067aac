#!/usr/bin/env bash
# Builds .dev/ (ignored by git): what a lent GPU machine needs for RAVDESS runs and lacks.
# Run here, from anywhere, after `make setup`; then see README.md beside this file.
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qsx "/.dev/" .git/info/exclude || echo "/.dev/" >> .git/info/exclude
mkdir -p .dev/whl .dev/cache
[ -d .dev/ravdess ] || cp -r ../shared/data/ravdess .dev/ravdess     # 52 MB: never committed
# The GPU image has torch, transformers, safetensors, sklearn, yaml, tqdm, matplotlib; not these
# (nor, on the 2026-11-27 image, cffi, which soundfile needs).
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_31_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .dev/whl soundfile soxr cffi
# The built-in Whisper tiny.en, converted once (GMPTL_CACHE there points at .dev/cache).
.venv/bin/python -c "from gmptl.encoders import build_encoder; build_encoder('whisper-tiny.en')"
cp "${GMPTL_CACHE:-$HOME/.cache/gmptl}/whisper-tiny.en.encoder.safetensors" .dev/cache/
git rev-parse HEAD > .dev/commit
git diff --quiet HEAD -- gmptl configs || echo "warning: gmptl/ or configs/ differ from HEAD: commit before a run" >&2
du -sh .dev/*
