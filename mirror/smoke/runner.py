"""Run the worker in a child process (fresh interpreter, mirror environment) and collect its result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import mirror
from mirror.smoke.options import SmokeOptions
from mirror.smoke.result import SmokeResult

# Variables that would point the child's clients at another endpoint, cache or offline mode; the
# worker must see only the mirror and its own HF_HOME. Tokens (HF_TOKEN) and tuning knobs pass through.
_REDIRECTING = frozenset(
    {
        "HF_ENDPOINT",
        "HF_HOME",
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "HF_XET_CACHE",
        "HF_ASSETS_CACHE",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_CACHE",
        "TRANSFORMERS_OFFLINE",
    }
)
DEFAULT_TIMEOUT_S = 2 * 3600.0


def child_env(base: Mapping[str, str], endpoint: str, hf_home: Path) -> dict[str, str]:
    env = {name: value for name, value in base.items() if name not in _REDIRECTING}
    env["HF_ENDPOINT"] = endpoint.rstrip("/")
    env["HF_HOME"] = str(hf_home)
    env["HF_HUB_DISABLE_TELEMETRY"] = "1"
    # The child imports this very package, wherever the parent found it (installed or a checkout).
    root = str(Path(mirror.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, base.get("PYTHONPATH", "")) if p)
    return env


def run_once(
    options: SmokeOptions,
    hf_home: Path | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    environ: Mapping[str, str] | None = None,
) -> SmokeResult:
    """One full smoke check. Without `hf_home` the child gets an empty one, removed afterwards, so every
    run downloads everything through the mirror again (set TMPDIR to a disk with room for the model)."""
    with tempfile.TemporaryDirectory(prefix="hub-mirror-smoke-") as tmp:
        work = Path(tmp)
        (work / "options.json").write_text(options.to_json())
        result_file = work / "result.json"
        env = child_env(os.environ if environ is None else environ, options.endpoint, hf_home or work / "hf-home")
        cmd = [sys.executable, "-m", "mirror.smoke.worker", "--options", str(work / "options.json")]
        cmd += ["--result", str(result_file)]
        start = time.perf_counter()
        try:
            # The child's stdout goes to our stderr: our stdout carries only the JSON result.
            proc = subprocess.run(cmd, env=env, stdout=2, stdin=subprocess.DEVNULL, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            return _crashed(options, f"worker timed out after {timeout_s:.0f}s", start)
        if not result_file.is_file():
            # Killed (out of memory, a CUDA fault) before it could write: its log on stderr says why.
            return _crashed(options, f"worker exited with code {proc.returncode} without a result", start)
        return SmokeResult.from_dict(json.loads(result_file.read_text()))


def _crashed(options: SmokeOptions, reason: str, start: float) -> SmokeResult:
    result = SmokeResult(options.repo, options.revision, options.endpoint).fail("start", reason)
    result.duration_s = round(time.perf_counter() - start, 3)
    return result


def run_every(
    run: Callable[[], SmokeResult],
    interval_s: float,
    on_result: Callable[[SmokeResult], None],
    max_runs: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> SmokeResult:
    """Run start to start every `interval_s` (a slow run delays the next, never stacks), `max_runs` times or forever."""
    runs = 0
    while True:
        started = time.monotonic()
        result = run()
        on_result(result)
        runs += 1
        if max_runs is not None and runs >= max_runs:
            return result
        sleep(max(0.0, started + interval_s - time.monotonic()))
