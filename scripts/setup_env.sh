#!/usr/bin/env bash
# Make (or reuse) the local virtual environment and install everything into it, in the order basicsr needs:
# torch first (basicsr's build imports it), then basicsr without build isolation, then this package, then the
# optional realesrgan package without its dependencies (see setup.py's extras).
# Environment: PYTHON (default python3), VENV (default .venv), TORCH_SPEC (default the pinned torch/torchvision).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
stamp="$VENV/.mclir-setup"
want="$(cat setup.py scripts/setup_env.sh | sha256sum | cut -c1-16) $TORCH_SPEC"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "[setup] $VENV is up to date"
  exit 0
fi
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@"; }
echo "[setup] installing $TORCH_SPEC"
pip install -q --upgrade pip setuptools wheel
# shellcheck disable=SC2086
pip install -q $TORCH_SPEC
echo "[setup] installing basicsr 1.4.2 (built against the installed torch)"
pip install -q numpy cython
pip install -q --no-build-isolation basicsr==1.4.2
echo "[setup] installing mclir_plugin (editable) and the test tools"
pip install -q --no-build-isolation -e ".[test]"
echo "[setup] installing the optional realesrgan package (the tests use it), without its face-restoration deps"
pip install -q --no-deps realesrgan==0.3.0
"$VENV/bin/python" -c "import mclir_plugin, basicsr, torch, realesrgan.version as resr; print('[setup] ok: mclir_plugin', mclir_plugin.__version__, '| basicsr', basicsr.__version__, '| realesrgan', resr.__version__, '| torch', torch.__version__)"
echo "$want" > "$stamp"
