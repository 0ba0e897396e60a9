#!/usr/bin/env bash
# Set-up on a fresh machine: a venv in .venv with torch (CPU wheel, pinned: any other spec may pull a
# multi-GB CUDA build), then albert-export with its export and cpu (onnxruntime) extras, test, bench, openvino, and
# tensorrt (TensorRT-RTX builds engines on CPU-only machines), serve, ray and triton (the serving tests); then
# the Node packages and a real Triton server (scripts/setup-triton.sh). Exactly one
# onnxruntime: cpu, never beside gpu.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
python -m pip install -q -e '.[export,cpu,test,tensorrt,openvino,bench,serve,ray,triton]'
bash scripts/setup-node.sh
bash scripts/setup-triton.sh  # tritonserver and its stub environment in .triton/, apart from .venv
