#!/usr/bin/env bash
# The GPU checks, as one short script (about 5 minutes on one H100/H200): the SPN step benchmark on CUDA in
# fp32, bf16 and fp16 (SwinIR-light x4 and DehazeFormer-T), the cost table of the cheap options (negatives in
# bf16/fp16, one sampled negative per step, ...), then two short training runs on one GPU through torchrun/nccl:
# bf16 autocast, and fp16 negatives with one sampled negative per step.
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
# the plugin default only (--options default) where the cost table is not the point
bench --arch swinir_light --patch 256 --batch 8 --negatives 1 4 --options default
bench --arch swinir_light --patch 256 --batch 8 --negatives 4 --amp bf16 --options default
bench --arch swinir_light --patch 256 --batch 8 --negatives 4 --amp fp16 --options default
# channels-last VGG ('auto' keeps the default layout on CUDA): compare with the bf16 line above
bench --arch swinir_light --patch 256 --batch 8 --negatives 4 --amp bf16 --vgg-channels-last true --options default
# the cost table on CUDA, fp32 network: negatives (and VGG on them) in bf16 and fp16, one sampled negative of
# four per step, each alone and combined, with neg_every 2 and neg_batch_fraction 0.5 for comparison
bench --arch swinir_light --patch 256 --batch 8 --negatives 4 --options default bf16 fp16 neg_per_step=1 \
  bf16+neg_per_step=1 fp16+neg_per_step=1 neg_every=2 neg_batch_fraction=0.5 all
if [ -f mclir_plugin/archs/dehazeformer_arch.py ]; then
  bench -opt options/dehazeformer_t_spn.yml --patch 256 --batch 8 --negatives 4 --options default
  bench -opt options/dehazeformer_t_spn.yml --patch 256 --batch 8 --negatives 4 --amp bf16 --options default
  # the negatives in channels-last ('auto' keeps them in the default layout on CUDA): is it worth turning on?
  bench -opt options/dehazeformer_t_spn.yml --patch 256 --batch 8 --negatives 4 --amp bf16 --neg-channels-last true \
    --options default
  bench -opt options/dehazeformer_t_spn.yml --patch 256 --batch 8 --negatives 4 --options default bf16 fp16 \
    neg_per_step=1 fp16+neg_per_step=1
fi
# real training runs on the GPU through torchrun (nccl), on the built-in demo data: bf16 autocast; then an fp32
# network with fp16 negatives and one of the four negatives drawn per step
tmp=$(mktemp -d)
(cd "$tmp" && PYTHON="$PY" bash "$OLDPWD/tools/dist_train.sh" 1 "$OLDPWD/options/demo_spn.yml" --force_yml \
   train:total_iter=20 logger:print_freq=10 val:val_freq=20 mclir:amp=bf16 mclir:hook:sync_check_interval=10 \
   2>&1 | grep -E "World size|l_pix|psnr|agree|Error" )
(cd "$tmp" && PYTHON="$PY" bash "$OLDPWD/tools/dist_train.sh" 1 "$OLDPWD/options/demo_spn.yml" --force_yml \
   name=gpu_check_cheap_negatives train:total_iter=20 logger:print_freq=10 val:val_freq=20 \
   mclir:hook:precision=fp16 mclir:neg_per_step=1 mclir:hook:sync_check_interval=10 \
   2>&1 | grep -E "World size|precision|per_step|per step|l_pix|psnr|agree|Error" )
rm -rf "$tmp"
