#!/usr/bin/env bash
# Make bench/cache/openvino-venv for the OpenVINO benchmark row (idempotent: does nothing
# when the venv already holds exactly bench/requirements-openvino.txt and imports work).
#   bash bench/openvino_setup.sh        # prints the venv's python path on its last line
set -euo pipefail
BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$BENCH/cache/openvino-venv"
REQ="$BENCH/requirements-openvino.txt"
STAMP="$VENV/.requirements.sha256"
PY="$VENV/bin/python"
want="$(sha256sum "$REQ" | cut -d' ' -f1)"

check() {  # the imports the benchmark needs, and no torchvision
  "$PY" - <<'PY'
import importlib.util, sys
if importlib.util.find_spec("torchvision"):
    sys.exit("torchvision is installed in the OpenVINO venv")
from importlib.metadata import distributions
if any((d.metadata["Name"] or "").lower().startswith("nvidia") for d in distributions()):
    sys.exit("nvidia (CUDA) packages are installed in the OpenVINO venv: install a CPU torch")
import transformers, diffusers, openvino, optimum.intel  # noqa: F401,E401
from optimum.intel import OVStableDiffusionPipeline  # noqa: F401
PY
}

if [[ -x "$PY" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]] && check; then
  echo "$PY"
  exit 0
fi
start=$(date +%s)
mkdir -p "$BENCH/cache"
[[ -x "$PY" ]] || python3 -m venv "$VENV"
rm -f "$STAMP"
# PyPI's torch for Linux is the CUDA build (several GB of nvidia packages): a local CPU
# wheel (TORCH_WHEELS, default /opt/wheels, e.g. torch-2.13.0+cpu) sorts above it when present.
"$PY" -m pip install -q --disable-pip-version-check --find-links "${TORCH_WHEELS:-/opt/wheels}" \
  -r "$REQ"
"$PY" -m pip uninstall -q -y torchvision 2>/dev/null || true
check
echo "$want" > "$STAMP"
echo "openvino venv ready in $(( $(date +%s) - start )) s:" \
  "$("$PY" -m pip freeze | grep -iE '^(torch|openvino|optimum|optimum-intel|transformers|diffusers|nncf)==' | tr '\n' ' ')" >&2
echo "$PY"
