"""huggingface_hub 0.36 (the last 0.x, on `requests`, without hf_xet) in its own virtualenv.

The one named by HUB_MIRROR_OLD_HF_VENV (CI prepares it), or one created once under
~/.cache/hub-mirror-tests and reused (needs PyPI the first time). The `old_python` fixture gives its
interpreter to any test that runs the old client (see tests/support/client.run_client's `python`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

OLD_VERSION = "0.36.2"
VENV_ENV_VAR = "HUB_MIRROR_OLD_HF_VENV"
DEFAULT_VENV = Path.home() / ".cache" / "hub-mirror-tests" / "hf-0.36"
SETUP_TIMEOUT = 600

PROBE = """
import importlib.util, json, sys
import huggingface_hub
print(json.dumps({"version": huggingface_hub.__version__, "xet": importlib.util.find_spec("hf_xet") is not None}))
"""


def _python_of(venv: Path) -> Path:
    return venv / "bin" / "python"


def _probe(python: Path) -> dict[str, Any] | None:
    """The venv's huggingface_hub version and whether hf_xet is importable; None if unusable."""
    try:
        proc = subprocess.run([str(python), "-c", PROBE], capture_output=True, text=True, timeout=60, check=False)
    except OSError:  # missing or not executable
        return None
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _pip(python: Path, *args: str) -> None:
    proc = subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", "-q", *args],
        capture_output=True,
        text=True,
        timeout=SETUP_TIMEOUT,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"pip {' '.join(args)} failed (PyPI reachable?):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


def _create_venv(venv: Path) -> None:
    venv.parent.mkdir(parents=True, exist_ok=True)
    # Built beside the target and renamed into place, so an interrupted run never leaves a
    # half-installed venv that a later run would take for a good one.
    staging = Path(tempfile.mkdtemp(prefix=venv.name + ".", dir=venv.parent))
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(staging)], check=True, timeout=SETUP_TIMEOUT)
        _pip(_python_of(staging), "install", f"huggingface_hub=={OLD_VERSION}")
        # 0.36 depends on hf-xet on x86_64/arm64; the fleet this stands for runs without it.
        _pip(_python_of(staging), "uninstall", "-y", "hf-xet")
        try:
            staging.rename(venv)
        except OSError:  # a non-empty directory is in the way: a concurrent run's venv, or a broken one
            existing = _probe(_python_of(venv))
            if existing is not None and existing["version"] == OLD_VERSION and not existing["xet"]:
                return
            shutil.rmtree(venv)
            staging.rename(venv)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@pytest.fixture(scope="module")
def old_python() -> str:
    configured = os.environ.get(VENV_ENV_VAR)
    if configured:
        python = _python_of(Path(configured))
        info = _probe(python)
        if info is None:
            pytest.fail(
                f"{VENV_ENV_VAR}={configured} is not a venv with huggingface_hub: create it with "
                f'`python -m venv {configured} && {configured}/bin/pip install "huggingface_hub=={OLD_VERSION}"'
                f" && {configured}/bin/pip uninstall -y hf-xet`"
            )
    else:
        python = _python_of(DEFAULT_VENV)
        info = _probe(python)
        if info is None or info["version"] != OLD_VERSION:
            _create_venv(DEFAULT_VENV)
            info = _probe(python)
        elif info["xet"]:
            _pip(python, "uninstall", "-y", "hf-xet")  # our own cache venv: safe to repair
            info = _probe(python)
        assert info is not None, f"the venv at {DEFAULT_VENV} is unusable even after creating it"
    assert info["version"].startswith("0.36."), f"{python} has huggingface_hub {info['version']}, want 0.36.x"
    return str(python)
