#!/usr/bin/env bash
# The C++ example (examples/cpp): its Debian packages (SentencePiece, nlohmann-json, utf8proc, OpenSSL's headers;
# g++ and cmake), then its build into build/cpp against the venv's openvino wheel (scripts/setup.sh made it).
# Installing needs root (CI runs as root). Where the packages cannot be installed this says so and exits 0:
# tests/test_cpp.py then skips, saying so; where they are installed, a build that fails fails here and there.
set -euo pipefail
cd "$(dirname "$0")/.."
packages=(libsentencepiece-dev nlohmann-json3-dev libutf8proc-dev libssl-dev pkg-config cmake g++)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]] || ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; }; then
    echo "setup-cpp: cannot install ${missing[*]} (needs root and the Debian archive); the C++ example is not built" >&2
    exit 0
  fi
fi
python=.venv/bin/python
[[ -x $python ]] || python=python3
openvino_dir=$("$python" -c "import openvino.utils as u; print(u.get_cmake_path())")
cmake -S examples/cpp -B build/cpp -DOpenVINO_DIR="$openvino_dir" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build/cpp -j"$(nproc)"
