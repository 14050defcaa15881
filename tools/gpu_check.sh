#!/usr/bin/env bash
# The GPU checks, as one short script (about 3-4 minutes on one H100/H200): the SPN step benchmark on CUDA in
# fp32, bf16 and fp16 (SwinIR-light x4 and DehazeFormer-T), then a 2-step training run on one GPU with nccl/AMP.
# Needs the package installed (scripts/setup_env.sh, or torch + basicsr + this package) and one CUDA GPU.
#   tools/gpu_check.sh            (PYTHON=python3 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" - <<'PYEOF'
import torch
assert torch.cuda.is_available(), 'gpu_check.sh needs a CUDA GPU'
print('#', torch.cuda.get_device_name(0), '| torch', torch.__version__, '| CUDA', torch.version.cuda)
PYEOF
bench() { "$PY" tools/benchmark_spn.py --device cuda --steps 20 --warmup 5 "$@"; }
bench --arch swinir_light --patch 256 --batch 8 --negatives 1 4
bench --arch swinir_light --patch 256 --batch 8 --negatives 4 --amp bf16
bench --arch swinir_light --patch 256 --batch 8 --negatives 4 --amp fp16
# channels-last VGG ('auto' keeps the default layout on CUDA): compare with the bf16 line above
bench --arch swinir_light --patch 256 --batch 8 --negatives 4 --amp bf16 --vgg-channels-last true
if [ -f mclir_plugin/archs/dehazeformer_arch.py ]; then
  bench -opt options/dehazeformer_t_spn.yml --patch 256 --batch 8 --negatives 4
  bench -opt options/dehazeformer_t_spn.yml --patch 256 --batch 8 --negatives 4 --amp bf16
  # the negatives in channels-last ('auto' keeps them in the default layout on CUDA): is it worth turning on?
  bench -opt options/dehazeformer_t_spn.yml --patch 256 --batch 8 --negatives 4 --amp bf16 --neg-channels-last true
fi
# one real training run on the GPU through torchrun (nccl), with bf16 autocast, on the built-in demo data
tmp=$(mktemp -d)
(cd "$tmp" && PYTHON="$PY" bash "$OLDPWD/tools/dist_train.sh" 1 "$OLDPWD/options/demo_spn.yml" --force_yml \
   train:total_iter=20 logger:print_freq=10 val:val_freq=20 mclir:amp=bf16 mclir:hook:sync_check_interval=10 \
   2>&1 | grep -E "World size|l_pix|psnr|agree|Error" )
rm -rf "$tmp"
