"""Talking to git endpoints in tests: raw HTTP requests, and the real `git` in a sealed environment."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

from testbed.hubemu import HubEmulator
from tests.support.http import send

REFS = "info/refs?service=git-upload-pack"
LFS_HEADERS = {"Content-Type": "application/vnd.git-lfs+json", "Accept": "application/vnd.git-lfs+json"}


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def git_server_upstream(hub: HubEmulator) -> bool:
    """Whether the emulator serves git's smart HTTP (a probe, so this runs as soon as it does)."""
    hub.add_repo("model", "probe/git", {"a.txt": b"a"})
    try:
        status, headers, _ = send(hub.url, "GET", f"/probe/git.git/{REFS}")
    finally:
        hub.remove_repo("model", "probe/git")
    return status == 200 and headers.get("Content-Type", "").startswith("application/x-git-upload-pack")


def run(args: list[str], env: dict[str, str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=60)
    if check:
        assert done.returncode == 0, f"{args}: {done.stderr}"
    return done


def clone(url: str, dest: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run(["git", "clone", "-q", url, str(dest)], env, dest.parent, check=False)


def head(repo: Path, env: dict[str, str]) -> str:
    return run(["git", "rev-parse", "HEAD"], env, repo).stdout.strip()


def files(repo: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(repo)): p.read_bytes()
        for p in sorted(repo.rglob("*"))
        if p.is_file() and ".git" not in p.parts
    }


def with_token(url: str, token: str) -> str:
    return url.replace("http://", f"http://user:{token}@", 1)


def lfs_batch(
    base: str,
    repo: str,
    objects: list[tuple[str, int]],
    headers: dict[str, str] | None = None,
    operation: str = "download",
) -> tuple[int, dict[str, str], dict]:
    """POST a batch request as git-lfs does; the parsed answer."""
    request = {"operation": operation, "transfers": ["basic"], "objects": [{"oid": o, "size": n} for o, n in objects]}
    status, answer_headers, body = send(
        base,
        "POST",
        f"/{repo}.git/info/lfs/objects/batch",
        {**LFS_HEADERS, **(headers or {})},
        json.dumps(request).encode(),
    )
    return status, answer_headers, json.loads(body) if body else {}


def sealed_git_env(home: Path) -> dict[str, str]:
    """An environment in which git reads no system or user config but the one in `home`, never prompts."""
    home.mkdir(exist_ok=True)
    env = {
        "HOME": str(home),
        "PATH": os.environ["PATH"],
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",  # a missing credential fails instead of waiting on a prompt
        "NO_PROXY": "127.0.0.1",
        "LANG": "C",
    }
    run(["git", "config", "--global", "user.email", "t@example.com"], env, home)
    run(["git", "config", "--global", "user.name", "t"], env, home)
    return env
