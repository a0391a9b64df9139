#!/usr/bin/env bash
# mypy --strict over the package, with TensorRT's type stubs (tensorrt-stubs on PyPI) mended
# into .cache/stubs: the shipped stubs have syntax errors (a parameter named 'in', a
# non-default parameter after a default one) and no py.typed.
set -euo pipefail
cd "$(dirname "$0")/.."
stubs=.cache/stubs
if [ ! -f "$stubs/tensorrt/__init__.pyi" ]; then
  mkdir -p .cache/wheels "$stubs"
  .venv/bin/python -m pip download -q --no-deps -d .cache/wheels "tensorrt-stubs==10.13.0.35.1"
  .venv/bin/python scripts/mend_trt_stubs.py .cache/wheels/tensorrt_stubs-*.whl "$stubs"
fi
MYPYPATH="$stubs" exec .venv/bin/mypy
