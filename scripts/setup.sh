#!/usr/bin/env bash
# Fresh-machine setup: a virtual environment in .venv with the engine installed.
#   bash scripts/setup.sh          engine + test dependencies (pytest, itk-rtk)
#   bash scripts/setup.sh --bench  also the benchmark peers (DiffDRR 0.6.1)
# torch==2.13.0 is installed first: it is a CPU wheel; an unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
python -m pip install -q torch==2.13.0 2>&1 | grep -v '^WARNING: Location' || true
python -m pip install -q -e '.[test]' 2>&1 | grep -v '^WARNING: Location' || true
if [ "${1:-}" = "--bench" ]; then
    # DiffDRR without its heavy optional dependencies (torchvision does not import beside torch 2.13.0 CPU).
    python -m pip install -q --no-deps diffdrr==0.6.1 2>&1 | grep -v '^WARNING: Location' || true
    python -m pip install -q fastcore einops kornia torchio nibabel pandas 2>&1 | grep -v '^WARNING: Location' || true
fi
python -c "import torch, XRayNeRFLib; print('torch', torch.__version__, '| XRayNeRFLib', XRayNeRFLib.__version__)"
