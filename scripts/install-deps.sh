#!/usr/bin/env bash
# Install what dmnist needs on Debian 12 (run as root, or as a user with sudo).
#
#   scripts/install-deps.sh [--runtime | --tests | --export | --all] [--check]
#
# Three groups, installed in this order:
#   runtime  what building dmnist, fetching MNIST and training needs: the
#            compiler and CMake, inih, zlib, OpenBLAS, Open MPI, Gloo, curl
#            (scripts/get-mnist.sh), Python 3 (scripts/sweep, seeds,
#            compare-backends, plot-timeline: standard library only),
#            protobuf-c and protoc-c (dmnist-run --tensorboard's event files)
#   tests    what the test suite (scripts/test.sh, .ci/run) and the comparison
#            scripts call besides: procps (ps, pgrep), iproute2 (ip, ss),
#            redis-server (gloo's redis:// rendezvous), gnuplot (the tools'
#            PNGs), valgrind, clang and its sanitizer runtime (scripts/fuzz.sh),
#            PyTorch (the reference in scripts/bench), Fashion-MNIST
#            (dataset-fashion-mnist: the --fashion tests of get-mnist.sh),
#            Slurm and munge (tests/slurm starts a one-node Slurm),
#            debootstrap and dpkg-dev (dpkg-shlibdeps): scripts/package.sh's
#            .deb packages and tests/package's clean Debian 12 chroot
#   export   dmnist-export (tools/export, docs/export.md): the ONNX schema
#            (libonnx-dev's onnx.proto) to build it, and PyTorch to load the
#            safetensors in its test
#
#   Both the tests and the export group then make a virtual environment
#   .venv at the repository root (or $DMNIST_VENV), with Debian's python3
#   and --system-site-packages so that python3-torch is seen, holding the
#   PyPI packages of python_packages below (tensorboard: tests/tensorboard;
#   onnxruntime, onnx, safetensors: tests/export). Creating it is
#   idempotent: an existing .venv is kept and only missing packages are
#   installed; add a package to the list, not a step.
#
#   --runtime  only the runtime group (also: --runtime-only)
#   --tests    only the tests group (also: --tests-only)
#   --export   only the export group (also: --export-only)
#   --all      every group (the default: everything scripts/test.sh needs)
#   --check    install nothing; list the commands (and data files) of the
#              chosen groups that are missing, exit 1 if any is
#
# The CUDA toolkit is not installed here: without /usr/local/cuda the CUDA
# plugins are left out of the build and their tests skip (docs/gpu.md).
set -euo pipefail
prog=$(basename "$0")
die() { echo "$prog: $*" >&2; exit 1; }

runtime_packages=(
  build-essential cmake pkg-config git
  libinih-dev zlib1g-dev libopenblas-dev     # INI files, .gz IDX files, sgemm
  libopenmpi-dev openmpi-bin                 # mpi backend and mpirun
  libgloo-dev                                # gloo backend
  curl ca-certificates                       # scripts/get-mnist.sh downloads over https
  python3                                    # the experiment scripts (standard library only)
  libprotobuf-c-dev protobuf-c-compiler      # --tensorboard: protobuf-c and protoc-c (build time)
)
tests_packages=(
  procps                                     # ps, pgrep: the tests find and count rank processes
  iproute2                                   # ip, ss, tc: network-namespace and listen-address tests, scripts/lab's links
  iptables                                   # scripts/lab: the NFQUEUE rule of its delay and loss (no sch_netem needed)
  iputils-ping                               # ping: tests/lab's round-trip check of a shaped link
  bsdutils                                   # script: the progress-bar test's pseudo-terminal
  redis-server                               # gloo's redis:// rendezvous (tests/comm)
  gnuplot-nox                                # PNGs of scripts/sweep, compare-backends, plot-timeline
  valgrind                                   # tests/robustness/valgrind.sh
  clang libclang-rt-14-dev                   # scripts/fuzz.sh (libFuzzer, ASan runtime)
  clang-format                               # tests/style: the sources as .clang-format says
  python3-torch                              # the PyTorch reference of scripts/bench
  dataset-fashion-mnist                      # /usr/share/datasets/fashion-mnist: Fashion-MNIST tests
  python3-venv python3-pip                   # the tests' .venv (PyPI packages below)
  slurmctld slurmd slurm-client munge        # tests/slurm: a Slurm started by the test (one node, or two in namespaces)
  debootstrap                                # tests/package: a clean Debian 12 chroot
  dpkg-dev                                   # dpkg-shlibdeps: the .debs' Depends (scripts/package.sh)
)
# PyPI packages of the tests' virtual environment .venv (repository root),
# as "import-name:pip-name" (the import --check and the install look for).
python_packages=(
  tensorboard:tensorboard                    # tests/tensorboard: TensorBoard's own event reader
  onnxruntime:onnxruntime onnx:onnx          # tests/export: run and check the exported model
  safetensors:safetensors                    # tests/export: load the parameters into PyTorch
)
export_packages=(
  libprotobuf-c-dev protobuf-c-compiler      # dmnist-export: protobuf-c and protoc-c
  libonnx-dev                                # the ONNX schema (/usr/include/onnx/onnx.proto)
  python3-venv python3-pip python3-torch     # .venv for tests/export; PyTorch loads the safetensors
)
# COMMAND:PACKAGE pairs that --check (and the check after installing) looks for.
runtime_commands=(cc:build-essential c++:build-essential make:build-essential cmake:cmake
  pkg-config:pkg-config git:git mpirun:openmpi-bin curl:curl python3:python3
  sha256sum:coreutils timeout:coreutils protoc-c:protobuf-c-compiler)
export_commands=(protoc-c:protobuf-c-compiler)
tests_commands=(ps:procps pgrep:procps ip:iproute2 ss:iproute2 script:bsdutils unshare:util-linux
  taskset:util-linux ping:iputils-ping redis-server:redis-server gnuplot:gnuplot-nox valgrind:valgrind clang:clang
  clang-format:clang-format
  nsenter:util-linux srun:slurm-client sinfo:slurm-client sbatch:slurm-client scontrol:slurm-client
  dpkg-shlibdeps:dpkg-dev)
# commands in /usr/sbin, which a user's PATH may lack: looked for there too
tests_sbin=(tc:iproute2 iptables:iptables slurmctld:slurmctld slurmd:slurmd munged:munge debootstrap:debootstrap)
# FILE:PACKAGE pairs for packages that install data, not a command.
runtime_files=()
export_files=()
tests_files=(/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz:dataset-fashion-mnist)

groups=(runtime tests export) check=0
for a in "$@"; do
  case $a in
    --runtime | --runtime-only) groups=(runtime) ;;
    --tests | --tests-only) groups=(tests) ;;
    --export | --export-only) groups=(export) ;;
    --all) groups=(runtime tests export) ;;
    --check) check=1 ;;
    -h | --help) sed -n '2,33s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "$prog: unknown argument '$a' (try --help)" >&2; exit 2 ;;
  esac
done

# missing GROUP: print the missing commands and files of GROUP as "what (package)".
missing() {
  local -n cmds=${1}_commands files=${1}_files
  local c
  for c in "${cmds[@]}"; do
    command -v "${c%%:*}" >/dev/null 2>&1 || echo "${c%%:*} (${c#*:})"
  done
  for c in ${files[@]+"${files[@]}"}; do
    [ -f "${c%%:*}" ] || echo "${c%%:*} (${c#*:})"
  done
  if [ "$1" = tests ]; then
    for c in "${tests_sbin[@]}"; do
      command -v "${c%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${c%%:*}" ] || echo "${c%%:*} (${c#*:})"
    done
  fi
  if [ "$1" = tests ]; then
    for c in "${python_packages[@]}"; do
      "$venv/bin/python" -c "import ${c%%:*}" >/dev/null 2>&1 || echo "${c%%:*} in .venv (pip ${c#*:})"
    done
  fi
}

# The tests' virtual environment: created once (kept when it exists), then
# every package of python_packages that it cannot import is installed.
venv=${DMNIST_VENV:-$(cd "$(dirname "$0")/.." && pwd)/.venv}
make_venv() {
  local c want=()
  # Debian's python3 (not a pyenv or other shim first on PATH): its system
  # site packages hold python3-torch.
  [ -x "$venv/bin/python" ] || /usr/bin/python3 -m venv --system-site-packages "$venv" ||
    die "python3 -m venv $venv failed"
  for c in "${python_packages[@]}"; do
    "$venv/bin/python" -c "import ${c%%:*}" >/dev/null 2>&1 || want+=("${c#*:}")
  done
  [ ${#want[@]} -eq 0 ] && return 0
  echo "$prog: installing into $venv: ${want[*]}"
  "$venv/bin/pip" install -q "${want[@]}" || die "pip could not install ${want[*]} into $venv"
}

report() {
  local g m bad=0
  for g in "${groups[@]}"; do
    m=$(missing "$g" | paste -sd, - | sed 's/,/, /g')
    if [ -n "$m" ]; then
      echo "$prog: $g group: missing $m" >&2
      bad=1
    else
      echo "$prog: $g group: every command present"
    fi
  done
  return $bad
}

if [ $check = 1 ]; then
  report
  exit
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || die "not root and no sudo: run this as root"
  SUDO=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
for g in "${groups[@]}"; do
  case $g in
    runtime) pk=("${runtime_packages[@]}") ;;
    tests) pk=("${tests_packages[@]}") ;;
    *) pk=("${export_packages[@]}") ;;
  esac
  echo "$prog: installing the $g group: ${pk[*]}"
  "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${pk[@]}" ||
    die "apt-get could not install the $g group"
  if [ "$g" = tests ] || [ "$g" = export ]; then make_venv; fi
done
report || die "some commands are still missing after the install"
