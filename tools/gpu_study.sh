#!/usr/bin/env bash
# A short version of docs/first_study.md on one CUDA GPU (meant to fit in about 8 minutes; not yet run on a GPU):
# baseline vs SPN, 3 seeds, on the built-in synthetic data, for a small SwinIR x4 and DehazeFormer-T, with
# longer runs than the CPU study. Results land in studies/gpu_{sr,haze}/results.md.
#   tools/gpu_study.sh [ITERS]        (default 1000 iterations per run; PYTHON=python3 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
ITERS=${1:-1000}
"$PY" -c "import torch; assert torch.cuda.is_available(), 'gpu_study.sh needs a CUDA GPU'"
common=(--seeds 0 1 2 --iters "$ITERS" --override num_gpu=1 "val:val_freq=$((ITERS / 4))" "logger:print_freq=$((ITERS / 10))")
"$PY" tools/ablate.py --workdir studies/gpu_sr --study gpu_sr -opt options/demo.yml --spn options/demo_spn.yml "${common[@]}"
"$PY" tools/ablate.py --workdir studies/gpu_haze --study gpu_haze -opt options/demo_haze.yml \
  --spn options/demo_haze_spn.yml "${common[@]}"
