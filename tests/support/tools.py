"""The command-line download tools (curl, aria2c) that hfd.sh and llama.cpp's replays run."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

TOOL_TIMEOUT = 120  # seconds each tool is given (its own --max-time / --timeout where it has one)


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        # Not a skip: CI installs these, so a missing tool means the environment is broken.
        pytest.fail(f"{name} is not on PATH; CI installs it (apt-get install curl aria2)")
    return path


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return subprocess.run(
        list(args), env=env, cwd=cwd, capture_output=True, text=True, timeout=TOOL_TIMEOUT + 15, check=False
    )
