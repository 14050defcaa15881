#!/usr/bin/env bash
# Train with slurm: one task per GPU, on as many nodes as NGPUS needs (GPUS_PER_NODE each, default 8).
#   tools/slurm_train.sh PARTITION JOB_NAME CONFIG NGPUS [train.py flags...]
# Environment: GPUS_PER_NODE (8), CPUS_PER_TASK (5), SRUN_ARGS (extra srun flags), PORT (29500), PYTHON (python).
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: $0 PARTITION JOB_NAME CONFIG NGPUS [train.py flags...]" >&2
  exit 2
fi
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
NGPUS=$4
shift 4
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
if [ "$NGPUS" -lt "$GPUS_PER_NODE" ]; then GPUS_PER_NODE=$NGPUS; fi
HERE="$(cd "$(dirname "$0")" && pwd)"
export MASTER_PORT=${PORT:-29500}
# shellcheck disable=SC2086
exec srun -p "$PARTITION" --job-name="$JOB_NAME" --ntasks="$NGPUS" --ntasks-per-node="$GPUS_PER_NODE" \
  --gres=gpu:"$GPUS_PER_NODE" --cpus-per-task="${CPUS_PER_TASK:-5}" --kill-on-bad-exit=1 ${SRUN_ARGS:-} \
  "${PYTHON:-python}" -u "$HERE/train.py" -opt "$CONFIG" --launcher slurm "$@"
