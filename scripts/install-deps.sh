#!/usr/bin/env bash
# Install what dmnist needs to build and test on Debian 12 (run as root, or with sudo).
# The CUDA toolkit is optional: without /usr/local/cuda the CUDA plugins are skipped.
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
packages=(
  build-essential cmake pkg-config git
  libinih-dev zlib1g-dev libopenblas-dev     # INI files, .gz IDX files, sgemm
  libopenmpi-dev openmpi-bin                 # mpi backend and mpirun
  libgloo-dev                                # gloo backend
  redis-server                               # gloo's redis:// rendezvous (tests)
  iproute2                                   # network-namespace tests
  python3 python3-torch python3-matplotlib gnuplot-nox  # PyTorch reference, plots
  clang libclang-rt-14-dev valgrind          # fuzzing, sanitizers
)
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${packages[@]}"
