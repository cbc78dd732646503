#!/usr/bin/env bash
# The prepared GPU benchmark: OLMo 2 1B, bf16, FSDP2 (world 1), torch.compile, seq 4096, 3 warmup + 20
# timed steps on random tokens. Writes $OUT/gpu_bench.json and prints a markdown row for RESULTS.md.
#
# Installs nothing except, when the machine's Python lacks them, the exact wheels in bench/wheels/
# (offline, --no-index): pydantic==2.14.3 and fsspec==2026.9.0 with their dependencies. Those wheels are
# fetched beforehand, on a machine with registry access, by `bash bench/gpu_bench.sh --prepare`
# (Python 3.12, manylinux x86_64 by default; PYVER=3.11 to match another interpreter).
# torch (CUDA build) and numpy must already be installed: they are far too big to carry.
#
#   bash bench/gpu_bench.sh                 # the H200 run (~3-5 minutes including compilation)
#   bash bench/gpu_bench.sh --steps 10      # extra arguments go to bench/gpu_bench.py
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-bench/wheels}
PINS=(pydantic==2.14.3 pydantic_core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5
      typing_extensions==4.16.0 fsspec==2026.9.0)

if [[ "${1:-}" == "--prepare" ]]; then
  PYVER=${PYVER:-3.12}
  mkdir -p "$WHEELS"
  "$PYTHON" -m pip download --only-binary=:all: --no-deps --python-version "$PYVER" \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$WHEELS" "${PINS[@]}"
  ls -l "$WHEELS"
  exit 0
fi

echo "== versions"
"$PYTHON" --version
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  echo "torch is not importable by $PYTHON: this benchmark needs a CUDA build of torch preinstalled" >&2
  exit 2
fi
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available()); print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
"$PYTHON" -c "import numpy; print('numpy', numpy.__version__)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true

if ! "$PYTHON" -c "import pydantic, fsspec" 2>/dev/null; then
  if [[ ! -d "$WHEELS" ]]; then
    echo "pydantic/fsspec missing and no $WHEELS/: run 'bash bench/gpu_bench.sh --prepare' where a registry is reachable" >&2
    exit 2
  fi
  echo "== installing pinned wheels from $WHEELS (offline)"
  "$PYTHON" -m pip install --no-index --find-links "$WHEELS" --target bench/.pydeps "${PINS[@]}"
  export PYTHONPATH="$PWD/bench/.pydeps${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PYTHON" -c "import pydantic, fsspec; print('pydantic', pydantic.VERSION, 'fsspec', fsspec.__version__)"

echo "== benchmark"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/olmorun-inductor}
timeout 450 "$PYTHON" bench/gpu_bench.py "$@"
