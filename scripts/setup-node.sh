#!/usr/bin/env bash
# The Node.js packages of examples/node (transformers.js, onnxruntime-node, tokenizers.js), at the versions
# package-lock.json pins; tests/test_node_clients.py runs them. onnxruntime-node's post-install step downloads
# CUDA binaries from a host these machines cannot reach; its CPU binding ships in the package, so skip it.
set -euo pipefail
cd "$(dirname "$0")/../examples/node"
ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund
