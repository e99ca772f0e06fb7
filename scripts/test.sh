#!/usr/bin/env bash
# Set up a virtualenv with the project and its test tools, the Debian download tools the
# conformance tests drive (curl, wget, aria2c), nginx (the load balancer in front of the replicas in
# tests/test_load_balancer.py), promtool (package prometheus: the alert rules are unit-tested), git and
# git-lfs (the emulator's git server and `git clone` through the mirror), an older huggingface_hub
# for the old-client tests, then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v curl >/dev/null || ! command -v aria2c >/dev/null || ! command -v wget >/dev/null \
  || ! { command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]; } || ! command -v promtool >/dev/null \
  || ! command -v git >/dev/null || ! git lfs version >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq curl wget aria2 nginx prometheus git git-lfs >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"

# The smoke worker's tests load a tiny Qwen3-VL with torch + torchvision. These exact versions come
# from the machine's local wheel store (others download gigabytes), so skip the step when present.
if ! .venv/bin/python -c "import torch, torchvision as tv; assert (torch.__version__.split('+')[0], tv.__version__.split('+')[0]) == ('2.14.1', '0.29.1')" 2>/dev/null; then
  .venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
fi
.venv/bin/python -m pip install -q -e ".[smoke]"

# huggingface_hub 0.36 (the last 0.x) for the old-client conformance tests.
OLD_VENV=${HUB_MIRROR_OLD_HF_VENV:-$PWD/.venv-hf-old}
# hf-xet is removed: that client must download over plain HTTP, as on platforms without it.
if ! "$OLD_VENV/bin/python" -c "import huggingface_hub as h; assert h.__version__ == '0.36.2'" 2>/dev/null; then
  "$PY" -m venv --clear "$OLD_VENV"
  "$OLD_VENV/bin/python" -m pip install -q "huggingface_hub==0.36.2"
fi
"$OLD_VENV/bin/python" -m pip uninstall -y -q hf-xet 2>/dev/null || true
export HUB_MIRROR_OLD_HF_VENV="$OLD_VENV"

.venv/bin/ruff check mirror tests testbed bench
# The package's layers are a contract ([tool.importlinter] in pyproject.toml), checked like the tests.
.venv/bin/lint-imports
# Most tests wait on servers, clients and subprocesses rather than compute, so the suite runs in parallel
# workers, one per core, 2 to 4 (nproc, as physical-core counts differ between machines): on 2 cores it
# takes ~6 min instead of ~11. Each test file stays on one worker (--dist loadfile), so a module's
# fixtures, such as the >50 GB synthetic file's sha256, are built once.
# HUB_MIRROR_TEST_WORKERS=0 runs in one process (for a debugger or -x).
cores=$(nproc 2>/dev/null || echo 2)
workers=${HUB_MIRROR_TEST_WORKERS:-$((cores < 2 ? 2 : cores > 4 ? 4 : cores))}
exec .venv/bin/python -m pytest -q -n "$workers" --dist loadfile "$@"
