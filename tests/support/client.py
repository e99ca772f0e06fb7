"""Run the real huggingface_hub client in a subprocess, pointed at the mirror with HF_ENDPOINT.

HF_ENDPOINT is read when huggingface_hub is imported, exactly as on a user's machine, so each call
gets a fresh interpreter. The script's last stdout line is JSON and is returned.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

PRELUDE = """
import json, os, sys, traceback
import huggingface_hub
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub import errors as hf_errors
out = {}
def err(fn, *a, **kw):
    try:
        fn(*a, **kw)
    except Exception as exc:
        return type(exc).__name__
    return None
"""


def run_client(
    endpoint: str,
    script: str,
    hf_home: Path,
    *,
    python: str = sys.executable,
    env: dict[str, str] | None = None,
    timeout: float = 180,
) -> Any:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    full_env.update(
        {
            "HF_ENDPOINT": endpoint,
            "HF_HOME": str(hf_home),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "HF_HUB_ETAG_TIMEOUT": "10",
            "NO_PROXY": "127.0.0.1,localhost",
        }
    )
    full_env.update(env or {})
    code = PRELUDE + textwrap.dedent(script) + "\nprint(json.dumps(out))\n"
    proc = subprocess.run(
        [python, "-c", code], env=full_env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise AssertionError(f"client script failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
