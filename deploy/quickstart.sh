#!/bin/bash
# Coffer quick start on a fresh Debian 12 machine: install the dependencies,
# build everything in ./build. Run from the repository root:
#     bash deploy/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."

bash deploy/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build build -j"$(nproc)"
echo
echo "Built. Run the tests with:  ctest --test-dir build --output-on-failure"
