#!/usr/bin/env bash
# Start the mirror on its embedded default (local disk cache under ./hub-mirror-cache,
# upstream https://huggingface.co, http://127.0.0.1:8090), creating the virtualenv first.
# Extra arguments go to `hub-mirror serve` (e.g. --host 0.0.0.0 --port 8090).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/hub-mirror ]; then
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e .
fi
exec .venv/bin/hub-mirror serve "$@"
