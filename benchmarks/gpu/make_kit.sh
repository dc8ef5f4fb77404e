#!/usr/bin/env bash
# Build the carry folder .whl/ for a GPU session (device tool): what the GPU image lacks for the Jittor
# backend. The image already has torch (cu130), numpy 2, opencv, h5py, safetensors, scipy, scikit-image,
# scikit-learn, tqdm, pillow, pytest and hypothesis (device/KINDS.md). ~20 MB; run from the repo root.
set -euo pipefail
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
mkdir -p .whl
python3 -m pip download -q --no-deps --no-binary :all: -d .whl jittor==1.3.11.0
# Jittor declares numpy<2; try it on the image's numpy 2 first (--no-deps). If it breaks, carry this wheel
# too -- but opencv there needs numpy>=2, so only Jittor-only commands may then put it on PYTHONPATH.
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl numpy==1.26.4 astunparse==1.6.3
ls -la .whl
