#!/usr/bin/env bash
# Set-up on a fresh machine: a venv in .venv with torch (CPU wheel, pinned: any other spec may pull a
# multi-GB CUDA build), then albert-export with its export and cpu (onnxruntime) extras, test, bench, openvino, and
# tensorrt (TensorRT-RTX builds engines on CPU-only machines), serve, ray and triton (the serving tests). Exactly one
# onnxruntime: cpu, never beside gpu. Then the Node clients, the C++ example (scripts/setup-cpp.sh) and a real
# Triton server (scripts/setup-triton.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first, its CPU build: PyPI's Linux torch is the CUDA one (with ~20 nvidia packages, 3 GB). PyTorch's CPU
# index serves it, as its install page says; a machine whose pip already finds a local CPU wheel of that version
# (find-links; the project's CI machines, which reach PyPI only) takes that one, and this says so.
TORCH=torch==2.13.0
if python -m pip install -q --no-index --no-deps "$TORCH" 2>/dev/null; then
    echo "setup: $TORCH from a local wheel ($(python -m pip show torch | sed -n 's/^Version: //p'), pip's find-links)"
    python -m pip install -q "$TORCH"  # its dependencies, from the index
else
    python -m pip install -q "$TORCH" --index-url https://download.pytorch.org/whl/cpu
fi
python -c "import sys, torch; sys.exit(torch.version.cuda is not None)" || {
    echo "setup: error: torch is a CUDA build (3 GB); remove .venv and rerun for the CPU one" >&2; exit 1; }
python -m pip install -q -e '.[export,cpu,test,tensorrt,openvino,bench,serve,ray,triton]'
bash scripts/setup-node.sh
bash scripts/setup-cpp.sh
bash scripts/setup-triton.sh  # tritonserver and its stub environment in .triton/, apart from .venv
