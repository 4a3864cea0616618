#!/usr/bin/env bash
# Installs the Flower + PyTorch reference (../shared/bench/flower) into a virtual environment,
# for scripts/bench-flower.sh and scripts/bench-step.sh. About 5.5 GB from PyPI, a few minutes.
# usage: scripts/setup-flower.sh [VENV]   (default ~/.venv-flower)
set -euo pipefail
VENV=${1:-$HOME/.venv-flower}
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet torch "flwr[simulation]" psutil
"$VENV/bin/python" -c 'import torch, flwr; print("torch", torch.__version__, "flwr", flwr.__version__)'
