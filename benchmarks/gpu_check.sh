#!/usr/bin/env bash
# One-shot GPU check of d2nn: the CuPy/CUDA tests, a CUDA training step against the CPU, and
# GPU throughput at the Lin geometry. Under 8 minutes on one modern NVIDIA GPU.
#
#   bash benchmarks/gpu_check.sh [WHEELS_DIR]        # from the repository root of a fresh checkout
#
# Needs on the GPU machine: Python 3 with CUDA torch, CuPy, SciPy, NumPy, pytest and hypothesis
# (all in common CUDA images). What such images lack -- pyFFTW, trimesh, manifold3d -- is
# installed from wheels in WHEELS_DIR (default: .whl/ in the repository root), without network.
# Download them once on any x86-64 Linux machine with internet, for the GPU machine's Python
# (3.12 here; change --python-version to match `python3 --version` there):
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl pyFFTW trimesh manifold3d
#
# (about 5 MB). Nothing else is prepared: d2nn itself is used from the checkout (PYTHONPATH).
# Exit status: 0 all passed; 1 a test or the gradient check failed; 2 the machine cannot run it.
# The paper estimate of what the GPU path should reach is in benchmarks/GPU.md.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
WHEELS="${1:-$ROOT/.whl}"
SITE="$(mktemp -d /tmp/d2nn-gpu-site.XXXXXX)"
START=$(date +%s)

step() { echo; echo "== gpu_check [$(( $(date +%s) - START )) s]: $*"; }

step "machine"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 - <<'EOF' || { echo "gpu_check: CUDA torch and CuPy with a GPU are needed" >&2; exit 2; }
import sys, torch, cupy, scipy, numpy, pytest
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, cupy {cupy.__version__}, "
      f"numpy {numpy.__version__}, scipy {scipy.__version__}")
assert torch.cuda.is_available(), "torch sees no CUDA device"
assert cupy.is_available(), "CuPy sees no CUDA device"
EOF

step "installing missing packages from $WHEELS"
missing=$(python3 - <<'EOF'
import importlib.util
print(" ".join(m for m in ("pyfftw", "trimesh", "manifold3d", "hypothesis") if importlib.util.find_spec(m) is None))
EOF
)
if [ -n "$missing" ]; then
  echo "missing: $missing"
  if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    echo "gpu_check: no wheels in $WHEELS; download them as this script's header says" >&2; exit 2
  fi
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$WHEELS"/*.whl \
    || { echo "gpu_check: installing the wheels failed" >&2; exit 2; }
fi
export PYTHONPATH="$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import diffractive, training, d2nn; print('d2nn', diffractive.__version__, 'from', diffractive.__file__)" \
  || { echo "gpu_check: d2nn does not import" >&2; exit 2; }

status=0
step "pytest -m gpu (the CuPy/CUDA tests)"
python3 -m pytest -q -m gpu -p no:cacheprovider tests
rc=$?
if [ $rc -eq 5 ]; then echo "gpu_check: no gpu test was collected (pytest exit 5)" >&2; status=1
elif [ $rc -ne 0 ]; then status=1; fi

step "CUDA training step vs CPU, throughput at the Lin geometry"
python3 benchmarks/gpu_check.py --device cuda --batches 32,128,512 --steps 20 || status=1

step "done: $([ $status -eq 0 ] && echo PASSED || echo FAILED) in $(( $(date +%s) - START )) s"
rm -rf "$SITE"
exit $status
