#!/usr/bin/env bash
# A real Triton Inference Server for tests/test_triton_server.py, apart from the project's venv:
#   .triton/server  the nvidia-pytriton 0.7.0 wheel's files (tritonserver 2.51.0, its libraries, the python
#                   backend), installed with --no-deps: pytriton's own Python dependencies are not needed
#   .triton/env     the environment the python backend's stub runs model.py in: numpy<2 (the stub's pybind
#                   predates numpy 2 and crashes under it), the runtime's dependencies and this project (editable)
# The stub binary for .triton/env's Python version is copied into the python backend's folder, as pytriton does.
# Run it from anywhere; it is idempotent (a second run finds both in place and only checks them).
set -euo pipefail
cd "$(dirname "$0")/.."
root=.triton
server=$root/server
env=$root/env
if [ ! -x "$server/pytriton/tritonserver/bin/tritonserver" ]; then
    rm -rf "$server"
    python3 -m pip install -q --no-deps --target "$server" nvidia-pytriton==0.7.0
fi
if [ ! -x "$env/bin/python" ]; then
    rm -rf "$env"
    python3 -m venv "$env"
    "$env/bin/python" -m pip install -q --upgrade pip
    "$env/bin/python" -m pip install -q 'numpy>=1.24,<2' 'tokenizers>=0.19' 'onnxruntime>=1.18'
    "$env/bin/python" -m pip install -q --no-deps -e .
fi
version=$("$env/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
tritonserver=$server/pytriton/tritonserver
stub=$tritonserver/python_backend_stubs/$version/triton_python_backend_stub
if [ ! -f "$stub" ]; then
    echo "setup-triton.sh: nvidia-pytriton 0.7.0 has no python backend stub for Python $version" \
         "(it has $(ls "$tritonserver/python_backend_stubs" | tr '\n' ' ')); make $env with one of those" >&2
    exit 1
fi
install -m 755 "$stub" "$tritonserver/backends/python/triton_python_backend_stub"
"$env/bin/python" -c 'import numpy, runtime, serving.requests; assert int(numpy.__version__.split(".")[0]) < 2'
{ "$tritonserver/bin/tritonserver" --help 2>&1 || true; } | grep -q -- --model-repository
echo "$tritonserver/bin/tritonserver (stub environment $env, Python $version)"
