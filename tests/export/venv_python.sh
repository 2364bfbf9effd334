#!/usr/bin/env bash
# venv_python.sh SCRIPT: run SCRIPT with the Python of dmnist's virtual
# environment ($DMNIST_VENV, else .venv at the top of the source tree, made by
# scripts/install-deps.sh --export), or skip (77) saying why.
set -u
venv=${DMNIST_VENV:-${DMNIST_SOURCE_DIR:?}/.venv}
if [ ! -x "$venv/bin/python" ]; then
    echo "skipped: no Python virtual environment at $venv (scripts/install-deps.sh --export makes it: onnxruntime, onnx, safetensors; python3-torch)"
    exit 77
fi
exec "$venv/bin/python" "$@"
