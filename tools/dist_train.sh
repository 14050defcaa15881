#!/usr/bin/env bash
# Train on NPROC processes of this machine with torchrun (one per GPU; gloo on CPU when CUDA is absent).
#   tools/dist_train.sh NPROC CONFIG [train.py flags...]     e.g. tools/dist_train.sh 8 options/swinir_spn.yml --auto_resume
# PORT=29500 picks the rendezvous port; without it torchrun --standalone chooses a free one.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 NPROC CONFIG [train.py flags...]" >&2
  exit 2
fi
NPROC=$1
CONFIG=$2
shift 2
HERE="$(cd "$(dirname "$0")" && pwd)"
PYTHON=${PYTHON:-python}
if [ -n "${PORT:-}" ]; then
  RDZV=(--master_port="$PORT")
else
  RDZV=(--standalone)
fi
exec "$PYTHON" -m torch.distributed.run "${RDZV[@]}" --nproc_per_node="$NPROC" \
  "$HERE/train.py" -opt "$CONFIG" --launcher pytorch "$@"
