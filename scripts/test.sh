#!/usr/bin/env bash
# Build dmnist and run the whole test suite (ctest). Usage: scripts/test.sh [BUILD_DIR]
# Needs MNIST in data/mnist for the end-to-end tests (scripts/get-mnist.sh); they skip visibly without it.
set -euo pipefail
cd "$(dirname "$0")/.."
build="${1:-build}"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release
cmake --build "$build" -j"$(nproc)"
ctest --test-dir "$build" --output-on-failure -j"$(nproc)"
