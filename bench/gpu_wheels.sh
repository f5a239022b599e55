#!/usr/bin/env bash
# Wheels the GPU machines lack (their image has torch, numba, numba-cuda, OpenCV, typer,
# rich, scipy, matplotlib; see the device tool's KINDS.md), downloaded HERE (where pip
# reaches the registry) into .whl/ (git-ignored), at the versions installed here, for
# Python 3.12 on x86-64. A device call then carries .whl and begins with
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#     --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PYTHONPATH
#   bash bench/gpu_wheels.sh
# (polars, which ultralytics imports only to train, is left out: its runtime wheel alone
# is larger than a device call may carry.)
set -eu
cd "$(dirname "$0")/.."
mkdir -p .whl
want() { python3 -c "import importlib.metadata as m; print(m.version('$1'))"; }
for name in gymnasium farama-notifications stable-baselines3 ultralytics ultralytics-thop \
            pydantic pydantic-core annotated-types typing-inspection lap; do
  v=$(want "$name")
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d .whl "$name==$v"
done
ls -la .whl; du -sh .whl
