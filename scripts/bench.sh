#!/usr/bin/env bash
# Run the benchmark harness (docs/benchmarks.md) on a fresh machine: the virtualenv with the test and
# bench extras, nginx, wrk and curl from Debian, then `python -m bench` with the given arguments
# (e.g. --quick). olah, the peer it is measured against, gets its own venv on first use.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for tool in nginx wrk curl; do
  command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || missing+=("$tool")
done
if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test,bench]"
exec .venv/bin/python -m bench "$@"
